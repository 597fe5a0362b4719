"""Idle event streams: what N open SSE streams cost ``easel serve``, and how fast a watcher hears.

A benchmark, not a test. For each store (SQLite; PostgreSQL with ``--postgres URL``, a scratch
database made beside URL and dropped after) it starts ``easel serve`` (one process, embedded
worker, placeholder backend), then for each N of ``--streams``:

* opens N ``GET /v2/openapi/events`` streams of another account than the one measured
  (raw sockets; nothing happens on that account, so they stay idle) and lets them settle;
* **CPU**: the server process's user + system time over ``--window`` seconds with the
  streams idle (nothing submitted), from ``/proc/<pid>/stat``, as cores;
* **GET p99**: ``GET /task/{id}`` of a finished task, one at a time for ``--window`` seconds;
* **watch latency**: ``--watches`` tasks submitted one after another while one more stream
  watches; the time from the ``POST /task`` answer to its ``queued`` event on the stream
  (0 when the event came first), p50 and p99.

Usage::

    .venv/bin/python bench/streams.py [--streams 0,200,1000] [--window 8] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # the sibling script, found through the line above
    EASEL,
    MODEL,
    _cpus,
    _free_port,
    _percentile,
    _process,
    _scratch_postgres,
    write_config,
)

API = "/v2/openapi"
SETTLE_S = 3.0  # after the streams open, before measuring


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_pid(port: int) -> int:
    """The process listening on ``port`` (the one ``easel serve`` process)."""
    wanted = f":{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(wanted) and parts[3] == "0A":  # LISTEN
            inodes.add(parts[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError(f"no process listens on port {port}")


async def _open_streams(port: int, key: str, count: int) -> list[asyncio.StreamWriter]:
    request = (
        f"GET {API}/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    writers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        writers.append(writer)
    return writers


async def _get_p99(client: httpx.AsyncClient, task_id: str, window_s: float) -> tuple[float, int]:
    latencies = []
    end = time.monotonic() + window_s
    while time.monotonic() < end:
        began = time.perf_counter()
        (await client.get(f"{API}/task/{task_id}")).raise_for_status()
        latencies.append(time.perf_counter() - began)
    return _percentile(latencies, 0.99) * 1000, len(latencies)


async def _watch_latencies(client: httpx.AsyncClient, count: int) -> list[float]:
    arrived: dict[str, float] = {}

    async def watch() -> None:
        async with client.stream("GET", f"{API}/events", timeout=None) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    arrived.setdefault(json.loads(line[6:])["task_id"], time.perf_counter())

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.5)
    latencies = []
    for number in range(count):
        body = {"type": "generate_image", "prompt": f"watch {number}", "model_version": MODEL}
        answer = await client.post(f"{API}/task", json=body)
        answered = time.perf_counter()
        task_id = answer.json()["data"]["task_id"]
        async with asyncio.timeout(10):
            while task_id not in arrived:  # noqa: ASYNC110 - filled by the watcher
                await asyncio.sleep(0.0005)
        latencies.append(max(0.0, arrived[task_id] - answered))
        await asyncio.sleep(0.05)
    watcher.cancel()
    return latencies


async def _measure(
    port: int, key: str, idle_key: str, sizes: list[int], args: argparse.Namespace
) -> None:
    pid = _server_pid(port)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        body = {"type": "generate_image", "prompt": "target", "model_version": MODEL}
        target = (await client.post(f"{API}/task", json=body)).json()["data"]["task_id"]
        while (await client.get(f"{API}/task/{target}")).json()["data"]["status"] != "success":  # noqa: ASYNC110 - the server's state
            await asyncio.sleep(0.1)
        for size in sizes:
            streams = await _open_streams(port, idle_key, size)
            await asyncio.sleep(SETTLE_S)
            before = _cpu_s(pid)
            await asyncio.sleep(args.window)
            cores = (_cpu_s(pid) - before) / args.window
            p99_ms, count = await _get_p99(client, target, args.window)
            watch = sorted(await _watch_latencies(client, args.watches))
            print(
                f"  {size:>5} streams: server CPU idle {cores:.3f} cores; "
                f"GET /task p99 {p99_ms:.1f} ms ({count} requests); "
                f"watch latency p50 {_percentile(watch, 0.5) * 1000:.1f} ms, "
                f"p99 {_percentile(watch, 0.99) * 1000:.1f} ms ({len(watch)} tasks)",
                flush=True,
            )
            for writer in streams:
                writer.close()
            await asyncio.sleep(SETTLE_S)


def _bench(label: str, workdir: Path, database_url: str | None, args: argparse.Namespace) -> None:
    most = max(args.streams)
    settings = [
        "rate_limit_per_s = 0",
        "max_unfinished_tasks = 100000",
        f"max_streams_per_key = {most + 10}",
        f"max_connections = {most + 200}",
    ]
    config = write_config(workdir, database_url, settings, ["delay_s = 0.05"])
    created = _run([str(EASEL), "keys", "create", "--credits", "1000000", "--config", str(config)])
    key = created.strip().splitlines()[-1]
    # The idle streams follow another account: nothing they follow happens.
    idle = _run([str(EASEL), "keys", "create", "--config", str(config)])
    idle_key = idle.strip().splitlines()[-1]
    port = _free_port()
    command = [str(EASEL), "serve", "--config", str(config), "--port", str(port)]
    print(f"{label}:", flush=True)
    with (
        (workdir / "easel.log").open("wb") as log,
        _process(command, log, f"http://127.0.0.1:{port}/healthz"),
    ):
        asyncio.run(_measure(port, key, idle_key, args.streams, args))


def _run(command: list[str]) -> str:
    import subprocess

    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--streams", default="0,200,1000", type=lambda v: [int(x) for x in v.split(",")]
    )
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--watches", type=int, default=100)
    parser.add_argument(
        "--postgres", help="postgresql+asyncpg://… of a server to make a scratch database on"
    )
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (min(hard, max(soft, max(args.streams) * 2 + 256)), hard)
    )
    print(f"CPUs: {_cpus()}; streams {args.streams}; window {args.window:g} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="easel-streams-") as tmp:
        _bench("SQLite", Path(tmp) / "sqlite", None, args)
        if args.postgres:
            with _scratch_postgres(args.postgres) as url:
                _bench("PostgreSQL", Path(tmp) / "postgres", url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
