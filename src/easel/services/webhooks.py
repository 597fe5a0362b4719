"""Webhook delivery: the retry policy, Standard Webhooks signing and the dispatcher.

Every ``easel serve`` process runs a :class:`Dispatcher`. It claims due deliveries from the
outbox (``easel.store.webhooks``) under a lease, POSTs each one, records the attempt and
either marks it ``delivered`` (2xx), schedules a retry (:class:`RetryPolicy`) or, when the
retry window (a day, from the first attempt) is spent, marks it ``dead``.

**What is sent.** ``{"type": "task.success", "timestamp": <the event's time, RFC 3339>,
"data": <task object>}`` with the headers ``webhook-id`` (the delivery id: the same on every
attempt, so receivers dedupe on it), ``webhook-timestamp`` and ``webhook-signature``.

**Rendered at delivery time.** The outbox row holds the event only (task, type, progress,
time); the task object is rendered for each attempt from the task as it is then, with the
event's status and progress, exactly as the watch and SSE streams render events. It cannot be
rendered in the event's transaction (the renderer reads other rows and signs output URLs),
and a rendering stored then would carry an output URL long expired by a retry hours later.
So each attempt has a freshly signed URL; body and signature may differ between attempts.

**Address rules.** Every attempt goes through the guarded client of :mod:`easel.outbound`:
the target is checked at every attempt and the request goes to the checked address itself
(no DNS rebinding); no redirects are followed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from standardwebhooks import Webhook

from easel.domain.tasks import Status
from easel.domain.webhooks import Due, LoggedAttempt
from easel.outbound import GuardedTransport, OutboundPolicy, OutboundRefused, guarded_client
from easel.store import is_outage
from easel.store.ports import WebhooksPort

if TYPE_CHECKING:
    from easel.runtime import Runtime

log = logging.getLogger("easel.services.webhooks")

# task_id, the event's status and progress, base URL for output links → the task object
Render = Callable[[str, Status, int, str], Awaitable[dict[str, Any]]]

DEFAULT_SCHEDULE_S = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Back-off between failed attempts: ``schedule_s`` in turn, then its last step again,
    until ``window_s`` after the first attempt."""

    schedule_s: tuple[float, ...] = DEFAULT_SCHEDULE_S
    window_s: float = DAY_S

    def delay(self, failures: int, elapsed_s: float) -> float | None:
        """Seconds to wait after the ``failures``-th failed attempt, the first of which was
        ``elapsed_s`` ago; None when the next attempt would fall outside the window (dead)."""
        step = self.schedule_s[min(failures, len(self.schedule_s)) - 1]
        return step if elapsed_s + step <= self.window_s else None


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form, ``whsec_`` + base64 of 24 bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def rfc3339(timestamp: float) -> str:
    """``2026-01-31T12:00:00.123Z``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def signed_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (signed by the ``standardwebhooks`` library)."""
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(timestamp, UTC), body)
    return {
        "content-type": "application/json",
        "user-agent": "easel-webhooks",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def task_renderer(runtime: Runtime) -> Render:
    """Render a task event as the watch and SSE streams do: the task now, the event's status."""

    async def render(task_id: str, status: Status, progress: int, base_url: str) -> dict[str, Any]:
        data = await runtime.service.render_event(task_id, status, progress, base_url)
        if data is None:
            raise LookupError(f"task {task_id} no longer exists")
        return data

    return render


async def post(client: httpx.AsyncClient, url: str, headers: dict[str, str], body: str) -> int:
    """POST ``body`` to ``url`` through the guarded client; the answer's status code (its
    body is of no interest and is not read)."""
    async with client.stream("POST", url, content=body, headers=headers) as response:
        return response.status_code


class Dispatcher:
    """Claims due deliveries and sends them, at most ``max_in_flight`` at once."""

    def __init__(
        self,
        store: WebhooksPort,
        render: Render,
        policy: OutboundPolicy,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 10.0,
        lease_s: float = 60.0,
        poll_s: float = 0.5,
        max_in_flight: int = 16,
    ) -> None:
        self.store, self.render, self.policy = store, render, policy
        self.retry, self.clock = retry or RetryPolicy(), clock
        self.timeout_s, self.lease_s, self.poll_s = timeout_s, lease_s, poll_s
        self.max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()
        self._outage = False  # the last claim failed because the database was away

    @classmethod
    def for_runtime(cls, runtime: Runtime, **options: Any) -> Dispatcher:
        store = runtime.store.webhooks
        settings = runtime.settings
        timeout_s = settings.webhook_timeout_s
        defaults = {
            "poll_s": settings.poll_interval_s,
            "timeout_s": timeout_s,
            # A claimed delivery stays this dispatcher's while its attempt may still run.
            "lease_s": max(60.0, 2 * timeout_s + 10),
        }
        return cls(store, task_renderer(runtime), runtime.service.policy, **{**defaults, **options})

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then let attempts under way finish (briefly)."""
        transport = GuardedTransport(self.policy)
        async with guarded_client(transport, timeout_s=self.timeout_s) as client:
            try:
                while not stop.is_set():
                    await self._claim_and_send(client)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_s)
            finally:
                await self._drain()

    async def _claim_and_send(self, client: httpx.AsyncClient) -> None:
        room = self.max_in_flight - len(self._in_flight)
        if room <= 0:
            return
        try:
            claimed = await self.store.claim(self.clock(), self.lease_s, room)
        except Exception as exc:
            if not is_outage(exc):  # a bug: show it, keep delivering what can be delivered
                log.exception("could not claim webhook deliveries")
                return
            if not self._outage:  # the database is away: say so once, try again
                log.warning("cannot claim webhook deliveries (%s); retrying", exc)
            self._outage = True
            return
        if self._outage:
            log.info("webhook deliveries resume: the database is back")
        self._outage = False
        for due in claimed:
            sending = asyncio.create_task(self.attempt(client, due))
            self._in_flight.add(sending)
            sending.add_done_callback(self._in_flight.discard)

    async def _drain(self) -> None:
        if self._in_flight:
            _, late = await asyncio.wait(self._in_flight, timeout=self.timeout_s)
            for sending in late:  # its lease lapses and another dispatcher sends it again
                sending.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def attempt(self, client: httpx.AsyncClient, due: Due) -> None:
        """Send one attempt of ``due`` and record it with what follows."""
        started, began = self.clock(), time.perf_counter()
        status_code, error = await self._send(client, due, started)
        latency_ms = round((time.perf_counter() - began) * 1000, 1)
        logged = LoggedAttempt(due.attempts + 1, status_code, latency_ms, error, started)
        status, next_at = self._next(due, started, error)
        if error is not None:
            log.info("webhook %s attempt %d: %s (%s)", due.id, logged.number, error, status)
        try:
            await self.store.finish(due, logged, status, next_at)
        except Exception as exc:  # unrecorded: the lease lapses and the delivery is sent again
            if not is_outage(exc):
                log.exception("could not record webhook delivery %s", due.id)
            else:
                log.warning("could not record webhook delivery %s (%s)", due.id, exc)

    def _next(self, due: Due, started: float, error: str | None) -> tuple[str, float | None]:
        """The delivery's next state: delivered, pending (with its due time) or dead."""
        if error is None:
            return "delivered", None
        now = self.clock()
        window_start = started if due.window_start is None else due.window_start
        delay = self.retry.delay(due.window_attempts + 1, now - window_start)
        return ("dead", None) if delay is None else ("pending", now + delay)

    async def _send(
        self, client: httpx.AsyncClient, due: Due, now: float
    ) -> tuple[int | None, str | None]:
        """POST the attempt: the status code (if any answer) and the error (None on 2xx)."""
        try:
            data = await self.render(
                due.task_id,
                Status(due.event_type.removeprefix("task.")),
                due.progress,
                due.base_url,
            )
            payload = {"type": due.event_type, "timestamp": rfc3339(due.created_at), "data": data}
            body = json.dumps(payload, separators=(",", ":"))
            headers = signed_headers(due.secret, due.id, int(now), body)
            async with asyncio.timeout(self.timeout_s):
                code = await post(client, due.url, headers, body)
        except OutboundRefused as exc:  # the target is refused by the address rules now
            return None, f"not sent: {exc.reason}"
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}".rstrip(": ")
        except Exception as exc:  # e.g. rendering: the task is gone, the database is away
            log.warning("webhook %s: could not send: %r", due.id, exc)
            return None, f"not sent: {exc}"
        return code, None if 200 <= code < 300 else f"HTTP {code}"
