"""Test doubles the backend tests share: a JobControl, jobs, image bytes, a fast retry policy,
and the checks every remote kind must pass (missing key, provider unreachable)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from PIL import Image

from easel.backends._remote import RetryPolicy
from easel.backends.base import BackendUnavailable, ImageBackend, InputImage, Job
from easel.domain.catalog import CATALOG
from processes import free_port

# Bounded like the default policy (three attempts), but without its seconds of back-off.
FAST_RETRY = RetryPolicy(attempts=3, wait_initial_s=0.01, wait_max_s=0.02)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


@dataclass
class Control:
    """A JobControl double: records the progress reported; a test (or a fake) sets
    ``cancelled`` to stop the job."""

    cancelled: bool = False
    fractions: list[float] = field(default_factory=list)

    def progress(self, fraction: float) -> None:
        self.fractions.append(fraction)


def job_for(
    kind: str,
    model_version: str,
    prompt: str,
    *images: InputImage,
    provider_model: str | None = None,
    task_id: str = "t-1",
) -> Job:
    """A job as the worker hands it to a backend of ``kind``: the router gives it the
    configured ``provider_model``, else the catalog's id for ``kind``."""
    default = CATALOG[model_version].provider_models.get(kind) if model_version in CATALOG else None
    return Job(task_id, model_version, prompt, images, provider_model or default)


def image_bytes(fmt: str, colour: tuple[int, int, int] = (200, 30, 30), size: int = 24) -> bytes:
    """A small solid image encoded as ``fmt`` (png, jpeg or webp, any case)."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format=_PIL_FORMATS[fmt.lower()])
    return out.getvalue()


def reference(fmt: str, colour: tuple[int, int, int], size: int = 24) -> InputImage:
    """A reference image as the worker hands it to a backend."""
    fmt = fmt.lower()
    return InputImage(image_bytes(fmt, colour, size), "jpeg" if fmt == "jpg" else fmt, size, size)


async def check_missing_key(backend: ImageBackend, key_env: str, job: Job) -> None:
    """Without its key a remote backend says so, naming the variable, and runs nothing."""
    assert backend.unavailable_reason() == f"no API key: set {key_env}"
    with pytest.raises(BackendUnavailable, match=key_env):
        await backend.generate(job, Control())


async def check_unreachable(backend_at: Callable[[str], ImageBackend], job: Job) -> None:
    """The backend ``backend_at(url)`` makes for a loopback URL nobody listens on is
    unavailable ("could not be reached"); it is closed after."""
    backend = backend_at(f"http://127.0.0.1:{free_port()}")  # the port is closed once found
    try:
        with pytest.raises(BackendUnavailable, match="could not be reached"):
            await backend.generate(job, Control())
    finally:
        await backend.close()
