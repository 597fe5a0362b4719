"""``POST /v2/openapi/upload/sts/token``: temporary credentials scoped to one new key.

Through the API against moto (S3 and STS on one loopback port); against a second moto that
checks every signature and IAM policy, as a real AWS account would (the temporary credentials
put the one object and nothing outside the role; wrong or unauthorised server credentials are
refused); and as units: the session policy and the request to STS (captured with an httpx mock
transport), the answers for stores that cannot issue tokens, and a pending upload's first
inspection.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from obstore.store import MemoryStore

from apptools import Api, engine_of, png, running_api, settings_for
from easel.config import Settings
from easel.domain.accounts import Caller
from easel.domain.errors import (
    EmptyImage,
    FileNotFound,
    ImageTypeNotSupported,
    NotAllowed,
    UnknownServerError,
)
from easel.services.upload_tokens import (
    MULTIPART_HINT,
    UploadTokens,
    inspect_arrived,
    is_pending,
    public_s3_host,
    session_name,
    upload_policy,
)
from easel.storage.objects import ObjectStore
from easel.storage.sts import AwsCredentials
from easel.store import SqlStore, open_store
from easel.store.records import StoredFile
from s3server import (
    ACCESS_KEY,
    REGION,
    ROLE_ARN,
    SECRET_KEY,
    S3Server,
    moto_server,
    require_boto3,
)

TOKEN_FIELDS = {"s3_host", "resource_bucket", "resource_uri", "session_token", "sts_ak", "sts_sk"}
PREFIX = "easel/test"
ROUTE = "/v2/openapi/upload/sts/token"


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


def _s3_settings(tmp_path: Path, bucket: str, **overrides: Any) -> Settings:
    return settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}",
        storage_url=f"s3://{bucket}/{PREFIX}",
        **overrides,
    )


@pytest.fixture
async def api(s3_env: S3Server, tmp_path: Path) -> AsyncIterator[Api]:
    bucket = s3_env.create_bucket()
    settings = _s3_settings(tmp_path, bucket, sts_endpoint=s3_env.endpoint, sts_role_arn=ROLE_ARN)
    async with running_api(settings) as running:
        yield running


async def _caller(api: Api) -> Caller:
    return await api.runtime.store.accounts.authenticate(api.key)


async def _token(api: Api, fmt: str = "png") -> dict[str, str]:
    response = await api.client.post(ROUTE, json={"format": fmt})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 0, body
    data: dict[str, str] = body["data"]
    return data


def _s3_client(endpoint: str, credentials: AwsCredentials) -> Any:
    import boto3  # type: ignore[import-untyped]

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
        region_name=REGION,
    )


def _put_with(token: dict[str, str], endpoint: str, data: bytes, key: str | None = None) -> None:
    """What the official SDK does with a token (its endpoint is https://s3_host; moto's here
    is plain HTTP on the same host); ``key`` puts elsewhere with the same credentials."""
    assert endpoint.endswith("://" + token["s3_host"])
    granted = AwsCredentials(token["sts_ak"], token["sts_sk"], token["session_token"])
    client = _s3_client(endpoint, granted)
    client.put_object(Bucket=token["resource_bucket"], Key=key or token["resource_uri"], Body=data)


# -- through the API, against moto -----------------------------------------------------------


async def test_token_grants_one_new_key_in_the_bucket(api: Api, s3_env: S3Server) -> None:
    caller = await _caller(api)
    token = await _token(api)
    assert set(token) == TOKEN_FIELDS
    assert token["s3_host"] == s3_env.host
    assert token["resource_bucket"] == api.runtime.objects.bucket
    pattern = rf"{PREFIX}/uploads/{caller.account_id}/([0-9a-f-]{{36}})\.png"
    match = re.fullmatch(pattern, token["resource_uri"])
    assert match, token["resource_uri"]
    assert token["sts_ak"].startswith("ASIA")  # temporary credentials, not the server's
    assert token["sts_ak"] != ACCESS_KEY
    assert token["sts_sk"] != SECRET_KEY
    assert token["session_token"]

    # Recorded for this account, pending until the bytes arrive.
    key = api.runtime.objects.store_key(token["resource_uri"])
    assert key == f"uploads/{caller.account_id}/{match[1]}.png"
    stored = await api.runtime.store.files.find(caller.account_id, key=key)
    assert stored == StoredFile(match[1], caller.account_id, key, "png", 0, 0, 0)
    assert is_pending(stored)

    _put_with(token, s3_env.endpoint, png(48, 32))
    assert await api.runtime.objects.get(key) == png(48, 32)
    assert s3_env.read(token["resource_bucket"], token["resource_uri"]) == png(48, 32)

    # Every token names a new key.
    again = await _token(api)
    assert again["resource_uri"] != token["resource_uri"]


@pytest.mark.parametrize(
    ("fmt", "ext", "stored"),
    [
        ("png", "png", "png"),
        ("jpeg", "jpg", "jpeg"),
        ("jpg", "jpg", "jpeg"),
        ("WEBP", "webp", "webp"),
    ],
)
async def test_formats_name_the_key_and_the_record(
    api: Api, fmt: str, ext: str, stored: str
) -> None:
    caller = await _caller(api)
    token = await _token(api, fmt)
    assert token["resource_uri"].endswith(f".{ext}")
    key = api.runtime.objects.store_key(token["resource_uri"])
    found = await api.runtime.store.files.find(caller.account_id, key=key)
    assert found is not None
    assert found.format == stored


@pytest.mark.parametrize(
    "body", [{"format": "gif"}, {"format": "glb"}, {"format": 3}, {}, [], {"type": "png"}]
)
async def test_a_bad_format_is_1004_and_records_nothing(api: Api, body: Any) -> None:
    response = await api.client.post(ROUTE, json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 1004, error
    assert "png" in error["suggestion"]


async def test_a_body_that_is_not_json_is_1003(api: Api) -> None:
    response = await api.client.post(ROUTE, content=b"format=png")
    assert response.status_code == 400
    assert response.json()["code"] == 1003


async def test_a_token_needs_an_api_key(api: Api) -> None:
    response = await api.client.post(ROUTE, json={"format": "png"}, headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.json()["code"] == 1002


async def test_a_store_without_sts_is_1005_naming_upload(s3_env: S3Server, tmp_path: Path) -> None:
    settings = _s3_settings(tmp_path, s3_env.create_bucket())  # S3, but no sts_endpoint
    async with running_api(settings) as api:
        response = await api.client.post(ROUTE, json={"format": "png"})
    assert response.status_code == 403
    error = response.json()
    assert error["code"] == 1005
    assert "sts_endpoint" in error["message"]
    assert "POST /v2/openapi/upload " in error["suggestion"]


async def test_a_local_store_is_1005_naming_upload(tmp_path: Path) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}",
        sts_endpoint="http://127.0.0.1:9",
        sts_role_arn=ROLE_ARN,
    )  # memory:// store: STS settings do not matter
    async with running_api(settings) as api:
        response = await api.client.post(ROUTE, json={"format": "png"})
        bad = await api.client.post(ROUTE, json={"format": "gif"})
    assert response.status_code == 403
    error = response.json()
    assert error["code"] == 1005
    assert "memory object store" in error["message"]
    assert "POST /v2/openapi/upload " in error["suggestion"]
    assert bad.json()["code"] == 1004  # the request is checked first


async def test_sts_unreachable_is_1000_and_records_nothing(
    s3_env: S3Server, tmp_path: Path
) -> None:
    from processes import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    settings = _s3_settings(
        tmp_path, s3_env.create_bucket(), sts_endpoint=closed, sts_role_arn=ROLE_ARN
    )
    async with running_api(settings) as api:
        response = await api.client.post(ROUTE, json={"format": "png"})
        caller = await _caller(api)
        prefix = f"uploads/{caller.account_id}/"
        async with engine_of(api.runtime.store).connect() as conn:
            from sqlalchemy import func, select

            from easel.store.tables import files

            count = await conn.scalar(select(func.count()).where(files.c.key.startswith(prefix)))
    assert response.status_code == 500
    error = response.json()
    assert error["code"] == 1000
    assert "POST /v2/openapi/upload " in error["suggestion"]
    assert count == 0


async def test_an_uploaded_object_is_a_task_input(api: Api, s3_env: S3Server) -> None:
    token = await _token(api)
    _put_with(token, s3_env.endpoint, png(64, 48, "blue"))
    ref = {
        "type": "png",
        "object": {"bucket": token["resource_bucket"], "key": token["resource_uri"]},
    }
    response = await api.submit(prompt="image[1] as a watercolour", file=ref)
    assert response.status_code == 200, response.text
    task = await api.wait(response.json()["data"]["task_id"])
    assert task["status"] == "success", task
    caller = await _caller(api)
    key = api.runtime.objects.store_key(token["resource_uri"])
    stored = await api.runtime.store.files.find(caller.account_id, key=key)
    assert stored is not None
    assert (stored.format, stored.width, stored.height) == ("png", 64, 48)  # inspected


async def test_an_object_not_uploaded_yet_is_2019_at_submit(api: Api) -> None:
    token = await _token(api)
    ref = {"object": {"bucket": token["resource_bucket"], "key": token["resource_uri"]}}
    before = await api.balance()
    response = await api.submit(prompt="image[1] again", file=ref)
    assert response.status_code == 404
    error = response.json()
    assert error["code"] == 2019
    assert "nothing has been uploaded" in error["message"]
    assert await api.balance() == before


# -- units: the request to STS and its policy -------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    opened = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}")
    try:
        yield opened
    finally:
        await opened.close()


ASSUMED = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult><Credentials>
    <AccessKeyId>ASIATEMPORARY</AccessKeyId><SecretAccessKey>temp-secret</SecretAccessKey>
    <SessionToken>temp-session</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>
  </Credentials></AssumeRoleResult>
</AssumeRoleResponse>"""

