"""What ``/metrics`` reports, as figures: a snapshot of the task and credit counts and the
run and wait time histograms, read from the database at scrape time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

TIME_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True, slots=True)
class Histogram:
    buckets: list[tuple[float, int]]  # (upper bound, cumulative count)
    count: int
    total: float


def histogram(durations: Iterable[float]) -> Histogram:
    """The cumulative histogram of ``durations`` over :data:`TIME_BUCKETS_S`."""
    values = list(durations)
    buckets = [(bound, sum(1 for v in values if v <= bound)) for bound in TIME_BUCKETS_S]
    return Histogram(buckets, len(values), float(sum(values)))


@dataclass(slots=True)
class Snapshot:
    tasks: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, status) → n
    oldest_queued_s: float = 0.0
    run_seconds: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # model, backend
    wait_seconds: dict[str, Histogram] = field(default_factory=dict)  # model
    credits_held: int = 0
    credits: dict[str, int] = field(default_factory=dict)  # ledger kind → credits moved
