"""End to end: the official ``tripo3d`` 1.0.0 SDK (Tripo API v3) against a real ``easel serve``.

The test environment holds ``tripo3d`` 0.4.2 for the v2 tests (``test_e2e_sdk``); ``make
install`` puts 1.0.0 in ``.venv/tripo3d-v1``. Each test runs ``sdk_v1_scenario.py`` in a child
process with that directory first on its path, once on the SDK's aiohttp transport and once on
its own asyncio client (what it uses where aiohttp is not installed), and checks the JSON of
observations it prints: upload, image-to-image with a reference, text-to-image (with a model,
and without one: a ``text_to_image`` task with a negative prompt), the 0.x-style
``generate_image``, waiting, downloading, listing, balance, usage and the v3 errors, a failed
authentication among them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processes import create_key, placeholder_server
from v3_option_cases import HONOURED, MODELS, REFUSED

pytestmark = pytest.mark.e2e

SDK_DIR = Path(sys.prefix) / "tripo3d-v1"
SCENARIO = Path(__file__).with_name("sdk_v1_scenario.py")
CREDITS = 100
DELAY_S = 0.2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A running ``easel serve`` with the placeholder backend: ``(base_url, config)``."""
    root = tmp_path_factory.mktemp("easel-v3")
    with placeholder_server(root, models=MODELS, delay_s=DELAY_S) as running:
        yield running


def run_scenario(base_url: str, key: str, workdir: Path, *flags: str) -> dict[str, Any]:
    if not (SDK_DIR / "tripo3d").is_dir():
        message = f"tripo3d 1.0.0 is not installed in {SDK_DIR}; run `make install`"
        if os.environ.get("EASEL_CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = {
        **os.environ,
        "PYTHONPATH": str(SDK_DIR),
        "TRIPO_DISABLE_GEO_DETECTION": "1",
    }
    done = subprocess.run(
        [sys.executable, str(SCENARIO), base_url, key, str(workdir), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"the scenario failed:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("transport", ["aiohttp", "asyncio"])
def test_a_v3_session_with_the_official_sdk_1_0(
    server: tuple[str, Path], tmp_path: Path, transport: str
) -> None:
    base_url, config = server
    key = create_key(config, CREDITS)  # a fresh key: balances and usage start clean
    flags = ("--no-aiohttp",) if transport == "asyncio" else ()
    seen = run_scenario(base_url, key, tmp_path, *flags)

    assert seen["version"] == "1.0.0"
    assert (
        seen["transport"] == {"aiohttp": "AioHttpBackend", "asyncio": "FallbackBackend"}[transport]
    )
    assert seen["balance_before"] == {"balance": float(CREDITS), "frozen": 0.0}

    tasks = seen["tasks"]
    assert {name: task["status"] for name, task in tasks.items()} == {
        "i2i": "success",
        "t2i": "success",
        "generate": "success",
        "t2i_plain": "success",
    }
    assert tasks["i2i"]["type"] == "image_to_image"
    assert tasks["generate"]["type"] == "image_to_image"
    assert tasks["t2i"]["type"] == tasks["t2i_plain"]["type"] == "text_to_image"
    assert seen["t2i_plain_input"]["negative_prompt"] == "boats"
    for task in tasks.values():
        assert task["progress"] == 100
        assert task["credits_consumed"] == 5.0
        assert task["completed_at"].endswith("Z")
        assert task["created_at"] > 0
        assert task["download"]["format"] == "PNG"
        assert task["download"]["name"] == f"{task['task_id']}_image.png"
        assert min(task["download"]["size"]) >= 64

    assert seen["listed"] == {
        "tasks": sorted([tasks["i2i"]["task_id"], tasks["t2i"]["task_id"]]),
        "missed": ["00000000-0000-4000-8000-000000000000"],
    }
    usage = seen["usage"]
    assert [item["task_id"] for item in usage] == [
        tasks["t2i_plain"]["task_id"],
        tasks["generate"]["task_id"],
        tasks["t2i"]["task_id"],
        tasks["i2i"]["task_id"],
    ]
    assert all(item["credits_consumed"] == 5.0 for item in usage)
    assert seen["balance_after"] == {"balance": float(CREDITS - 20), "frozen": 0.0}

    errors = seen["errors"]
    assert errors["model"]["code"] == 2002
    assert "not supported by this server" in errors["model"]["message"]
    assert errors["bad_model"]["code"] == 2017
    assert errors["missing"]["code"] == 2001
    assert all(error["id"] for error in errors.values())  # the v3 envelope's request_id

    # A key the server does not know: HTTP 401 with v3's code 2, raised as TripoAPIError.
    auth = seen["auth_error"]
    assert auth["class"] == "TripoAPIError"
    assert auth["code"] == 2
    assert auth["message"].startswith("Authentication failed")
    assert auth["suggestion"] and auth["request_id"]


def test_every_v3_image_option_through_the_official_sdk_1_0(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    """The SDK's keyword arguments reach the model (v3_option_cases): each honoured option
    makes its image (16:9 paints wide, jpeg encodes a JPEG, a WxH size a banner) and is
    charged; each refused one is the SDK's TripoAPIError 1004 before any cost."""
    base_url, config = server
    key = create_key(config, CREDITS)
    seen = run_scenario(base_url, key, tmp_path, "--options")
    assert seen["balance_before"] == {"balance": float(CREDITS), "frozen": 0.0}
    for case, error in zip(REFUSED, seen["refused"], strict=True):
        assert error["code"] == 1004, case
        assert case.refused in error["message"], case
    assert seen["balance_refused"] == seen["balance_before"]
    spent = 0.0
    for case, task in zip(HONOURED, seen["honoured"], strict=True):
        assert task["status"] == "success", case
        assert task["type"] == case.route.replace("-", "_"), case
        assert task["file"]["format"] == case.format, case
        assert tuple(task["file"]["size"]) == case.size, case
        assert task["file"]["name"].endswith(".jpg" if case.format == "JPEG" else ".png"), case
        assert {name: task["input"][name] for name in case.options} == case.options, case
        spent += task["credits_consumed"]
    assert seen["balance_after"] == {"balance": CREDITS - spent, "frozen": 0.0}


def test_multiview_through_the_official_sdk_1_0(server: tuple[str, Path], tmp_path: Path) -> None:
    """image_to_multiview (the SDK uploads the local file) and edit_multiview of the back view:
    download_task_models saves the four views of each; only the back one changes."""
    base_url, config = server
    key = create_key(config, CREDITS)
    seen = run_scenario(base_url, key, tmp_path, "--multiview")
    generate, edit = seen["tasks"]["generate"], seen["tasks"]["edit"]
    assert (generate["type"], edit["type"]) == ("generate_multiview_image", "edit_multiview_image")
    for task, suffix in ((generate, "generate"), (edit, "edit")):
        assert task["status"] == "success", suffix
        assert list(task["files"]) == ["front_view", "left_view", "back_view", "right_view"]
        for view, facts in task["files"].items():
            assert facts["name"] == f"{task['task_id']}_{view.removesuffix('_view')}.png"
            assert facts["format"] == "PNG"
    changed = [
        view
        for view, facts in generate["files"].items()
        if facts["sha256"] != edit["files"][view]["sha256"]
    ]
    assert changed == ["back_view"]
    assert seen["listed"] == {
        generate["task_id"]: "generate_multiview_image",
        edit["task_id"]: "edit_multiview_image",
    }
    assert (generate["credits_consumed"], edit["credits_consumed"]) == (10.0, 5.0)
    assert seen["balance_after"] == {"balance": float(CREDITS - 15), "frozen": 0.0}
