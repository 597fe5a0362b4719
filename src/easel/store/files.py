"""Uploaded files (``image_token``s) and server secrets."""

from __future__ import annotations

import secrets as _secrets
import time

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from easel.store.db import connection, read_only, transaction
from easel.store.records import PENDING_SIZE, StoredFile
from easel.store.tables import files, secrets


class FileStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = read_only(engine)

    async def add(self, stored: StoredFile) -> None:
        async with transaction(self._engine) as conn:
            await conn.execute(
                insert(files).values(
                    token=stored.token,
                    account_id=stored.account_id,
                    key=stored.key,
                    format=stored.format,
                    size=stored.size,
                    width=stored.width,
                    height=stored.height,
                    created_at=time.time(),
                )
            )

    async def complete(self, stored: StoredFile) -> None:
        """Record what a pending (STS) upload turned out to be, once; later calls change nothing."""
        async with transaction(self._engine) as conn:
            await conn.execute(
                update(files)
                .where(files.c.token == stored.token, files.c.size == 0)
                .values(
                    format=stored.format,
                    size=stored.size,
                    width=stored.width,
                    height=stored.height,
                )
            )

    async def find(
        self, account_id: str, *, token: str | None = None, key: str | None = None
    ) -> StoredFile | None:
        """The account's file with this token or object key (another account's: None)."""
        query = select(files).where(files.c.account_id == account_id)
        query = query.where(files.c.token == token) if token else query.where(files.c.key == key)
        async with connection(self._reads) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return StoredFile(
            row.token, row.account_id, row.key, row.format, row.size, row.width, row.height
        )

    async def pending_before(self, before: float, limit: int = 500) -> list[StoredFile]:
        """STS uploads announced before ``before`` whose bytes were never inspected."""
        query = (
            select(files)
            .where(files.c.size == PENDING_SIZE, files.c.created_at < before)
            .limit(limit)
        )
        async with connection(self._reads) as conn:
            rows = await conn.execute(query)
            return [
                StoredFile(r.token, r.account_id, r.key, r.format, r.size, r.width, r.height)
                for r in rows
            ]

    async def forget_pending(self, token: str) -> None:
        """Drop a pending row (only while it is still pending)."""
        async with transaction(self._engine) as conn:
            await conn.execute(
                delete(files).where(files.c.token == token, files.c.size == PENDING_SIZE)
            )


class SecretStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = read_only(engine)

    async def get_or_create(self, name: str) -> str:
        """A random secret shared by every process on this database (made on first use)."""
        for _ in range(2):
            async with connection(self._reads) as conn:
                value = await conn.scalar(select(secrets.c.value).where(secrets.c.name == name))
            if value is not None:
                return str(value)
            try:
                async with transaction(self._engine) as conn:
                    await conn.execute(
                        insert(secrets).values(name=name, value=_secrets.token_hex(32))
                    )
            except IntegrityError:
                continue  # another process made it first
        raise RuntimeError(f"could not create secret {name!r}")
