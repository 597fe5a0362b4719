"""Whether the object store can take an output now: asked at startup, by ``/readyz`` and by
the worker before it claims tasks.

A missing bucket used to be found at the first upload (503), or after a task's backend had
run, and been paid for, when its output could not be written. Now each process probes the
store as it starts (:meth:`ObjectStore.probe`: write, read back and delete a small object
under the prefix) and logs what is wrong and how to fix it; the server starts anyway, so
that ``/readyz`` can say why it is not ready. A worker claims no task while the store fails
(the tasks stay queued, nothing is charged); the verdict is kept for a few seconds, shorter
when it is bad, and dropped when a write fails.

With ``storage_create_bucket = true`` a missing S3 bucket is created (S3's CreateBucket,
through botocore: obstore reads and writes objects but cannot create buckets). botocore takes
the same ``AWS_*`` credentials, endpoint, region and ``AWS_CA_BUNDLE`` as the store.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time

from easel.storage.objects import (
    DEFAULT_REGION,
    BucketMissing,
    ObjectStore,
    ObjectStoreError,
    aws_region,
    env_flag,
    s3_endpoint,
)

log = logging.getLogger("easel.storage")

USABLE_FOR_S = 10.0  # a good verdict is trusted this long
RETRY_AFTER_S = 2.0  # a store that failed is probed again after this long
PROBE_TIMEOUT_S = 5.0
CREATE_TIMEOUT_S = 10.0
NOT_CHECKED = "not checked yet"


class StorageCheck:
    """The object store's last verdict (None: usable; else why not), probed again when old."""

    def __init__(self, objects: ObjectStore, *, create_bucket: bool = False) -> None:
        self.objects, self.create_bucket = objects, create_bucket
        self._problem: str | None = NOT_CHECKED
        self._checked_at = -math.inf
        self._lock = asyncio.Lock()

    async def problem(self) -> str | None:
        """None when the store takes writes; else a short reason with its fix."""
        async with self._lock:  # one probe at a time; the others wait for its verdict
            age = time.monotonic() - self._checked_at
            if age >= (USABLE_FOR_S if self._problem is None else RETRY_AFTER_S):
                self._report(await self._probe())
                self._checked_at = time.monotonic()
            return self._problem

    def recheck(self) -> None:
        """A write failed: probe again before the next claim instead of trusting the verdict."""
        self._checked_at = -math.inf

    async def _probe(self, may_create: bool = True) -> str | None:
        try:
            await self.objects.probe(PROBE_TIMEOUT_S)
        except BucketMissing as exc:
            if not (self.create_bucket and may_create):
                return exc.reason
            why_not = await create_bucket(self.objects)
            return why_not if why_not is not None else await self._probe(may_create=False)
        except ObjectStoreError as exc:
            return exc.reason
        return None

    def _report(self, problem: str | None) -> None:
        """Log a change of verdict (not every probe)."""
        where, before = self.objects.location, self._problem
        if problem is None and before is not None:
            again = "" if before == NOT_CHECKED else " again; tasks are claimed again"
            log.info("object store %s: usable%s", where, again)
        elif problem is not None and problem != before:
            log.error(
                "object store %s is not usable: %s. /readyz answers 503 and no task is "
                "claimed until it is (checked again every %g s)",
                where,
                problem,
                RETRY_AFTER_S,
            )
        self._problem = problem


async def create_bucket(objects: ObjectStore) -> str | None:
    """Create the store's missing S3 bucket; None when done, else why it could not be."""
    bucket = objects.bucket
    if objects.scheme != "s3":
        return (
            f"bucket {bucket!r} does not exist, and storage_create_bucket creates S3 buckets "
            "only: create it"
        )
    try:
        async with asyncio.timeout(CREATE_TIMEOUT_S):
            await asyncio.to_thread(_create_s3_bucket, bucket)
    except TimeoutError:
        why = f"no answer within {CREATE_TIMEOUT_S:g} s"
    except Exception as exc:  # botocore's errors, translated here where they enter
        why = _creation_failure(exc)
    else:
        log.warning("created bucket %r (storage_create_bucket = true)", bucket)
        return None
    return f"bucket {bucket!r} does not exist and could not be created: {why}"


def _create_s3_bucket(bucket: str) -> None:
    """CreateBucket with botocore, where obstore would look for the bucket (blocking)."""
    import botocore.session  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    env = os.environ
    region, endpoint = aws_region(env), s3_endpoint(env)
    virtual = env_flag(env, "AWS_VIRTUAL_HOSTED_STYLE_REQUEST")
    config = Config(
        connect_timeout=3,
        read_timeout=5,
        retries={"max_attempts": 2, "mode": "standard"},
        # obstore addresses a custom endpoint (MinIO, moto…) by path unless told otherwise
        s3={"addressing_style": "path" if endpoint and not virtual else "auto"},
    )
    client = botocore.session.get_session().create_client(
        "s3", region_name=region, endpoint_url=endpoint, config=config
    )
    options = {}  # us-east-1 takes no LocationConstraint; every other region needs one
    if region != DEFAULT_REGION:
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(Bucket=bucket, **options)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    finally:
        client.close()


def _creation_failure(exc: Exception) -> str:
    """botocore's error as a short reason."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code == "BucketAlreadyExists":
            return "the name belongs to another account; choose another bucket name"
        return f"{code}: {message}".rstrip(": ")
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
