"""Chaos: 2 API processes, 3 workers, PostgreSQL, 300 tasks from 5 keys; workers are killed
with SIGKILL twice and PostgreSQL is restarted once while the tasks run.

At the end every task is final and succeeded exactly once (one hold, one settle), every
output image exists, and for every account balance + frozen + consumed == the grant, with
the ledger agreeing.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from audit import figures, ledger_report, run_key, task_report
from conftest import reset_schema
from processes import create_key, easel_process, free_port, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

KEYS, TASKS_PER_KEY, GRANT = 5, 60, 1000
PG_CTL = shutil.which("pg_ctlcluster")


def restart_postgres() -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if PG_CTL is None or not versions or os.geteuid() != 0:
        if os.environ.get("EASEL_CI"):
            raise RuntimeError("the chaos test must restart PostgreSQL (pg_ctlcluster, root)")
        pytest.skip("cannot restart PostgreSQL here (needs pg_ctlcluster and root)")
    subprocess.run(
        [PG_CTL, "--skip-systemctl-redirect", versions[-1], "main", "restart"],
        check=True,
        timeout=120,
    )


class Cluster:
    """The processes of the run, with the ability to kill and replace workers."""

    def __init__(self, root: Path, config: Path, stack: ExitStack) -> None:
        self.root, self.config, self.stack = root, config, stack
        self.workers: list[subprocess.Popen[bytes]] = []
        self.apis: list[str] = []

    def start_api(self) -> None:
        port = free_port()
        log = self.root / f"api-{port}.log"
        proc = self.stack.enter_context(
            easel_process(
                "serve", "--no-worker", "--port", str(port), "--config", str(self.config), log=log
            )
        )
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, log)
        self.apis.append(base)

    def start_worker(self) -> None:
        log = self.root / f"worker-{len(self.workers)}.log"
        self.workers.append(
            self.stack.enter_context(easel_process("worker", "--config", str(self.config), log=log))
        )

    def kill_worker(self, index: int) -> None:
        self.workers[index].send_signal(signal.SIGKILL)
        self.workers[index].wait()
        self.start_worker()

    def logs(self) -> str:
        return "\n".join(Path(p).read_text()[-3000:] for p in glob.glob(f"{self.root}/*.log"))


@pytest.fixture
def cluster(postgres_database: str, tmp_path: Path) -> Iterator[Cluster]:
    asyncio.run(reset_schema(postgres_database))
    config = tmp_path / "easel.toml"
    config.write_text(
        f'database_url = "{postgres_database}"\n'
        f'storage_url = "file://{tmp_path / "objects"}"\n'
        "lease_s = 3\nmax_attempts = 10\npoll_interval_s = 0.3\nworker_concurrency = 3\n"
        "rate_limit_per_s = 0\n"  # its clients poll every task every 0.2 s, many a second
        '[backends.dry]\nkind = "placeholder"\ndelay_s = 0.4\nwidth = 64\nheight = 64\n'
        '[models."flux.1_kontext_pro"]\nbackends = ["dry"]\n'
    )
    with ExitStack() as stack:
        cluster = Cluster(tmp_path, config, stack)
        for _ in range(2):
            cluster.start_api()
        for _ in range(3):
            cluster.start_worker()
        yield cluster


async def chaos(cluster: Cluster, done: list[str]) -> None:
    total = KEYS * TASKS_PER_KEY
    for share, act in (
        (0.25, lambda: cluster.kill_worker(0)),
        (0.5, restart_postgres),
        (0.75, lambda: cluster.kill_worker(1)),
    ):
        while len(done) < share * total:  # noqa: ASYNC110 - a counter, polled
            await asyncio.sleep(0.1)
        await asyncio.to_thread(act)


def test_nothing_is_lost_through_worker_kills_and_a_database_restart(
    cluster: Cluster, postgres_database: str, tmp_path: Path
) -> None:
    keys = [create_key(cluster.config, GRANT) for _ in range(KEYS)]
    done: list[str] = []

    async def scenario() -> list[str]:
        disorder = asyncio.create_task(chaos(cluster, done))
        batches = await asyncio.gather(
            *(run_key(cluster.apis, key, done, TASKS_PER_KEY) for key in keys)
        )
        await disorder
        return [task_id for batch in batches for task_id in batch]

    ids = asyncio.run(asyncio.wait_for(scenario(), timeout=600))
    assert len(set(ids)) == KEYS * TASKS_PER_KEY

    tasks = asyncio.run(task_report(postgres_database))
    assert len(tasks) == KEYS * TASKS_PER_KEY, cluster.logs()
    for task_id, status, output_key, holds, settles, refunds, finals in tasks:
        assert (status, holds, settles, refunds) == ("success", 1, 1, 0), (task_id, cluster.logs())
        assert finals == ["success"], (task_id, finals)
        assert (tmp_path / "objects" / output_key).is_file()
    report = asyncio.run(figures(postgres_database)) | {
        "kills": 2,
        "postgres_restarts": 1,
        "credits_granted": KEYS * GRANT,
    }
    artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "chaos.json").write_text(json.dumps(report, indent=2, default=float))
    print("chaos figures:", json.dumps(report, default=float))
    assert report["credits_consumed"] + report["balance"] == KEYS * GRANT
    for account, balance, frozen, consumed, ledger_balance, ledger_frozen in asyncio.run(
        ledger_report(postgres_database)
    ):
        assert frozen == 0
        assert balance + frozen + consumed == GRANT, account
        assert (ledger_balance, ledger_frozen) == (balance, frozen)
