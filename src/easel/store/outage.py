"""The one place that decides whether an error means "the infrastructure is away for now".

An outage says nothing about the request or the task: the API answers 503 with
``Retry-After``, workers back off and a running task is left to be reclaimed when its lease
lapses, the janitor and the webhook dispatcher try again next round. Everything else is a
bug or a bad input, and fails loudly: a traceback in the log, a 500, and a task that ends
``failed`` with a refund at once instead of being re-queued as if the database were down.

The verdict follows the exception's chain (``__cause__``, else ``__context__``), because
drivers nest: asyncpg's ``CannotConnectNowError`` ("the database system is starting up")
reaches the API inside SQLAlchemy's adapter error inside a plain ``DBAPIError``. The first
link that says something decides:

- PostgreSQL reports a SQLSTATE on every server error (asyncpg, SQLAlchemy's adapter and
  psycopg all carry it as ``sqlstate``): the classes of connections (08), resources (53),
  operator intervention (57: shutting down, starting up, terminated) and system errors (58),
  plus a serialisation failure or deadlock (40001, 40P01), are outages; every other SQLSTATE
  (a unique violation, a value too long, a syntax error) is a bug.
- SQLite gives a result code: busy, locked, disk full, I/O error, cannot open are outages;
  a constraint, "no such table", a corrupt file are not.
- SQLAlchemy: a connection it invalidated, a pool that gave no connection in time.
- The object store: :class:`~easel.storage.objects.ObjectStoreError` (a read or write that failed
  after obstore's retries) and obstore's ``GenericError`` (its network or disk error).
- Operating-system errors of networks and disks: refused, reset or timed-out connections,
  name resolution, a full disk, EIO. An ``OSError`` without such an errno (Pillow's "broken
  data stream", a missing file) is not an outage.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sqlite3
from collections.abc import Iterator

from obstore.exceptions import GenericError as ObjectStoreIOError
from sqlalchemy import exc as sa

from easel.domain.errors import EaselError, ServiceUnavailable, StoreUnavailable
from easel.storage.objects import ObjectStoreError

# SQLSTATE classes and codes of a server that cannot serve now (see the module docstring).
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})
_OUTAGE_SQLSTATES = frozenset({"40001", "40P01"})
_OUTAGE_SQLITE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_OUTAGE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EADDRNOTAVAIL,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
    }
)
# asyncio's create_connection, when every address of a host refused, raises a plain OSError
# (no errno) that starts with these words.
_ALL_ADDRESSES_FAILED = "Multiple exceptions: "
_MAX_LINKS = 16  # a chain longer than this is not followed further


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database, the object store or the
    network or disk under them is unavailable for now, so the same work will succeed later."""
    for link in causes(exc):
        verdict = _verdict(link)
        if verdict is not None:
            return verdict
    return False


@contextlib.contextmanager
def outages_suppressed() -> Iterator[None]:
    """Swallow an outage (the caller leaves the work to be retried); let anything else out."""
    try:
        yield
    except Exception as exc:
        if not is_outage(exc):
            raise


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """The store's edge: a database outage leaves as :class:`StoreUnavailable` (the driver's
    error as its cause), so nothing above the store needs to know a driver's exceptions;
    anything else (a constraint violated, a syntax error: a bug) leaves unchanged."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if is_outage(exc):
            raise StoreUnavailable("the server's database is unavailable for now.") from exc
        raise


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, link by link (at most ``_MAX_LINKS``, each once)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < _MAX_LINKS:
        seen.add(id(link))
        yield link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)


def _verdict(exc: BaseException) -> bool | None:
    """True: an outage; False: certainly not one; None: this link does not say."""
    if isinstance(exc, ServiceUnavailable):
        return True  # already translated (StoreUnavailable) or decided by its raiser
    if isinstance(exc, EaselError):
        return False  # already a decided answer
    if isinstance(exc, (ObjectStoreError, ObjectStoreIOError, sa.TimeoutError)):
        return True
    if isinstance(exc, sa.DisconnectionError):
        return True
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        return sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES or sqlstate in _OUTAGE_SQLSTATES
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _OUTAGE_SQLITE_CODES
    if isinstance(exc, OSError):
        return _is_network_or_disk(exc) or None
    return None


def _is_network_or_disk(exc: OSError) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    if exc.errno in _OUTAGE_ERRNOS:
        return True
    return exc.errno is None and str(exc).startswith(_ALL_ADDRESSES_FAILED)
