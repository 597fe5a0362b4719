"""Throughput: a bare FastAPI endpoint (requests/s) against Easel end to end (tasks/s).

One run measures both, on loopback, with the same client (httpx.AsyncClient) and the same
uvicorn settings as ``easel serve`` (``log_level="info"``, access log on, one process):

(a) ``GET /ping -> {"ok": true}`` served by uvicorn in a subprocess, hit by ``--requests``
    requests with ``--concurrency`` in flight: the ceiling of this HTTP stack and client.
(b) ``easel serve`` in a subprocess (placeholder backend, ``delay_s = 0``; SQLite and a local
    object store in a temporary directory; ``max_unfinished_tasks`` high and
    ``rate_limit_per_s = 0`` so the per-key limits do not throttle): ``--tasks``
    ``generate_image`` tasks, ``--concurrency`` in flight, each
    submitted and polled every ``--poll-interval`` seconds until ``success``. Tasks/s counts
    from the first submit to the last success seen.

The client runs in this process and shares the machine's cores with the server, so on a
small machine both figures include the client's cost. Usage::

    .venv/bin/python bench/throughput.py [--tasks 300] [--requests 3000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

EASEL = Path(sys.executable).parent / "easel"
MODEL = "flux.1_kontext_pro"
PRICE = 5  # credits per flux.1_kontext_pro task
START_TIMEOUT_S = 60.0
TASK_TIMEOUT_S = 120.0
WARMUP_REQUESTS = 200


# --- the bare endpoint ------------------------------------------------------------------------


def serve_ping(port: int) -> None:
    """Run the bare app (called in the subprocess this script starts of itself)."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    # The same settings as `easel serve` (src/easel/cli.py), so the two compare alike.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="info",
        lifespan="on",
        timeout_keep_alive=75,
        http="h11",
    )


# --- processes ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    """This environment without ``EASEL_*`` overrides: only the written config counts."""
    return {name: value for name, value in os.environ.items() if not name.startswith("EASEL_")}


