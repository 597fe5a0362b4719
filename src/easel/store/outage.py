"""Which errors mean "the database (or the disk or network under it) is away for now".

Such an error says nothing about the request: the API answers 503 and asks the client to try
again shortly, and workers back off and carry on once the database is back. Everything else
is a bug and stays a 500. asyncpg raises its own errors, unwrapped by SQLAlchemy, while it
connects (a refused connection, "the database system is starting up", too many clients).
"""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa

# Path errors are configuration mistakes or bugs, not outages.
_NOT_OUTAGES = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # refused or reset connections, timeouts, DNS, a full or failing disk
    sa.OperationalError,  # lost connection, SQLite "database is locked" / "disk is full"
    sa.InterfaceError,
    sa.DisconnectionError,
    sa.TimeoutError,  # no pooled connection came free in time
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # shutting down, starting up
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` comes from an unreachable or unwell database or disk."""
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OUTAGE_ERRORS) and not isinstance(exc, _NOT_OUTAGES)
