"""How ``easel serve`` runs uvicorn: slow clients are dropped, connections are bounded, and
shutdown is bounded too (``docs/reliability.md``, "Availability and streams").

uvicorn (0.55, h11) bounds the header block's size and an idle kept-alive connection, but not
the time a client takes to send its header or its body, nor the number of connections: a
few hundred clients that send half a header and stall hold a descriptor each for ever, and
once the process is out of descriptors every new client waits. :class:`GuardedH11Protocol`
is uvicorn's h11 protocol with these bounds added:

* **Header deadline.** A request's header block must be complete ``header_timeout_s`` after
  its first byte arrived (for a new connection: after it opened). Else the connection is
  closed.
* **Body deadline.** A body must arrive within ``body_timeout_s`` plus one second per
  ``body_min_bytes_per_s`` received (Apache's ``mod_reqtimeout`` rule): a slow but steady
  upload goes through, a trickle of a byte now and then is dropped. Time the server itself
  keeps the body waiting (the app not reading) does not count.
* **Stalled readers.** A client that takes nothing of its answer for ``body_timeout_s``
  while the server has more to write is dropped.
* **Connections.** At most ``max_connections`` per process (fewer when the descriptor limit
  is lower: see :func:`connection_limit`). At the limit a new connection takes the place of
  the oldest one that is idle or still sending its header (a real client sends its header
  at once; a slow one is the first to go); if every connection is busy with a request, the
  new one is closed.
* **Shutdown.** When uvicorn starts to shut down it asks each connection to finish; this one
  also calls the app's ``ON_SHUTDOWN`` hook (the app lends it as lifespan state), which ends
  the open event streams at once. uvicorn then waits at most ``shutdown_grace_s`` for the
  requests still running before it cancels them.

A request whose answer came before its body was read (a refused upload) has the rest of its
body read and discarded only up to :data:`DRAIN_MAX_BYTES`; past that the connection closes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from easel.config import Settings

log = logging.getLogger("easel.server")

ON_SHUTDOWN = "easel.on_shutdown"  # lifespan state: called when the server begins to stop
DRAIN_MAX_BYTES = 64 * 1024 * 1024  # body read and discarded after an early answer
RESERVED_FILES = 64  # descriptors kept for the database, files, logs, pipes
_WARN_EVERY_S = 10.0


class Phase(Enum):
    HEADER = "header"  # waiting for a request's header block (or a new connection's first)
    BODY = "body"  # the request's body is arriving
    APP = "app"  # the request is whole; the app is answering
    IDLE = "idle"  # between requests (uvicorn's keep-alive timeout runs)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    body_min_bytes_per_s: int
    max_connections: int


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for the header and body, a stall bound for the
    answer, a connection limit and a shutdown hook (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.phase = Phase.HEADER
        self.phase_since = 0.0
        self._body_bytes = 0  # received in this BODY phase (framing included)
        self._deadline: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None

    # -- connections ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._admit():
            self.phase = Phase.APP  # not a candidate for the next eviction
            self.transport.abort()
            return
        self._enter(Phase.HEADER)

    def _admit(self) -> bool:
        """Room for this connection, making it by closing the longest-waiting idle or
        header-sending one if the limit is reached; False if every other one is busy."""
        if len(self.connections) <= self.limits.max_connections:
            return True
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol)
            and c is not self
            and c.phase in (Phase.HEADER, Phase.IDLE)
        ]
        _warn(f"{self.limits.max_connections} connections open (max_connections)")
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.phase_since)
        oldest.transport.abort()  # connection_lost takes it out of the set
        self.connections.discard(oldest)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        super().shutdown()
        on_shutdown = self.app_state.get(ON_SHUTDOWN)
        if callable(on_shutdown):
            on_shutdown()

    # -- phases ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.IDLE:
            self._enter(Phase.HEADER)  # the next request's first bytes
        elif self.phase is Phase.BODY:
            self._body_bytes += len(data)
            answered = self.cycle is not None and self.cycle.response_complete
            if answered and self._body_bytes > DRAIN_MAX_BYTES:  # the rest is not wanted
                self.transport.abort()
                return
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        state = self.conn.their_state
        if self.transport.is_closing():
            self._cancel_timers()
        elif state is h11.IDLE:
            self._enter(Phase.IDLE)
        elif self.phase is Phase.APP:  # a pipelined request, parsed as this one ended
            self._enter(Phase.BODY if state is h11.SEND_BODY else Phase.APP)
        # else BODY: answered before its body was read; the rest is read and discarded

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_timers()  # the WebSocket protocol takes the connection over
        self.phase = Phase.APP
        super().handle_websocket_upgrade(event)

    def _follow_request(self) -> None:
        """Move on from HEADER or BODY once h11 has parsed that part of the request."""
        state = self.conn.their_state
        if self.phase is Phase.HEADER and state is not h11.IDLE:
            self._enter(Phase.BODY if state is h11.SEND_BODY else Phase.APP)
        elif self.phase is Phase.BODY and state is not h11.SEND_BODY:
            self._enter(Phase.APP)

    def _enter(self, phase: Phase) -> None:
        self.phase, self.phase_since = phase, self.loop.time()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if phase is Phase.HEADER:
            self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._expired)
        elif phase is Phase.BODY:
            self._body_bytes = 0
            self._deadline = self.loop.call_later(self.limits.body_timeout_s, self._expired)

    def _expired(self) -> None:
        """The header or body deadline passed: close, unless the body is still within its
        allowance (the deadline grows with what arrived) or the app is not reading it."""
        self._deadline = None
        if self.transport.is_closing() or self.phase not in (Phase.HEADER, Phase.BODY):
            return
        if self.phase is Phase.BODY:
            if self.flow.read_paused:  # the app has not taken what came: not the client's fault
                self._enter(Phase.BODY)  # a fresh allowance from now
                return
            allowed = (
                self.phase_since
                + self.limits.body_timeout_s
                + self._body_bytes / self.limits.body_min_bytes_per_s
            )
            if allowed > self.loop.time():
                self._deadline = self.loop.call_at(allowed, self._expired)
                return
        self.transport.abort()

    # -- answers the client does not read -------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.limits.body_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if self.flow.write_paused:
            self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._deadline, self._stall):
            if timer is not None:
                timer.cancel()
        self._deadline = self._stall = None


_last_warning = 0.0


def _warn(message: str) -> None:
    """Log at most once per ``_WARN_EVERY_S``: under attack this would be every connection."""
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= _WARN_EVERY_S:
        _last_warning = now
        log.warning("%s; new connections replace idle or slow ones", message)


def connection_limit(wanted: int) -> int:
    """``wanted`` connections, if the descriptor limit allows: the soft RLIMIT_NOFILE is
    raised toward the hard one as far as needed, and the limit lowered to what fits below
    it with :data:`RESERVED_FILES` to spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    fitting = max(16, soft - max(RESERVED_FILES, soft // 4))
    log.warning(
        "max_connections %d does not fit in %d open files (RLIMIT_NOFILE); using %d",
        wanted,
        soft,
        fitting,
    )
    return fitting


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments ``easel serve`` gives ``uvicorn.run``."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        body_min_bytes_per_s=settings.body_min_bytes_per_s,
        max_connections=connection_limit(settings.max_connections),
    )
    protocol = functools.partial(GuardedH11Protocol, limits=limits)
    return {
        # h11, not httptools: httptools takes a header block of any size (20 MB was read
        # whole), h11 refuses one over max_header_bytes with 400 and keeps serving.
        "http": cast(type[asyncio.Protocol], protocol),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        # Clients such as the tripo3d SDK poll every running_left_time / 2 seconds on one
        # kept-alive connection; the default keeps it open longer than uvicorn's 5 s.
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        # X-Forwarded-For is honoured by the app, from trusted_proxies only (uvicorn's own
        # default would trust 127.0.0.1, which every local client is).
        "proxy_headers": False,
    }
