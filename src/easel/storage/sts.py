"""AWS STS ``AssumeRole`` through botocore, sent with httpx.

botocore builds the request, signs it (SigV4) and reads the answer (STS's XML and its errors).
Its ``before-send`` hook hands the signed request to httpx on the event loop, so the call keeps
what a plain httpx call gives and botocore's own sender would not:

* one time limit for the whole answer, however slowly it trickles in (botocore's socket
  timeouts bound each read only, and its worker thread could not be stopped);
* the TLS trust of the store: the system's roots plus ``AWS_CA_BUNDLE`` (botocore's
  ``verify`` would trust the bundle alone);
* the operator's configured endpoint and nothing else: no redirect is followed;
* a transport that tests can replace.

The botocore client is built once per :class:`StsClient`, in the worker thread of the first
call (it loads STS's service model), and makes one attempt per call, as before: the caller
answers 1000 with the multipart alternative instead of waiting through retries. It takes
nothing from ``~/.aws`` or ``AWS_PROFILE``: like the store, Easel reads credentials, region
and CA bundle from its environment alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import anyio.from_thread
import anyio.to_thread
import botocore.session  # type: ignore[import-untyped]
import httpx
from botocore.awsrequest import AWSPreparedRequest, AWSResponse  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

TIMEOUT_S = 10.0
# botocore's (config name, environment variables, default, conversion) for the settings that
# would bring in ~/.aws: no profile, and empty config and credentials files, whatever is set.
_ENVIRONMENT_ONLY = {
    "profile": (None, None, None, None),
    "config_file": (None, None, os.devnull, None),
    "credentials_file": (None, None, os.devnull, None),
}
CREDENTIAL_FIELDS = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AwsCredentials | None:
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            return None
        return cls(key, secret, env.get("AWS_SESSION_TOKEN") or None)


@dataclass(frozen=True, slots=True)
class TemporaryCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: dt.datetime


class StsError(Exception):
    """STS refused or could not be reached; the message says which."""


def trust(env: Mapping[str, str]) -> ssl.SSLContext | bool:
    """TLS verification for STS: the system's roots, plus ``AWS_CA_BUNDLE`` where set."""
    bundle = env.get("AWS_CA_BUNDLE", "").strip()
    if not bundle:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=os.path.expanduser(bundle))
    return context


class _Body(io.BytesIO):
    """An answer's body, read the way botocore reads its own sender's (``raw.stream()``)."""

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.getvalue()


class StsClient:
    """The one STS action Easel needs: botocore's request and answer, httpx's connection."""

    def __init__(
        self,
        endpoint: str,
        credentials: AwsCredentials,
        region: str,
        *,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.endpoint, self.credentials, self.region = endpoint, credentials, region
        self._verify, self._transport, self._timeout_s = verify, transport, timeout_s

    async def assume_role(
        self, role_arn: str, session_name: str, policy: str, duration_s: int
    ) -> TemporaryCredentials:
        answer = await self._call(
            RoleArn=role_arn,
            RoleSessionName=session_name,
            Policy=policy,
            DurationSeconds=duration_s,
        )
        values = answer.get("Credentials") or {}
        missing = [name for name in CREDENTIAL_FIELDS if not values.get(name)]
        if missing:
            raise StsError(f"STS AssumeRole answered without {', '.join(missing)}")
        return TemporaryCredentials(
            values["AccessKeyId"],
            values["SecretAccessKey"],
            values["SessionToken"],
            values["Expiration"],
        )

    async def _call(self, **params: Any) -> dict[str, Any]:
        """botocore's AssumeRole in a worker thread (it blocks); its errors as StsError."""
        try:
            return await anyio.to_thread.run_sync(partial(self._assume_role_blocking, **params))
        except ClientError as exc:
            raise StsError(_refusal(exc)) from None
        except StsError:
            raise
        except Exception as exc:  # botocore's own, or its parser's on an answer it cannot read
            said = " ".join(str(exc).split())[:300]
            raise StsError(
                f"STS AssumeRole at {self.endpoint} failed: {type(exc).__name__}: {said}"
            ) from exc

    def _assume_role_blocking(self, **params: Any) -> dict[str, Any]:
        """In the worker thread, so the first call builds botocore's client off the loop."""
        answer: dict[str, Any] = self._botocore.assume_role(**params)
        return answer

    @cached_property
    def _botocore(self) -> Any:
        """botocore's STS client for this endpoint, sending through :meth:`_send`."""
        session = botocore.session.Session(session_vars=_ENVIRONMENT_ONLY)
        client = session.create_client(
            "sts",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
            aws_session_token=self.credentials.session_token,
            config=Config(retries={"total_max_attempts": 1}),
        )
        client.meta.events.register("before-send.sts", self._send)
        return client

    def _send(self, request: AWSPreparedRequest, **_: object) -> AWSResponse:
        """botocore's ``before-send`` hook, in the call's worker thread: send on the loop."""
        return anyio.from_thread.run(self._post, request)

    async def _post(self, request: AWSPreparedRequest) -> AWSResponse:
        try:  # httpx's timeout bounds each read; asyncio's, the whole answer
            async with (
                asyncio.timeout(self._timeout_s),
                httpx.AsyncClient(
                    verify=self._verify, transport=self._transport, timeout=self._timeout_s
                ) as http,
            ):
                response = await http.request(
                    request.method,
                    request.url,
                    content=request.body,
                    headers=dict(request.headers.items()),
                )
        except TimeoutError:
            raise StsError(
                f"STS at {self.endpoint} sent no complete answer within {self._timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise StsError(f"STS at {self.endpoint} could not be reached: {exc!r}") from None
        return AWSResponse(
            request.url, response.status_code, response.headers, _Body(response.content)
        )


def _refusal(exc: ClientError) -> str:
    """STS's refusal in one line: its HTTP status, error code and message."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    code, message = error.get("Code") or "?", error.get("Message") or ""
    return f"STS AssumeRole failed (HTTP {status}): {code} {message}".rstrip()
