"""The application services the API calls: submit, view, upload. HTTP-free.

Submitting validates everything that can be checked up front (body, catalog, served model,
references, image formats), then holds the credits and enqueues in one transaction. A
refusal raises the protocol error and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from easel.backends.fallback import Router
from easel.config import Settings
from easel.domain import eta, multiview
from easel.domain.accounts import Caller
from easel.domain.errors import (
    FatalServerError,
    FileNotFound,
    ImageTypeNotSupported,
    InvalidParameter,
    TaskNotFound,
)
from easel.domain.images import check_image
from easel.domain.parsing import FileRef
from easel.domain.task_types import TaskRequest, parse_task
from easel.domain.tasks import WITH_ERROR, AttemptOutcome, Reference, Status, Task
from easel.outbound import OutboundPolicy
from easel.outbound.fetch import check_url
from easel.services.upload_tokens import inspect_arrived, is_pending
from easel.storage.objects import ObjectStore
from easel.storage.signing import UrlSigner
from easel.store import Store
from easel.store.records import Attempt, Idempotency, NewTask, Outlook, StoredFile


class TaskService:
    def __init__(
        self,
        store: Store,
        objects: ObjectStore,
        router: Router,
        settings: Settings,
        signer: UrlSigner,
        on_submit: Callable[[], None] = lambda: None,
    ) -> None:
        self.store, self.objects, self.router = store, objects, router
        self.settings, self.signer, self.on_submit = settings, signer, on_submit
        self.policy = OutboundPolicy.from_strings(settings.allow_outbound_cidrs)

    # -- submit ---------------------------------------------------------------------------

    async def submit(
        self,
        caller: Caller,
        body: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        v3: bool = False,
    ) -> str:
        """Validate, hold the credits and enqueue; returns the task id. With an
        ``idempotency_key``, a repeat of the same body returns the first task's id. ``v3``:
        the body comes from a v3 route (:func:`easel.domain.parsing.parse_task`)."""
        idempotency = None
        if idempotency_key is not None:
            if not 0 < len(idempotency_key) <= 255:
                raise InvalidParameter("Idempotency-Key must be 1 to 255 characters long.")
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(canonical.encode()).hexdigest()
            idempotency = Idempotency(idempotency_key, digest)
        settings = self.settings
        request = parse_task(
            body,
            settings.catalog,
            settings.text_to_image_model,
            settings.multiview_model,
            v3=v3,
        )
        version = request.model.version
        if not await self.is_served(version):
            served = await self.served()
            why = self.router.unserved_reason(version) or "no ready backend"
            raise InvalidParameter(
                f"model_version {version!r} is not served by this server ({why}).",
                f"Use one of the served models: {', '.join(served)}."
                if served
                else "This server serves no model yet; its operator must configure a backend.",
            )
        if isinstance(request, multiview.MultiviewRequest) and request.original_task_id:
            refs = await self._original_views(caller, request.original_task_id)
        else:
            refs = await self._references(caller, request)
        task_id = str(uuid.uuid4())
        new = NewTask(
            id=task_id,
            type=request.type,
            model_version=version,
            input=request.input_echo(),
            prompt=request.composed_prompt,
            refs=refs,
            price=request.credits,
        )
        task_id = await self.store.tasks.submit(
            caller,
            new,
            max_unfinished=self.settings.max_unfinished_tasks,
            retry_after_s=await self.retry_after(version, edits=bool(refs)),
            idempotency=idempotency,
        )
        self.on_submit()
        return task_id

    async def is_served(self, version: str) -> bool:
        """A backend here is ready for it, or a live worker elsewhere takes it."""
        return self.router.is_served(version) or version in await self.store.queue.live_models()

    async def served(self) -> list[str]:
        live = await self.store.queue.live_models()
        return [v for v in self.settings.catalog if v in live or self.router.is_served(v)]

    async def _original_views(self, caller: Caller, task_id: str) -> tuple[Reference, ...]:
        """The four views of the caller's finished multiview task that an edit names, as its
        references in view order: 2001 when the key has no such task, 1004 when it is not a
        successful multiview task, 2019 when its views passed their retention time."""
        task = await self.store.tasks.get(task_id, caller.key_id)
        if task is None:
            raise TaskNotFound(
                f"original_task_id {task_id!r} names no task of this key.",
                "Give the task_id of a generate_multiview_image task this key submitted.",
            )
        if task.type not in multiview.MULTIVIEW_TYPES:
            raise InvalidParameter(
                f"original_task_id {task_id!r} is a {task.type} task, not a multiview task.",
                "Edit the views of a generate_multiview_image (or edit_multiview_image) task.",
            )
        if task.status is not Status.SUCCESS:
            raise InvalidParameter(
                f"original_task_id {task_id!r} is {task.status.value}, not success: it has "
                "no views to edit.",
                "Wait until the multiview task succeeds (poll it), then edit its views."
                if not task.is_final
                else "Edit a multiview task that succeeded.",
            )
        if task.output_deleted_at is not None or not task.output_views:
            raise FileNotFound(
                f"the views of task {task_id} passed their retention time and were deleted.",
                "Run generate_multiview_image again and edit the new task.",
            )
        return tuple(Reference("object", task.output_views[view]) for view in multiview.VIEWS)

    async def _references(self, caller: Caller, request: TaskRequest) -> tuple[Reference, ...]:
        refs = []
        for number, ref in enumerate(request.files, start=1):
            if ref.source == "url":
                await check_url(ref.value, self.policy)
                refs.append(Reference("url", ref.value))
                continue
            found = await self._find_upload(caller, ref)
            if found is None and ref.source == "file_token":
                earlier = await self._earlier_output(caller, ref.value, request)
                if earlier is not None:
                    refs.append(earlier)
                    continue
            stored = await self._arrived_upload(found, ref, number)
            if stored.format == "webp" and not request.model.accepts_webp:
                raise ImageTypeNotSupported(
                    f"image[{number}] is WebP, which {request.model.version} does not accept.",
                    "Convert the image to PNG or JPEG and upload it again.",
                )
            refs.append(Reference("object", stored.key))
        if request.template:
            refs.extend(
                Reference("template", f"{request.template.slug}/{index}")
                for index in range(len(request.template.images))
            )
        return tuple(refs)

    async def _earlier_output(
        self, caller: Caller, token: str, request: TaskRequest
    ) -> Reference | None:
        """The image of the key's earlier successful task that a ``file_token`` naming no
        upload names by its task id (as v3 allows), or None when it is not such a task id."""
        task = await self.store.tasks.get(token, caller.key_id)
        if task is None or task.status is not Status.SUCCESS or not task.output_key:
            return None
        if task.output_deleted_at is not None:
            raise FileNotFound(
                f"the output of task {task.id} passed its retention time and was deleted.",
                "Upload the image again and use its file_token.",
            )
        if task.output_key.endswith(".webp") and not request.model.accepts_webp:
            raise ImageTypeNotSupported(
                f"the output of task {task.id} is WebP, which {request.model.version} does "
                "not accept.",
                "Pick a model that accepts WebP, or convert the image and upload it.",
            )
        return Reference("object", task.output_key)

    async def _find_upload(self, caller: Caller, ref: FileRef) -> StoredFile | None:
        """The account's upload a ``file_token`` or ``object`` reference names, or None."""
        if ref.source == "file_token":
            return await self.store.files.find(caller.account_id, token=ref.value)
        key = self.objects.store_key(ref.value)  # the bucket's key, less the store's prefix
        if ref.bucket == self.objects.bucket and key is not None:
            return await self.store.files.find(caller.account_id, key=key)
        return None

    async def _arrived_upload(
        self, stored: StoredFile | None, ref: FileRef, number: int
    ) -> StoredFile:
        """The upload, inspected if it was a pending STS one; 2019 when there is none."""
        if stored is None:
            what = (
                f"file_token {ref.value!r}"
                if ref.source == "file_token"
                else f"object {{bucket: {ref.bucket!r}, key: {ref.value!r}}}"
            )
            raise FileNotFound(
                f"image[{number}]: {what} does not name a file uploaded with this key's account"
                + (
                    f" (this server's bucket is {self.objects.bucket!r})."
                    if ref.source == "object"
                    else "."
                )
            )
        if is_pending(stored):  # an STS upload: inspect its bytes once they have arrived
            stored = await inspect_arrived(self.objects, stored, f"image[{number}]")
            await self.store.files.complete(stored)
        return stored

    async def find(self, caller: Caller, task_id: str) -> Task | None:
        """The caller's task ``task_id``; None when the key has no such task."""
        return await self.store.tasks.get(task_id, key_id=caller.key_id)

    async def cancel(self, caller: Caller, task_id: str) -> Task | None:
        """Cancel the caller's task (see :meth:`TaskStore.cancel`); None when it has no such
        task."""
        return await self.store.tasks.cancel(task_id, caller.key_id)

    async def retry_after(self, model_version: str, *, edits: bool) -> int:
        """Seconds until one of the key's tasks is likely to finish (for 429/2000)."""
        return eta.retry_after(await self.store.tasks.measured(model_version, edits))

    # -- read -----------------------------------------------------------------------------

    async def view(self, caller: Caller, task_id: str, base_url: str) -> dict[str, Any] | None:
        """The caller's task as the protocol's task object, or None."""
        found = await self.view_task(caller, task_id, base_url)
        return None if found is None else found[1]

    async def view_task(
        self, caller: Caller, task_id: str, base_url: str
    ) -> tuple[Task, dict[str, Any]] | None:
        """The caller's task and its task object, or None."""
        found = await self.store.tasks.view(task_id, caller.key_id)
        if found is None:
            return None
        task, outlook = found
        return task, await self.render(task, base_url, outlook=outlook)

    async def recent(self, caller: Caller, limit: int, offset: int) -> list[Task]:
        """The key's tasks, newest first."""
        return await self.store.tasks.recent(caller.key_id, limit, offset)

    async def render_event(
        self, task_id: str, status: Status, progress: int, base_url: str
    ) -> dict[str, Any] | None:
        """An event's task object: the task as it is now, with the status and progress the
        event recorded (for watch frames, SSE and webhooks). None if the task is gone."""
        found = await self.store.tasks.view(task_id)
        if found is None:
            return None
        task, outlook = found
        data = await self.render(task, base_url, outlook=outlook)
        data["status"], data["progress"] = status.value, progress
        return data

    async def render(
        self, task: Task, base_url: str, outlook: Outlook | None = None
    ) -> dict[str, Any]:
        """The protocol's task object."""
        outlook = outlook or await self.store.tasks.outlook(task)
        queuing_num, left = -1, None
        if outlook.position is not None:
            queuing_num = outlook.position
            slots, swap_s = outlook.live_slots or 0, outlook.swap_s
            left = eta.queued_left(outlook.measured, queuing_num, slots, swap_s)
        elif not task.is_final:
            elapsed = time.time() - _running_since(task, outlook.attempts)
            left = eta.running_left(outlook.measured, elapsed, task.progress, outlook.swap_s)
        data: dict[str, Any] = {
            "task_id": task.id,
            "type": task.type,
            "status": task.status.value,
            "input": task.input,
            "output": {},
            "progress": 100 if task.status is Status.SUCCESS else task.progress,
            "create_time": int(task.created_at),
            "consumed_credit": task.consumed_credit,
            "queuing_num": queuing_num,
            "running_left_time": -1 if left is None else left.protocol_value,
        }
        if left is not None:  # an extension: what the estimate rests on ("none": estimating)
            data["running_left_basis"] = left.basis.value
        if task.status is Status.SUCCESS and task.output_views:
            urls = {view: self.sign(key, base_url) for view, key in task.output_views.items()}
            data["output"] = {multiview.OUTPUT_KEY: multiview.output_json(urls)}
        elif task.status is Status.SUCCESS and task.output_key:
            data["output"] = {"generated_image": self.sign(task.output_key, base_url)}
        if task.output_deleted_at is not None:
            data["output_deleted_at"] = int(task.output_deleted_at)
            data["output_note"] = "The output image passed its retention time and was deleted."
        data["attempts"] = [
            {
                "backend": a.backend,
                "claim": a.claim,
                "started_at": a.started_at,
                "ended_at": a.ended_at,
                "outcome": a.outcome,
                "error": a.error,
                "served_by": a.served_by,
            }
            for a in outlook.attempts
        ]
        if task.status is Status.SUCCESS:  # what made the image: the last successful attempt
            made = [a.served_by for a in outlook.attempts if a.outcome == AttemptOutcome.SUCCESS]
            data["served_by"] = made[-1] if made else None
        if task.status in WITH_ERROR:
            data["error_code"] = task.error_code or FatalServerError.code
            data["error_msg"] = task.error_msg or "the task failed"
        return data

    def sign(self, key: str, base_url: str) -> str:
        """A signed link to the stored output ``key``."""
        return self.signer.sign(self.settings.public_url or base_url, key)

    # -- upload ---------------------------------------------------------------------------

    async def upload(self, caller: Caller, data: bytes) -> str:
        """Store an uploaded image; its token is usable as ``file_token`` by this account."""
        token = str(uuid.uuid4())
        await self.upload_as(caller.account_id, token, data)
        return token

    async def upload_as(self, account_id: str, token: str, data: bytes) -> None:
        """Store an image under a token chosen before (a presigned upload's)."""
        info = await check_image(data, what="the uploaded file")
        if await self.store.files.find(account_id, token=token) is not None:
            raise InvalidParameter(
                f"file_token {token} already holds an upload.",
                "Ask for a new upload URL for each file.",
            )
        ext = "jpg" if info.format == "jpeg" else info.format
        key = f"uploads/{account_id}/{token}.{ext}"
        await self.objects.put(key, data)
        await self.store.files.add(
            StoredFile(token, account_id, key, info.format, len(data), info.width, info.height)
        )


def _running_since(task: Task, attempts: list[Attempt]) -> float:
    """When the current backend run began: the means are of single runs, so time a failed
    attempt before it took is not counted against it."""
    current = [a.started_at for a in attempts if a.ended_at is None and a.claim == task.attempts]
    return current[-1] if current else task.started_at or task.created_at
