"""The asynchronous client: :class:`AsyncClient` (asyncio or trio, through anyio)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import anyio
import httpx

from easel.client._base import (
    DEFAULT_TIMEOUT_S,
    BaseClient,
    Call,
    Deadline,
    ImageInput,
    TimeoutTypes,
    Upload,
    as_upload,
    output_path,
    plan_images,
    settle,
)
from easel.client.models import Balance, ModelInfo, Task

T = TypeVar("T")


class AsyncClient(BaseClient):
    """An asynchronous Easel client, the twin of :class:`~easel.client.Client`.

    ``base_url`` defaults to ``$EASEL_SERVER`` or http://127.0.0.1:8000, ``api_key`` to
    ``$EASEL_API_KEY`` or ``$TRIPO_API_KEY``. Pass ``transport`` to route requests elsewhere,
    e.g. ``httpx.ASGITransport(app)`` for the app in process. Use it as an async context
    manager, or await :meth:`close`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, env=env)
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(**self._request_args(call))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return call.parse(response)

    async def generate_image(
        self,
        prompt: str | None = None,
        *,
        model: str | None = None,
        images: Iterable[ImageInput] = (),
        template: str | None = None,
        t_pose: bool = False,
        sketch_to_render: bool = False,
    ) -> str:
        """Submit a generate_image task (uploading local images first); its task_id."""
        files = [
            {"file_token": await self._upload_planned(item)} if isinstance(item, Upload) else item
            for item in plan_images(images)
        ]
        body = self._task_body(prompt, model, files, template, t_pose, sketch_to_render)
        return await self._send(self._submit_call(body))

    async def text_to_image(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        style_image: ImageInput | None = None,
    ) -> str:
        """Submit a text_to_image task (Tripo's "basic text to image": the server's
        text-to-image model at a flat price) and upload a local ``style_image`` first; its
        task_id. The style image is image[1], whose style the result takes."""
        style = None
        if style_image is not None:
            (item,) = plan_images([style_image])
            style = (
                {"file_token": await self._upload_planned(item)}
                if isinstance(item, Upload)
                else item
            )
        body = self._text_to_image_body(prompt, negative_prompt, style)
        return await self._send(self._submit_call(body))

    async def _upload_planned(self, item: Upload) -> str:
        data = await anyio.Path(item.path).read_bytes() if item.path is not None else item.data
        return await self._send(self._upload_call(item.name, data or b""))

    async def upload(self, image: str | os.PathLike[str] | bytes) -> str:
        """Upload a local image (a path or its bytes); its image_token."""
        return await self._upload_planned(as_upload(image))

    async def get_task(self, task_id: str) -> Task:
        return await self._send(self._task_call(task_id))

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the twin of Client.wait)
        on_update: Callable[[Task], object] | None = None,
    ) -> Task:
        """Poll until the task ends, pausing per its ``running_left_time``; the successful
        task. Raises TaskFailed if it ends otherwise, WaitTimeout after ``timeout`` seconds.
        ``on_update`` may be a plain function or a coroutine function."""
        deadline = Deadline(timeout)
        while True:
            task = await self.get_task(task_id)
            if on_update is not None and inspect.isawaitable(result := on_update(task)):
                await result
            if (done := settle(task)) is not None:
                return done
            await anyio.sleep(deadline.sleep_for(task))

    async def cancel(self, task_id: str) -> Task:
        """Ask the server to cancel the task; the task as it is now."""
        return await self._send(self._cancel_call(task_id))

    async def balance(self) -> Balance:
        return await self._send(self._balance_call())

    async def models(self) -> list[ModelInfo]:
        return await self._send(self._models_call())

    async def download(self, task: Task | str, path: str | os.PathLike[str] | None = None) -> Path:
        """Save the task's image to ``path`` (a file, or a directory for ``<task_id>.png``;
        default: the current directory); the path written."""
        if isinstance(task, str):
            task = await self.get_task(task)
        data = await self._send(self._download_call(task))
        is_dir = path is not None and await anyio.Path(path).is_dir()
        target = anyio.Path(output_path(task, path, is_dir))
        await target.parent.mkdir(parents=True, exist_ok=True)
        await target.write_bytes(data)
        return Path(target)
