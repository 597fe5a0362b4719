"""Load: Easel's API under a steady, open-loop request rate, beside a bare FastAPI endpoint.

Each server runs in its own process; load comes from ``--clients`` other processes (h11 on
asyncio streams), each sending its share of ``--rate`` requests per second on a fixed
schedule for ``--duration`` seconds whatever the answers take (open loop: a slow server is
not given fewer requests, so queueing shows in the latencies), then stopping by itself.

(a) Baseline: ``GET /ping -> {"ok": true}`` in a bare FastAPI app under uvicorn with the same
    settings as ``easel serve`` (h11, access log, keep-alive 75 s).
(b) Easel (``easel serve``, embedded worker, placeholder backend with ``delay_s`` =
    ``--delay``, 64×64 images; SQLite and a local object store in a temporary directory; or
    PostgreSQL with ``--postgres URL``, a scratch database made beside URL and dropped after):
    one ``POST /task`` for every ``--polls-per-submit`` ``GET /task/{id}`` of a task the same
    key submitted. Requests take turns among ``--keys`` keys (accounts), each with enough
    credits; ``max_unfinished_tasks`` is high and the per-key rate limit is off, so submits
    are not refused. ``--processes N`` runs ``easel serve --processes N`` (N API processes
    and the worker apart).

After the open loop, each server is also driven closed-loop for ``--saturate`` seconds: 16
connections each send the next ``GET`` (Easel: ``GET /task`` of one finished task) as soon as
the last answer came, which prints the saturated rate and its ratio to the bare endpoint's.

It prints the sustained requests/s, p50/p99 of each request kind, errors by status and the
ratios to the baseline at the same rate, then waits for every submitted task and checks that
nothing was lost: every task exists and ended ``success``, nothing is left held, and each
key's balance and ledger equal its grant less the tasks it ran. Latency counts from each
request's due time (a request waiting for a free connection is waiting on the server);
"client lag" (how late the clients' schedulers were) says whether the clients kept up, so a
figure is not the load generator's own slowness. One client process kept up with 500/s here
(48 connections); ``--clients`` splits the rate over more processes. The clients share the
machine's cores with the servers, so they should cost little: h11 on a kept-alive asyncio
connection took 0.15 ms of CPU per request here, httpx 0.8–1.0 ms (httpx still makes the
few requests before and after the load).

Usage::

    .venv/bin/python bench/load.py [--rate 500] [--duration 20] [--clients 1] [--keys 25]
        [--processes 1] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # the sibling script, found through the line above
    EASEL,
    MODEL,
    _cpus,
    _free_port,
    _percentile,
    _process,
    _scratch_postgres,
    serve_ping,
    write_config,
)

PRICE = 5  # credits per flux.1_kontext_pro task
API = "/v2/openapi"
REQUEST_TIMEOUT_S = 10.0
GRACE_S = 15.0  # after the schedule ends, how long answers still in flight are awaited
LANES = 48  # connections per client process
SATURATING = 16  # connections of the closed-loop phase (as wrk -c 16)
SEED_TASKS = 5  # per client, submitted before the clock starts, so polls have targets
DRAIN_TIMEOUT_S = 600.0
START_MARGIN_S = 3.0  # time for the client processes to start before the first request


# --- one client process -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What one client process sends."""

    base_url: str
    keys: tuple[str, ...]  # request n is made with key n % len(keys); none: the baseline
    rate: float  # requests per second of this client
    duration_s: float
    start_at: float  # wall-clock time of the first request (all clients start together)
    polls_per_submit: int
    task_ids: tuple[tuple[str, ...], ...] = ()  # per key, seeded tasks to poll from the start


@dataclass(slots=True)
class Outcome:
    """What one client saw."""

    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    statuses: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> status -> n
    client: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # Idempotency-Key prefix
    submitted: list[tuple[int, str]] = field(default_factory=list)  # (key index, task id)
    unsure: list[int] = field(default_factory=list)  # submits that got no answer
    lags: list[float] = field(default_factory=list)  # queued for a lane - scheduled time
    first_sent: float = 0.0
    last_done: float = 0.0
    late_start_s: float = 0.0  # how late the client began against start_at
    unsent: int = 0  # still queued in the client after the grace period: never sent

    def record(self, kind: str, status: str, latency: float) -> None:
        self.latencies.setdefault(kind, []).append(latency)
        self.statuses.setdefault(kind, Counter())[status] += 1


