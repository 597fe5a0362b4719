"""Temporary upload credentials: ``POST /v2/openapi/upload/sts/token``.

With an ``s3://bucket/prefix`` store and an STS endpoint configured (``sts_endpoint``,
``sts_role_arn``), each token is an STS ``AssumeRole`` call whose session policy allows
``s3:PutObject`` (and ``s3:AbortMultipartUpload``, for boto3's multipart uploads of large
files) on exactly one new key, ``<prefix>/uploads/<account_id>/<uuid>.<ext>``. The role's own
policy must allow at least that on ``<prefix>/uploads/*``; the credentials are the
intersection. The call to STS (:mod:`easel.storage.sts`, through botocore) is signed with
the ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` of the
environment; ``AWS_CA_BUNDLE`` adds trusted roots, as for the store.

The key is recorded in the ``files`` table for the caller's account at once, so an
``object: {bucket: resource_bucket, key: resource_uri}`` input names it. Its bytes arrive
later, straight from the client to S3, so the row is *pending*: format is the declared one
and size, width and height are 0 (no real upload is empty: an empty image is refused with
2003). :func:`inspect_arrived` reads and inspects the object on first use and gives the real
values; the worker inspects every input again before it runs.

Anything else (a local or memory store, GCS, Azure, no STS configured, no credentials to sign
with) answers 1005 naming the multipart alternative, ``POST /v2/openapi/upload``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import httpx

from easel.config import Settings
from easel.domain.accounts import Caller
from easel.domain.errors import FileNotFound, InvalidParameter, NotAllowed, UnknownServerError
from easel.domain.images import check_image
from easel.storage.objects import ObjectNotFound, ObjectStore, aws_region, s3_endpoint
from easel.storage.sts import AwsCredentials, StsClient, StsError, trust
from easel.store.ports import FilesPort
from easel.store.records import PENDING_SIZE, StoredFile

log = logging.getLogger("easel.services.upload_tokens")

# The STS request's formats → the stored (protocol) format; models are not taken here.
UPLOAD_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
MODEL_FORMATS = ("glb", "obj", "fbx", "stl")
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
DEFAULT_REGION = "us-east-1"

MULTIPART_HINT = (
    "Upload the image with POST /v2/openapi/upload (multipart/form-data, field 'file') and "
    "send its image_token as file_token. The official tripo3d SDK takes that route by itself "
    "when boto3 is not installed."
)


# -- what a token allows, and where the client sends the object -----------------------------


def public_s3_host(settings: Settings, env: Mapping[str, str]) -> str:
    """``s3_host`` for clients: host[:port], to which the official SDK prepends https://."""
    if settings.s3_public_host:
        return settings.s3_public_host
    endpoint = s3_endpoint(env)
    if endpoint:
        return urlsplit(endpoint).netloc or endpoint
    return f"s3.{aws_region(env)}.amazonaws.com"


def arn_partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def upload_policy(bucket: str, object_key: str, region: str) -> str:
    """The session policy: put (or abort a multipart put of) this one object, nothing else."""
    resource = f"arn:{arn_partition(region)}:s3:::{bucket}/{object_key}"
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "EaselUploadOneObject",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": resource,
            }
        ],
    }
    return json.dumps(document, separators=(",", ":"))


def session_name(account_id: str) -> str:
    """``RoleSessionName`` (2–64 of ``[\\w+=,.@-]``): names the account in CloudTrail."""
    return ("easel-" + re.sub(r"[^\w+=,.@-]", "-", account_id))[:64]


def upload_format(body: Any) -> str:
    """The stored format for the request's ``format``; 1004 for anything else."""
    value = body.get("format") if isinstance(body, dict) else None
    if isinstance(value, str) and value.strip().lower() in UPLOAD_FORMATS:
        return UPLOAD_FORMATS[value.strip().lower()]
    accepted = "png, jpeg, jpg or webp"
    if isinstance(value, str) and value.strip().lower() in MODEL_FORMATS:
        raise InvalidParameter(
            f"format {value!r} is a 3D model; this server takes images only.",
            f"Send format {accepted}.",
        )
    raise InvalidParameter(
        "format is missing." if value is None else f"format {value!r} is not supported.",
        f'Send a JSON body such as {{"format": "png"}}; format is {accepted}.',
    )


