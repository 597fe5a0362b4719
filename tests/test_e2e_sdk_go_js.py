"""End to end: Tripo's official v3 Go and JS SDKs' calls against a real ``easel serve``.

The SDKs are not on the registries reachable here; :mod:`sdk_wire` sends what each sends (its
paths under the ``/v3`` base URL, headers, body bytes, multipart uploads with the SDK's
default file name and type) and reads each answer as the SDK does (:mod:`sdk_decoders`: Go's
structs decoded strictly, JS's declared TypeScript types). One server (placeholder backend)
serves the module; each SDK has its own key. Covered: text-to-image, upload and
image-to-image (an upload's token, an earlier task's id), every v3 image option honoured or
refused (:mod:`v3_option_cases`, the table the ``tripo3d`` 1.x test checks too), multiview
generate and edit, the list call, balance, downloads as the SDKs' examples do them, and the
API errors each SDK raises.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from processes import create_key, placeholder_server
from sdk_decoders import GoBalance, GoStrict, GoTask, GoTaskList, JsBalance, JsTask, js_decode
from sdk_wire import ApiError, Client, GoSdk, JsSdk
from v3_option_cases import HONOURED, MODELS, REFUSED

pytestmark = pytest.mark.e2e

CREDITS = 500
MISSING = "00000000-0000-4000-8000-000000000000"
VIEWS = ("front", "left", "back", "right")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    with placeholder_server(tmp_path_factory.mktemp("easel-go-js"), models=MODELS) as running:
        yield running


@pytest.fixture(scope="module", params=[GoSdk, JsSdk], ids=["go", "js"])
def sdk(request: pytest.FixtureRequest, server: tuple[str, Path]) -> Iterator[Any]:
    """The SDK's client on its own key, ``baseUrl`` set to the server's ``/v3``."""
    base_url, config = server
    with httpx.Client(timeout=30) as http:
        yield request.param(http, f"{base_url}/v3", create_key(config, CREDITS))


def png(colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(out, format="PNG")
    return out.getvalue()


def field(task: Any, name: str) -> Any:
    """A decoded task's field: a Go struct's attribute, a JS object's key."""
    return getattr(task, name) if isinstance(task, GoStrict) else task.get(name)


def images(sdk: Client, task: Any) -> list[Image.Image]:
    """The task's downloaded images (the SDK examples' way), each decoded."""
    downloaded = sdk.download_outputs(task)  # type: ignore[attr-defined]
    assert downloaded, f"no URL in the output of {task}"
    found: list[Image.Image] = []
    for url, data in downloaded.items():
        image = Image.open(io.BytesIO(data))
        image.load()
        found.append(image)
        assert url.split("?")[0].endswith(".jpg" if image.format == "JPEG" else ".png")
    return found


def balance(sdk: Any) -> tuple[float, float]:
    answer = sdk.get_balance()
    return field(answer, "balance"), field(answer, "frozen")


def test_text_to_image_and_image_to_image_from_an_upload_and_a_task(sdk: Any) -> None:
    before, _ = balance(sdk)
    # The SDK's defaults: file name "upload.bin", no part type (Go) / application/octet-stream.
    token = sdk.upload_file(png())
    drawn = sdk.wait_for_task(sdk.text_to_image(prompt="a lighthouse at dusk"))
    edited = sdk.wait_for_task(sdk.image_to_image(input=token, prompt="image[1] in watercolour"))
    chained = sdk.wait_for_task(
        sdk.image_to_image(input=field(edited, "task_id"), prompt="image[1] at night")
    )
    spent = 0.0
    for task, kind in ((drawn, "text_to_image"), (edited, "image_to_image"), (chained, None)):
        assert field(task, "status") == "success"
        assert field(task, "progress") == 100
        assert field(task, "created_at").endswith("Z")
        assert field(task, "completed_at").endswith("Z")
        assert kind is None or field(task, "type") == kind
        (image,) = images(sdk, task)
        assert (image.format, image.size) == ("PNG", (512, 512))
        spent += field(task, "credits_consumed")
    assert spent == 15.0
    assert balance(sdk) == (before - spent, 0.0)


def test_each_v3_option_is_honoured_or_refused_before_any_cost(sdk: Any) -> None:
    token = sdk.upload_file(png(), "ref.png", "image/png")  # as the examples upload a file
    before, _ = balance(sdk)
    for case in REFUSED:
        submit = sdk.image_to_image if case.route == "image-to-image" else sdk.text_to_image
        extra = {"input": token} if case.route == "image-to-image" else {}
        with pytest.raises(ApiError) as refused:
            submit(**extra, prompt="a kite", **case.body)
        assert (refused.value.status, refused.value.code) == (400, 1004), case
        assert case.refused in refused.value.message, case
    assert balance(sdk) == (before, 0.0)

    submitted = []
    for case in HONOURED:
        if case.route == "image-to-image":
            submitted.append(sdk.image_to_image(input=token, prompt="a kite", **case.body))
        else:
            submitted.append(sdk.text_to_image(prompt="a kite", **case.body))
    spent = 0.0
    for case, task_id in zip(HONOURED, submitted, strict=True):
        task = sdk.wait_for_task(task_id)
        (image,) = images(sdk, task)
        assert (case.option, image.format, image.size) == (case.option, case.format, case.size)
        for name, value in case.options.items():
            assert field(task, "input")[name] == value
        spent += field(task, "credits_consumed")
    assert balance(sdk) == (before - spent, 0.0)