def drive(plan: Plan) -> Outcome:
    """Run one client process's schedule (the process pool calls this)."""
    return asyncio.run(_drive(plan))


async def _drive(plan: Plan) -> Outcome:
    """A scheduler puts each request on a queue at its due time; ``LANES`` lanes, each
    with its own client and one kept-alive connection, send them. One shared client
    with many requests in flight spends its time in its own pool bookkeeping (the clients
    fell far behind 500/s that way here); lanes keep the client cheap. A request waiting
    for a free lane is waiting on the server, so latency counts from the due time."""
    out = Outcome()
    ids = [list(seeded) for seeded in plan.task_ids]
    auth = [{"Authorization": f"Bearer {key}"} for key in plan.keys]
    due_requests: asyncio.Queue[tuple[str, float, int] | None] = asyncio.Queue()

    async def lane() -> None:
        http = _Connection(plan.base_url)
        try:
            while (item := await due_requests.get()) is not None:
                kind, due, number = item
                which = number % len(auth) if auth else 0
                mine = (ids[which], auth[which], which) if auth else None
                status = await _send(http, kind, number, mine, out)
                done = time.perf_counter()
                out.record(kind, status, done - due)
                out.last_done = max(out.last_done, done)
                due_requests.task_done()
        finally:
            http.close()

    lanes = [asyncio.create_task(lane()) for _ in range(LANES)]
    out.late_start_s = max(0.0, time.time() - plan.start_at)
    await asyncio.sleep(max(0.0, plan.start_at - time.time()))
    start = out.first_sent = time.perf_counter()
    every = plan.polls_per_submit + 1
    for number in range(int(plan.rate * plan.duration_s)):
        due = start + number / plan.rate
        pause = due - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        out.lags.append(time.perf_counter() - due)
        if not plan.keys:
            kind = "GET /ping"
        else:
            kind = "POST /task" if number % every == every - 1 else "GET /task"
        due_requests.put_nowait((kind, due, number))
    # Give the lanes GRACE_S to send what is queued; what is left is never sent. Requests
    # in flight are not cancelled (each ends within REQUEST_TIMEOUT_S), so every POST sent
    # has an answer, or a transport error and an Idempotency-Key to settle it with.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(due_requests.join(), GRACE_S)
    out.unsent = sum(1 for _ in _drain(due_requests))
    for _ in lanes:
        due_requests.put_nowait(None)
    await asyncio.gather(*lanes)
    # Monotonic clocks differ between processes: keep spans relative to this one's start.
    out.last_done -= out.first_sent
    out.first_sent = 0.0
    return out


def _submission(number: int, client: str) -> tuple[dict[str, str], dict[str, str]]:
    """The body and headers of submit ``number``: the same every time it is sent."""
    body = {"type": "generate_image", "prompt": f"load {number}", "model_version": MODEL}
    return body, {"Idempotency-Key": f"{client}-{number}"}


class _Connection:
    """One kept-alive HTTP/1.1 connection, spoken with h11: the least CPU per request of the
    clients tried (the load generator shares the cores with the server it measures)."""

    def __init__(self, base_url: str) -> None:
        address = httpx.URL(base_url)
        self._host, self._port = address.host, address.port or 80
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._http = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        """The status and body of one request (reconnecting if the last one broke off)."""
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            if self._streams is None or self._http.our_state is not h11.IDLE:
                self.close()
                self._streams = await asyncio.open_connection(self._host, self._port)
                self._http = h11.Connection(h11.CLIENT)
            reader, writer = self._streams
            fields = [("host", self._host), *headers.items()]
            if body:
                fields += [("content-type", "application/json"), ("content-length", str(len(body)))]
            events: list[h11.Event] = [h11.Request(method=method, target=target, headers=fields)]
            events += [h11.Data(data=body)] if body else []
            writer.write(b"".join(self._http.send(e) or b"" for e in [*events, h11.EndOfMessage()]))
            status, chunks = 0, []
            while True:
                event = self._http.next_event()
                if event is h11.NEED_DATA:
                    self._http.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            self._http.start_next_cycle()
            return status, b"".join(chunks)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _send(
    http: _Connection,
    kind: str,
    number: int,
    key: tuple[list[str], dict[str, str], int] | None,
    out: Outcome,
) -> str:
    """One request (with ``key``: its tasks, its header and its index); its HTTP status, or
    the transport error's name."""
    try:
        if kind == "POST /task" and key is not None:
            ids, auth, which = key
            body, headers = _submission(number, out.client)
            payload = json.dumps(body).encode()
            status, answer = await http.request("POST", f"{API}/task", {**auth, **headers}, payload)
            if status == 200:
                ids.append(json.loads(answer)["data"]["task_id"])
                out.submitted.append((which, ids[-1]))
        elif kind == "GET /task" and key is not None:
            ids, auth, _ = key
            status, _ = await http.request("GET", f"{API}/task/{random.choice(ids)}", auth)
        else:
            status, _ = await http.request("GET", "/ping", {})
    except (OSError, h11.ProtocolError, TimeoutError) as exc:
        http.close()
        if kind == "POST /task":
            out.unsure.append(number)  # the server may have taken it: settled in the audit
        return type(exc).__name__
    return str(status)


