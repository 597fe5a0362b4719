"""Slow clients, refused large bodies and shutdown, against real ``easel serve`` processes
over real sockets (``docs/reliability.md``, "Availability and streams")."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from processes import create_key, easel_process, free_port, wait_healthy, write_config

pytestmark = pytest.mark.e2e

# Short bounds so the test waits seconds, not the defaults' minutes.
SLOW_CLIENT_BOUNDS = {
    "EASEL_HEADER_TIMEOUT_S": "2",
    "EASEL_BODY_TIMEOUT_S": "2",
    "EASEL_BODY_MIN_BYTES_PER_S": "1000",
    "EASEL_KEEP_ALIVE_TIMEOUT_S": "2",
}
MARGIN_S = 8.0  # generous: the machine is shared; this catches "never", not "slow"


@contextlib.contextmanager
def server(
    tmp_path: Path, env: dict[str, str], max_files: int | None = None
) -> Iterator[tuple[int, str, Path]]:
    config = write_config(tmp_path)
    key = create_key(config, 100)
    port = free_port()
    log = tmp_path / "serve.log"
    with easel_process(
        "serve", "--port", str(port), "--config", str(config), log=log, env=env, max_files=max_files
    ) as proc:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        yield port, key, log
        assert proc.poll() is None, log.read_text(errors="replace")


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def closed_by_server(conn: socket.socket, deadline: float) -> bool:
    """Whether the server closes ``conn`` before ``deadline`` (whatever it sent first)."""
    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            if not conn.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:  # reset
            return True
    return False


def answers_before_closed(conn: socket.socket) -> int:
    """Read everything ``conn`` still gets; the number of answers in it (all of them, if
    the server never closed it)."""
    received = b""
    conn.settimeout(5)
    with contextlib.suppress(OSError):  # reset, or nothing more within 5 s
        while chunk := conn.recv(65536):
            received += chunk
    return received.count(b"HTTP/1.1 200")


def test_slow_clients_are_dropped_and_a_normal_client_is_served_meanwhile(
    tmp_path: Path,
) -> None:
    # 256 descriptors, more slow connections than that: before the bounds, accept() failed
    # with EMFILE and every new client waited for ever.
    with (
        server(tmp_path, SLOW_CLIENT_BOUNDS, max_files=256) as (port, _, log),
        contextlib.ExitStack() as sockets,
    ):

        def open_socket(port: int) -> socket.socket:
            return sockets.enter_context(connect(port))

        kept_alive = open_socket(port)
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200")
        # A reader that takes nothing of 64 pipelined answers (5 MB; loopback buffers 3 MB).
        not_reading = sockets.enter_context(socket.socket())
        not_reading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        not_reading.connect(("127.0.0.1", port))
        not_reading.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 64)
        # A slow but steady upload (3,000 bytes/s, above body_min_bytes_per_s) goes through.
        steady, steady_body = open_socket(port), b'{"prompt": "' + b"s" * 8986 + b'"}'
        steady.sendall(
            b"POST /v2/openapi/task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(steady_body)
        )
        half_headers, silent, trickling = [], [], []
        for _ in range(300):
            conn = open_socket(port)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing
            half_headers.append(conn)
        for _ in range(10):
            silent.append(open_socket(port))  # connects, sends nothing
        for _ in range(10):
            conn = open_socket(port)
            conn.sendall(
                b"POST /v2/openapi/task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            trickling.append(conn)
        started = time.monotonic()

        served = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert served.status_code == 200

        # The body tricklers send a byte every half second until they are dropped; the
        # steady upload sends 1,500 bytes every half second.
        deadline = started + 2 + MARGIN_S
        alive, unsent = list(trickling), steady_body
        while (alive or unsent) and time.monotonic() < deadline:
            for conn in list(alive):
                try:
                    conn.sendall(b" ")
                except OSError:
                    alive.remove(conn)
            steady.sendall(unsent[:1500])
            unsent = unsent[1500:]
            time.sleep(0.5)
        steady.settimeout(10)
        assert steady.recv(65536).startswith(b"HTTP/1.1 401")  # answered: no key was sent
        assert all(closed_by_server(conn, deadline) for conn in trickling)
        assert all(closed_by_server(conn, deadline) for conn in half_headers)
        assert all(closed_by_server(conn, deadline) for conn in silent)
        assert closed_by_server(kept_alive, deadline)  # idle keep-alive: 2 s here
        assert answers_before_closed(not_reading) < 64
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    assert "Too many open files" not in log.read_text(errors="replace")


def multipart(size: int) -> tuple[bytes, str]:
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    return head + b"\x89PNG" + b"x" * size + b"\r\n--b--\r\n", "multipart/form-data; boundary=b"


def post_with_urllib(url: str, key: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    """POST as urllib does it: no ``Expect: 100-continue``, ``Connection: close``, the whole
    body sent before the answer is read."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def test_an_oversized_body_sent_without_expect_gets_the_413_envelope(tmp_path: Path) -> None:
    with server(tmp_path, {}) as (port, key, _):
        base = f"http://127.0.0.1:{port}/v2/openapi"
        for url, (body, content_type) in (
            (f"{base}/upload", multipart(22 * 1000 * 1000)),
            (f"{base}/task", (b'{"prompt": "' + b"x" * 22_000_000 + b'"}', "application/json")),
        ):
            status, answer = post_with_urllib(url, key, body, content_type)
            assert status == 413, answer[:300]
            envelope = json.loads(answer)
            assert envelope["code"] == 1004
            assert envelope["suggestion"]

        # A body declared far past what is worth reading is answered at once, unread.
        with connect(port) as conn:
            conn.sendall(
                b"POST /v2/openapi/upload HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 10000000000\r\n\r\n"
            )
            conn.settimeout(10)
            assert conn.recv(65536).startswith(b"HTTP/1.1 413")
        assert httpx.get(f"{base}/user/balance", headers={"Authorization": f"Bearer {key}"}).json()[
            "data"
        ] == {"balance": 100, "frozen": 0}


