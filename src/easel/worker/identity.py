"""A worker's id, and registering it with the database.

The id is stored in ``workers.id`` and ``tasks.worker_id`` (``varchar(64)``) and fences every
write a worker makes to its tasks. It used to be ``hostname-pid-random``; a Kubernetes pod
name alone may have 63 characters, so on PostgreSQL the id overflowed the column and the
worker retried the insert forever while tasks stayed queued. Now the id is a readable prefix
of the hostname and a suffix that makes it unique, cut to fit the column.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from easel.store.outage import is_outage

log = logging.getLogger("easel.worker")

WORKER_ID_MAX = 64  # workers.id and tasks.worker_id are varchar(64)
REGISTER_BACKOFF_MAX_S = 5.0  # longest wait between tries while the database is away
_NOT_READABLE = re.compile(r"[^A-Za-z0-9._-]")


class WorkerCannotRegister(RuntimeError):
    """The worker could not announce itself to the database: it must stop (the process exits
    non-zero) rather than run without claiming anything."""


def new_worker_id(hostname: str | None = None, pid: int | None = None) -> str:
    """``<hostname prefix>-<pid>-<8 hex digits>``, at most :data:`WORKER_ID_MAX` characters.

    The hostname keeps as much of itself as fits (at least 40 characters: enough to tell pods
    apart in a log); characters outside ``A-Za-z0-9._-`` become ``_``. 32 random bits make two
    workers whose hostnames share the prefix, or a restart with the same pid, distinct.
    """
    host = hostname if hostname is not None else socket.gethostname()
    suffix = f"-{pid if pid is not None else os.getpid()}-{secrets.token_hex(4)}"
    readable = _NOT_READABLE.sub("_", host) or "worker"
    return readable[: WORKER_ID_MAX - len(suffix)] + suffix


def check_worker_id(worker_id: str) -> str:
    """``worker_id`` if it fits the columns; else :class:`ValueError`."""
    if not 1 <= len(worker_id) <= WORKER_ID_MAX:
        raise ValueError(
            f"a worker id has 1 to {WORKER_ID_MAX} characters; {worker_id[:80]!r} has "
            f"{len(worker_id)}"
        )
    return worker_id


def reason(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's statement and links."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}".rstrip(": ")


async def register(
    worker_id: str,
    announce: Callable[[], Awaitable[None]],
    sleep: Callable[[float], Awaitable[bool]],
    *,
    patience_s: float,
    first_wait_s: float,
) -> bool:
    """Call ``announce`` until it succeeds; False if ``sleep`` reports a stop first.

    An outage (the database unreachable, restarting, out of connections) is waited out with
    a logged retry, backing off up to :data:`REGISTER_BACKOFF_MAX_S`, for ``patience_s``;
    then, or at once for any other error (a constraint or type violation, a missing table:
    trying again cannot help), :class:`WorkerCannotRegister`. ``sleep(s)`` waits and answers
    True when the worker is told to stop meanwhile.
    """
    deadline = time.monotonic() + patience_s
    wait_s = first_wait_s
    while True:
        try:
            await announce()
            return True
        except Exception as exc:
            if not is_outage(exc):
                raise WorkerCannotRegister(
                    f"worker {worker_id!r} cannot register with the database: {reason(exc)}"
                ) from exc
            if time.monotonic() >= deadline:
                raise WorkerCannotRegister(
                    f"worker {worker_id!r} cannot register: the database was unreachable for "
                    f"{patience_s:g} s (last error: {reason(exc)})"
                ) from exc
            log.warning(
                "cannot register with the database (%s); retrying in %g s", reason(exc), wait_s
            )
        if await sleep(min(wait_s, max(0.0, deadline - time.monotonic()))):
            return False
        wait_s = min(REGISTER_BACKOFF_MAX_S, wait_s * 2)
