"""The object store port, as one contract run against memory://, file:// and s3://.

The S3 runs are against moto's server on loopback (``s3server``): plain HTTP with
``AWS_ALLOW_HTTP``, and once over TLS trusted through ``AWS_CA_BUNDLE``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import LocalStore, MemoryStore, S3Store, from_url

from easel.storage.objects import (
    LOCAL_BUCKET,
    BucketMissing,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    open_object_store,
    s3_client_options,
)
from processes import free_port
from s3server import S3Server, moto_server

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def s3_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto-tls"), tls=True) as server:
        yield server


@dataclass
class Backend:
    """How one kind of store is opened (with a prefix) and seen from outside the port."""

    scheme: str
    bucket: str
    open: Callable[[str], ObjectStore]  # prefix → store
    raw: Any  # an obstore store at the root, to look behind the port

    async def raw_keys(self) -> list[str]:
        keys: list[str] = []
        async for chunk in obstore.list(self.raw):
            keys.extend(str(entry["path"]) for entry in chunk)
        return sorted(keys)


def _s3_backend(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Backend:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    bucket = server.create_bucket()

    def open_(prefix: str) -> ObjectStore:
        return open_object_store(f"s3://{bucket}/{prefix}")

    return Backend("s3", bucket, open_, from_url(f"s3://{bucket}", client_options=None))


@pytest.fixture(params=["memory", "file", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    if request.param == "memory":
        shared = MemoryStore()
        return Backend(
            "memory", LOCAL_BUCKET, lambda p: ObjectStore(shared, LOCAL_BUCKET, p), shared
        )
    if request.param == "file":
        root = tmp_path / "objects"
        return Backend(
            "file",
            LOCAL_BUCKET,
            lambda p: open_object_store(f"file://{root}/{p}"),
            LocalStore(root, mkdir=True),
        )
    server: S3Server = request.getfixturevalue("s3")
    return _s3_backend(server, monkeypatch)


# -- the contract ---------------------------------------------------------------------------


async def test_put_then_get_returns_the_bytes(backend: Backend) -> None:
    store = backend.open("")
    assert store.bucket == backend.bucket
    assert store.scheme == backend.scheme
    await store.put("uploads/acct/one.png", PNG_BYTES)
    assert await store.get("uploads/acct/one.png") == PNG_BYTES
    await store.put("uploads/acct/one.png", b"second")  # a re-run overwrites
    assert await store.get("uploads/acct/one.png") == b"second"
    assert await backend.raw_keys() == ["uploads/acct/one.png"]


async def test_missing_key_is_object_not_found(backend: Backend) -> None:
    store = backend.open("")
    with pytest.raises(ObjectNotFound) as missing:
        await store.get("outputs/never-written.png")
    assert missing.value.args == ("outputs/never-written.png",)


async def test_exists_follows_put_and_delete_under_the_prefix(backend: Backend) -> None:
    store = backend.open("tenant")
    assert not await store.exists("uploads/acct/a.png")
    await store.put("uploads/acct/a.png", PNG_BYTES)
    assert await store.exists("uploads/acct/a.png")
    assert not await backend.open("").exists("uploads/acct/a.png")  # the key lies under tenant/
    await store.delete("uploads/acct/a.png")
    assert not await store.exists("uploads/acct/a.png")


async def test_delete_is_idempotent(backend: Backend) -> None:
    store = backend.open("")
    await store.put("outputs/task.png", PNG_BYTES)
    await store.delete("outputs/task.png")
    with pytest.raises(ObjectNotFound):
        await store.get("outputs/task.png")
    await store.delete("outputs/task.png")
    await store.delete("outputs/never-written.png")
    assert await backend.raw_keys() == []


async def test_prefix_is_honoured(backend: Backend) -> None:
    first, second = backend.open("tenants/a"), backend.open("tenants/b/")
    await first.put("uploads/k.png", b"first")
    with pytest.raises(ObjectNotFound):
        await second.get("uploads/k.png")
    await second.put("uploads/k.png", b"second")
    assert await first.get("uploads/k.png") == b"first"
    assert await second.get("uploads/k.png") == b"second"
    assert await backend.raw_keys() == ["tenants/a/uploads/k.png", "tenants/b/uploads/k.png"]
    await first.delete("uploads/k.png")
    assert await backend.raw_keys() == ["tenants/b/uploads/k.png"]


async def test_probe_writes_reads_and_deletes_leaving_the_store_as_it_was(
    backend: Backend,
) -> None:
    store = backend.open("ready")
    await store.probe(timeout_s=10)
    assert await backend.raw_keys() == []
    await store.put("a.png", b"x")
    await store.probe(timeout_s=10)
    assert await backend.raw_keys() == ["ready/a.png"]


# -- S3 specifics -------------------------------------------------------------------------------


MISSING = "bucket 'no-such-bucket' does not exist (create it, or set storage_create_bucket = true)"


async def test_s3_a_missing_bucket_is_one_short_line_on_every_path(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """obstore's error is about 1.3 KB of XML and Rust debug text, and a read of a missing
    bucket says "not found" like a missing key: each path says the same short thing."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = open_object_store("s3://no-such-bucket/prefix")
    with pytest.raises(BucketMissing) as probed:
        await store.probe(timeout_s=10)
    with pytest.raises(BucketMissing) as written:
        await store.put("outputs/t.png", PNG_BYTES)
    with pytest.raises(BucketMissing) as read:  # not ObjectNotFound: no key can be there
        await store.get("uploads/a/t.png")
    with pytest.raises(BucketMissing):  # not done: the bucket may only be misnamed for now
        await store.delete("outputs/old.png")
    assert probed.value.reason == MISSING
    assert written.value.strerror == f"the object store failed to write outputs/t.png: {MISSING}"
    assert read.value.strerror == f"the object store failed to read uploads/a/t.png: {MISSING}"
    assert len(str(written.value.__cause__)) > 1000  # what the reason replaces


