"""A local S3-compatible server for tests: moto's server mode, plain HTTP or TLS.

``moto_server`` (``pip install 'moto[server]'``) runs as a subprocess on a free loopback port;
one process answers S3 and STS (it routes by the signature's service). For TLS the test makes
a throwaway CA and a certificate for 127.0.0.1 with ``cryptography``; clients trust the CA
through ``AWS_CA_BUNDLE`` (boto3, and obstore through ``easel.storage.objects``). moto checks no
signatures and enforces no IAM policies: tests of the session policy read the policy itself.

Missing moto skips the test locally and fails it in CI (``EASEL_CI=1``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import ipaddress
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import obstore
import pytest
from obstore.store import S3Store

from processes import free_port, stop, wait_ready

if TYPE_CHECKING:
    from obstore.store import ClientConfig

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
REGION = "us-east-1"
ACCESS_KEY = "AKIAEASELTESTS000000"
SECRET_KEY = "easel-test-secret"
ROLE_ARN = "arn:aws:iam::123456789012:role/easel-uploads"
START_TIMEOUT_S = 30.0


def missing(message: str) -> None:
    if os.environ.get("EASEL_CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_moto() -> None:
    """Skip without moto's server; in CI (``EASEL_CI=1``) fail instead."""
    if not MOTO_SERVER.exists():
        missing(f"moto's server is not installed ({MOTO_SERVER}); pip install 'moto[server]'")


def require_boto3() -> None:
    """Skip without boto3 (the official SDK's S3 client); in CI fail instead."""
    if importlib.util.find_spec("boto3") is None:
        missing("boto3 is not installed; pip install boto3")


@dataclass(frozen=True)
class Tls:
    ca: Path  # what clients trust (AWS_CA_BUNDLE)
    cert: Path  # the server's certificate for 127.0.0.1, issued by ``ca``
    key: Path


def make_tls(directory: Path) -> Tls:
    """A throwaway CA and a server certificate for IP 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Easel test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http(s)://127.0.0.1:PORT, S3 and STS alike
    tls: Tls | None

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def env(self) -> dict[str, str]:
        """The AWS_* environment a process needs to use this server as its S3."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }
        if self.tls is None:
            env["AWS_ALLOW_HTTP"] = "true"
        else:
            env["AWS_CA_BUNDLE"] = str(self.tls.ca)
        return env

    def http(self) -> httpx.Client:
        """Plain (unsigned) HTTP to the server: moto takes it to create buckets."""
        verify: ssl.SSLContext | bool = True
        if self.tls:
            verify = ssl.create_default_context(cafile=str(self.tls.ca))
        return httpx.Client(base_url=self.endpoint, verify=verify, timeout=10.0)

    def answers(self) -> bool:
        """True once the server answers HTTP at all (a refused connection raises)."""
        with self.http() as http:
            http.get("/moto-api/data.json")
        return True

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"easel-{uuid.uuid4().hex[:12]}"
        with self.http() as http:
            http.put(f"/{name}").raise_for_status()
        return name

    def store(self, bucket: str) -> S3Store:
        """An obstore client for ``bucket`` configured here, whatever the environment says."""
        options: ClientConfig = (
            {"root_certificate": self.tls.ca.read_text()} if self.tls else {"allow_http": True}
        )
        return S3Store(
            bucket,
            endpoint=self.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            client_options=options,
        )

    def keys(self, bucket: str) -> list[str]:
        return sorted(
            str(entry["path"]) for chunk in obstore.list(self.store(bucket)) for entry in chunk
        )

    def read(self, bucket: str, key: str) -> bytes | None:
        try:
            return bytes(obstore.get(self.store(bucket), key).bytes())
        except FileNotFoundError:
            return None


@contextmanager
def moto_server(
    directory: Path,
    *,
    tls: bool = False,
    host: str = "127.0.0.1",
    port: int | None = None,
    prefix: Sequence[str] = (),
) -> Iterator[S3Server]:
    """Start ``moto_server`` on a free loopback port (TLS with a fresh CA when asked), or on
    ``host:port`` behind the command ``prefix`` (a host of ``netns.py``; no TLS there)."""
    require_moto()
    directory.mkdir(parents=True, exist_ok=True)
    made = make_tls(directory) if tls else None
    port = port or free_port()
    scheme = "https" if made else "http"
    server = S3Server(f"{scheme}://{host}:{port}", made)
    args = [*prefix, str(MOTO_SERVER), "-H", host, "-p", str(port)]
    if made:
        args += ["-c", str(made.cert), "-k", str(made.key)]
    log = directory / "moto.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_ready(server.answers, process, log, what="moto_server", timeout_s=START_TIMEOUT_S)
        yield server
    finally:
        stop(process, timeout_s=10)
