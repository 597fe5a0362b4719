"""End to end: the official ``tripo3d`` SDK (0.4.2) against a real ``easel serve`` process.

A module fixture writes a config (SQLite file, local object store, the placeholder backend
with ``delay_s = 0.5``), creates a key with ``easel keys create``, starts ``easel serve`` on a
free loopback port and waits for ``/healthz``. The tests then drive it the way a Tripo user
would: upload, ``generate_image`` with and without references, ``wait_for_task``, download
through the SDK, ``get_balance`` and the SDK's API error. One test speaks plain HTTP (httpx) to
check the wire shape the SDK does not expose.

The SDK runs on its raw-socket client, patched by :mod:`sdk_loopback` to reach a loopback
server; its docstring lists the client's defects. One is not worked around (calls on one
client are not safe to run concurrently), so the tests pass file tokens in ``files`` and never
run calls concurrently on one client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

# Before tripo3d is imported: its import otherwise starts a thread that asks public geo-IP
# services where we are.
os.environ["TRIPO_DISABLE_GEO_DETECTION"] = "1"

from tripo3d import TaskStatus, TripoAPIError

from apptools import has_estimate
from processes import EASEL, free_port, stop, wait_healthy
from sdk_loopback import block_boto3, sdk

pytestmark = pytest.mark.e2e

DELAY_S = 0.5
START_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 60.0
CREDITS = 100
PRICE = 5  # flux.1_kontext_pro, flux.1_dev and gemini_2.5_flash_image_preview
TASK_FIELDS = {
    "task_id",
    "type",
    "status",
    "input",
    "output",
    "progress",
    "create_time",
    "consumed_credit",
    "queuing_num",
    "running_left_time",
}
TRACE_HEADER = "X-Tripo-Trace-ID"

CONFIG = """\
database_url = "sqlite+aiosqlite:///{db}"
storage_url = "file://{objects}"

[backends.dry]
kind = "placeholder"
delay_s = {delay}