class UploadTokens:
    """Issues STS upload tokens and records their keys (the service behind the route).

    One lives as long as the server (:class:`easel.runtime.Runtime`), so its STS client, and
    botocore's beneath it, are built once.
    """

    def __init__(
        self,
        settings: Settings,
        objects: ObjectStore,
        files: FilesPort,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings, self.objects, self.files = settings, objects, files
        self.env = os.environ if env is None else env
        self._transport = transport

    @cached_property
    def _sts(self) -> StsClient:
        """The STS client, or 1005 naming what is missing and the alternative (asked again
        on the next call: a failed lookup is not cached)."""
        settings = self.settings
        if self.objects.scheme != "s3":
            raise NotAllowed(
                "temporary S3 upload credentials are not available: this server keeps "
                f"uploads in its {self.objects.scheme} object store, not in S3.",
                MULTIPART_HINT,
            )
        missing = [name for name in ("sts_endpoint", "sts_role_arn") if not getattr(settings, name)]
        credentials = AwsCredentials.from_env(self.env)
        if credentials is None:
            missing.append("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in its environment")
        if missing or settings.sts_endpoint is None or credentials is None:
            raise NotAllowed(
                "temporary S3 upload credentials are not available: this server has no STS "
                f"configured ({', '.join(missing)} not set).",
                MULTIPART_HINT,
            )
        return StsClient(
            settings.sts_endpoint,
            credentials,
            aws_region(self.env),
            verify=trust(self.env),
            transport=self._transport,
        )

    async def issue(self, caller: Caller, body: Any) -> dict[str, str]:
        """The token's ``data``: ``s3_host``, ``resource_bucket``, ``resource_uri``,
        ``session_token``, ``sts_ak``, ``sts_sk`` (what the official SDK reads)."""
        fmt = upload_format(body)
        client = self._sts
        token = str(uuid.uuid4())
        key = f"uploads/{caller.account_id}/{token}.{EXTENSIONS[fmt]}"
        object_key = self.objects.object_key(key)
        region = aws_region(self.env)
        try:
            granted = await client.assume_role(
                str(self.settings.sts_role_arn),
                session_name(caller.account_id),
                upload_policy(self.objects.bucket, object_key, region),
                self.settings.sts_duration_s,
            )
        except StsError as exc:
            log.error("upload token for account %s: %s", caller.account_id, exc)
            raise UnknownServerError(
                "the server could not obtain temporary S3 credentials.", MULTIPART_HINT
            ) from None
        await self.files.add(StoredFile(token, caller.account_id, key, fmt, PENDING_SIZE, 0, 0))
        return {
            "s3_host": public_s3_host(self.settings, self.env),
            "resource_bucket": self.objects.bucket,
            "resource_uri": object_key,
            "session_token": granted.session_token,
            "sts_ak": granted.access_key_id,
            "sts_sk": granted.secret_access_key,
        }


# -- on first use ------------------------------------------------------------------------------


def is_pending(stored: StoredFile) -> bool:
    return stored.size == PENDING_SIZE


async def inspect_arrived(objects: ObjectStore, stored: StoredFile, what: str) -> StoredFile:
    """The pending file as it arrived: its real format, size and dimensions.

    Not there yet → 2019; not an image, out of bounds or pixels that do not decode → the
    error of :func:`easel.domain.images.check_image`.
    """
    try:
        data = await objects.get(stored.key)
    except ObjectNotFound:
        raise FileNotFound(
            f"{what}: nothing has been uploaded to {objects.object_key(stored.key)!r} yet.",
            "Upload the file with the credentials of POST /v2/openapi/upload/sts/token first "
            "(they expire), then send the task again.",
        ) from None
    info = await check_image(data, what=what)
    return StoredFile(
        stored.token, stored.account_id, stored.key, info.format, len(data), info.width, info.height
    )
