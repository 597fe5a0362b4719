"""The background loops of one process, kept running: the worker inside ``easel serve``, the
webhook dispatcher, the janitor (and the janitor beside ``easel worker``).

Each was started with a bare ``create_task``: an exception that escaped one ended it without
a word, and the API went on accepting tasks that nothing would run. A :class:`LoopGroup` runs
them in one task group; when one crashes (it raises, or returns without being told to stop):

- the crash is logged with its traceback (the same error again, one line);
- ``Runtime.problems`` names it, so ``/readyz`` answers 503 with the reason, e.g.
  ``"janitor": "crashed at 2026-…Z: KeyError: 'x'; restarting in 2 s; meanwhile …"``;
- it starts again after 1, 2, 4 … s (at most 30 s): :class:`Backoff`, the policy
  ``easel serve --processes N`` applies to its processes;
- the problem is cleared once the new run has lasted ``stable_s`` (10 s) without crashing,
  and the next crash waits 1 s again.

The other loops run on meanwhile. On stop each loop sees its ``stop`` event and the group
waits for all of them; each bounds its own shutdown (the worker puts its running tasks back
in the queue, the dispatcher gives deliveries under way its request timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from easel.domain.errors import first_line

log = logging.getLogger("easel.services.loops")

Loop = Callable[[asyncio.Event], Awaitable[None]]  # runs until its stop event is set

# What does not happen while each loop is down: the end of its /readyz line.
WORKER_DOWN = "meanwhile this process runs no tasks"
DISPATCHER_DOWN = "meanwhile no webhook is sent"
EVENTS_DOWN = "meanwhile open event streams see new events only at their key checks"
JANITOR_DOWN = "meanwhile no queued task expires and no output past retention is deleted"


@dataclass(slots=True)
class Backoff:
    """When to start a crashed loop or a dead process again, and when to stop trying."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0  # one that ran this long before dying starts the count again
    give_up_after: int = 5  # deaths in a row, each within stable_s of starting
    quick_deaths: int = 0

    def next_delay(self, lived_s: float) -> float:
        """Seconds to wait before the next start, counting this death."""
        self.quick_deaths = 1 if lived_s >= self.stable_s else self.quick_deaths + 1
        return min(self.max_s, self.first_s * 2.0 ** (self.quick_deaths - 1))

    def after_death(self, lived_s: float) -> float | None:
        """:meth:`next_delay`, or None: give up (``give_up_after`` quick deaths in a row)."""
        delay = self.next_delay(lived_s)
        return None if self.quick_deaths >= self.give_up_after else delay


# In-process loops never give up: a server that stopped its janitor for good would stay up
# and unready; restarting every 30 s at worst costs nothing and recovers once the fault goes.
LOOP_RESTARTS = Backoff(stable_s=10.0)


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LoopEnded(RuntimeError):
    """A loop returned while it was not told to stop: as much a crash as an exception."""


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    run: Loop
    meanwhile: str  # what does not happen while it is down, for /readyz


class LoopGroup:
    """Named loops, each restarted with back-off when it crashes and reported in
    ``problems`` (``Runtime.problems``, which ``/readyz`` shows) until it runs again."""

    def __init__(self, problems: dict[str, str], restarts: Backoff = LOOP_RESTARTS) -> None:
        self.problems, self.restarts = problems, restarts
        self._members: dict[str, _Member] = {}

    def add(self, name: str, run: Loop, *, meanwhile: str) -> None:
        """``run(stop)`` runs until ``stop`` is set; ``meanwhile`` says what is not done
        while it is down (e.g. "meanwhile this process runs no tasks")."""
        self._members[name] = _Member(name, run, meanwhile)

    @contextlib.asynccontextmanager
    async def running(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """The loops run while the body does; on leaving it, however it ends, ``stop`` is set
        and every loop is waited for. The body's exception comes out unchanged."""
        group = asyncio.create_task(self.run(stop), name="background loops")
        try:
            yield
        finally:
            stop.set()
            await group

    async def run(self, stop: asyncio.Event) -> None:
        """Run every loop until ``stop`` is set and each has ended."""
        async with asyncio.TaskGroup() as group:
            for name, member in self._members.items():
                group.create_task(self._keep_running(member, stop), name=name)

    async def _keep_running(self, member: _Member, stop: asyncio.Event) -> None:
        backoff, last_error = replace(self.restarts, quick_deaths=0), ""
        while True:
            started = time.monotonic()
            crash = await self._run_once(member, stop)
            if crash is None:
                return
            delay = backoff.next_delay(time.monotonic() - started)
            error = first_line(crash)
            # The traceback once: not again for the same error in one run of quick crashes.
            again = error == last_error and backoff.quick_deaths > 1
            self._report(member, error, delay, None if again or not crash.__traceback__ else crash)
            last_error = error
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            log.info("starting the %s loop again", member.name)

    async def _run_once(self, member: _Member, stop: asyncio.Event) -> Exception | None:
        """One run of the loop: how it crashed, or None when it ended because it was told to
        (an error while stopping is logged here: there is nothing to restart)."""
        healthy = asyncio.get_running_loop().call_later(
            self.restarts.stable_s, self._ok, member.name
        )
        crash: Exception | None = None
        try:
            await member.run(stop)
        except asyncio.CancelledError:
            if _being_cancelled():
                raise  # the group itself is cancelled: not the loop's doing
            crash = LoopEnded("it was cancelled from inside")
        except Exception as exc:
            crash = exc
        finally:
            healthy.cancel()
        if stop.is_set():
            if crash is not None:
                log.error("the %s loop failed while stopping", member.name, exc_info=crash)
            return None
        return crash or LoopEnded("it returned without being told to stop")

    def _report(
        self, member: _Member, error: str, delay: float, traceback: Exception | None
    ) -> None:
        """Name the crash in ``problems`` (so /readyz answers 503) and in the log."""
        self.problems[member.name] = (
            f"crashed at {timestamp()}: {error}; restarting in {delay:g} s; {member.meanwhile}"
        )
        log.error("the %s loop %s", member.name, self.problems[member.name], exc_info=traceback)

    def _ok(self, name: str) -> None:
        if self.problems.pop(name, None) is not None:
            log.info("the %s loop has run %g s since its restart: ok", name, self.restarts.stable_s)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
