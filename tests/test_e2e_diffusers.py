"""End to end: ``easel serve`` with ``diffusers`` backends loaded from a local directory.

``easel demo-weights`` writes tiny random-weight pipelines (their images are noise); the
server loads them on the CPU at start and completes a ``flux.1_dev`` task and a
``flux.1_kontext_pro`` task with a reference image, through the real FLUX pipelines.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from apptools import png
from diffusers_tools import backend_table
from processes import EASEL, create_key, easel_process, free_port, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.local]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    root = tmp_path_factory.mktemp("diffusers")
    out = subprocess.run(
        [EASEL, "demo-weights", str(root / "weights")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "flux-kontext:" in out.stdout
    config = root / "easel.toml"
    config.write_text(
        f'database_url = "sqlite+aiosqlite:///{root / "easel.db"}"\n'
        f'storage_url = "file://{root / "objects"}"\n'
        + backend_table("tiny-flux", "flux", root / "weights" / "flux")
        + backend_table("tiny-kontext", "flux-kontext", root / "weights" / "flux-kontext")
        + '[models."flux.1_dev"]\nbackends = ["tiny-flux"]\n'
        + '[models."flux.1_kontext_pro"]\nbackends = ["tiny-kontext"]\n'
    )
    key = create_key(config, 100)
    port = free_port()
    log = root / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with easel_process("serve", "--port", str(port), "--config", str(config), log=log) as proc:
        wait_healthy(base, proc, log)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, log


def finish(client: httpx.Client, body: dict[str, Any], log: Path) -> dict[str, Any]:
    response = client.post("/v2/openapi/task", json={"type": "generate_image", **body})
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]
    deadline = time.monotonic() + 120
    while True:
        task: dict[str, Any] = client.get(f"/v2/openapi/task/{task_id}").json()["data"]
        if task["status"] not in ("queued", "running"):
            assert task["status"] == "success", (task, log.read_text())
            return task
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def image_of(client: httpx.Client, task: dict[str, Any]) -> Image.Image:
    data = client.get(task["output"]["generated_image"]).content
    return Image.open(io.BytesIO(data))


def test_flux_1_dev_runs_on_the_local_flux_pipeline(
    server: tuple[httpx.Client, Path],
) -> None:
    client, log = server
    task = finish(client, {"prompt": "a lighthouse at dusk", "model_version": "flux.1_dev"}, log)
    assert task["attempts"][0]["backend"] == "tiny-flux"
    assert image_of(client, task).size == (64, 64)
    assert "loading backend tiny-flux" in log.read_text()


def test_flux_1_kontext_pro_edits_a_reference_on_the_local_kontext_pipeline(
    server: tuple[httpx.Client, Path],
) -> None:
    client, log = server
    before = client.get("/v2/openapi/user/balance").json()["data"]["balance"]
    reference = {"file": ("r.png", png(300, 200), "image/png")}
    token = client.post("/v2/openapi/upload", files=reference).json()["data"]["image_token"]
    task = finish(client, {"prompt": "make image[1] blue", "file": {"file_token": token}}, log)
    assert task["input"]["model_version"] == "flux.1_kontext_pro"
    assert task["attempts"][0]["backend"] == "tiny-kontext"
    assert image_of(client, task).size == (64, 64)
    after = client.get("/v2/openapi/user/balance").json()["data"]
    assert after == {"balance": before - 5, "frozen": 0}