def _drain(queue: asyncio.Queue[tuple[str, float, int] | None]) -> Iterator[object]:
    while not queue.empty():
        yield queue.get_nowait()


def run_clients(plans: list[Plan]) -> list[Outcome]:
    """One process per plan (spawned, so none inherits the parent's state)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(plans), mp_context=context) as pool:
        return list(pool.map(drive, plans))


# --- Easel under load -----------------------------------------------------------------------------


def _config(workdir: Path, database_url: str | None, delay_s: float) -> Path:
    settings = [
        "max_unfinished_tasks = 1000000",
        "worker_concurrency = 8",
        "rate_limit_per_s = 0",  # 0: no per-key request limit; measure the server
    ]
    placeholder = [f"delay_s = {delay_s}", "width = 64", "height = 64"]
    return write_config(workdir, database_url, settings, placeholder)


def _seed(base_url: str, key: str, count: int) -> tuple[str, ...]:
    headers = {"Authorization": f"Bearer {key}"}
    ids = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        for number in range(count):
            body = {"type": "generate_image", "prompt": f"seed {number}", "model_version": MODEL}
            response = http.post(f"{API}/task", json=body)
            response.raise_for_status()
            ids.append(response.json()["data"]["task_id"])
    return tuple(ids)


def _settle_unsure(base_url: str, keys: tuple[str, ...], out: Outcome) -> list[tuple[int, str]]:
    """Send again, with the same Idempotency-Key, each submit that got no answer: the
    server returns the task it made of it, or makes it now, so every task is accounted for.
    Returns (key index, task id) pairs."""
    settled = []
    with httpx.Client(base_url=base_url, timeout=60.0) as http:
        for number in out.unsure:
            which = number % len(keys)
            body, idempotency = _submission(number, out.client)
            auth = {"Authorization": f"Bearer {keys[which]}"}
            response = http.post(f"{API}/task", json=body, headers={**auth, **idempotency})
            response.raise_for_status()
            settled.append((which, response.json()["data"]["task_id"]))
    return settled


def _create_keys(database_url: str, count: int, credits: int) -> list[str]:
    """``count`` keys of ``credits`` each, made in the database (as ``easel keys create``)."""
    from easel.store import open_store

    async def create() -> list[str]:
        store = await open_store(database_url)
        try:
            return [await store.accounts.create_key("load", credits) for _ in range(count)]
        finally:
            await store.close()

    return asyncio.run(create())


@dataclass(frozen=True, slots=True)
class Audit:
    tasks: int
    statuses: Counter[str]
    problems: list[str]
    drain_s: float


async def _audit(
    base_url: str, database_url: str, grants: dict[str, int], ids: dict[str, list[str]]
) -> Audit:
    """Wait until every submitted task is final, then check that nothing was lost."""
    from sqlalchemy import func, select

    from easel.store import open_store
    from easel.store.tables import tasks

    problems: list[str] = []
    started = time.perf_counter()
    final: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
        for key, mine in ids.items():
            headers = {"Authorization": f"Bearer {key}"}
            pending = list(mine)
            while pending:
                if time.perf_counter() - started > DRAIN_TIMEOUT_S:
                    problems.append(
                        f"{len(pending)} task(s) still unfinished after {DRAIN_TIMEOUT_S:.0f} s"
                    )
                    break
                answers = await asyncio.gather(
                    *(
                        http.get(f"{API}/task/{task_id}", headers=headers)
                        for task_id in pending[:64]
                    )
                )
                still = []
                for task_id, answer in zip(pending[:64], answers, strict=True):
                    if answer.status_code != 200:
                        problems.append(f"task {task_id}: GET answered {answer.status_code}")
                        continue
                    status = answer.json()["data"]["status"]
                    if status in ("queued", "running"):
                        still.append(task_id)
                    else:
                        final[task_id] = status
                pending = still + pending[64:]
                if still:
                    await asyncio.sleep(0.5)
            balance = (await http.get(f"{API}/user/balance", headers=headers)).json()["data"]
            expected = {"balance": grants[key] - PRICE * len(mine), "frozen": 0}
            if balance != expected:
                problems.append(f"key {key[:10]}…: balance {balance}, expected {expected}")
    drain_s = time.perf_counter() - started
    statuses = Counter(final.values())
    if set(statuses) - {"success"}:
        problems.append(f"tasks did not all succeed: {dict(statuses)}")
    store = await open_store(database_url)
    try:
        async with store.engine.connect() as conn:
            in_db = int(await conn.scalar(select(func.count()).select_from(tasks)) or 0)
        submitted = sum(len(mine) for mine in ids.values())
        if in_db != submitted:
            problems.append(f"{in_db} tasks in the database, {submitted} accepted by the API")
        for key in ids:
            caller = await store.accounts.authenticate(key)
            balance = await store.accounts.balance(caller.account_id)
            if await store.accounts.ledger_sums(caller.account_id) != balance:
                problems.append(f"key {key[:10]}…: the ledger does not sum to the balance")
    finally:
        await store.close()
    return Audit(len(final), statuses, problems, drain_s)


@dataclass(frozen=True, slots=True)
class Run:
    label: str
    outcomes: list[Outcome]
    offered_rate: float
    audit: Audit | None = None
    cpu_s: float = 0.0  # CPU the server's processes spent while the load ran
    busy: float = 0.0  # the share of the machine's cores busy while the load ran
    database_cpu_s: float | None = None  # PostgreSQL's server processes' CPU meanwhile
    saturated: float = 0.0  # closed loop after the load: answers a second (see _saturate)

    @property
    def answered(self) -> int:
        return sum(len(x) for out in self.outcomes for x in out.latencies.values())

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / max(self.answered, 1)

    def latencies(self, kind: str) -> list[float]:
        return [x for out in self.outcomes for x in out.latencies.get(kind, [])]

    def statuses(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for out in self.outcomes:
            for kind, counts in out.statuses.items():
                for status, n in counts.items():
                    total[f"{kind} {status}"] += n
        return total

    @property
    def answered_per_s(self) -> float:
        span = max(out.last_done for out in self.outcomes)
        return self.answered / span if span > 0 else 0.0


@contextmanager
def _server(command: list[str], log: Path, ready_url: str) -> Iterator[psutil.Process]:
    with log.open("wb") as sink, _process(command, sink, ready_url) as process:
        yield psutil.Process(process.pid)


def _cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    """CPU seconds (user and system) ``processes`` have used so far (one that has exited
    meanwhile counts nothing)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _cpu_s(server: psutil.Process) -> float:
    """CPU seconds the server and its child processes have used so far. Unlike latency,
    this barely moves when other work shares the machine: the figure to compare two
    versions by on a busy machine."""
    return _cpu_seconds([server, *server.children(recursive=True)])


