"""Finished tasks' views, remembered for a few seconds (issue 18).

Clients poll a task until it is finished, and often on after (a page left open, a script that
reads the result twice): most polls are of tasks that no longer change. What is remembered is
the store's answer (the task and its attempts), not a response, so every poll still renders
fresh links to the output. The one change a finished task still sees is its output's
deletion at retention: this process forgets the task when it deletes the output, and other
processes within ``FINISHED_TTL_S``.
"""

from __future__ import annotations

import time

from easel.domain.tasks import Task
from easel.store.records import Outlook

FINISHED_TTL_S = 10.0  # how long another process may show an output its retention deleted
FINISHED_SIZE = 10_000  # views remembered per process, at most (the oldest go first)


class FinishedViews:
    def __init__(self, ttl_s: float = FINISHED_TTL_S, size: int = FINISHED_SIZE) -> None:
        self._ttl_s = ttl_s
        self._size = size
        self._views: dict[str, tuple[float, Task, Outlook]] = {}

    def recall(self, task_id: str, key_id: str | None) -> tuple[Task, Outlook] | None:
        """The remembered view of a finished task (of ``key_id``, if given), while fresh."""
        hit = self._views.get(task_id)
        if hit is None:
            return None
        until, task, outlook = hit
        if until <= time.monotonic():
            del self._views[task_id]
            return None
        if key_id is not None and task.api_key_id != key_id:
            return None  # asked again of the database, which answers "no such task"
        return task, outlook

    def remember(self, task: Task, outlook: Outlook) -> None:
        """Keep the view if the task is finished (an unfinished one changes)."""
        if not task.is_final:
            return
        if len(self._views) >= self._size:
            del self._views[next(iter(self._views))]  # the oldest remembered
        self._views[task.id] = (time.monotonic() + self._ttl_s, task, outlook)

    def forget(self, task_id: str) -> None:
        self._views.pop(task_id, None)
