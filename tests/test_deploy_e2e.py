"""compose.yaml's services and the chart's pods run as they are written, on this machine.

No Docker daemon and no cluster run here, so each container becomes the ``easel`` process
it would start (``deploy_manifests.container_process``: the Dockerfile's ENTRYPOINT, the
container's args and environment with the Secret and ConfigMap resolved), against this
machine's PostgreSQL and a moto S3 server instead of the in-cluster hosts, on loopback and a
free port instead of 0.0.0.0:8000. What that proves: the flags and environment variables
the files give are ones Easel takes, the bucket is created by the server, the probes'
paths answer, a task runs, KEDA's query counts what it should on the real schema, and
SIGTERM ends each process within the grace period the files give it.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from conftest import reset_schema
from deploy_manifests import (
    ROOT,
    Process,
    compose_process,
    compose_services,
    find,
    pod_process,
    render_chart,
)
from processes import free_port, stop, wait_ready
from s3server import S3Server

pytestmark = pytest.mark.e2e

TASK = {"type": "generate_image", "prompt": "a lighthouse", "model_version": "flux.1_dev"}


def on_this_machine(process: Process, database_url: str, s3: S3Server) -> Process:
    """Point ``process`` at this machine's services: the database URL keeps its driver, the
    S3 endpoint becomes moto's; an API, and a worker's probes, listen on loopback and a free
    port."""
    declared = make_url(process.env["EASEL_DATABASE_URL"])
    assert declared.drivername == "postgresql+asyncpg"
    process.env["EASEL_DATABASE_URL"] = database_url
    assert process.env.get("AWS_ENDPOINT_URL", s3.endpoint).startswith("http")
    process.env |= {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ALLOW_HTTP": "true"}
    if "--host" in process.argv:
        assert process.arg("--host") == "0.0.0.0"  # reachable from outside its container
        process.set_arg("--host", "127.0.0.1")
        process.port = int(process.arg("--port"))
        process.set_arg("--port", str(free_port()))
    if "--health-port" in process.argv:  # a worker's probes: loopback and a free port too
        process.set_arg("--health-port", str(free_port()))
        process.env["EASEL_WORKER_HEALTH_HOST"] = "127.0.0.1"
    return process


@contextmanager
def running(
    process: Process, log: Path, cwd: Path, grace_s: float
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``process``; at the end SIGTERM it and require its exit within ``grace_s``."""
    cwd.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            process.argv, cwd=cwd, env=process.env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        yield proc
        started = time.monotonic()
        stop(proc, timeout_s=grace_s)
        took = time.monotonic() - started
        # 0, or uvicorn's re-raised SIGTERM after a graceful shutdown (143 to a shell).
        assert proc.returncode in (0, -signal.SIGTERM), log.read_text(errors="replace")
        assert took < grace_s, f"exited {took:.1f} s after SIGTERM; the grace is {grace_s} s"
    finally:
        stop(proc, timeout_s=1)


def base_url(process: Process) -> str:
    return f"http://127.0.0.1:{process.arg('--port')}"


def create_key(process: Process, cwd: Path) -> str:
    done = subprocess.run(
        [process.argv[0], "keys", "create", "--credits", "1000", "--name", "deploy"],
        cwd=cwd,
        env=process.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def statuses(client: httpx.Client, ids: list[str]) -> list[str]:
    return [client.get(f"/v2/openapi/task/{i}").json()["data"]["status"] for i in ids]


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
        time.sleep(0.2)


def buckets(s3: S3Server) -> set[str]:
    """The bucket names of moto's ListBuckets answer."""
    with s3.http() as http:
        return set(re.findall(r"<Name>([^<]+)</Name>", http.get("/").text))


def seconds(period: str) -> float:
    assert period.endswith("s")
    return float(period[:-1])


def test_compose_services_run_as_declared(
    tmp_path: Path, postgres_database: str, s3: S3Server
) -> None:
    asyncio.run(reset_schema(postgres_database))
    services = compose_services({"EASEL_CONFIG": "/etc/easel/examples/placeholder.toml"})
    api = on_this_machine(compose_process(services["api"]), postgres_database, s3)
    worker = on_this_machine(compose_process(services["worker"]), postgres_database, s3)
    assert api.env["EASEL_CONFIG"] == str(ROOT / "examples" / "placeholder.toml")  # bind mount
    bucket = api.env["EASEL_STORAGE_URL"].removeprefix("s3://").strip("/")
    assert bucket not in buckets(s3)  # not there: the server must create it

    api_grace = seconds(services["api"]["stop_grace_period"])
    worker_grace = seconds(services["worker"]["stop_grace_period"])
    with (
        running(api, tmp_path / "api.log", tmp_path / "api", api_grace) as api_proc,
        running(worker, tmp_path / "worker.log", tmp_path / "worker", worker_grace),
    ):
        healthcheck = services["api"]["healthcheck"]["test"]
        assert healthcheck[:2] == ["CMD", "python"]
        port = f":{api.arg('--port')}"
        probe = [sys.executable, *(arg.replace(f":{api.port}", port) for arg in healthcheck[2:])]
        # The container's check, run by this interpreter: it passes once the API is ready.
        wait_ready(
            lambda: subprocess.run(probe, capture_output=True, timeout=20).returncode == 0,
            api_proc,
            tmp_path / "api.log",
            what="the compose health check",
        )
        assert bucket in buckets(s3)  # EASEL_STORAGE_CREATE_BUCKET made it
        key = create_key(api, tmp_path / "api")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base_url(api), headers=headers, timeout=10) as client:
            task = client.post("/v2/openapi/task", json=TASK).json()["data"]["task_id"]
            wait_for("the worker ran the task", lambda: statuses(client, [task]) == ["success"])
        assert any(k.startswith("outputs/") for k in s3.keys(bucket))