def _saturate(base_url: str, target: str, headers: dict[str, str], seconds: float) -> float:
    """Closed loop: ``SATURATING`` connections each send ``GET target`` again as soon as the
    last answer came, for ``seconds``; the 200 answers a second. The client (this process)
    shares the cores with the server, as in the open-loop phase."""

    async def connection(deadline: float) -> int:
        http, answered = _Connection(base_url), 0
        try:
            while time.monotonic() < deadline:
                status, _ = await http.request("GET", target, headers)
                answered += status == 200
        finally:
            http.close()
        return answered

    async def all_of_them() -> float:
        started = time.monotonic()
        counts = await asyncio.gather(*(connection(started + seconds) for _ in range(SATURATING)))
        return sum(counts) / (time.monotonic() - started)

    return asyncio.run(all_of_them()) if seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    """What the machine and PostgreSQL's processes had used at one moment (psutil)."""

    machine: Any  # psutil's system-wide CPU times
    database_s: float

    @classmethod
    def now(cls) -> Usage:
        # A backend that exits between two moments is missed (the pool keeps its own).
        database = (p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres")
        return cls(psutil.cpu_times(), _cpu_seconds(database))

    def busy_since(self, before: Usage) -> float:
        """The share of all cores that was busy between ``before`` and this moment."""
        total = sum(self.machine) - sum(before.machine)
        idle = _idle(self.machine) - _idle(before.machine)
        return 1 - idle / total if total > 0 else 0.0


def _idle(machine: Any) -> float:
    return float(machine.idle + machine.iowait)


def bench_easel(
    args: argparse.Namespace, workdir: Path, database_url: str | None, label: str
) -> Run:
    config = _config(workdir, database_url, args.delay)
    url = database_url or f"sqlite+aiosqlite:///{workdir / 'easel.db'}"
    per_client = args.rate / args.clients
    submits = args.rate * args.duration / (args.polls_per_submit + 1) / args.keys + SEED_TASKS
    grant = int(submits * 1.5 + 20) * PRICE
    keys = _create_keys(url, args.keys, grant)
    mine = [tuple(keys[client :: args.clients]) for client in range(args.clients)]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(EASEL), "serve", "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--processes", str(args.processes)]
    with _server(command, workdir / "easel.log", f"{base}/healthz") as server:
        seeds = {key: _seed(base, key, SEED_TASKS) for key in keys}
        start_at = time.time() + START_MARGIN_S
        plans = [
            Plan(
                base,
                client_keys,
                per_client,
                args.duration,
                start_at,
                args.polls_per_submit,
                tuple(seeds[key] for key in client_keys),
            )
            for client_keys in mine
        ]
        cpu_before, usage_before = _cpu_s(server), Usage.now()
        outcomes = run_clients(plans)
        cpu_s, usage = _cpu_s(server) - cpu_before, Usage.now()
        ids = {key: list(seeds[key]) for key in keys}
        for client_keys, out in zip(mine, outcomes, strict=True):
            for which, task_id in [*out.submitted, *_settle_unsure(base, client_keys, out)]:
                ids[client_keys[which]].append(task_id)
        audit = asyncio.run(_audit(base, url, dict.fromkeys(keys, grant), ids))
        auth = {"Authorization": f"Bearer {keys[0]}"}
        saturated = _saturate(base, f"{API}/task/{seeds[keys[0]][0]}", auth, args.saturate)
    database_s = usage.database_s - usage_before.database_s if database_url else None
    busy = usage.busy_since(usage_before)
    return Run(label, outcomes, args.rate, audit, cpu_s, busy, database_s, saturated)


