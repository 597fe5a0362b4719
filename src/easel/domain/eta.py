"""Honest time estimates for ``running_left_time`` and ``Retry-After``.

Estimates come from measured run times: the mean duration of the model's latest successful
tasks (the store measures it). Before any task of a model has finished, the seed's "completes
within a few seconds" gives the prior, :data:`PRIOR_S`.
"""

from __future__ import annotations

import math

PRIOR_S = 5.0


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def running_left(mean_s: float | None, elapsed_s: float, progress: int) -> int:
    """Seconds until a running task ends.

    With progress reported, extrapolate the observed pace; otherwise the measured mean minus
    the time already spent (at least one second).
    """
    if 0 < progress < 100 and elapsed_s > 0:
        return _seconds(elapsed_s * (100 - progress) / progress)
    return _seconds((mean_s or PRIOR_S) - elapsed_s)


def queued_left(mean_s: float | None, ahead: int, slots: int) -> int:
    """Seconds until a queued task ends: the tasks ahead drain through ``slots`` parallel
    runners, then the task itself runs."""
    mean = mean_s or PRIOR_S
    rounds = ahead // max(slots, 1)
    return _seconds(mean * (rounds + 1))
