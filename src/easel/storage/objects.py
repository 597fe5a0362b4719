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

obstore's errors carry several KB of Rust debug text (the S3 answer's XML, the retry state);
:func:`ObjectStore.reason` turns them into one short line that says what is wrong and how to
fix it, in this one place: the API's 503s, failed tasks, ``/readyz`` and the log use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import LocalStore, MemoryStore, from_url

from easel.domain.errors import first_line

if TYPE_CHECKING:
    from obstore.store import ClientConfig

LOCAL_BUCKET = "easel"
CLOUD_SCHEMES = ("s3", "gs", "az", "abfs", "azure")
_TRUE = ("1", "true", "yes", "on")
DEFAULT_REGION = "us-east-1"
PROBE_BYTES = b"easel object store probe\n"

# What S3 (and GCS's XML API, and Azure) name in an error's <Code>, by what it means.
_S3_CODE = re.compile(r"<Code>(\w+)</Code>")
_MISSING_BUCKET = frozenset({"NoSuchBucket", "ContainerNotFound"})
_REFUSED_CREDENTIALS = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthenticationFailed",
    }
)
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "AuthorizationFailure"})
_IMDS_TOKEN = "/latest/api/token"  # where obstore asks for instance credentials (EC2)


class ObjectNotFound(LookupError):
    """No object under that key."""


class ObjectStoreError(OSError):
    """The store failed a read or a write (after obstore's own retries). An ``OSError``: the
    API answers it with 503 and workers treat it as an outage (the task is run again once
    its lease lapses, within ``max_attempts``); ``errno`` is ENOSPC when the disk is full,
    and ``strerror`` says so in words. ``reason`` is the short why alone (without the key),
    as ``/readyz`` shows it."""

    reason = ""

    @classmethod
    def because(cls, code: int, reason: str, doing: str = "") -> ObjectStoreError:
        """The error for ``reason``; ``doing`` (e.g. "write outputs/t.png") leads its text."""
        error = cls(code, f"the object store failed to {doing}: {reason}" if doing else reason)
        error.reason = reason
        return error


class BucketMissing(ObjectStoreError):
    """The bucket (or container) itself does not exist: no key in it can be read or written."""


def _s3_code(exc: BaseException) -> str | None:
    found = _S3_CODE.search(str(exc))
    return found.group(1) if found else None


def _is_disk_full(exc: BaseException) -> bool:
    # obstore reports the OS error only in its message ("… (os error 28)").
    return getattr(exc, "errno", None) == errno.ENOSPC or "(os error 28)" in str(exc)


