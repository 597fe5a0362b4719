"""The in-memory event log, uploaded files, server secrets and ``/metrics`` figures (see
:mod:`easel.store.events`, :mod:`easel.store.files` and :mod:`easel.store.metrics`)."""

from __future__ import annotations

import secrets as _secrets
import time
from collections import defaultdict

from easel.domain.accounts import LedgerKind
from easel.domain.events import Event
from easel.domain.metrics import Snapshot, histogram
from easel.domain.tasks import Status
from easel.store.memory.state import Memory
from easel.store.records import PENDING_SIZE, StoredFile


class MemoryEvents:
    def __init__(self, memory: Memory) -> None:
        self._m = memory

    async def after(
        self,
        account_id: str,
        key_id: str,
        after_seq: int,
        *,
        task_id: str | None = None,
        limit: int = 500,
    ) -> list[Event]:
        async with self._m.lock:
            rows = [
                e
                for e in self._m.events
                if (e.account_id, e.api_key_id) == (account_id, key_id)
                and e.seq > after_seq
                and task_id in (None, e.task_id)
            ]
        rows.sort(key=lambda e: e.seq)
        return [Event(e.seq, e.task_id, e.status, e.progress, e.created_at) for e in rows[:limit]]

    async def last_seq_before(self, account_id: str, before: float) -> int:
        async with self._m.lock:
            seqs = [
                e.seq
                for e in self._m.events
                if e.account_id == account_id and e.created_at < before
            ]
        return max(seqs, default=0)

    async def prune(self, before: float, limit: int = 10_000) -> int:
        async with self._m.lock:
            old = [e for e in self._m.events if e.created_at < before][:limit]
            gone = {id(e) for e in old}
            self._m.events = [e for e in self._m.events if id(e) not in gone]
        return len(old)

    async def last_seq(self, account_id: str) -> int:
        async with self._m.lock:
            account = self._m.accounts.get(account_id)
            return 0 if account is None else account.event_seq


class MemoryFiles:
    def __init__(self, memory: Memory) -> None:
        self._m = memory

    async def add(self, stored: StoredFile) -> None:
        async with self._m.lock:
            if stored.token in self._m.files:
                raise ValueError(f"a file with token {stored.token!r} exists already")
            self._m.files[stored.token] = (stored, time.time())

    async def complete(self, stored: StoredFile) -> None:
        async with self._m.lock:
            found = self._m.files.get(stored.token)
            if found is not None and found[0].size == PENDING_SIZE:
                before, at = found
                self._m.files[stored.token] = (
                    StoredFile(
                        before.token,
                        before.account_id,
                        before.key,
                        stored.format,
                        stored.size,
                        stored.width,
                        stored.height,
                    ),
                    at,
                )

    async def find(
        self, account_id: str, *, token: str | None = None, key: str | None = None
    ) -> StoredFile | None:
        async with self._m.lock:
            for stored, _ in self._m.files.values():
                same = stored.token == token if token else stored.key == key
                if same and stored.account_id == account_id:
                    return stored
        return None

    async def pending_before(self, before: float, limit: int = 500) -> list[StoredFile]:
        async with self._m.lock:
            pending = [
                stored
                for stored, at in self._m.files.values()
                if stored.size == PENDING_SIZE and at < before
            ]
        return pending[:limit]

    async def forget_pending(self, token: str) -> None:
        async with self._m.lock:
            found = self._m.files.get(token)
            if found is not None and found[0].size == PENDING_SIZE:
                del self._m.files[token]


class MemorySecrets:
    def __init__(self, memory: Memory) -> None:
        self._m = memory

    async def get_or_create(self, name: str) -> str:
        async with self._m.lock:
            return self._m.secrets.setdefault(name, _secrets.token_hex(32))


class MemoryMetrics:
    def __init__(self, memory: Memory) -> None:
        self._m = memory

    async def snapshot(self, now: float) -> Snapshot:
        snap = Snapshot()
        runs: dict[tuple[str, str], list[float]] = defaultdict(list)
        waits: dict[str, list[float]] = defaultdict(list)
        async with self._m.lock:
            tasks = list(self._m.tasks.values())
            snap.credits_held = sum(a.frozen for a in self._m.accounts.values())
            for entry in self._m.ledger:
                moved = (
                    entry.balance_delta
                    if entry.kind is LedgerKind.GRANT
                    else abs(entry.frozen_delta)
                )
                snap.credits[entry.kind] = snap.credits.get(entry.kind, 0) + moved
        for task in tasks:
            counted = (task.model_version, task.status.value)
            snap.tasks[counted] = snap.tasks.get(counted, 0) + 1
            if task.started_at is not None:
                waits[task.model_version].append(task.started_at - task.created_at)
            if task.status is Status.SUCCESS and task.backend is not None:
                ran = (task.finished_at or 0.0) - (task.started_at or 0.0)
                runs[(task.model_version, task.backend)].append(ran)
        queued = [t.created_at for t in tasks if t.status is Status.QUEUED]
        snap.oldest_queued_s = max(0.0, now - min(queued)) if queued else 0.0
        snap.run_seconds = {key: histogram(durations) for key, durations in runs.items()}
        snap.wait_seconds = {key: histogram(durations) for key, durations in waits.items()}
        return snap
