"""The object store port over obstore: local directory, memory, S3, GCS or Azure.

Keys are plain paths (``uploads/<account>/<token>.png``, ``outputs/<task>.png``), relative to
the store's prefix. The ``bucket`` is what clients name in ``object: {bucket, key}`` inputs:
the S3/GCS/Azure bucket or container, and ``easel`` for the local and memory stores; the key
clients see there is :meth:`ObjectStore.object_key` (prefix included).

``s3://bucket/prefix`` takes its endpoint, region and credentials from the standard AWS
environment variables, read by obstore itself: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT``), ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``),
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, and the instance,
container and web-identity credential chains. Two more are read here: ``AWS_ALLOW_HTTP=true``
for a plain-HTTP server on a private network (MinIO, moto), and ``AWS_CA_BUNDLE``, a PEM file
of extra root certificates to trust (a private CA), as boto3 reads it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError
from obstore.store import LocalStore, MemoryStore, from_url

if TYPE_CHECKING:
    from obstore.store import ClientConfig

LOCAL_BUCKET = "easel"
CLOUD_SCHEMES = ("s3", "gs", "az", "abfs", "azure")
_TRUE = ("1", "true", "yes", "on")


class ObjectNotFound(LookupError):
    """No object under that key."""


class ObjectStoreError(OSError):
    """The store failed a read or a write (after obstore's own retries). An ``OSError``: the
    API answers it with 503 and workers treat it as an outage (the task is run again once
    its lease lapses, within ``max_attempts``); ``errno`` is ENOSPC when the disk is full,
    and ``strerror`` says so in words."""


def _write_error(key: str, exc: Exception) -> ObjectStoreError:
    # obstore reports the OS error only in its message ("… (os error 28)").
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    disk_full = getattr(exc, "errno", None) == errno.ENOSPC or "(os error 28)" in first_line
    if disk_full:
        return ObjectStoreError(
            errno.ENOSPC, f"the object store's disk is full (no space left on device): {key}"
        )
    return ObjectStoreError(errno.EIO, f"the object store failed to write {key}: {first_line}")


class ObjectStore:
    def __init__(self, store: Any, bucket: str, prefix: str = "", scheme: str = "memory") -> None:
        self._store = store
        self.bucket = bucket
        self.scheme = scheme  # memory | file | s3 | gs | az | …
        self.prefix = prefix.strip("/")

    def object_key(self, key: str) -> str:
        """The key as it lies in the bucket (the prefix, then ``key``)."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def store_key(self, object_key: str) -> str | None:
        """The inverse of :meth:`object_key`: None when ``object_key`` is outside the prefix."""
        if not self.prefix:
            return object_key
        lead = self.prefix + "/"
        rest = object_key[len(lead) :]
        return rest if object_key.startswith(lead) and rest else None

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``; :class:`ObjectStoreError` when the store fails."""
        try:
            await obstore.put_async(self._store, self.object_key(key), data)
        except (BaseError, OSError) as exc:
            raise _write_error(key, exc) from exc

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`ObjectNotFound` when there are none,
        :class:`ObjectStoreError` when the store fails."""
        try:
            result = await obstore.get_async(self._store, self.object_key(key))
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except (BaseError, OSError) as exc:
            first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise ObjectStoreError(
                errno.EIO, f"the object store failed to read {key}: {first_line}"
            ) from exc

    async def exists(self, key: str) -> bool:
        """Whether an object lies under ``key`` (its metadata only; the bytes stay put)."""
        try:
            await obstore.head_async(self._store, self.object_key(key))
        except FileNotFoundError:
            return False
        return True

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self._store, self.object_key(key))

    async def ping(self) -> None:
        """Fail when the store cannot be listed (readiness)."""
        stream = obstore.list(self._store, prefix=self.prefix or None, chunk_size=1)
        async for _ in stream:
            break


def s3_client_options(env: Mapping[str, str] | None = None) -> ClientConfig | None:
    """Client options obstore cannot take from the environment by itself.

    Passing any client options replaces those obstore would read from ``AWS_*`` variables,
    so ``AWS_ALLOW_HTTP`` is restated here beside ``AWS_CA_BUNDLE``. None: nothing to add.
    """
    env = os.environ if env is None else env
    bundle = env.get("AWS_CA_BUNDLE", "").strip()
    if not bundle:
        return None
    try:
        pem = Path(bundle).expanduser().read_text(encoding="ascii")
    except OSError as exc:
        raise ValueError(f"AWS_CA_BUNDLE={bundle!r} cannot be read: {exc}") from None
    options: ClientConfig = {"root_certificate": pem}
    if env.get("AWS_ALLOW_HTTP", "").strip().lower() in _TRUE:
        options["allow_http"] = True
    return options


def open_object_store(url: str) -> ObjectStore:
    """``file://dir`` (relative to the working directory or absolute), ``memory://``,
    ``s3://bucket/prefix``, ``gs://…``, ``az://…`` (credentials from the environment)."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return ObjectStore(MemoryStore(), LOCAL_BUCKET)
    if parts.scheme == "file":
        path = Path(parts.netloc + parts.path).expanduser().resolve()
        return ObjectStore(LocalStore(path, mkdir=True), LOCAL_BUCKET, scheme="file")
    if parts.scheme in CLOUD_SCHEMES and parts.netloc:
        root = f"{parts.scheme}://{parts.netloc}"
        options = s3_client_options() if parts.scheme == "s3" else None
        store = from_url(root, client_options=options) if options else from_url(root)
        return ObjectStore(store, parts.netloc, parts.path, scheme=parts.scheme)
    raise ValueError(
        f"storage_url {url!r} is not supported; use file://DIR, memory://, s3://BUCKET/PREFIX, "
        "gs://BUCKET/PREFIX or az://CONTAINER/PREFIX"
    )