DENIED = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not allowed</Message></Error>
</ErrorResponse>"""


def _tokens(
    store: SqlStore, handler: Any, *, env: dict[str, str] | None = None, **settings: Any
) -> UploadTokens:
    objects = ObjectStore(MemoryStore(), "uploads-bucket", "tenant", scheme="s3")
    configured = Settings.model_validate(
        {"sts_endpoint": "https://sts.eu-west-1.amazonaws.com", "sts_role_arn": ROLE_ARN} | settings
    )
    env = {
        "AWS_ACCESS_KEY_ID": "AKIASERVER",
        "AWS_SECRET_ACCESS_KEY": "server-secret",
        "AWS_REGION": "eu-west-1",
    } | (env or {})
    return UploadTokens(
        configured, objects, store.files, env=env, transport=httpx.MockTransport(handler)
    )


async def test_assume_role_request_and_session_policy(store: SqlStore) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=ASSUMED)

    key = await store.accounts.create_key("t", 10)
    caller = await store.accounts.authenticate(key)
    tokens = _tokens(store, handler, sts_duration_s=1800)
    data = await tokens.issue(caller, {"format": "jpeg"})

    assert data == {
        "s3_host": "s3.eu-west-1.amazonaws.com",
        "resource_bucket": "uploads-bucket",
        "resource_uri": data["resource_uri"],
        "session_token": "temp-session",
        "sts_ak": "ASIATEMPORARY",
        "sts_sk": "temp-secret",
    }
    assert re.fullmatch(
        rf"tenant/uploads/{caller.account_id}/[0-9a-f-]{{36}}\.jpg", data["resource_uri"]
    )

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://sts.eu-west-1.amazonaws.com/"
    form = {name: values[0] for name, values in parse_qs(request.content.decode()).items()}
    assert set(form) == {
        "Action",
        "Version",
        "RoleArn",
        "RoleSessionName",
        "Policy",
        "DurationSeconds",
    }
    assert (form["Action"], form["Version"]) == ("AssumeRole", "2011-06-15")
    assert form["RoleArn"] == ROLE_ARN
    assert form["RoleSessionName"] == f"easel-{caller.account_id}"
    assert form["DurationSeconds"] == "1800"
    assert json.loads(form["Policy"]) == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "EaselUploadOneObject",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": f"arn:aws:s3:::uploads-bucket/{data['resource_uri']}",
            }
        ],
    }
    authorization = request.headers["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIASERVER/")
    assert "/eu-west-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date," in (
        authorization
    )
    assert request.headers["host"] == "sts.eu-west-1.amazonaws.com"


async def test_sts_refusal_is_1000_with_the_alternative(
    store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = await store.accounts.create_key("t", 10)
    caller = await store.accounts.authenticate(key)
    tokens = _tokens(store, lambda request: httpx.Response(403, text=DENIED))
    with pytest.raises(Exception, match="could not obtain temporary S3 credentials") as refused:
        await tokens.issue(caller, {"format": "png"})
    assert getattr(refused.value, "code", None) == 1000
    assert "AccessDenied not allowed" in caplog.text


async def test_no_server_credentials_is_1005(store: SqlStore) -> None:
    key = await store.accounts.create_key("t", 10)
    caller = await store.accounts.authenticate(key)
    tokens = _tokens(
        store,
        lambda request: httpx.Response(200, text=ASSUMED),
        env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
    )
    with pytest.raises(NotAllowed, match="AWS_ACCESS_KEY_ID"):
        await tokens.issue(caller, {"format": "png"})


PARTIAL = ASSUMED.replace("<SessionToken>temp-session</SessionToken>", "")


@pytest.mark.parametrize(
    ("status", "answer", "logged"),
    [
        (502, "<html>bad gateway</html>", "(HTTP 502)"),
        (200, "not xml at all", "ResponseParserError"),
        (200, "<Other/>", "AssumeRoleResult"),
        (200, PARTIAL, "answered without SessionToken"),
    ],
)
async def test_an_answer_sts_never_gives_is_1000_and_records_nothing(
    store: SqlStore, caplog: pytest.LogCaptureFixture, status: int, answer: str, logged: str
) -> None:
    caller = await store.accounts.authenticate(await store.accounts.create_key("t", 10))
    tokens = _tokens(store, lambda request: httpx.Response(status, text=answer))
    with pytest.raises(UnknownServerError) as refused:
        await tokens.issue(caller, {"format": "png"})
    assert refused.value.suggestion == MULTIPART_HINT
    assert logged in caplog.text
    assert await store.files.pending_before(time.time() + 60) == []


async def test_only_the_configured_endpoint_is_asked(
    store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A redirect from STS is an answer, not an address to follow with signed credentials."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(307, headers={"Location": "http://169.254.169.254/latest/"})

    caller = await store.accounts.authenticate(await store.accounts.create_key("t", 10))
    with pytest.raises(UnknownServerError):
        await _tokens(store, handler).issue(caller, {"format": "png"})
    assert seen == ["https://sts.eu-west-1.amazonaws.com/"]
    assert "STS AssumeRole" in caplog.text


async def test_aws_profiles_and_config_files_are_not_read(
    store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the store, STS takes credentials, region and CA bundle from the environment
    alone: a profile that does not exist, or a config file botocore cannot parse, changes
    nothing."""
    broken = tmp_path / "aws-config"
    broken.write_text("[profile\nnot an ini file", encoding="utf-8")
    monkeypatch.setenv("AWS_PROFILE", "absent")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(broken))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(broken))
    caller = await store.accounts.authenticate(await store.accounts.create_key("t", 10))
    tokens = _tokens(store, lambda request: httpx.Response(200, text=ASSUMED))
    data = await tokens.issue(caller, {"format": "png"})
    assert data["sts_ak"] == "ASIATEMPORARY"


