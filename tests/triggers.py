"""Make the real database refuse writes to one table, as a bug or an outage would.

A trigger raises inside the database itself, so the error travels the whole real path: the
driver (sqlite3 or asyncpg), SQLAlchemy's wrapping, Easel's store and whoever called it.
SQLite's ``RAISE(ABORT, …)`` is a constraint error (a bug, as an IntegrityError); PostgreSQL
raises any SQLSTATE: ``23505`` for a bug, ``57P01`` for a server shutting down.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def _name(table: str) -> str:
    return f"easel_test_refuse_{table}"


async def refuse_inserts(
    engine: AsyncEngine, table: str, message: str, *, sqlstate: str = "23505"
) -> None:
    """Every INSERT into ``table`` raises ``message`` (``sqlstate`` on PostgreSQL)."""
    name = _name(table)
    if engine.dialect.name == "sqlite":
        statements = [
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        ]
    else:
        statements = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"RAISE EXCEPTION '{message}' USING ERRCODE = '{sqlstate}'; END $$",
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


async def allow_inserts(engine: AsyncEngine, table: str) -> None:
    name = _name(table)
    if engine.dialect.name == "sqlite":
        statements = [f"DROP TRIGGER {name}"]
    else:
        statements = [f"DROP TRIGGER {name} ON {table}", f"DROP FUNCTION {name}()"]
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))
