"""Storing a task's generated images: one image, or a multiview task's four views.

A single image is ``outputs/<task id>.<ext>``; the views of a multiview task are
``outputs/<task id>/<view>.<ext>``. Each write is tried a few times (the image is paid for and
in hand); when one still fails, the views already written are deleted, so a failed task leaves
no objects behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from easel.backends.base import GeneratedImage
from easel.storage.objects import ObjectStore, ObjectStoreError

log = logging.getLogger("easel.worker")
OUTPUT_WRITES = 3  # tries to store a generated image before the task fails (with a refund)
OUTPUT_RETRY_S = 0.5  # first wait between them; doubled each time


def _extension(fmt: str) -> str:
    return "jpg" if fmt == "jpeg" else fmt


def output_key(task_id: str, image: GeneratedImage, view: str | None = None) -> str:
    ext = _extension(image.format)
    return f"outputs/{task_id}.{ext}" if view is None else f"outputs/{task_id}/{view}.{ext}"


async def store_output(objects: ObjectStore, key: str, data: bytes) -> None:
    """Write one output, trying again a few times: a store that blinks should not cost the
    client a failed task."""
    wait_s = OUTPUT_RETRY_S
    for remaining in range(OUTPUT_WRITES - 1, -1, -1):
        try:
            await objects.put(key, data)
            return
        except ObjectStoreError as exc:
            if not remaining:
                raise
            log.warning("storing %s failed (%s); trying again in %g s", key, exc, wait_s)
        await asyncio.sleep(wait_s)
        wait_s *= 2


async def store_views(
    objects: ObjectStore, task_id: str, views: dict[str, GeneratedImage]
) -> dict[str, str]:
    """Write every view; returns {view: key}. On a write that fails for good, the views
    written are deleted (best effort) and the error is raised."""
    keys: dict[str, str] = {}
    try:
        for view, image in views.items():
            key = output_key(task_id, image, view)
            await store_output(objects, key, image.data)
            keys[view] = key
    except ObjectStoreError:
        for key in keys.values():
            with contextlib.suppress(Exception):
                await objects.delete(key)
        raise
    return keys