def test_multiview_generate_then_edit_one_view(sdk: Any) -> None:
    before, _ = balance(sdk)
    token = sdk.upload_file(png((200, 60, 60)), "subject.png", "image/png")
    generated = sdk.wait_for_task(sdk.image_to_multiview(input=token))
    assert field(generated, "type") == "generate_multiview_image"
    views = sdk.download_outputs(generated)
    edit_id = sdk.edit_multiview(
        input=field(generated, "task_id"), prompts=[{"prompt": "add a backpack", "view": "back"}]
    )
    edited = sdk.wait_for_task(edit_id)
    assert field(edited, "type") == "edit_multiview_image"
    edited_views = sdk.download_outputs(edited)
    by_view = [_by_view(found) for found in (views, edited_views)]
    for found in by_view:
        assert list(found) == list(VIEWS)
        for data in found.values():
            assert Image.open(io.BytesIO(data)).format == "PNG"
    before_views, after_views = by_view
    assert [v for v in VIEWS if before_views[v] != after_views[v]] == ["back"]
    cost = field(generated, "credits_consumed") + field(edited, "credits_consumed")
    assert cost == 15.0  # 10 for four views, 5 for one edited view
    assert balance(sdk) == (before - cost, 0.0)


def _by_view(downloaded: dict[str, bytes]) -> dict[str, bytes]:
    """The views' bytes by view name; the same view's URL may be listed twice."""
    found: dict[str, bytes] = {}
    for url, data in downloaded.items():
        view = url.split("?")[0].rsplit("/", 1)[1].split(".")[0]
        assert found.setdefault(view, data) == data
    return {view: found[view] for view in VIEWS if view in found}


def test_the_list_call_decodes_into_the_sdks_list(sdk: Any) -> None:
    first = sdk.wait_for_task(sdk.text_to_image(prompt="a kite"))
    second = sdk.wait_for_task(sdk.text_to_image(prompt="a boat", model="flux.1_dev"))
    ids = [field(second, "task_id"), MISSING, field(first, "task_id")]
    listed = sdk.list_tasks(ids)
    assert [field(task, "task_id") for task in listed] == [ids[0], ids[2]]
    assert [field(task, "status") for task in listed] == ["success", "success"]
    assert [field(task, "credits_consumed") for task in listed] == [5.0, 5.0]


def test_api_errors_reach_the_sdk_as_its_api_error(sdk: Any) -> None:
    with pytest.raises(ApiError) as missing:
        sdk.get_task(MISSING)
    assert (missing.value.status, missing.value.code) == (404, 2001)
    with pytest.raises(ApiError) as unknown:
        sdk.text_to_image(prompt="a kite", model="seedream_v3")
    assert (unknown.value.status, unknown.value.code) == (400, 2017)
    assert "seedream_v4" in unknown.value.suggestion


def test_v3_error_codes_where_v3_differs_from_v2(sdk: Any) -> None:
    """Tripo's v3 answers a bad key 401 / 2 and a bad file token 400 / 1004 (v2: 1002, 2019)."""
    stranger = type(sdk)(sdk.http, sdk.base_url, "tsk_" + "x" * 43)
    with pytest.raises(ApiError) as refused:
        stranger.get_balance()
    assert (refused.value.status, refused.value.code) == (401, 2)
    with pytest.raises(ApiError) as bad_token:
        sdk.image_to_image(input=MISSING, prompt="image[1] again")
    assert (bad_token.value.status, bad_token.value.code) == (400, 1004)


TASK = {"task_id": "t", "type": "text_to_image", "status": "success"}


@pytest.mark.parametrize(
    ("declared", "answer"),
    [
        (GoTask, {**TASK, "credits_consumed": "5.00"}),  # a decimal sent as a string
        (GoTask, {**TASK, "progress": 50.0}),  # int: "cannot unmarshal number 50.0"
        (GoTask, {**TASK, "created_at": 1709048933}),  # string
        (GoTask, {**TASK, "error_code": 2**63}),  # beyond int64
        (GoTask, {**TASK, "output": {"generated_image_url": ["http://a"]}}),
        (GoTaskList, {"tasks": {"t": TASK}}),  # "cannot unmarshal object into … []Task"
        (GoBalance, {"balance": "95.00"}),
        (JsTask, {**TASK, "status": "done"}),  # not a TaskStatusValue
        (JsTask, {**TASK, "progress": None}),  # optional: absent, not null
        (JsTask, {"task_id": "t", "status": "queued"}),  # type is required
        (JsBalance, {"frozen": 0}),
    ],
)
def test_the_decoders_refuse_what_the_sdks_cannot_read(declared: Any, answer: Any) -> None:
    """The checks above can fail: each answer here breaks the SDK's decoding or its type."""
    go = issubclass(declared, GoStrict)
    decode = declared.model_validate if go else functools.partial(js_decode, declared)
    with pytest.raises(ValidationError):
        decode(answer)


def test_the_decoders_take_what_the_sdks_take() -> None:
    """Go ignores unknown fields and reads null as the zero value; JS types allow extra keys."""
    loose = {**TASK, "progress": 5, "output": None, "model": "x", "credits_consumed": 5}
    assert GoTask.model_validate(loose).credits_consumed == 5.0
    assert js_decode(JsTask, {**TASK, "progress": 5.5, "model": "x"})["progress"] == 5.5