class ObjectStore:
    def __init__(
        self,
        store: Any,
        bucket: str,
        prefix: str = "",
        scheme: str = "memory",
        endpoint: str | None = None,
    ) -> None:
        self._store = store
        self.bucket = bucket
        self.scheme = scheme  # memory | file | s3 | gs | az | …
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint  # where it is reached, for messages (a URL, or a directory)

    @property
    def location(self) -> str:
        """The store as an operator names it, for messages: ``s3://bucket/prefix``."""
        if self.scheme in ("memory", "file"):
            return f"{self.scheme}://{self.endpoint or ''}"
        return f"{self.scheme}://{self.bucket}/{self.prefix}"

    def reason(self, exc: BaseException) -> str:
        """One short line that says why the store failed and how to fix it, for an obstore
        (or OS) error; never obstore's multi-KB debug text."""
        code = _s3_code(exc)
        if code in _MISSING_BUCKET:
            return (
                f"bucket {self.bucket!r} does not exist "
                "(create it, or set storage_create_bucket = true)"
            )
        if code in _REFUSED_CREDENTIALS or isinstance(exc, UnauthenticatedError):
            return (
                f"the credentials were refused ({code or 'unauthenticated'}): check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the provider's equivalent)"
            )
        if code in _DENIED or isinstance(exc, (PermissionDeniedError, PermissionError)):
            return (
                f"permission denied on {self.location}: the server must be allowed to put, "
                "get, delete and list objects there"
            )
        if _is_disk_full(exc):
            return "the disk is full (no space left on device)"
        if _IMDS_TOKEN in str(exc):  # no credentials in the environment: obstore asked EC2's
            return (
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (no instance "
                "credentials answered either)"
            )
        if "error sending request" in str(exc):
            return f"cannot connect to {self.endpoint or self.location}: is it up and reachable?"
        # The first line without the XML body or debug text obstore appends.
        return f"it answered {code}" if code else first_line(exc, named=False).split(": <?xml")[0]

    def _failure(self, doing: str, key: str, exc: BaseException) -> ObjectStoreError:
        """The :class:`ObjectStoreError` for a failed read or write of ``key``."""
        kind = BucketMissing if _s3_code(exc) in _MISSING_BUCKET else ObjectStoreError
        code = errno.ENOSPC if _is_disk_full(exc) else errno.EIO
        return kind.because(code, self.reason(exc), f"{doing} {key}")

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

    @contextlib.contextmanager
    def _translated(
        self, doing: str, key: str, absent: type[LookupError] | None = None
    ) -> Iterator[None]:
        """obstore's errors as :class:`ObjectStoreError` (:class:`BucketMissing` for a
        missing bucket, which obstore reports as "not found", like a missing key), and a
        missing key as ``absent`` where given."""
        try:
            yield
        except FileNotFoundError as exc:
            if absent is None or _s3_code(exc) in _MISSING_BUCKET:
                raise self._failure(doing, key, exc) from exc
            raise absent(key) from None
        except (BaseError, OSError) as exc:
            raise self._failure(doing, key, exc) from exc

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``; :class:`ObjectStoreError` when the store fails."""
        with self._translated("write", key):
            await obstore.put_async(self._store, self.object_key(key), data)

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`ObjectNotFound` when there are none,
        :class:`ObjectStoreError` when the store fails."""
        with self._translated("read", key, absent=ObjectNotFound):
            result = await obstore.get_async(self._store, self.object_key(key))
            return bytes(await result.bytes_async())

    async def exists(self, key: str) -> bool:
        """Whether an object lies under ``key`` (its metadata only; the bytes stay put)."""
        try:
            await obstore.head_async(self._store, self.object_key(key))
        except FileNotFoundError:
            return False
        return True

    async def delete(self, key: str) -> None:
        """Delete ``key`` (done if it is not there); :class:`ObjectStoreError` on failure."""
        with (
            contextlib.suppress(ObjectNotFound),
            self._translated("delete", key, absent=ObjectNotFound),
        ):
            await obstore.delete_async(self._store, self.object_key(key))

    async def probe(self, timeout_s: float) -> None:
        """Write, read back and delete a small object under the prefix, as a worker does
        with an output: :class:`ObjectStoreError` (:class:`BucketMissing`) when the store
        cannot do it, or does not answer within ``timeout_s``."""
        key = f".easel-probe-{uuid.uuid4().hex}"  # one per probe: processes probe at once
        try:
            async with asyncio.timeout(timeout_s):
                await self.put(key, PROBE_BYTES)
                if await self.get(key) != PROBE_BYTES:
                    raise ObjectStoreError.because(errno.EIO, f"{key} read back other bytes")
                await self.delete(key)
        except TimeoutError:
            where = self.endpoint or self.location
            raise ObjectStoreError.because(
                errno.ETIMEDOUT, f"{where} did not answer within {timeout_s:g} s"
            ) from None
        except ObjectNotFound:
            raise ObjectStoreError.because(errno.EIO, f"{key} was gone once written") from None


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """An ``AWS_*`` switch as obstore reads it: true, 1, yes or on."""
    return env.get(name, "").strip().lower() in _TRUE


def aws_region(env: Mapping[str, str]) -> str:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def s3_endpoint(env: Mapping[str, str]) -> str | None:
    """The S3 endpoint the store uses (the variables obstore reads, in its order)."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        if env.get(name):
            return env[name]
    return None


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
    if env_flag(env, "AWS_ALLOW_HTTP"):
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
        local = LocalStore(path, mkdir=True)
        return ObjectStore(local, LOCAL_BUCKET, scheme="file", endpoint=str(path))
    if parts.scheme in CLOUD_SCHEMES and parts.netloc:
        root = f"{parts.scheme}://{parts.netloc}"
        options = s3_client_options() if parts.scheme == "s3" else None
        store = from_url(root, client_options=options) if options else from_url(root)
        endpoint = s3_endpoint(os.environ) if parts.scheme == "s3" else None
        return ObjectStore(store, parts.netloc, parts.path, parts.scheme, endpoint)
    raise ValueError(
        f"storage_url {url!r} is not supported; use file://DIR, memory://, s3://BUCKET/PREFIX, "
        "gs://BUCKET/PREFIX or az://CONTAINER/PREFIX"
    )