def test_upload_policy_partitions_and_session_names() -> None:
    assert json.loads(upload_policy("b", "k/x.png", "cn-north-1"))["Statement"][0]["Resource"] == (
        "arn:aws-cn:s3:::b/k/x.png"
    )
    assert "arn:aws-us-gov:s3:::b/" in upload_policy("b", "x.png", "us-gov-west-1")
    assert session_name("acct id/with:odd*chars") == "easel-acct-id-with-odd-chars"
    assert len(session_name("x" * 100)) == 64


def test_public_s3_host() -> None:
    plain = Settings()
    assert public_s3_host(plain, {}) == "s3.us-east-1.amazonaws.com"
    assert public_s3_host(plain, {"AWS_REGION": "eu-west-3"}) == "s3.eu-west-3.amazonaws.com"
    assert public_s3_host(plain, {"AWS_ENDPOINT_URL": "https://minio.lan:9000"}) == "minio.lan:9000"
    both = {"AWS_ENDPOINT_URL": "https://a.lan", "AWS_ENDPOINT_URL_S3": "https://s3.b.lan:8443"}
    assert public_s3_host(plain, both) == "s3.b.lan:8443"
    public = Settings(s3_public_host="files.example.com")
    assert public_s3_host(public, both) == "files.example.com"


# -- against moto with IAM enforced ------------------------------------------------------------


