"""Clients that submit and poll through a real ``easel serve`` while a test breaks something
under it, recording every answer; and the checks that nothing was lost.

Each client has its own key and keeps a few tasks in flight: it submits (with an
``Idempotency-Key``, resent unchanged after a 503, as a careful client does), polls its tasks,
and optionally uploads a reference for each task and downloads each output. Every answer is
kept with the moment its request was sent, so a test can say what clients saw during the
fault and when the first 200 came after it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from apptools import png
from easel.store.tables import accounts, ledger, tasks

FINAL = ("success", "failed", "banned", "expired", "cancelled")
IN_FLIGHT = 3  # tasks each client keeps unfinished
PAUSE_S = 0.1  # between a client's rounds of polls
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float
    received: float
    what: str  # "POST /task", "GET /task", …
    status: int  # 0: no HTTP answer at all (a transport error)
    problem: str | None  # why this answer breaks the rule "200, or 503 that says retry"


@dataclass(frozen=True, slots=True)
class Submitted:
    task_id: str
    key: str
    sent: float  # when the submit that was answered 200 was sent


def problem_of(response: httpx.Response) -> str | None:
    """None for a 200 or a proper 503 (protocol envelope, code 1000, ``Retry-After``)."""
    if response.status_code == 200:
        return None
    text = f"{response.status_code} {response.text[:300]}"
    if response.status_code != 503:
        return text
    try:
        body = response.json()
    except ValueError:
        return f"503 without a JSON envelope: {text}"
    if set(body) != {"code", "message", "suggestion"} or body["code"] != 1000:
        return f"503 without the protocol envelope: {text}"
    retry_after = response.headers.get("Retry-After", "")
    if not retry_after.isdigit() or int(retry_after) <= 0:
        return f"503 without Retry-After: {text}"
    return None


@dataclass
class Workload:
    base_url: str
    keys: list[str]
    references: bool = False  # upload a reference image for every task
    downloads: bool = False  # download every output
    answers: list[Answer] = field(default_factory=list)
    submitted: list[Submitted] = field(default_factory=list)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    submitting: bool = True

    async def call(
        self, client: httpx.AsyncClient, what: str, method: str, url: str, **kw: Any
    ) -> httpx.Response | None:
        sent = time.time()
        try:
            response = await client.request(method, url, **kw)
        except httpx.TransportError as exc:
            self.answers.append(Answer(sent, time.time(), what, 0, f"no answer: {exc!r}"))
            return None
        self.answers.append(
            Answer(sent, time.time(), what, response.status_code, problem_of(response))
        )
        return response

    async def until_ok(
        self, client: httpx.AsyncClient, what: str, method: str, url: str, **kw: Any
    ) -> httpx.Response:
        """Send until the answer is 200, waiting (``Retry-After``, at most 0.5 s) between
        tries, as a patient client does. Any other answer is recorded (the test fails on it
        at the end) and tried again, so the run still shows what became of the tasks."""
        for _ in range(300):
            response = await self.call(client, what, method, url, **kw)
            if response is not None and response.status_code == 200:
                return response
            retry_after = response.headers.get("Retry-After", "") if response else ""
            await asyncio.sleep(min(float(retry_after) if retry_after.isdigit() else 0.2, 0.5))
        raise AssertionError(f"{what} never answered 200: {self.answers[-1].problem}")

    async def _submit(self, client: httpx.AsyncClient, key: str, n: int) -> None:
        body: dict[str, Any] = {"type": "generate_image", "prompt": f"a fox, number {n}"}
        if self.references:
            files = {"file": ("ref.png", png(32, 32, "blue"), "image/png")}
            uploaded = await self.until_ok(
                client, "POST /upload", "POST", "/v2/openapi/upload", files=files
            )
            token = uploaded.json()["data"]["image_token"]
            body["file"] = {"type": "png", "file_token": token}
        sent = time.time()
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        response = await self.until_ok(
            client, "POST /task", "POST", "/v2/openapi/task", json=body, headers=headers
        )
        self.submitted.append(Submitted(response.json()["data"]["task_id"], key, sent))

    async def _poll(self, client: httpx.AsyncClient, task_id: str) -> bool:
        """True once the task is final (its output downloaded, if asked)."""
        response = await self.call(client, "GET /task", "GET", f"/v2/openapi/task/{task_id}")
        if response is None or response.status_code != 200:
            return False
        task: dict[str, Any] = response.json()["data"]
        if task["status"] not in FINAL:
            return False
        if self.downloads and task["status"] == "success":
            link = task["output"]["generated_image"]
            downloaded = await self.until_ok(client, "GET /outputs", "GET", link)
            assert downloaded.content.startswith(b"\x89PNG")
        self.finished[task_id] = task
        return True

    async def client(self, key: str) -> None:
        """Submit while ``submitting``, keeping IN_FLIGHT unfinished; then finish polling."""
        headers = {"Authorization": f"Bearer {key}"}
        mine: list[str] = []
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=60) as client:
            n = 0
            while self.submitting or mine:
                while self.submitting and len(mine) < IN_FLIGHT:
                    await self._submit(client, key, n)
                    mine.append(self.submitted[-1].task_id)
                    n += 1
                mine = [task_id for task_id in mine if not await self._poll(client, task_id)]
                await asyncio.sleep(PAUSE_S)

    def done_after(self, moment: float) -> int:
        """How many tasks submitted after ``moment`` are final."""
        return sum(1 for s in self.submitted if s.sent >= moment and s.task_id in self.finished)

    async def run(self, fault: Callable[[], Awaitable[float]], *, after: int = 6) -> Figures:
        """Run the clients; once a few tasks are done, apply ``fault`` (it returns the moment
        the broken part was back); go on until ``after`` tasks submitted since then are
        final; then stop submitting and wait for every task to end."""
        clients = [asyncio.create_task(self.client(key)) for key in self.keys]
        try:
            async with asyncio.timeout(180):
                await self._until(lambda: len(self.finished) >= 2 * len(self.keys), clients)
                started = time.time()
                back = await fault()
                await self._until(lambda: self.done_after(back) >= after, clients)
                self.submitting = False
                await asyncio.gather(*clients)
        finally:
            for client in clients:
                client.cancel()
        return Figures.of(self, started, back)

    @staticmethod
    async def _until(condition: Callable[[], bool], clients: list[asyncio.Task[None]]) -> None:
        while not condition():
            for client in clients:
                if client.done():
                    client.result()  # a client that gave up raises its assertion here
            await asyncio.sleep(0.05)

    def problems(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.problem is not None]

    def describe_problems(self, limit: int = 5) -> str:
        """The first few answers that broke the rule, one a line, for an assertion."""
        problems = self.problems()
        lines = [f"{a.what} sent at {a.sent:.3f}: {a.problem}" for a in problems[:limit]]
        return f"{len(problems)} bad answer(s):\n" + "\n".join(lines)

    def __repr__(self) -> str:  # pytest shows it in assertion messages: keep it short
        return f"Workload({len(self.submitted)} tasks, {len(self.answers)} answers)"


@dataclass(frozen=True)
class Figures:
    """What clients saw of one fault; times in seconds."""

    back_at: float  # the moment the broken part was back (a time.time())
    broken_for_s: float  # from the fault's start until the broken part was back
    first_200_after_s: float  # from "back" until the first 200 to a request sent then
    answers: int
    answers_503: int
    unavailable_for_s: float  # from the first 503 to the last (0 with none)
    tasks: int

    @classmethod
    def of(cls, load: Workload, started: float, back: float) -> Figures:
        unavailable = [a for a in load.answers if a.status == 503]
        first_ok = min(a.received for a in load.answers if a.sent >= back and a.status == 200)
        window = (
            max(a.received for a in unavailable) - min(a.sent for a in unavailable)
            if unavailable
            else 0.0
        )
        return cls(
            back_at=back,
            broken_for_s=round(back - started, 3),
            first_200_after_s=round(first_ok - back, 3),
            answers=len(load.answers),
            answers_503=len(unavailable),
            unavailable_for_s=round(window, 3),
            tasks=len(load.submitted),
        )

    def report(self, name: str, **more: Any) -> dict[str, Any]:
        """Print the figures and add them to ``test-artifacts/faults.json``."""
        entry = {k: v for k, v in self.__dict__.items() if not k.endswith("_at")} | more
        print(f"fault {name}: {json.dumps(entry)}")
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / "faults.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**known, name: entry}, indent=2))
        return entry


# -- what the database says afterwards --------------------------------------------------------


@dataclass(frozen=True)
class TaskRow:
    id: str
    status: str
    price: int
    consumed: int
    attempts: int
    finished_at: float | None
    moves: tuple[str, ...]  # ledger kinds, in order


async def task_rows(database_url: str) -> dict[str, TaskRow]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            moves: dict[str, list[str]] = {}
            for task_id, kind in await conn.execute(
                select(ledger.c.task_id, ledger.c.kind)
                .where(ledger.c.task_id.is_not(None))
                .order_by(ledger.c.id)
            ):
                moves.setdefault(task_id, []).append(kind)
            rows = await conn.execute(
                select(
                    tasks.c.id,
                    tasks.c.status,
                    tasks.c.price,
                    tasks.c.consumed_credit,
                    tasks.c.attempts,
                    tasks.c.finished_at,
                )
            )
            return {row.id: TaskRow(*row, moves=tuple(moves.get(row.id, ()))) for row in rows}
    finally:
        await engine.dispose()


async def ledger_problems(database_url: str, granted: int) -> list[str]:
    """Every account's balance is its grant less what its successful tasks cost, nothing is
    left frozen, and the ledger's sums equal the balance and the frozen credits."""
    engine = create_async_engine(database_url)
    problems = []
    try:
        async with engine.connect() as conn:
            spent = dict(
                (
                    await conn.execute(
                        select(tasks.c.account_id, func.sum(tasks.c.consumed_credit)).group_by(
                            tasks.c.account_id
                        )
                    )
                ).all()
            )
            sums = {
                account: (int(balance), int(frozen))
                for account, balance, frozen in await conn.execute(
                    select(
                        ledger.c.account_id,
                        func.sum(ledger.c.balance_delta),
                        func.sum(ledger.c.frozen_delta),
                    ).group_by(ledger.c.account_id)
                )
            }
            for account, balance, frozen in await conn.execute(
                select(accounts.c.id, accounts.c.balance, accounts.c.frozen)
            ):
                used = int(spent.get(account) or 0)
                if (balance, frozen) != (granted - used, 0):
                    problems.append(f"{account}: balance {balance}, frozen {frozen}, spent {used}")
                if sums.get(account) != (balance, frozen):
                    problems.append(f"{account}: ledger sums {sums.get(account)}")
    finally:
        await engine.dispose()
    return problems


def task_problems(rows: dict[str, TaskRow], load: Workload) -> list[str]:
    """Every task the clients were told of exists, no other does, each is final and paid
    for exactly once: hold then settle (success, charged its price) or hold then refund."""
    known = {s.task_id for s in load.submitted}
    problems = [f"unknown task {task_id}" for task_id in rows.keys() - known]
    problems += [f"missing task {task_id}" for task_id in known - rows.keys()]
    for row in rows.values():
        expected = ("hold", "settle") if row.status == "success" else ("hold", "refund")
        consumed = row.price if row.status == "success" else 0
        if row.status not in FINAL or row.moves != expected or row.consumed != consumed:
            problems.append(f"{row}")
    return problems
