"""The blocking client: :class:`Client`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

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


class Client(BaseClient):
    """A blocking Easel client.

    ``base_url`` defaults to ``$EASEL_SERVER`` or http://127.0.0.1:8000, ``api_key`` to
    ``$EASEL_API_KEY`` or ``$TRIPO_API_KEY``. Pass ``transport`` to route requests elsewhere
    (e.g. ``httpx.MockTransport``). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, env=env)
        self._http = httpx.Client(transport=transport, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(**self._request_args(call))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return call.parse(response)

    def generate_image(
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
            {"file_token": self._upload_planned(item)} if isinstance(item, Upload) else item
            for item in plan_images(images)
        ]
        body = self._task_body(prompt, model, files, template, t_pose, sketch_to_render)
        return self._send(self._submit_call(body))

    def text_to_image(
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
            style = {"file_token": self._upload_planned(item)} if isinstance(item, Upload) else item
        body = self._text_to_image_body(prompt, negative_prompt, style)
        return self._send(self._submit_call(body))

    def _upload_planned(self, item: Upload) -> str:
        data = item.path.read_bytes() if item.path is not None else item.data or b""
        return self._send(self._upload_call(item.name, data))

    def upload(self, image: str | os.PathLike[str] | bytes) -> str:
        """Upload a local image (a path or its bytes); its image_token."""
        return self._upload_planned(as_upload(image))

    def get_task(self, task_id: str) -> Task:
        return self._send(self._task_call(task_id))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[Task], object] | None = None,
    ) -> Task:
        """Poll until the task ends, pausing per its ``running_left_time``; the successful
        task. Raises TaskFailed if it ends otherwise, WaitTimeout after ``timeout`` seconds."""
        deadline = Deadline(timeout)
        while True:
            task = self.get_task(task_id)
            if on_update is not None:
                on_update(task)
            if (done := settle(task)) is not None:
                return done
            time.sleep(deadline.sleep_for(task))

    def cancel(self, task_id: str) -> Task:
        """Ask the server to cancel the task; the task as it is now."""
        return self._send(self._cancel_call(task_id))

    def balance(self) -> Balance:
        return self._send(self._balance_call())

    def models(self) -> list[ModelInfo]:
        return self._send(self._models_call())

    def download(self, task: Task | str, path: str | os.PathLike[str] | None = None) -> Path:
        """Save the task's image to ``path`` (a file, or a directory for ``<task_id>.png``;
        default: the current directory); the path written."""
        if isinstance(task, str):
            task = self.get_task(task)
        data = self._send(self._download_call(task))
        target = output_path(task, path, path is not None and Path(path).is_dir())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target