CHART_CONFIG = """
[backends.slow]
kind = "placeholder"
delay_s = 120
[models."flux.1_dev"]
backends = ["slow"]
[models."gpt_image_2"]
backends = ["slow"]
"""


def answers(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url).status_code == 200


def find_pre_stop(manifests: list[dict[str, Any]]) -> int:
    spec = find(manifests, "Deployment", "easel-api")["spec"]["template"]["spec"]
    command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def keda_count(manifests: list[dict[str, Any]], pool: str, database_url: str) -> float:
    """What KEDA's PostgreSQL scaler would read for ``pool``: its query, run through the
    connection string the chart gives KEDA (here rewritten to this machine's database)."""
    scaled = find(manifests, "ScaledObject", f"easel-worker-{pool}")["spec"]
    query = scaled["triggers"][0]["metadata"]["query"]
    plain = make_url(database_url).set(drivername="postgresql")

    async def fetch() -> float:
        conn = await asyncpg.connect(plain.render_as_string(hide_password=False))
        try:
            value: float = await conn.fetchval(query)
            return value
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_chart_pods_run_as_rendered(tmp_path: Path, postgres_database: str, s3: S3Server) -> None:
    asyncio.run(reset_schema(postgres_database))
    values = {
        "secrets": {
            "databaseUrl": "postgresql+asyncpg://easel:pw@postgres.db.svc.cluster.local/easel",
            "env": {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
        },
        "storage": {"url": "s3://easel-chart/", "createBucket": True, "endpoint": s3.endpoint},
        "config": CHART_CONFIG,
        "keda": {"enabled": True},
        "workers": {"flux": {"models": ["flux.1_dev"]}},
    }
    manifests = render_chart(values)
    connection = find(manifests, "Secret", "easel-secrets")["stringData"]
    assert make_url(connection["KEDA_POSTGRESQL_CONNECTION"]).drivername == "postgresql"

    def grace(name: str) -> int:
        spec = find(manifests, "Deployment", name)["spec"]["template"]["spec"]
        period: int = spec["terminationGracePeriodSeconds"]
        return period

    api = on_this_machine(pod_process(manifests, "easel-api", tmp_path), postgres_database, s3)
    flux = on_this_machine(
        pod_process(manifests, "easel-worker-flux", tmp_path), postgres_database, s3
    )
    assert Path(api.env["EASEL_CONFIG"]).read_text().strip() == CHART_CONFIG.strip()
    # The API's preStop sleep comes before SIGTERM; here nothing sleeps first.
    api_grace = grace("easel-api") - find_pre_stop(manifests)
    with running(api, tmp_path / "api.log", tmp_path / "api", api_grace) as api_proc:
        for kind, path in api.probes.items():
            wait_ready(
                answers(base_url(api) + path),
                api_proc,
                tmp_path / "api.log",
                what=f"the {kind} probe ({path})",
            )
        assert set(api.probes) == {"startup", "liveness", "readiness"}
        key = create_key(api, tmp_path / "api")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base_url(api), headers=headers, timeout=10) as client:

            def submit(model: str) -> str:
                body = {**TASK, "model_version": model}
                task_id: str = client.post("/v2/openapi/task", json=body).json()["data"]["task_id"]
                return task_id

            flux_ids = [submit("flux.1_dev") for _ in range(3)]
            for _ in range(2):
                submit("gpt_image_2")
            assert keda_count(manifests, "flux", postgres_database) == 3
            assert keda_count(manifests, "default", postgres_database) == 5  # every model

            flux_grace = grace("easel-worker-flux")
            with running(flux, tmp_path / "flux.log", tmp_path / "flux", flux_grace):
                wait_for(
                    "two flux tasks running (worker_concurrency = 2)",
                    lambda: sorted(statuses(client, flux_ids)) == ["queued", "running", "running"],
                )
                # Running tasks still count: the busy workers are not scaled away.
                assert keda_count(manifests, "flux", postgres_database) == 3
            # SIGTERM put the running tasks back in the queue (checked within the grace).
            assert statuses(client, flux_ids) == ["queued"] * 3
            assert keda_count(manifests, "flux", postgres_database) == 3
