"""Backends that cannot load, through real ``easel serve`` and ``easel worker`` processes.

Tiny local pipelines come from ``easel demo-weights``. A model whose every backend failed to
load is not served: submit answers the "not served" error with the reason, ``/models`` and
``/readyz`` say why, and tasks already queued for it end ``failed`` with the load error and a
refund as soon as the worker knows, not at the queue timeout an hour later. The other models
go on being served.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from processes import EASEL, create_key, easel_process, free_port, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.local]  # tiny weights need torch

CREDITS, PRICE = 100, 5  # flux.1_dev and flux.1_kontext_pro cost 5 each
BACKEND = """
[backends.{name}]
kind = "diffusers"
pipeline = "flux"
weights = "{weights}"
device = "cpu"
dtype = "float32"
steps = 2
width = 64
height = 64
"""


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    subprocess.run([EASEL, "demo-weights", str(root)], check=True, capture_output=True, timeout=300)
    return root / "flux"


def config(root: Path, **chains: str) -> Path:
    """SQLite and a file store in ``root``; ``chains`` maps model_versions (``.`` written
    ``_``) to backends; flux.1_kontext_pro is always served by a placeholder."""
    path = root / "easel.toml"
    path.write_text(
        f'database_url = "sqlite+aiosqlite:///{root / "easel.db"}"\n'
        f'storage_url = "file://{root / "objects"}"\npoll_interval_s = 0.2\n'
        + "".join(BACKEND.format(name=name, weights=weights) for name, weights in chains.items())
        + '[backends.dry]\nkind = "placeholder"\n'
        + '[models."flux.1_kontext_pro"]\nbackends = ["dry"]\n'
    )
    return path


def add_models(path: Path, **models: str) -> None:
    with path.open("a") as out:
        for model, backend in models.items():
            out.write(f'[models."{model}"]\nbackends = ["{backend}"]\n')


def corrupt_copy(weights: Path, where: Path) -> Path:
    """Saved weights whose transformer file is cut in half: fine until loaded."""
    shutil.copytree(weights, where)
    (tensors,) = (where / "transformer").glob("*.safetensors")
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    return where


def model_entry(client: httpx.Client, version: str) -> dict[str, Any]:
    models = client.get("/v2/openapi/models").json()["data"]["models"]
    entry: dict[str, Any] = next(m for m in models if m["model_version"] == version)
    return entry


def eventually(check: Callable[[], Any], log: Path, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
        time.sleep(0.2)
    return result


def submit(client: httpx.Client, model: str) -> httpx.Response:
    body = {"type": "generate_image", "prompt": "a lighthouse", "model_version": model}
    return client.post("/v2/openapi/task", json=body)


def finish(client: httpx.Client, task_id: str, log: Path) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        task: dict[str, Any] = client.get(f"/v2/openapi/task/{task_id}").json()["data"]
        return None if task["status"] in ("queued", "running") else task

    result: dict[str, Any] = eventually(final, log)
    return result


def assert_not_served(client: httpx.Client, model: str, why: str) -> None:
    """Submit refused (400 / 1004, nothing charged); /models and /readyz say why."""
    before = client.get("/v2/openapi/user/balance").json()["data"]
    refused = submit(client, model)
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["code"] == 1004
    assert "is not served by this server" in body["message"]
    assert why in body["message"]
    assert "flux.1_kontext_pro" in body["suggestion"]  # the models that are served
    assert client.get("/v2/openapi/user/balance").json()["data"] == before
    entry = model_entry(client, model)
    assert entry["served"] is False
    assert why in entry["reason"]
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text  # flux.1_kontext_pro is still served
    assert model in ready.json()["checks"]["models"]
    assert why in ready.json()["checks"]["models"]


@contextmanager
def serving(path: Path, *args: str) -> Iterator[tuple[httpx.Client, Path]]:
    """``easel serve ARGS`` on the config at ``path``, and a client with a fresh key."""
    key = create_key(path, CREDITS)
    port, log = free_port(), path.parent / "serve.log"
    base = f"http://127.0.0.1:{port}"
    command = ("serve", "--port", str(port), "--config", str(path), *args)
    with easel_process(*command, log=log) as proc:
        wait_healthy(base, proc, log)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            yield client, log


def test_weights_that_cannot_load_make_their_model_not_served(
    demo_weights: Path, tmp_path: Path
) -> None:
    """One server, two broken local backends: corrupt weights (found when the worker loads
    them at start) and a weights directory that does not exist (found before any load)."""
    corrupt = corrupt_copy(demo_weights, tmp_path / "corrupt")
    path = config(tmp_path, corrupt=str(corrupt), gone=str(tmp_path / "gone"))
    add_models(path, **{"flux.1_dev": "corrupt", "gpt_image_2": "gone"})
    with serving(path) as (client, log):
        entry = eventually(lambda: (e := model_entry(client, "flux.1_dev"))["reason"] and e, log)
        assert entry["backends"][0]["load_state"] == "failed"
        assert_not_served(client, "flux.1_dev", "could not load the flux pipeline")
        assert_not_served(client, "gpt_image_2", "no such directory")
        kontext = submit(client, "flux.1_kontext_pro")
        assert finish(client, kontext.json()["data"]["task_id"], log)["status"] == "success"
        balance = client.get("/v2/openapi/user/balance").json()["data"]
        assert balance == {"balance": CREDITS - PRICE, "frozen": 0}
        assert "backend corrupt did not load" in log.read_text()


def test_queued_tasks_of_a_model_whose_weights_vanished_fail_promptly_with_a_refund(
    demo_weights: Path, tmp_path: Path
) -> None:
    """The API (``--no-worker``) starts while the weights are there and queues tasks; the
    weights vanish; the worker, started next, cannot load them. Its queued tasks end
    ``failed`` with the load error and their credits back, within seconds."""
    weights = shutil.copytree(demo_weights, tmp_path / "weights")
    path = config(tmp_path, local=str(weights))
    add_models(path, **{"flux.1_dev": "local"})
    with serving(path, "--no-worker") as (client, log):
        queued = [submit(client, "flux.1_dev").json()["data"]["task_id"] for _ in range(2)]
        kontext = submit(client, "flux.1_kontext_pro").json()["data"]["task_id"]
        assert client.get("/v2/openapi/user/balance").json()["data"]["frozen"] == 3 * PRICE
        shutil.rmtree(weights)
        started = time.monotonic()
        with easel_process("worker", "--config", str(path), log=tmp_path / "worker.log"):
            failed = [finish(client, task_id, tmp_path / "worker.log") for task_id in queued]
            waited_s = time.monotonic() - started
            assert finish(client, kontext, log)["status"] == "success"  # the worker works
            for task in failed:
                assert (task["status"], task["error_code"]) == ("failed", 1001), task
                assert "could not load the flux pipeline" in task["error_msg"]
                assert "no such directory" in task["error_msg"]
                assert task["consumed_credit"] == 0
            balance = client.get("/v2/openapi/user/balance").json()["data"]
            assert balance == {"balance": CREDITS - PRICE, "frozen": 0}
            assert_not_served(client, "flux.1_dev", "no such directory")
    print(f"queued tasks of an unloadable model failed {waited_s:.1f} s after the worker started")