def refusing_endpoint(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """An S3 endpoint (and EC2 metadata service) on a loopback port where nothing listens."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    variables = {"AWS_ENDPOINT_URL": endpoint, "AWS_METADATA_ENDPOINT": endpoint, **env}
    for name, value in {**variables, "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(name, value)
    return endpoint


async def test_s3_an_endpoint_that_refuses_connections_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = refusing_endpoint(monkeypatch, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    quick = S3Store(
        "bucket",
        endpoint=endpoint,
        region="us-east-1",
        skip_signature=True,
        client_options={"allow_http": True},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=1)},
    )
    refused = ObjectStore(quick, "bucket", scheme="s3", endpoint=endpoint)
    with pytest.raises(ObjectStoreError) as failed:
        await refused.put("outputs/t.png", PNG_BYTES)
    assert failed.value.reason == f"cannot connect to {endpoint}: is it up and reachable?"
    retrying = open_object_store("s3://bucket/prefix")  # obstore's own retries: minutes
    with pytest.raises(ObjectStoreError) as timed_out:
        await retrying.probe(timeout_s=0.5)
    assert timed_out.value.reason == f"{endpoint} did not answer within 0.5 s"
    assert timed_out.value.errno == errno.ETIMEDOUT


async def test_s3_without_credentials_says_which_variables_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No AWS_* credentials: obstore asks the EC2 metadata service (here a closed loopback
    port) and reports that request's failure; the reason says what is really missing."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    refusing_endpoint(monkeypatch)
    with pytest.raises(ObjectStoreError) as failed:
        await open_object_store("s3://bucket/prefix").probe(timeout_s=30)
    assert failed.value.reason.startswith("no credentials: set AWS_ACCESS_KEY_ID and AWS_SE")


async def test_s3_object_keys_carry_the_prefix(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _s3_backend(s3, monkeypatch)
    store = open_object_store(f"s3://{backend.bucket}/easel/prod/")
    assert (store.bucket, store.prefix, store.scheme) == (backend.bucket, "easel/prod", "s3")
    await store.put("uploads/acct/t.png", PNG_BYTES)
    object_key = store.object_key("uploads/acct/t.png")
    assert object_key == "easel/prod/uploads/acct/t.png"
    assert s3.read(backend.bucket, object_key) == PNG_BYTES
    assert store.store_key(object_key) == "uploads/acct/t.png"


async def test_s3_over_tls_trusts_aws_ca_bundle(
    s3_tls: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_tls.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_tls.create_bucket()
    store = open_object_store(f"s3://{bucket}/tls")
    await store.put("uploads/x.png", PNG_BYTES)
    assert await store.get("uploads/x.png") == PNG_BYTES
    assert s3_tls.keys(bucket) == ["tls/uploads/x.png"]


# -- units ------------------------------------------------------------------------------------


def test_store_key_inverts_object_key() -> None:
    plain = ObjectStore(MemoryStore(), LOCAL_BUCKET)
    assert plain.object_key("uploads/a.png") == "uploads/a.png"
    assert plain.store_key("uploads/a.png") == "uploads/a.png"
    prefixed = ObjectStore(MemoryStore(), "bucket", "/easel/prod/", scheme="s3")
    assert prefixed.prefix == "easel/prod"
    assert prefixed.object_key("uploads/a.png") == "easel/prod/uploads/a.png"
    assert prefixed.store_key("easel/prod/uploads/a.png") == "uploads/a.png"
    for outside in ("uploads/a.png", "easel/production/a.png", "easel/prod/", "easel/prod"):
        assert prefixed.store_key(outside) is None, outside


def test_client_options_add_the_ca_bundle_and_keep_allow_http(tmp_path: Path) -> None:
    assert s3_client_options({}) is None
    assert s3_client_options({"AWS_ALLOW_HTTP": "true"}) is None  # obstore reads it itself
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert s3_client_options({"AWS_CA_BUNDLE": str(bundle)}) == {
        "root_certificate": bundle.read_text()
    }
    assert s3_client_options({"AWS_CA_BUNDLE": str(bundle), "AWS_ALLOW_HTTP": "TRUE"}) == {
        "root_certificate": bundle.read_text(),
        "allow_http": True,
    }
    with pytest.raises(ValueError, match="AWS_CA_BUNDLE"):
        s3_client_options({"AWS_CA_BUNDLE": str(tmp_path / "missing.pem")})


@pytest.mark.parametrize("url", ["ftp://host/dir", "s3://", "redis://localhost"])
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="storage_url"):
        open_object_store(url)
