"""The open event streams (SSE and WebSocket watches) of this process, as a cost of their key.

A stream holds a connection and reads the event log for as long as it is open, so it is
counted like requests are:

* **At most ``max_streams_per_key`` at once per key** (in this process, as the rate limit
  is). One more is refused with 429 / 1007, before anything is streamed.
* **Its lifetime is charged to the key's rate**: one request when it opens (the
  authentication) and one more every ``stream_check_s`` while it stays open, even when the
  key's bucket is empty (the bucket then goes into debt that later requests wait off). A
  stream costs what polling every ``stream_check_s`` would, and a key that holds many
  streams has that much less left for its other requests.
* **Its key is re-checked in the database at the same interval**: a key revoked anywhere
  (another replica, ``easel keys revoke``) ends its streams within ``stream_check_s``, the
  client told why (1002). The checks fall on the same ticks (multiples of
  ``stream_check_s``) for every stream of the process, and the keys due on a tick are asked
  in one query (:meth:`Streams.key_active`): a thousand idle streams cost one query per
  ``stream_check_s``, not a thousand.
* **Shutdown ends every stream at once** (:meth:`Streams.end_all`), so the server does not
  wait for clients that would never leave.

An idle stream costs no reads of the event log: it waits in :meth:`Stream.pause` until an
event of its account may have been committed (:meth:`Streams.publish`, driven by
``Store.event_wake_ups``, ``easel.store.notify``), then reads on from the last event it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter

from easel.domain.accounts import Caller
from easel.domain.errors import AuthenticationFailed, EaselError, RateLimited
from easel.services.ratelimit import RateLimiter
from easel.store.outage import is_outage
from easel.store.ports import AccountsPort


class StreamEnded(Exception):
    """The stream must end now; ``error``, when set, is what to tell its client."""

    def __init__(self, error: EaselError | None) -> None:
        super().__init__(error.message if error else "the stream ended")
        self.error = error


class Stream:
    """One open stream: its loop waits with :meth:`pause`, which raises
    :class:`StreamEnded` once the stream must end."""

    def __init__(self, owner: Streams, caller: Caller) -> None:
        self.caller = caller
        self._owner = owner
        self._signal = asyncio.Event()  # set when woken or ended
        self._woken = False
        self._ended = False
        self._error: EaselError | None = None
        self._next_check = owner.next_tick()

    def end(self, error: EaselError | None = None) -> None:
        """End the stream (its loop raises at its next pause); the first reason wins."""
        if not self._ended:
            self._error, self._ended = error, True
            self._signal.set()

    def wake(self) -> None:
        """An event of the stream's account may have been committed: its pause returns."""
        self._woken = True
        self._signal.set()

    async def pause(self) -> None:
        """Wait until woken (at once if woken since the last pause), checking the key when
        it is due meanwhile. A wake-up that comes while the stream reads is kept for its
        next pause, so none is lost between the read and the wait."""
        while True:
            self._raise_if_ended()
            if self._woken:
                self._woken = False
                self._signal.clear()
                return
            wait_s = self._next_check - time.monotonic()
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._signal.wait()
                continue
            await self._check_key()

    async def _check_key(self) -> None:
        self._next_check = self._owner.next_tick()
        self._owner.limiter.charge(self.caller.key_id)
        try:
            active = await self._owner.key_active(self.caller.key_id)
        except Exception as exc:
            if not is_outage(exc):
                raise
            return  # the database is away: the stream's own reads will say so; check later
        if not active:
            self.end(
                AuthenticationFailed(
                    "Authentication failed: the API key was revoked while this stream was open."
                )
            )
            self._raise_if_ended()

    def _raise_if_ended(self) -> None:
        if self._ended:
            raise StreamEnded(self._error)


class Streams:
    """The open streams of this process, counted per key."""

    def __init__(
        self, accounts: AccountsPort, limiter: RateLimiter, per_key: int, check_s: float
    ) -> None:
        self.accounts, self.limiter = accounts, limiter
        self.per_key, self.check_s = per_key, check_s
        self._open: set[Stream] = set()
        self._per_key: Counter[str] = Counter()
        self._by_account: dict[str, set[Stream]] = {}
        self._ending = False  # shutting down: a stream opened now ends at once
        # The keys streams asked about since the last query, answered together by the next.
        self._asked: dict[str, asyncio.Future[bool]] = {}

    def next_tick(self) -> float:
        """When the streams check their keys next: the next multiple of ``check_s`` on the
        monotonic clock, so a stream is charged and checked within ``check_s`` of opening
        and every ``check_s`` after."""
        return (math.floor(time.monotonic() / self.check_s) + 1) * self.check_s

    async def key_active(self, key_id: str) -> bool:
        """Whether ``key_id`` is still unrevoked. The keys asked within one turn of the
        event loop (the streams woken by the same tick) go to the database together, in
        one query; its error (an outage, say) is raised to every stream that asked."""
        answer = self._asked.get(key_id)
        if answer is None:
            first = not self._asked
            answer = self._asked[key_id] = asyncio.get_running_loop().create_future()
            if first:
                asyncio.get_running_loop().call_soon(self._ask)
        return await asyncio.shield(answer)

    def _ask(self) -> None:
        asked, self._asked = self._asked, {}
        task = asyncio.ensure_future(self.accounts.active_keys(asked.keys()))

        def answer(done: asyncio.Future[set[str]]) -> None:
            error = done.exception() if not done.cancelled() else asyncio.CancelledError()
            for key_id, future in asked.items():
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(key_id in done.result())

        task.add_done_callback(answer)

    def open(self, caller: Caller) -> Stream:
        """A new stream of ``caller``'s key, or :class:`RateLimited` when it has its fill.
        The caller must :meth:`close` it, however it ends."""
        if self._per_key[caller.key_id] >= self.per_key:
            retry_s = math.ceil(self.check_s)
            raise RateLimited(
                f"this API key already has {self.per_key} event streams open here (SSE or "
                "WebSocket), the most allowed.",
                retry_s,
                "Close a stream you no longer read, or follow every task of the key on one "
                "stream ('GET /v2/openapi/events' or the WebSocket '/task/watch/all').",
            )
        stream = Stream(self, caller)
        self._open.add(stream)
        self._per_key[caller.key_id] += 1
        self._by_account.setdefault(caller.account_id, set()).add(stream)
        if self._ending:
            stream.end()
        return stream

    def close(self, stream: Stream) -> None:
        if stream in self._open:
            self._open.discard(stream)
            self._per_key[stream.caller.key_id] -= 1
            if self._per_key[stream.caller.key_id] <= 0:
                del self._per_key[stream.caller.key_id]
            same_account = self._by_account[stream.caller.account_id]
            same_account.discard(stream)
            if not same_account:
                del self._by_account[stream.caller.account_id]
        stream.end()

    def publish(self, account_id: str) -> None:
        """Wake the streams of ``account_id``: an event of it may have been committed."""
        for stream in self._by_account.get(account_id, ()):
            stream.wake()

    def wake_all(self) -> None:
        """Wake every stream (wake-ups may have been missed: each reads on, in case)."""
        for stream in self._open:
            stream.wake()

    def end_all(self) -> None:
        """Shutdown: every open stream ends now, and any opened later at once."""
        self._ending = True
        for stream in list(self._open):
            stream.end()

    def count(self, key_id: str) -> int:
        return self._per_key[key_id]