@dataclass(frozen=True)
class IamMoto:
    """A moto server that, once set up, checks every signature and IAM policy."""

    server: S3Server
    bucket: str
    role_arn: str  # may put under <PREFIX>/uploads/*, as docs/configuration.md asks
    allowed: AwsCredentials  # a user that may assume the role and read the bucket
    not_allowed: AwsCredentials  # a user with no policy at all


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamMoto]:
    require_boto3()
    import boto3

    with moto_server(tmp_path_factory.mktemp("moto-iam")) as server:
        bucket = server.create_bucket()
        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint,
            region_name=REGION,
            aws_access_key_id="AKIASETUP",
            aws_secret_access_key="setup",
        )
        anyone = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
        role = iam.create_role(RoleName="easel-uploads", AssumeRolePolicyDocument=_policy(anyone))
        role_arn = role["Role"]["Arn"]
        uploads = f"arn:aws:s3:::{bucket}/{PREFIX}/uploads/*"
        put = {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": uploads}
        iam.put_role_policy(RoleName="easel-uploads", PolicyName="put", PolicyDocument=_policy(put))
        keys = {}
        for user in ("easel-server", "stranger"):
            iam.create_user(UserName=user)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        assume = {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}
        read = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
        iam.put_user_policy(
            UserName="easel-server", PolicyName="server", PolicyDocument=_policy(assume, read)
        )
        with server.http() as http:  # from here on moto authenticates and authorises
            http.post("/moto-api/reset-auth", content=b"0").raise_for_status()
        allowed, stranger = (
            AwsCredentials(keys[user]["AccessKeyId"], keys[user]["SecretAccessKey"])
            for user in ("easel-server", "stranger")
        )
        yield IamMoto(server, bucket, role_arn, allowed, stranger)


def _iam_tokens(moto: IamMoto, store: SqlStore, credentials: AwsCredentials) -> UploadTokens:
    """The service as a server on that account runs it (no transport of the test's)."""
    settings = Settings(sts_endpoint=moto.server.endpoint, sts_role_arn=moto.role_arn)
    objects = ObjectStore(MemoryStore(), moto.bucket, PREFIX, scheme="s3")
    env = {
        "AWS_ACCESS_KEY_ID": credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": moto.server.endpoint,
    }
    return UploadTokens(settings, objects, store.files, env=env)


def _session_policy(moto: IamMoto, access_key_id: str) -> dict[str, Any]:
    """What moto's STS recorded for the temporary key: role, session name and policy."""
    with moto.server.http() as http:
        roles = http.get("/moto-api/data.json").json()["sts"]["AssumedRole"]
    (assumed,) = (role for role in roles if role["access_key_id"] == access_key_id)
    return {name: assumed[name] for name in ("role_arn", "session_name", "policy")}


async def test_real_sts_credentials_put_the_one_object_and_nothing_outside_the_role(
    iam_moto: IamMoto, store: SqlStore
) -> None:
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    caller = await store.accounts.authenticate(await store.accounts.create_key("t", 10))
    token = await _iam_tokens(iam_moto, store, iam_moto.allowed).issue(caller, {"format": "png"})
    assert token["sts_ak"] != iam_moto.allowed.access_key_id

    # moto checks the temporary credentials' signature and the role's policy on the put.
    _put_with(token, iam_moto.server.endpoint, png(48, 32))
    server = _s3_client(iam_moto.server.endpoint, iam_moto.allowed)
    got = server.get_object(Bucket=iam_moto.bucket, Key=token["resource_uri"])["Body"].read()
    assert got == png(48, 32)
    outside = f"{PREFIX}/outputs/{uuid.uuid4()}.png"
    with pytest.raises(ClientError, match="AccessDenied"):
        _put_with(token, iam_moto.server.endpoint, png(8, 8), key=outside)

    # moto does not apply session policies (AWS does): the one it received names this key only.
    assert _session_policy(iam_moto, token["sts_ak"]) == {
        "role_arn": iam_moto.role_arn,
        "session_name": f"easel-{caller.account_id}",
        "policy": upload_policy(iam_moto.bucket, token["resource_uri"], REGION),
    }


@pytest.mark.parametrize(
    ("who", "code"),
    [
        ("wrong secret", "SignatureDoesNotMatch"),
        ("no policy", "AccessDenied"),
        ("unknown key", "InvalidClientTokenId"),
    ],
)
async def test_real_sts_refusals_are_1000_and_record_nothing(
    iam_moto: IamMoto, store: SqlStore, caplog: pytest.LogCaptureFixture, who: str, code: str
) -> None:
    credentials = {
        "wrong secret": AwsCredentials(iam_moto.allowed.access_key_id, "not-the-secret"),
        "no policy": iam_moto.not_allowed,
        "unknown key": AwsCredentials("AKIANOSUCHKEY0000000", "whatever"),
    }[who]
    caller = await store.accounts.authenticate(await store.accounts.create_key("t", 10))
    with pytest.raises(UnknownServerError) as refused:
        await _iam_tokens(iam_moto, store, credentials).issue(caller, {"format": "png"})
    assert refused.value.code == 1000
    assert refused.value.suggestion == MULTIPART_HINT
    assert f"(HTTP 403): {code}" in caplog.text
    assert await store.files.pending_before(time.time() + 60) == []


# -- units: a pending upload on first use -----------------------------------------------------


async def test_inspect_arrived_reads_the_real_image() -> None:
    objects = ObjectStore(MemoryStore(), "b", "p", scheme="s3")
    token = str(uuid.uuid4())
    pending = StoredFile(token, "acct", f"uploads/acct/{token}.png", "png", 0, 0, 0)
    assert is_pending(pending)
    with pytest.raises(FileNotFound, match="nothing has been uploaded to 'p/uploads/acct/"):
        await inspect_arrived(objects, pending, "image[1]")

    await objects.put(pending.key, png(40, 30, fmt="JPEG"))  # declared png, sent a JPEG
    arrived = await inspect_arrived(objects, pending, "image[1]")
    assert arrived == StoredFile(
        token, "acct", pending.key, "jpeg", len(png(40, 30, fmt="JPEG")), 40, 30
    )
    assert not is_pending(arrived)

    await objects.put(pending.key, b"")
    with pytest.raises(EmptyImage):
        await inspect_arrived(objects, pending, "image[1]")
    await objects.put(pending.key, b"GIF89a not really")
    with pytest.raises(ImageTypeNotSupported):
        await inspect_arrived(objects, pending, "image[1]")