@contextmanager
def _process(
    command: list[str], log: IO[bytes], ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``, wait until ``ready_url`` answers 200, stop it at the end."""
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {log.name}")
            try:
                if httpx.get(ready_url, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


async def _lanes(
    count: int, concurrency: int, job: Callable[[httpx.AsyncClient, int], Awaitable[None]]
) -> None:
    """Run ``job(client, 0) … job(client, count - 1)``, at most ``concurrency`` at once.

    Each lane has its own client with one keep-alive connection: lanes sharing one
    ``httpx.AsyncClient`` contend on its pool and measured about half the requests/s here.
    """
    numbers = iter(range(count))

    async def lane() -> None:
        async with _client() as http:
            for number in numbers:  # the lanes share one iterator
                await job(http, number)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, count))))


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=30.0)


# --- (a) requests per second --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PingResult:
    requests: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


async def _hammer(url: str, requests: int, concurrency: int) -> PingResult:
    async def one(http: httpx.AsyncClient, _: int) -> None:
        response = await http.get(url)
        if response.status_code != 200 or response.json() != {"ok": True}:
            raise RuntimeError(f"/ping answered {response.status_code}: {response.text}")

    await _lanes(WARMUP_REQUESTS, concurrency, one)
    started = time.perf_counter()
    await _lanes(requests, concurrency, one)
    return PingResult(requests, time.perf_counter() - started)


def bench_ping(requests: int, concurrency: int, workdir: Path) -> PingResult:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-ping-port", str(port)]
    with (workdir / "ping.log").open("wb") as log, _process(command, log, f"{base}/ping"):
        return asyncio.run(_hammer(f"{base}/ping", requests, concurrency))


# --- (b) tasks per second -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskResult:
    tasks: int
    seconds: float
    http_requests: int
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.tasks / self.seconds


def _config(workdir: Path, worker_concurrency: int | None, database_url: str | None) -> Path:
    settings = [
        "max_unfinished_tasks = 100000",
        "rate_limit_per_s = 0",  # one key, many clients: measure the server, not the limit
    ]
    if worker_concurrency is not None:
        settings.append(f"worker_concurrency = {worker_concurrency}")
    return write_config(workdir, database_url, settings, ["delay_s = 0"])


def write_config(
    workdir: Path, database_url: str | None, settings: list[str], placeholder: list[str]
) -> Path:
    """``workdir/easel.toml``: the database (SQLite in ``workdir`` unless ``database_url``),
    a file store in ``workdir``, ``settings``, and the placeholder backend (with its
    ``placeholder`` options) serving MODEL."""
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = database_url or f"sqlite+aiosqlite:///{workdir / 'easel.db'}"
    lines = [
        f'database_url = "{database_url}"',
        f'storage_url = "file://{workdir / "objects"}"',
        *settings,
        "",
        "[backends.dry]",
        'kind = "placeholder"',
        *placeholder,
        "",
        f'[models."{MODEL}"]',
        'backends = ["dry"]',
        "",
    ]
    path = workdir / "easel.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _create_key(config: Path, credits: int) -> str:
    command = [str(EASEL), "keys", "create", "--credits", str(credits), "--name", "bench"]
    command += ["--config", str(config)]
    created = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    if created.returncode != 0:
        raise RuntimeError(f"easel keys create failed:\n{created.stdout}{created.stderr}")
    return created.stdout.strip().splitlines()[-1]


async def _run_tasks(
    api: str, key: str, tasks: int, concurrency: int, poll_interval: float
) -> TaskResult:
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    submitted_at: list[float] = []
    finished_at: list[float] = []
    http_requests = 0

    async def one(http: httpx.AsyncClient, number: int) -> None:
        nonlocal http_requests
        submitted = time.perf_counter()
        submitted_at.append(submitted)
        body = {"type": "generate_image", "prompt": f"benchmark task {number}"}
        created = await http.post(f"{api}/task", headers=headers, json=body)
        http_requests += 1
        if created.status_code != 200:
            raise RuntimeError(f"POST /task answered {created.status_code}: {created.text}")
        task_id = created.json()["data"]["task_id"]
        while True:
            polled = await http.get(f"{api}/task/{task_id}", headers=headers)
            http_requests += 1
            if polled.status_code != 200:
                raise RuntimeError(f"GET /task answered {polled.status_code}: {polled.text}")
            status = polled.json()["data"]["status"]
            if status == "success":
                break
            if status not in ("queued", "running"):
                raise RuntimeError(f"task {task_id} ended {status}: {polled.text}")
            if time.perf_counter() - submitted > TASK_TIMEOUT_S:
                raise RuntimeError(f"task {task_id} still {status} after {TASK_TIMEOUT_S} s")
            await asyncio.sleep(poll_interval)
        now = time.perf_counter()
        latencies.append(now - submitted)
        finished_at.append(now)

    await _lanes(tasks, concurrency, one)
    seconds = max(finished_at) - min(submitted_at)  # first submit to last success

    async with _client() as http:
        balance = (await http.get(f"{api}/user/balance", headers=headers)).json()["data"]
    if balance != {"balance": 0, "frozen": 0}:  # the key had exactly tasks * PRICE
        raise RuntimeError(f"credits do not add up after {tasks} tasks: {balance}")
    return TaskResult(tasks, seconds, http_requests, latencies)


def bench_tasks(
    tasks: int,
    concurrency: int,
    poll_interval: float,
    worker_concurrency: int | None,
    workdir: Path,
    database_url: str | None = None,
) -> TaskResult:
    config = _config(workdir, worker_concurrency, database_url)
    key = _create_key(config, tasks * PRICE)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(EASEL), "serve", "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    with (workdir / "easel.log").open("wb") as log, _process(command, log, f"{base}/healthz"):
        return asyncio.run(_run_tasks(f"{base}/v2/openapi", key, tasks, concurrency, poll_interval))


# --- main ---------------------------------------------------------------------------------------


@contextmanager
def _scratch_postgres(admin_url: str) -> Iterator[str]:
    """A new, empty database beside ``admin_url`` (postgresql+asyncpg://…), dropped after."""
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"easel_bench_{os.getpid()}"
    plain = make_url(admin_url).set(drivername="postgresql").render_as_string(False)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(plain)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(False)
    finally:
        asyncio.run(admin(f"DROP DATABASE {name} WITH (FORCE)"))


def _report(label: str, done: TaskResult) -> None:
    print(
        f"{label} {done.per_second:8.1f} tasks/s "
        f"({done.tasks} in {done.seconds:.2f} s; "
        f"{done.http_requests} HTTP calls = {done.http_requests / done.seconds:.1f}/s, "
        f"{done.http_requests / done.tasks:.1f} per task)"
    )
    print(
        "    task latency submit->success: "
        f"median {statistics.median(done.latencies) * 1000:.0f} ms, "
        f"p95 {_percentile(done.latencies, 0.95) * 1000:.0f} ms, "
        f"max {max(done.latencies) * 1000:.0f} ms"
    )


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _cpus() -> str:
    total = os.cpu_count() or 0
    usable: Any = getattr(os, "sched_getaffinity", None)
    return f"{total} (usable by this process: {len(usable(0))})" if usable else str(total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=300, help="Easel tasks to run (b)")
    parser.add_argument("--requests", type=int, default=3000, help="bare /ping requests (a)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests/tasks in flight")
    parser.add_argument(
        "--poll-interval", type=float, default=0.05, help="seconds between task polls (b)"
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="Easel's worker_concurrency (default: Easel's own default)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="also run (b) on PostgreSQL: a scratch database is made beside this "
        "postgresql+asyncpg:// URL and dropped after",
    )
    parser.add_argument("--serve-ping-port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_ping_port is not None:
        serve_ping(args.serve_ping_port)
        return 0
    for name in ("tasks", "requests", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    from easel.config import Settings

    worker_concurrency = args.worker_concurrency or Settings().worker_concurrency
    print("Easel throughput benchmark")
    print(f"  machine:  {platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}")
    print(
        f"  params:   requests={args.requests} (+{WARMUP_REQUESTS} warm-up), "
        f"tasks={args.tasks}, concurrency={args.concurrency}, "
        f"poll_interval={args.poll_interval}s, worker_concurrency={worker_concurrency}, "
        f"backend=placeholder delay_s=0, model={MODEL}"
    )
    with tempfile.TemporaryDirectory(prefix="easel-bench-") as tmp:
        workdir = Path(tmp)
        ping = bench_ping(args.requests, args.concurrency, workdir)
        print(
            f"(a) bare FastAPI GET /ping:  {ping.per_second:8.1f} requests/s "
            f"({ping.requests} in {ping.seconds:.2f} s)"
        )
        done = bench_tasks(
            args.tasks, args.concurrency, args.poll_interval, args.worker_concurrency, workdir
        )
        _report("(b) Easel generate_image, SQLite:    ", done)
        print(
            f"ratio (a)/(b): {ping.per_second / done.per_second:.1f} bare requests per Easel "
            "task in the same time"
        )
        if args.postgres:
            with _scratch_postgres(args.postgres) as url:
                on_pg = bench_tasks(
                    args.tasks,
                    args.concurrency,
                    args.poll_interval,
                    args.worker_concurrency,
                    workdir / "pg",
                    url,
                )
            _report("(c) Easel generate_image, PostgreSQL:", on_pg)
            print(f"ratio (c)/(b): {on_pg.per_second / done.per_second:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
