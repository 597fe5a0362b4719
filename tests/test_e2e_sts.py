"""End to end: the official SDK's boto3 upload path against ``easel serve`` on S3.

moto's server runs with TLS (a throwaway CA made by the test; the SDK always uses
``https://`` + ``s3_host``) and answers both S3 and STS. ``easel serve`` stores in
``s3://BUCKET/easel-e2e`` and issues tokens through moto's ``AssumeRole``; both the server
(obstore, httpx) and the SDK's boto3 trust the CA through ``AWS_CA_BUNDLE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from tripo3d import TaskStatus

from processes import create_key, easel_process, free_port, wait_healthy
from s3server import ROLE_ARN, S3Server, moto_server, require_boto3
from sdk_loopback import block_boto3, sdk

pytestmark = pytest.mark.e2e

PREFIX = "easel-e2e"
CREDITS = 100
PRICE = 5  # flux.1_kontext_pro
WAIT_TIMEOUT_S = 60.0
UPLOAD_KEY = re.compile(rf"{PREFIX}/uploads/[0-9a-f-]{{36}}/([0-9a-f-]{{36}})\.png")

CONFIG = """\
database_url = "sqlite+aiosqlite:///{db}"
storage_url = "s3://{bucket}/{prefix}"
sts_endpoint = "{sts}"
sts_role_arn = "{role}"

[backends.dry]
kind = "placeholder"
delay_s = 0.2

[models."flux.1_kontext_pro"]
backends = ["dry"]
"""


class Server:
    def __init__(self, base_url: str, key: str, bucket: str, s3: S3Server) -> None:
        self.base_url, self.key, self.bucket, self.s3 = base_url, key, bucket, s3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("easel-e2e-sts")
    with moto_server(root / "moto", tls=True) as s3:
        bucket = s3.create_bucket()
        config = root / "easel.toml"
        config.write_text(
            CONFIG.format(
                db=root / "easel.db", bucket=bucket, prefix=PREFIX, sts=s3.endpoint, role=ROLE_ARN
            ),
            encoding="utf-8",
        )
        key = create_key(config, CREDITS)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = root / "server.log"
        args = ("serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port))
        with easel_process(*args, log=log, env=s3.env()) as process:
            wait_healthy(base_url, process, log)
            yield Server(base_url, key, bucket, s3)


@pytest.fixture
def sdk_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's process knows only the CA to trust, as a user's would (no AWS_* of ours).

    The SDK takes the STS route only when ``import boto3`` works (tripo3d/client.py)."""
    require_boto3()
    for name in server.s3.env():
        monkeypatch.delenv(name, raising=False)
    assert server.s3.tls is not None
    monkeypatch.setenv("AWS_CA_BUNDLE", str(server.s3.tls.ca))


def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (96, 64), colour).save(path, format="PNG")
    return path


@pytest.mark.usefixtures("sdk_env")
async def test_sdk_upload_file_puts_the_object_in_the_bucket(
    server: Server, tmp_path: Path
) -> None:
    path = _png(tmp_path / "ref.png", (10, 120, 200))
    async with sdk(server.base_url, server.key) as client:
        uploaded = await client.upload_file(str(path))
    assert set(uploaded) == {"object"}, uploaded
    target = uploaded["object"]
    assert target["bucket"] == server.bucket
    assert UPLOAD_KEY.fullmatch(target["key"]), target["key"]
    assert server.s3.read(server.bucket, target["key"]) == path.read_bytes()


@pytest.mark.usefixtures("sdk_env")
async def test_sdk_generate_image_from_a_local_file_through_sts(
    server: Server, tmp_path: Path
) -> None:
    path = _png(tmp_path / "green.png", (0, 160, 0))
    async with sdk(server.base_url, server.key) as client:
        before = await client.get_balance()
        # The SDK uploads the path through STS, then sends {"type": "jpg", "object": {…}}.
        task_id = await client.generate_image(prompt="image[1] as a clay figure", file=str(path))
        task = await client.wait_for_task(task_id, timeout=WAIT_TIMEOUT_S)
        assert task.status == TaskStatus.SUCCESS, (task.status, task.error_code, task.error_msg)
        after = await client.get_balance()
    assert int(after.balance) == int(before.balance) - PRICE


@pytest.mark.usefixtures("sdk_env")
async def test_sdk_without_boto3_uploads_by_multipart_into_s3(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block_boto3(monkeypatch)
    path = _png(tmp_path / "red.png", (210, 30, 30))
    async with sdk(server.base_url, server.key) as client:
        uploaded = await client.upload_file(str(path))
        assert set(uploaded) == {"file_token"}, uploaded
        token = uploaded["file_token"]
        uploads = [k for k in server.s3.keys(server.bucket) if k.endswith(f"/{token}.png")]
        assert len(uploads) == 1, uploads
        assert UPLOAD_KEY.fullmatch(uploads[0])
        assert server.s3.read(server.bucket, uploads[0]) == path.read_bytes()

        # The output goes to the bucket too, and comes back through the API's signed link.
        task_id = await client.generate_image(prompt="image[1] in watercolour", file=token)
        task = await client.wait_for_task(task_id, timeout=WAIT_TIMEOUT_S)
        assert task.status == TaskStatus.SUCCESS, (task.status, task.error_code, task.error_msg)
        files = await client.download_task_models(task, str(tmp_path))
    assert files["image"] is not None, "the SDK's download failed"
    outputs = [k for k in server.s3.keys(server.bucket) if k.startswith(f"{PREFIX}/outputs/")]
    assert any(task_id in k for k in outputs), outputs
    with Image.open(files["image"]) as image:
        assert image.format == "PNG"
