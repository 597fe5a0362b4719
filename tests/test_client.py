"""The Python client (``easel.client``) against the real app.

``AsyncClient`` talks to the app in process through ``httpx.ASGITransport`` (SQLite, memory
object store, the placeholder backend, the in-process worker). The ASGI transport is
async-only, so the blocking ``Client`` talks to a real ``easel serve`` process (marked e2e).
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import easel.client
from apptools import has_estimate, png, settings_for
from easel.api.app import create_app
from easel.client import (
    AsyncClient,
    AuthenticationError,
    Balance,
    Client,
    ConnectionFailed,
    EaselClientError,
    InvalidRequest,
    NotEnoughCredit,
    RateLimited,
    Task,
    TaskFailed,
    TaskNotFound,
    TaskStatus,
    WaitTimeout,
)
from easel.client._base import Upload, plan_images, poll_delay
from easel.runtime import Runtime
from processes import create_key, easel_process, free_port, wait_healthy, write_config

PUBLIC_SURFACE = {
    "AsyncClient",
    "Client",
    "Task",
    "TaskStatus",
    "Balance",
    "ModelInfo",
    "EaselClientError",
    "ConnectionFailed",
    "AuthenticationError",
    "PermissionDenied",
    "InvalidRequest",
    "NotEnoughCredit",
    "TaskNotFound",
    "RateLimited",
    "ServerError",
    "TaskFailed",
    "WaitTimeout",
}


def test_the_public_surface_is_exactly_the_documented_one() -> None:
    assert set(easel.client.__all__) == PUBLIC_SURFACE
    assert len(easel.client.__all__) == len(PUBLIC_SURFACE)
    for name in PUBLIC_SURFACE:
        assert getattr(easel.client, name).__module__.startswith("easel.client")


def test_the_twins_offer_the_same_methods_and_the_async_ones_are_coroutines() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")}

    assert public(AsyncClient) - {"aclose"} == public(Client)
    for name in public(Client):
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name


# -- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "planned"),
    [
        ("https://example.com/a.png", {"url": "https://example.com/a.png"}),
        (
            "3f1c6a0e-6f0b-4a55-9d0e-0d6c8f0b1a2c",
            {"file_token": "3f1c6a0e-6f0b-4a55-9d0e-0d6c8f0b1a2c"},
        ),
        ("refs/fox.png", Upload("fox.png", path=Path("refs/fox.png"))),
        ("fox.JPG", Upload("fox.JPG", path=Path("fox.JPG"))),
        (Path("fox"), Upload("fox", path=Path("fox"))),
        (b"\x89PNG", Upload("image.png", data=b"\x89PNG")),
        ({"object": {"bucket": "b", "key": "k"}}, {"object": {"bucket": "b", "key": "k"}}),
    ],
)
def test_an_image_input_becomes_a_file_object_or_an_upload(image: Any, planned: Any) -> None:
    assert plan_images([image]) == [planned]


@pytest.mark.parametrize(
    ("running_left_time", "delay"),
    [(-1, 0.5), (0, 0.5), (1, 0.5), (4, 2.0), (10, 5.0), (600, 5.0)],
)
def test_wait_pauses_half_the_estimate_within_half_a_second_and_five(
    running_left_time: int, delay: float
) -> None:
    task = Task("t", TaskStatus.RUNNING, running_left_time=running_left_time)
    assert poll_delay(task) == delay


def test_the_key_comes_from_easel_api_key_then_tripo_api_key() -> None:
    both = {"EASEL_API_KEY": "tsk_easel", "TRIPO_API_KEY": "tsk_tripo"}
    assert Client(env=both)._api_key == "tsk_easel"
    assert Client(env={"TRIPO_API_KEY": "tsk_tripo"})._api_key == "tsk_tripo"
    with pytest.raises(AuthenticationError, match="no API key") as caught:
        Client(env={})
    assert "api_key='tsk_…'" in caught.value.suggestion  # Python words; the CLI says --key
    assert "EASEL_API_KEY" in caught.value.suggestion


def test_an_unreachable_server_is_connection_failed() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", "tsk_x") as client,
        pytest.raises(ConnectionFailed, match="could not reach") as caught,
    ):
        client.balance()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


# -- AsyncClient against the app in process ------------------------------------------------


@dataclass
class Served:
    app: Any
    runtime: Runtime
    key: str

    def client(self, key: str | None = None) -> AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return AsyncClient("http://testserver", key or self.key, transport=transport)


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, *, run_worker: bool = True, credits: int = 100, **overrides: Any
) -> AsyncIterator[Served]:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}", **overrides)
    app = create_app(settings, run_worker=run_worker)
    async with app.router.lifespan_context(app):
        runtime: Runtime = app.state.runtime
        yield Served(app, runtime, await runtime.store.accounts.create_key("client", credits))


@contextlib.asynccontextmanager
async def connected(tmp_path: Path, **options: Any) -> AsyncIterator[AsyncClient]:
    async with serving(tmp_path, **options) as served, served.client() as client:
        yield client


async def test_generate_uploads_a_local_image_and_wait_reports_queue_and_progress(
    tmp_path: Path,
) -> None:
    reference = tmp_path / "fox.png"
    reference.write_bytes(png(color="orange"))
    # Long enough that a poll lands while it runs: the client sleeps half the estimate, and
    # 0.5 s while there is none (no task of the model has finished yet).
    options = {"worker_concurrency": 1, "placeholder": {"delay_s": 4.0}}
    async with connected(tmp_path, **options) as client:
        first = await client.generate_image("the task ahead")
        task_id = await client.generate_image("a fox, style of image[1]", images=[reference])
        updates: list[Task] = []
        task = await client.wait(task_id, on_update=updates.append)

        assert task.status is TaskStatus.SUCCESS
        assert task.progress == 100
        assert task.image_url is not None
        assert task.consumed_credit == 5
        assert list(task.input["files"][0]) == ["file_token"]
        assert updates[-1] == task
        queued = [u for u in updates if u.status is TaskStatus.QUEUED]
        assert queued, "the second task waits behind the first"
        # Nothing has finished yet: no estimate, and the server says so.
        assert all(u.queuing_num >= 0 and u.running_left_time == -1 for u in queued)
        assert all(u.raw["running_left_basis"] == "none" for u in queued)
        running = [u for u in updates if u.status is TaskStatus.RUNNING]
        assert running, "a poll lands while it runs"
        assert all(0 <= u.progress < 100 and u.queuing_num == -1 for u in running)
        await client.wait(first)
        assert await client.balance() == Balance(balance=90, frozen=0)


async def test_text_to_image_uploads_a_local_style_image_and_sends_the_negative_prompt(
    tmp_path: Path,
) -> None:
    style = tmp_path / "style.png"
    style.write_bytes(png(color="blue"))
    async with connected(tmp_path, text_to_image_model="gpt_4o") as client:
        task = await client.wait(
            await client.text_to_image("a harbour", negative_prompt="boats", style_image=style)
        )
        plain = await client.wait(await client.text_to_image("a field"))
        assert await client.balance() == Balance(balance=90, frozen=0)

    assert (task.raw["type"], task.status, task.consumed_credit) == (
        "text_to_image",
        TaskStatus.SUCCESS,
        5,
    )
    assert task.model_version == "gpt_4o"
    assert task.input["negative_prompt"] == "boats"
    assert list(task.input["style_image"]) == ["file_token"]
    assert plain.input == {"prompt": "a field", "model_version": "gpt_4o"}


async def test_download_writes_the_png_to_a_file_or_into_a_directory(tmp_path: Path) -> None:
    async with connected(tmp_path) as client:
        task = await client.wait(await client.generate_image("a lighthouse"))
        into_dir = await client.download(task, tmp_path)
        by_id = await client.download(task.task_id, tmp_path / "out" / "light.png")

    assert into_dir == tmp_path / f"{task.task_id}.png"
    assert by_id == tmp_path / "out" / "light.png"
    for path in (into_dir, by_id):
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            assert image.format == "PNG"


async def test_balance_and_models_describe_the_account_and_the_catalog(tmp_path: Path) -> None:
    async with connected(tmp_path, credits=42) as client:
        assert await client.balance() == Balance(balance=42, frozen=0)
        models = {m.model_version: m for m in await client.models()}

    default = models["flux.1_kontext_pro"]
    assert (default.default, default.credits, default.served) == (True, 5, True)
    assert models["gpt_image_2"].credits == 10
    assert not models["gemini_3.1_flash_image_preview"].served
    assert models["gemini_3.1_flash_image_preview"].reason == "no backend is configured for it"
    assert default.reason is None
    assert sum(m.default for m in models.values()) == 1


async def test_cancel_ends_a_queued_task_and_wait_raises_task_failed_with_it(
    tmp_path: Path,
) -> None:
    async with connected(tmp_path, run_worker=False) as client:
        task_id = await client.generate_image("never runs")
        assert (await client.balance()).frozen == 5
        cancelled = await client.cancel(task_id)
        with pytest.raises(TaskFailed) as caught:
            await client.wait(task_id)
        assert await client.balance() == Balance(balance=100, frozen=0)

    assert cancelled.status is TaskStatus.CANCELLED
    assert caught.value.task.status is TaskStatus.CANCELLED
    assert "refunded" in caught.value.suggestion


async def test_wait_raises_task_failed_carrying_the_failed_task(tmp_path: Path) -> None:
    async with connected(tmp_path, placeholder={"fail_rate": 1.0}) as client:
        task_id = await client.generate_image("doomed")
        seen: list[TaskStatus] = []

        async def on_update(task: Task) -> None:  # a coroutine function is awaited
            seen.append(task.status)

        with pytest.raises(TaskFailed, match="ended failed") as caught:
            await client.wait(task_id, on_update=on_update)

    failed = caught.value
    assert seen[-1] is TaskStatus.FAILED
    assert failed.code == 1001
    assert failed.task.status is TaskStatus.FAILED
    assert failed.task.error_msg is not None
    assert "fail_rate" in failed.task.error_msg
    assert failed.task.consumed_credit == 0


async def test_wait_gives_up_after_its_timeout_with_the_last_task(tmp_path: Path) -> None:
    async with connected(tmp_path, run_worker=False) as client:
        task_id = await client.generate_image("never runs")
        with pytest.raises(WaitTimeout) as caught:
            await client.wait(task_id, timeout=0.2)
    assert caught.value.task.status is TaskStatus.QUEUED
    assert caught.value.timeout == 0.2
    assert isinstance(caught.value, TimeoutError)
    assert "timeout=" in caught.value.suggestion  # Python words; the CLI says --timeout


async def _bad_key(served: Served, client: AsyncClient) -> object:
    async with served.client("tsk_not_a_key") as stranger:
        return await stranger.balance()


async def _poor(served: Served, client: AsyncClient) -> object:
    key = await served.runtime.store.accounts.create_key("poor", 0)
    async with served.client(key) as poor:
        return await poor.generate_image("a fox")


Action = Callable[[Served, AsyncClient], Awaitable[object]]


@pytest.mark.parametrize(
    ("action", "error", "code", "status", "suggestion"),
    [
        pytest.param(_bad_key, AuthenticationError, 1002, 401, "easel keys create", id="bad-key"),
        pytest.param(
            lambda s, c: c.generate_image("a fox", model="flux.9"),
            InvalidRequest,
            2017,
            400,
            "Use one of: flux.1_kontext_pro",
            id="unknown-model",
        ),
        pytest.param(_poor, NotEnoughCredit, 2010, 403, "easel credits grant", id="no-credit"),
        pytest.param(
            lambda s, c: c.get_task("no-such-task"),
            TaskNotFound,
            2001,
            404,
            "Check the task_id",
            id="unknown-task",
        ),
        pytest.param(
            lambda s, c: c.upload(b"not an image"),
            InvalidRequest,
            2004,
            400,
            "PNG",
            id="not-an-image",
        ),
    ],
)
async def test_an_error_answer_raises_its_class_with_code_and_suggestion(
    tmp_path: Path,
    action: Action,
    error: type[EaselClientError],
    code: int,
    status: int,
    suggestion: str,
) -> None:
    async with serving(tmp_path, run_worker=False) as served, served.client() as client:
        with pytest.raises(error) as caught:
            await action(served, client)
    assert (caught.value.code, caught.value.status) == (code, status)
    assert suggestion in caught.value.suggestion
    assert caught.value.trace_id
    assert str(caught.value).startswith(f"[{code}] ")


async def test_too_many_unfinished_tasks_is_rate_limited_with_retry_after(tmp_path: Path) -> None:
    async with connected(tmp_path, run_worker=False, max_unfinished_tasks=1) as client:
        await client.generate_image("one")
        with pytest.raises(RateLimited) as caught:
            await client.generate_image("two")
    assert caught.value.code == 2000
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0


# -- Client against a real server process --------------------------------------------------

EXTRA_BACKENDS = """
[backends.broken]
kind = "placeholder"
fail_rate = 1.0
[models."gpt_4o"]
backends = ["broken"]
[backends.slow]
kind = "placeholder"
delay_s = 10.0
[models."gpt_image_1.5"]
backends = ["slow"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """``easel serve`` with the placeholder taking 0.5 s for most models, gpt_4o always
    failing and gpt_image_1.5 taking 10 s; the base URL, a key with 100 credits, the config."""
    directory = tmp_path_factory.mktemp("client-e2e")
    config = write_config(directory, extra=EXTRA_BACKENDS, delay_s=0.5)
    key = create_key(config, 100)
    port, log = free_port(), directory / "serve.log"
    base_url = f"http://127.0.0.1:{port}"
    with easel_process("serve", "--config", str(config), "--port", str(port), log=log) as proc:
        wait_healthy(base_url, proc, log)
        yield base_url, key, config


@pytest.mark.e2e
def test_the_sync_client_uploads_generates_waits_and_downloads(
    server: tuple[str, str, Path], tmp_path: Path
) -> None:
    base_url, key, _ = server
    reference = tmp_path / "ref.png"
    reference.write_bytes(png(color="green"))
    with Client(base_url, key) as client:
        before = client.balance()
        task_id = client.generate_image("a frog, style of image[1]", images=[str(reference)])
        updates: list[Task] = []
        task = client.wait(task_id, timeout=60, on_update=updates.append)
        path = client.download(task, tmp_path / "frog.png")
        after = client.balance()
        served = {m.model_version for m in client.models() if m.served}

    assert task.succeeded
    assert updates[-1].status is TaskStatus.SUCCESS
    # An estimate on every update before the end, or the word that there is none yet.
    assert all(has_estimate(u.raw) for u in updates[:-1])
    with Image.open(path) as image:
        assert image.format == "PNG"
    assert after.balance == before.balance - 5
    assert {"flux.1_kontext_pro", "gpt_4o"} <= served


@pytest.mark.e2e
def test_the_sync_client_cancels_and_maps_errors(server: tuple[str, str, Path]) -> None:
    base_url, key, config = server
    with Client(base_url, key) as client:
        task_id = client.generate_image("cancel me", model="gpt_image_1.5")
        client.cancel(task_id)
        with pytest.raises(TaskFailed) as cancelled:
            client.wait(task_id, timeout=60)
        with pytest.raises(TaskFailed) as failed:
            client.wait(client.generate_image("doomed", model="gpt_4o"), timeout=60)
        with pytest.raises(InvalidRequest) as unknown:
            client.generate_image("a fox", model="flux.9")
        with pytest.raises(TaskNotFound):
            client.get_task("no-such-task")
    with Client(base_url, create_key(config, 0)) as poor, pytest.raises(NotEnoughCredit):
        poor.generate_image("a fox")
    with Client(base_url, "tsk_wrong") as stranger, pytest.raises(AuthenticationError) as bad:
        stranger.balance()

    assert cancelled.value.task.status is TaskStatus.CANCELLED
    assert (failed.value.task.status, failed.value.code) == (TaskStatus.FAILED, 1001)
    assert (unknown.value.code, unknown.value.status) == (2017, 400)
    assert "Use one of" in unknown.value.suggestion
    assert bad.value.code == 1002
