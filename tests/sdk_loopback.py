"""The official ``tripo3d`` SDK (0.4.2) pointed at a loopback Easel (shared by e2e tests).

Without aiohttp the SDK uses its raw-socket client (``LegacyClientImpl``), which has defects
that stop it reaching any server but ``https://host:443``; :class:`LoopbackImpl` works around
the first two and changes nothing else (request bytes, headers, response parsing stay the SDK's):

1. ``_connect`` and ``download_file`` always open ``(netloc, 443)`` with TLS. The host passed
   is the whole netloc (``127.0.0.1:PORT``), so an ``http://`` base URL or any explicit port
   fails with ``socket.gaierror`` before a byte is sent.
2. The keep-alive connection is never reopened: once the server closes an idle connection
   (uvicorn after 5 s), the next call fails with ``ValueError: not enough values to
   unpack``. ``wait_for_task`` sleeps ``max(2, running_left_time * 0.5)`` seconds, so any
   estimate above 10 s breaks it.
3. Calls on one client are not safe to run concurrently (one shared reader/writer); the SDK
   itself does so in ``generate_image(files=[path, path])`` (uploads via ``asyncio.gather``),
   which fails with ``RuntimeError: readuntil() called while another coroutine is already
   waiting``. Not worked around: tests never run calls concurrently on one client.

Upload route: ``TripoClient.upload_file`` runs ``import boto3`` on every call; when it
imports, the SDK asks ``POST /upload/sts/token`` and PUTs to ``https://`` + ``s3_host`` with
boto3, else it posts multipart to ``/upload``. :func:`block_boto3` makes that import fail
for one test, so a test picks the route whatever is installed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

# Before tripo3d is imported: its import otherwise asks public geo-IP services where we are.
os.environ["TRIPO_DISABLE_GEO_DETECTION"] = "1"

from tripo3d import TripoClient
from tripo3d.client_impl.legacy_client_impl import LegacyClientImpl


def block_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import boto3`` raises ImportError until the test ends: the SDK uploads by multipart."""
    monkeypatch.setitem(sys.modules, "boto3", None)


class LoopbackImpl(LegacyClientImpl):  # type: ignore[misc]
    """The SDK's raw-socket client, connecting where its URLs say."""

    _reader: asyncio.StreamReader | None
    _writer: asyncio.StreamWriter | None

    @staticmethod
    def _endpoint(url: str) -> tuple[str, int, bool]:
        parts = urlparse(url)
        secure = parts.scheme == "https"
        assert parts.hostname is not None, url
        return parts.hostname, parts.port or (443 if secure else 80), secure

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._reader.at_eof():  # the server closed it: reopen
            await self.close()
        if self._reader is None or self._writer is None:
            host, port, secure = self._endpoint(self.base_url)
            self._reader, self._writer = await asyncio.open_connection(
                host, port, ssl=self._ssl_context if secure else None
            )
        return self._reader, self._writer

    async def download_file(self, url: str, output_path: str) -> None:
        # The SDK's own download_file, but connected to the URL's host and port.
        parts = urlparse(url)
        path = f"{parts.path}?{parts.query}" if parts.query else parts.path
        headers = {
            "Host": parts.netloc,
            "Authorization": f"Bearer {self.api_key}",  # the SDK sends the key to file hosts
            "Connection": "keep-alive",
        }
        request = "\r\n".join(
            [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        ).encode()
        host, port, secure = self._endpoint(url)
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self._ssl_context if secure else None
        )
        try:
            writer.write(request)
            await writer.drain()
            response = await self._read_response(reader)
            if response.status >= 400:
                raise AssertionError(f"download failed: HTTP {response.status} {response.body!r}")
            await asyncio.to_thread(Path(output_path).write_bytes, response.body)
        finally:
            writer.close()
            await writer.wait_closed()


def sdk_client_class(base_url: str) -> type[Any]:
    class EaselClient(TripoClient):  # type: ignore[misc]
        BASE_URL = f"{base_url}/v2/openapi"  # read by TripoClient.__init__ (self.BASE_URL)
        _impl: Any

        def __init__(self, api_key: str) -> None:
            super().__init__(api_key=api_key)
            if isinstance(self._impl, LegacyClientImpl):  # no aiohttp: patch the raw client
                self._impl = LoopbackImpl(self.api_key, self.BASE_URL)

    return EaselClient


@asynccontextmanager
async def sdk(base_url: str, key: str) -> AsyncIterator[Any]:
    async with sdk_client_class(base_url)(key) as client:
        assert client._impl.base_url == f"{base_url}/v2/openapi"
        yield client
