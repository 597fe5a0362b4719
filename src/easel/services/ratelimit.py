"""Requests per second per API key: a token bucket per key, in this process.

Each key's bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request takes
one token, and a request that finds none is refused with 429 / 1007 and a ``Retry-After`` of
the seconds until the next token. The buckets live in the process's memory: with N API
replicas a key may make up to N times the rate in all. That is cheap and needs no shared
state; a limit that holds across replicas belongs in the proxy in front of them.

A bucket that has refilled completely is the same as no bucket, so buckets are dropped once
full when there are many; memory stays bounded by the keys active in the last few seconds.
``charge`` counts what is never refused (an open event stream, ``easel.services.streams``): it may
leave a bucket in debt, which the key's next requests wait off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

_PRUNE_ABOVE = 10_000  # buckets kept before full ones are dropped


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # when ``tokens`` was last brought up to date


class RateLimiter:
    """A token bucket per key; ``rate_per_s == 0`` turns the limit off."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s, self.burst, self._clock = rate_per_s, burst, clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def take(self, key: str) -> int:
        """Take a token for ``key``: 0 when the request may go ahead, else the whole seconds
        (at least 1) until a token is free again."""
        if not self.enabled:
            return 0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_ABOVE:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate_per_s)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0
        return max(1, math.ceil((1 - bucket.tokens) / self.rate_per_s))

    def charge(self, key: str) -> None:
        """Count a request of ``key`` that is not refused (an open event stream's lifetime):
        a token if there is one, else debt, down to ``-burst``, that later requests wait off."""
        if not self.enabled:
            return
        now = self._clock()
        bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
        refilled = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate_per_s)
        bucket.tokens, bucket.at = max(-self.burst, refilled - 1), now

    def wait(self, key: str) -> int:
        """The whole seconds until ``key`` has a token (0: it has one now); takes none."""
        bucket = self._buckets.get(key)
        if not self.enabled or bucket is None:
            return 0
        tokens = min(self.burst, bucket.tokens + (self._clock() - bucket.at) * self.rate_per_s)
        return 0 if tokens >= 1 else max(1, math.ceil((1 - tokens) / self.rate_per_s))

    def _prune(self, now: float) -> None:
        full_after = 2 * self.burst / self.rate_per_s  # from -burst (see charge) to full
        self._buckets = {
            key: bucket for key, bucket in self._buckets.items() if now - bucket.at < full_after
        }