[models."flux.1_kontext_pro"]
backends = ["dry"]
[models."flux.1_dev"]
backends = ["dry"]
[models."gemini_2.5_flash_image_preview"]
backends = ["dry"]
"""


# --- the server ---------------------------------------------------------------------------------


def _server_env() -> dict[str, str]:
    """This environment without ``EASEL_*`` overrides, so only the written config counts."""
    return {name: value for name, value in os.environ.items() if not name.startswith("EASEL_")}


def _dump(request: pytest.FixtureRequest, title: str, text: str) -> None:
    """Write past pytest's output capture (module teardown has no report to attach to)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        sys.stderr.write(f"\n----- {title} -----\n{text}\n")
        return
    with capture.global_and_fixture_disabled():
        sys.stderr.write(f"\n----- {title} -----\n{text}\n")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str]]:
    """A running ``easel serve``: yields ``(base_url, api_key)``."""
    root = tmp_path_factory.mktemp("easel-e2e")
    config = root / "easel.toml"
    config.write_text(
        CONFIG.format(db=root / "easel.db", objects=root / "objects", delay=DELAY_S),
        encoding="utf-8",
    )
    env = _server_env()
    created = subprocess.run(
        [
            EASEL,
            *("keys", "create", "--credits", str(CREDITS), "--name", "e2e"),
            *("--config", str(config)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, f"easel keys create failed:\n{created.stdout}{created.stderr}"
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tsk_"), created.stdout

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    failed_before = request.session.testsfailed
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                EASEL,
                *("serve", "--config", str(config)),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_healthy(base_url, process, log_path, what="easel serve", timeout_s=START_TIMEOUT_S)
        yield base_url, key
    finally:
        crashed = process.poll() is not None
        stop(process, timeout_s=15)
        if crashed or request.session.testsfailed > failed_before:
            _dump(request, "easel serve log", log_path.read_text(errors="replace"))


# --- helpers ------------------------------------------------------------------------------------


def _png(path: Path, colour: tuple[int, int, int] = (200, 40, 40)) -> Path:
    Image.new("RGB", (96, 64), colour).save(path, format="PNG")
    return path


async def _balance(client: Any) -> tuple[int, int]:
    balance = await client.get_balance()
    return int(balance.balance), int(balance.frozen)


async def _wait_success(client: Any, task_id: str) -> Any:
    task = await client.wait_for_task(task_id, timeout=WAIT_TIMEOUT_S)
    assert task.status == TaskStatus.SUCCESS, (task.status, task.error_code, task.error_msg)
    assert task.progress == 100
    assert task.running_left_time == -1
    assert task.queuing_num == -1
    return task


async def _download_image(client: Any, task: Any, directory: Path) -> Path:
    """Download ``output.generated_image`` the SDK's way and check it is a readable image."""
    # download_rendered_image reads output.rendered_image only: nothing for generate_image.
    assert await client.download_rendered_image(task, str(directory)) is None
    assert task.output.image, "the SDK did not see output.generated_image"
    files = await client.download_task_models(task, str(directory))
    assert set(files) == {"image"}, files
    assert files["image"] is not None, "the SDK's download failed (it maps errors to None)"
    path = Path(files["image"])
    assert path.name == f"{task.task_id}_image.png"
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.width >= 64
        assert image.height >= 64
    return path


# --- through the SDK ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _multipart_uploads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK runs ``import boto3`` in every ``upload_file`` and, when it imports, asks for
    STS credentials (this server's local store has none: 1005). Make that import fail, so it
    uploads by multipart ``POST /upload`` whether boto3 is installed or not."""
    block_boto3(monkeypatch)


def test_sdk_uses_the_raw_socket_client() -> None:
    # What this module was written against: no aiohttp (raw sockets) and no importable boto3
    # (multipart POST /upload instead of STS + S3; tests/test_e2e_sts.py covers that path).
    assert importlib.util.find_spec("aiohttp") is None
    with pytest.raises(ImportError):
        import boto3  # type: ignore[import-untyped]  # noqa: F401


async def test_upload_file_returns_a_file_token(server: tuple[str, str], tmp_path: Path) -> None:
    async with sdk(*server) as client:
        uploaded = await client.upload_file(str(_png(tmp_path / "ref.png")))
    assert set(uploaded) == {"file_token"}
    assert uuid.UUID(uploaded["file_token"])


async def test_generate_image_from_text(server: tuple[str, str], tmp_path: Path) -> None:
    async with sdk(*server) as client:
        balance, frozen = await _balance(client)
        assert frozen == 0
        task_id = await client.generate_image(prompt="a small red cube on a wooden table")
        assert uuid.UUID(task_id)
        # While it runs (delay 0.5 s) the price is held; balance excludes frozen credits.
        held = await _balance(client)
        if (await client.get_task(task_id)).status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            assert held == (balance - PRICE, PRICE)
        else:  # a very slow machine: it already finished
            assert held[0] == balance - PRICE

        task = await _wait_success(client, task_id)
        assert task.task_id == task_id
        assert task.type == "generate_image"
        assert task.input["model_version"] == "flux.1_kontext_pro"  # the default
        assert task.input["prompt"] == "a small red cube on a wooden table"
        await _download_image(client, task, tmp_path)

        assert await _balance(client) == (balance - PRICE, 0)


async def test_text_to_image(server: tuple[str, str], tmp_path: Path) -> None:
    """The SDK's text_to_image: Tripo's "Basic text to image", 5 credits, on the default
    model; an over-long negative prompt is refused with 1004 at no cost."""
    async with sdk(*server) as client:
        balance, _ = await _balance(client)
        task_id = await client.text_to_image(prompt="a lighthouse at dusk", negative_prompt="fog")
        task = await _wait_success(client, task_id)
        assert task.type == "text_to_image"
        assert task.input == {
            "prompt": "a lighthouse at dusk",
            "negative_prompt": "fog",
            "model_version": "flux.1_kontext_pro",
        }
        await _download_image(client, task, tmp_path)
        assert await _balance(client) == (balance - PRICE, 0)

        with pytest.raises(TripoAPIError) as too_long:
            await client.text_to_image(prompt="a cat", negative_prompt="n" * 256)
        assert too_long.value.code == 1004
        assert "limit is 255" in too_long.value.message
        assert await _balance(client) == (balance - PRICE, 0)


async def test_generate_image_with_references(server: tuple[str, str], tmp_path: Path) -> None:
    red = _png(tmp_path / "red.png", (210, 30, 30))
    async with sdk(*server) as client:
        balance, _ = await _balance(client)
        token = (await client.upload_file(str(red)))["file_token"]

        # A file_token, a local path (the SDK uploads it first) and flux.1_dev with an image
        # (upgraded to flux.1_kontext_pro). Submitted one after another: see module docstring.
        gemini = await client.generate_image(
            prompt="the object in image[1], painted blue",
            model_version="gemini_2.5_flash_image_preview",
            file=token,
        )
        kontext = await client.generate_image(
            prompt="image[1] as a clay figure", file=str(_png(tmp_path / "green.png", (0, 160, 0)))
        )
        upgraded = await client.generate_image(
            prompt="image[1] in watercolour", model_version="flux.1_dev", files=[token]
        )

        results = [await _wait_success(client, task_id) for task_id in (gemini, kontext, upgraded)]
        versions = [task.input["model_version"] for task in results]
        assert versions == [
            "gemini_2.5_flash_image_preview",
            "flux.1_kontext_pro",
            "flux.1_kontext_pro",
        ]
        paths = [await _download_image(client, task, tmp_path) for task in results]
        assert len({path.read_bytes() for path in paths}) == 3  # different inputs, images

        assert await _balance(client) == (balance - 3 * PRICE, 0)


def _contents(files: dict[str, str]) -> dict[str, bytes]:
    return {name: Path(path).read_bytes() for name, path in files.items()}


async def test_multiview_images(server: tuple[str, str], tmp_path: Path) -> None:
    """generate_multiview_image from a local file (the SDK uploads it), then
    edit_multiview_image of the back view: download_task_models saves four views each, and
    only the edited view changes. 10 credits, then 5 for the one view."""
    async with sdk(*server) as client:
        balance, _ = await _balance(client)
        generated = await _wait_success(
            client, await client.generate_multiview_image(str(_png(tmp_path / "subject.png")))
        )
        edit_id = await client.edit_multiview_image(
            generated.task_id, [{"view": "back", "prompt": "add a backpack"}]
        )
        edited = await _wait_success(client, edit_id)
        views = []
        for task, kind in (
            (generated, "generate_multiview_image"),
            (edited, "edit_multiview_image"),
        ):
            assert task.type == kind
            files = await client.download_task_models(task, str(tmp_path))
            assert list(files) == ["front_view", "left_view", "back_view", "right_view"]
            for name, path in files.items():
                assert path == str(tmp_path / f"{task.task_id}_{name.removesuffix('_view')}.png")
                with Image.open(path) as image:
                    assert image.format == "PNG"
            views.append(await asyncio.to_thread(_contents, files))
        assert [name for name in views[0] if views[0][name] != views[1][name]] == ["back_view"]
        assert await _balance(client) == (balance - 15, 0)  # 0.4.2's Task drops consumed_credit


async def test_api_errors_reach_the_sdk_with_their_code(server: tuple[str, str]) -> None:
    async with sdk(*server) as client:
        before = await _balance(client)

        with pytest.raises(TripoAPIError) as unknown:
            await client.generate_image(prompt="a cat", model_version="flux.9_imaginary")
        assert unknown.value.code == 2017
        assert unknown.value.message

        # In the catalog but not served here: 1004, and the suggestion names what is served.
        with pytest.raises(TripoAPIError) as unserved:
            await client.generate_image(prompt="a cat", model_version="gpt_4o")
        assert unserved.value.code == 1004
        assert "flux.1_kontext_pro" in (unserved.value.suggestion or "")

        # A UUID that is no local path goes out as a file_token; it names no upload.
        with pytest.raises(TripoAPIError) as missing:
            await client.generate_image(prompt="image[1] again", file=str(uuid.uuid4()))
        assert missing.value.code == 2019

        with pytest.raises(TripoAPIError) as not_found:
            await client.get_task(str(uuid.uuid4()))
        assert not_found.value.code == 2001

        assert await _balance(client) == before  # no credits move on a refusal


async def test_wrong_key_is_an_api_error_1002(server: tuple[str, str]) -> None:
    base_url, _ = server
    async with sdk(base_url, "tsk_" + "x" * 43) as client:
        with pytest.raises(TripoAPIError) as refused:
            await client.get_balance()
    assert refused.value.code == 1002


# --- the wire, with plain HTTP -----------------------------------------------------------------


def _trace_id(response: httpx.Response) -> str:
    trace: str = response.headers.get(TRACE_HEADER, "")
    assert trace, f"{response.request.method} {response.request.url} has no {TRACE_HEADER}"
    assert uuid.UUID(trace)
    return trace


def _check_task_object(task: dict[str, Any], task_id: str) -> None:
    missing = TASK_FIELDS - set(task)
    assert not missing, f"task object lacks {sorted(missing)}: {task}"
    assert task["task_id"] == task_id
    assert task["type"] == "generate_image"
    assert isinstance(task["input"], dict)
    assert isinstance(task["output"], dict)
    assert isinstance(task["progress"], int)
    assert 0 <= task["progress"] <= 100
    assert isinstance(task["create_time"], int)
    assert abs(task["create_time"] - time.time()) < 300
    for name in ("consumed_credit", "queuing_num", "running_left_time"):
        assert isinstance(task[name], int), (name, task[name])


async def test_task_object_and_trace_ids_over_http(server: tuple[str, str]) -> None:
    base_url, key = server
    api = f"{base_url}/v2/openapi"
    auth = {"Authorization": f"Bearer {key}"}
    traces: list[str] = []
    async with httpx.AsyncClient(timeout=10.0) as http:
        created = await http.post(
            f"{api}/task",
            headers=auth,
            json={"type": "generate_image", "prompt": "a teapot", "model_version": "flux.1_dev"},
        )
        traces.append(_trace_id(created))
        assert created.status_code == 200, created.text
        body = created.json()
        assert body["code"] == 0
        task_id = body["data"]["task_id"]

        first = await http.get(f"{api}/task/{task_id}", headers=auth)
        traces.append(_trace_id(first))
        assert first.status_code == 200
        task = first.json()["data"]
        _check_task_object(task, task_id)
        assert task["status"] in ("queued", "running", "success")
        if task["status"] != "success":
            assert task["output"] == {}
            assert task["consumed_credit"] == 0
            assert has_estimate(task)
        if task["status"] == "queued":
            assert task["queuing_num"] >= 0
        assert task["input"]["model_version"] == "flux.1_dev"
        assert task["input"]["prompt"] == "a teapot"

        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while task["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"task still {task['status']}"
            await asyncio.sleep(0.1)
            polled = await http.get(f"{api}/task/{task_id}", headers=auth)
            assert polled.status_code == 200
            task = polled.json()["data"]
            _check_task_object(task, task_id)
        assert task["status"] == "success", task
        assert task["progress"] == 100
        assert task["consumed_credit"] == PRICE
        assert task["queuing_num"] == -1
        assert task["running_left_time"] == -1
        assert "error_code" not in task
        image_url = task["output"]["generated_image"]
        assert image_url.startswith(f"{api}/outputs/")

        # The signed URL works with the SDK's stray Authorization header and without one.
        for headers in (auth, {}):
            image = await http.get(image_url, headers=headers)
            traces.append(_trace_id(image))
            assert image.status_code == 200
            assert image.headers["content-type"] == "image/png"
            assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
        tampered = await http.get(re.sub(r"signature=[0-9a-f]", "signature=x", image_url))
        traces.append(_trace_id(tampered))
        assert tampered.status_code == 403
        assert tampered.json()["code"] == 1005

        # Errors carry the envelope and a trace id too.
        anonymous = await http.get(f"{api}/user/balance")
        traces.append(_trace_id(anonymous))
        assert anonymous.status_code == 401
        assert set(anonymous.json()) == {"code", "message", "suggestion"}
        assert anonymous.json()["code"] == 1002

        unknown = await http.get(f"{api}/task/{uuid.uuid4()}", headers=auth)
        traces.append(_trace_id(unknown))
        assert unknown.status_code == 404
        assert unknown.json()["code"] == 2001

        balance = await http.get(f"{api}/user/balance", headers=auth)
        traces.append(_trace_id(balance))
        assert balance.status_code == 200
        assert set(balance.json()["data"]) == {"balance", "frozen"}

        health = await http.get(f"{base_url}/healthz")
        traces.append(_trace_id(health))

    assert len(set(traces)) == len(traces), "trace ids repeat"