def bench_baseline(args: argparse.Namespace, workdir: Path) -> Run:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-baseline-port", str(port)]
    with _server(command, workdir / "baseline.log", f"{base}/ping") as server:
        start_at = time.time() + START_MARGIN_S
        per_client = args.rate / args.clients
        plans = [
            Plan(base, (), per_client, args.duration, start_at, args.polls_per_submit)
            for _ in range(args.clients)
        ]
        cpu_before, usage_before = _cpu_s(server), Usage.now()
        outcomes = run_clients(plans)
        cpu_s, busy = _cpu_s(server) - cpu_before, Usage.now().busy_since(usage_before)
        saturated = _saturate(base, "/ping", {}, args.saturate)
        return Run(
            "baseline GET /ping", outcomes, args.rate, cpu_s=cpu_s, busy=busy, saturated=saturated
        )


# --- report ---------------------------------------------------------------------------------------


def _ms(values: list[float], share: float) -> str:
    return f"{_percentile(values, share) * 1000:7.1f} ms" if values else "      – ms"


def _report(run: Run, baseline: Run | None) -> None:
    print(
        f"{run.label}: offered {run.offered_rate:.0f} requests/s, "
        f"answered {run.answered_per_s:.1f}/s"
    )
    base = baseline.latencies("GET /ping") if baseline else []
    for kind in ("GET /ping", "GET /task", "POST /task"):
        values = run.latencies(kind)
        if not values:
            continue
        line = f"    {kind:<10} n={len(values):6d}  p50 {_ms(values, 0.5)}  p99 {_ms(values, 0.99)}"
        if base and kind != "GET /ping":
            p50 = _percentile(values, 0.5) / _percentile(base, 0.5)
            p99 = _percentile(values, 0.99) / _percentile(base, 0.99)
            line += f"  (x{p50:.1f} / x{p99:.1f} the baseline's)"
        print(line)
    errors = {k: n for k, n in run.statuses().items() if not k.endswith(" 200")}
    print(f"    errors by status: {errors or 'none'}")
    cpu = f"    server CPU {run.cpu_s:.1f} s, {run.cpu_ms_per_request:.2f} ms per request"
    if baseline is not None and baseline.cpu_s > 0:
        cpu += f" (x{run.cpu_ms_per_request / baseline.cpu_ms_per_request:.1f} the baseline's)"
    print(cpu)
    machine = f"    machine {run.busy:.0%} busy ({os.cpu_count()} cores, load generator included)"
    if run.database_cpu_s is not None:
        per_request = run.database_cpu_s * 1000 / max(run.answered, 1)
        machine += f"; PostgreSQL {run.database_cpu_s:.1f} s, {per_request:.2f} ms per request"
    print(machine)
    if run.saturated:
        saturated = f"    saturated ({SATURATING} connections, closed loop): {run.saturated:.0f}/s"
        if baseline is not None and baseline.saturated:
            saturated += f", {run.saturated / baseline.saturated:.2f} of the baseline's"
        print(saturated)
    lags = [x for out in run.outcomes for x in out.lags]
    late = max(out.late_start_s for out in run.outcomes)
    unsent = sum(out.unsent for out in run.outcomes)
    print(
        f"    client lag p50 {_ms(lags, 0.5).strip()}, p99 {_ms(lags, 0.99).strip()}"
        + (f"; a client started {late:.2f} s late" if late > 0.05 else "")
        + (f"; {unsent} request(s) still queued {GRACE_S:.0f} s after, not sent" if unsent else "")
    )
    if lags and _percentile(lags, 0.99) > 0.01:
        print("    (the clients fell behind their schedule: add --clients, or the machine is busy)")
    if run.audit is not None:
        audit = run.audit
        verdict = "nothing lost" if not audit.problems else "PROBLEMS: " + "; ".join(audit.problems)
        print(
            f"    {audit.tasks} tasks, {dict(audit.statuses)}, drained in {audit.drain_s:.1f} s "
            f"after the load; {verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second, in all")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=1, help="client processes sharing the rate")
    parser.add_argument("--polls-per-submit", type=int, default=10, help="GET /task per POST /task")
    parser.add_argument("--delay", type=float, default=0.05, help="placeholder delay_s per task")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="also load Easel on PostgreSQL: a scratch database is made beside this "
        "postgresql+asyncpg:// URL and dropped after",
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=25,
        help="API keys (accounts) the requests take turns with (25 at 500/s: 20 requests/s "
        "each, the default per-key limit)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="easel serve --processes: API processes (more than one: the worker runs apart)",
    )
    parser.add_argument(
        "--saturate",
        type=float,
        default=5.0,
        help="seconds of closed-loop GETs after the load (0: none): the saturated rate",
    )
    parser.add_argument(
        "--skip-sqlite",
        action="store_true",
        help="load only the bare endpoint and PostgreSQL (with --postgres)",
    )
    parser.add_argument("--serve-baseline-port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline_port is not None:
        serve_ping(args.serve_baseline_port)  # the bare app, shared with throughput.py
        return 0
    if args.rate <= 0 or args.duration <= 0 or min(args.clients, args.polls_per_submit) < 1:
        parser.error(
            "--rate and --duration must be positive, --clients and --polls-per-submit at least 1"
        )
    if args.skip_sqlite and not args.postgres:
        parser.error("--skip-sqlite needs --postgres")
    if args.keys < args.clients:
        parser.error("--keys must be at least --clients (each client needs a key)")

    print("Easel load benchmark (figures are noisy when other work shares the machine)")
    print(f"  machine:  {platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}")
    print(
        f"  load:     {args.rate:.0f} requests/s open-loop for {args.duration:.0f} s from "
        f"{args.clients} client process(es), {args.keys} key(s); 1 POST /task per "
        f"{args.polls_per_submit} GET /task; easel serve --processes {args.processes}; "
        f"placeholder delay_s={args.delay}, model={MODEL}"
    )
    with tempfile.TemporaryDirectory(prefix="easel-load-") as tmp:
        workdir = Path(tmp)
        baseline = bench_baseline(args, workdir)
        _report(baseline, None)
        failed = False
        runs: list[tuple[str, str | None]] = [] if args.skip_sqlite else [("Easel, SQLite", None)]
        if args.postgres:
            runs.append(("Easel, PostgreSQL", args.postgres))
        for label, admin_url in runs:
            if admin_url is None:
                run = bench_easel(args, workdir / "sqlite", None, label)
            else:
                with _scratch_postgres(admin_url) as url:
                    run = bench_easel(args, workdir / "pg", url, label)
            _report(run, baseline)
            failed |= bool(run.audit and run.audit.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
