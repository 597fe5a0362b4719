"""A Tripo user's session with the official ``tripo3d`` 1.x SDK (API v3), as a script.

``test_e2e_sdk_v3`` runs it in a child process whose ``PYTHONPATH`` puts the 1.x SDK first
(the test environment itself holds 0.4.2 for the v2 tests), then checks what it printed:
one JSON object of observations. With ``--no-aiohttp`` the SDK cannot import aiohttp and
falls back to its own asyncio HTTP client, as it does where aiohttp is not installed.

Usage: python sdk_v1_scenario.py BASE_URL API_KEY WORKDIR [--no-aiohttp] [--options|--multiview]

With ``--options`` it runs :func:`options_scenario` instead (every v3 image option), with
``--multiview`` :func:`multiview_scenario` (four views, then one edited).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from PIL import Image


def _image_facts(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with Image.open(path) as image:
        image.load()
        facts = {"name": Path(path).name, "format": image.format, "size": list(image.size)}
    return {**facts, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def _task_facts(task: Any) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "type": task.type,
        "status": task.status.value,
        "progress": task.progress,
        "image": task.output.generated_image_url,
        "credits_consumed": task.credits_consumed,
        "created_at": task.create_time,
        "completed_at": task.completed_at,
    }


async def scenario(base_url: str, key: str, workdir: Path) -> dict[str, Any]:
    import tripo3d
    from tripo3d import TripoAPIError, TripoClient, TripoError

    reference = workdir / "reference.png"
    Image.new("RGB", (96, 64), (40, 120, 200)).save(reference, format="PNG")
    out: dict[str, Any] = {"version": tripo3d.__version__}
    async with TripoClient(api_key=key, v3_base_url=base_url) as client:
        out["transport"] = type(client._http).__name__
        out["balance_before"] = vars(await client.get_balance())

        uploaded = await client.upload_file(str(reference))
        out["file_token"] = uploaded["file_token"]

        # A reference given as a local path: the SDK uploads it itself.
        i2i_id = await client.image_to_image(
            str(reference), prompt="the object of image[1], in watercolour"
        )
        t2i_id = await client.text_to_image("a lighthouse at dusk", model="flux.1_dev")
        # The 0.x-style call, with the token of the explicit upload and a template.
        generate_id = await client.generate_image(
            prompt="a robot", files=[uploaded["file_token"]], t_pose=True
        )
        # No model: the server's text-to-image model at text_to_image's flat price.
        plain_id = await client.text_to_image("a quiet harbour", negative_prompt="boats")
        tasks = {}
        for name, task_id in (
            ("i2i", i2i_id),
            ("t2i", t2i_id),
            ("generate", generate_id),
            ("t2i_plain", plain_id),
        ):
            task = await client.wait_for_task(task_id, polling_interval=0.2, timeout=60)
            tasks[name] = _task_facts(task)
            downloads = await client.download_task_models(task, str(workdir))
            tasks[name]["download"] = _image_facts(downloads.get("image"))
        out["tasks"] = tasks

        listed = await client.list_tasks([i2i_id, t2i_id, "00000000-0000-4000-8000-000000000000"])
        out["listed"] = {"tasks": sorted(listed.tasks), "missed": listed.missed}
        out["usage"] = [vars(item) for item in await client.get_usage(limit=10)]
        out["balance_after"] = vars(await client.get_balance())

        errors = {}
        for name, call in (
            ("model", client.text_to_model("a house")),
            ("bad_model", client.text_to_image("a cat", model="seedream_v3")),
            ("missing", client.get_task("00000000-0000-4000-8000-000000000000")),
        ):
            try:
                await call
            except TripoAPIError as exc:
                errors[name] = {"code": exc.code, "message": exc.message, "id": exc.request_id}
        out["errors"] = errors
        plain = await client.get_task(plain_id)
        out["t2i_plain_input"] = plain.input

    async with TripoClient(api_key="tsk_not_a_key_of_this_server", v3_base_url=base_url) as other:
        try:
            await other.get_balance()
        except TripoError as exc:
            out["auth_error"] = {"class": type(exc).__name__, **_error_facts(exc)}
    return out


async def options_scenario(base_url: str, key: str, workdir: Path) -> dict[str, Any]:
    """Every case of :mod:`v3_option_cases` through the SDK's keyword arguments (it sends
    them as given): the image each honoured one made, the error each refused one raised."""
    from tripo3d import TripoAPIError, TripoClient

    from v3_option_cases import HONOURED, REFUSED

    reference = workdir / "reference.png"
    Image.new("RGB", (96, 64), (40, 120, 200)).save(reference, format="PNG")
    out: dict[str, Any] = {"honoured": [], "refused": []}
    async with TripoClient(api_key=key, v3_base_url=base_url) as client:
        token = (await client.upload_file(str(reference)))["file_token"]
        out["balance_before"] = vars(await client.get_balance())
        for case in REFUSED:
            try:
                await _submit_case(client, case, token)
            except TripoAPIError as exc:
                out["refused"].append({"code": exc.code, "message": exc.message})
        out["balance_refused"] = vars(await client.get_balance())
        task_ids = [await _submit_case(client, case, token) for case in HONOURED]
        for task_id in task_ids:
            task = await client.wait_for_task(task_id, polling_interval=0.2, timeout=60)
            downloads = await client.download_task_models(task, str(workdir))
            out["honoured"].append(
                {**_task_facts(task), "input": task.input, "file": _image_facts(downloads["image"])}
            )
        out["balance_after"] = vars(await client.get_balance())
    return out


async def _submit_case(client: Any, case: Any, token: str) -> str:
    if case.route == "text-to-image":
        task_id: str = await client.text_to_image("a kite", **case.body)
    else:
        task_id = await client.image_to_image(token, prompt="a kite", **case.body)
    return task_id


async def multiview_scenario(base_url: str, key: str, workdir: Path) -> dict[str, Any]:
    """``image_to_multiview`` from a local file, then ``edit_multiview`` of one view: the
    views the SDK downloads for each."""
    from tripo3d import TripoClient

    subject = workdir / "subject.png"
    Image.new("RGB", (96, 64), (200, 60, 60)).save(subject, format="PNG")
    out: dict[str, Any] = {"balance_before": None, "tasks": {}}
    async with TripoClient(api_key=key, v3_base_url=base_url) as client:
        out["balance_before"] = vars(await client.get_balance())
        generated = await client.image_to_multiview(str(subject))
        await client.wait_for_task(generated, polling_interval=0.2, timeout=60)
        edited = await client.edit_multiview(generated, [{"view": "back", "prompt": "a backpack"}])
        for name, task_id in (("generate", generated), ("edit", edited)):
            task = await client.wait_for_task(task_id, polling_interval=0.2, timeout=60)
            downloads = await client.download_task_models(task, str(workdir))
            out["tasks"][name] = {
                **_task_facts(task),
                "files": {view: _image_facts(path) for view, path in downloads.items()},
            }
        listed = await client.list_tasks([generated, edited])
        out["listed"] = {task_id: task.type for task_id, task in listed.tasks.items()}
        out["balance_after"] = vars(await client.get_balance())
    return out


def _error_facts(exc: Any) -> dict[str, Any]:
    return {
        name: getattr(exc, name, None) for name in ("code", "message", "suggestion", "request_id")
    }


def main() -> None:
    base_url, key, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if "--no-aiohttp" in sys.argv:
        sys.modules["aiohttp"] = None  # type: ignore[assignment]  # import fails, spec is None
    os.environ["TRIPO_DISABLE_GEO_DETECTION"] = "1"  # else its import asks geo-IP services
    run = scenario
    if "--options" in sys.argv:
        run = options_scenario
    elif "--multiview" in sys.argv:
        run = multiview_scenario
    print(json.dumps(asyncio.run(run(base_url, key, workdir))))


if __name__ == "__main__":
    main()