def test_sigterm_closes_event_streams_and_exits_within_the_grace(tmp_path: Path) -> None:
    grace = 3
    config = write_config(tmp_path)
    key = create_key(config, 100)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {"EASEL_SHUTDOWN_GRACE_S": str(grace)}
    auth = f"Authorization: Bearer {key}"
    with (
        easel_process(
            "serve", "--port", str(port), "--config", str(config), log=log, env=env
        ) as proc,
        contextlib.ExitStack() as clients,
    ):
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        sse = [clients.enter_context(connect(port)) for _ in range(2)]
        for conn in sse:
            conn.sendall(f"GET /v2/openapi/events HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n".encode())
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        watchers = [
            clients.enter_context(
                websockets.sync.client.connect(
                    f"ws://127.0.0.1:{port}/v2/openapi/task/watch/all",
                    additional_headers={"Authorization": f"Bearer {key}"},
                )
            )
            for _ in range(2)
        ]
        time.sleep(0.5)  # the watchers are following the event log

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.wait(timeout=grace + MARGIN_S)
        took = time.monotonic() - sent
        # A clean shutdown exits 0 (uvicorn raises the SIGTERM it caught again at the end,
        # which easel serve turns into exit 0 rather than death by the signal: 143).
        assert proc.returncode == 0, f"{proc.returncode} after {took:.1f} s\n{log.read_text()}"
        assert took < grace + MARGIN_S
        assert "Application shutdown complete" in log.read_text()

        for conn in sse:  # each stream ended: the chunked body's last chunk, then EOF
            rest = b""
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    rest += chunk
            assert rest.endswith(b"0\r\n\r\n"), rest[-200:]
        for watcher in watchers:
            with pytest.raises(ConnectionClosed) as closed:
                watcher.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
