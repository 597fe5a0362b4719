"""moto's S3 server that keeps its buckets and objects across a stop and a start, like a real
S3 server (MinIO, Ceph) does: ``python moto_restartable.py PORT RECORDING``.

moto keeps everything in memory, so a stopped moto forgets it all. Its recorder appends every
request to ``RECORDING`` (``MOTO_ENABLE_RECORDING``, ``MOTO_RECORDER_FILEPATH`` set by
:func:`restartable_moto`); on start this program first replays that file into a staging
server on another port of the same process (so the same memory), and only then listens on
``PORT``. No client can see a half-restored store.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from processes import free_port, stop, wait_ready
from s3server import S3Server, missing

START_TIMEOUT_S = 30.0


def serve(port: int, recording: Path) -> None:
    """Replay ``recording`` (when there is one), then serve on ``port`` until SIGTERM."""
    from moto.moto_api import recorder
    from moto.server import ThreadedMotoServer

    if recording.exists() and recording.stat().st_size:
        staging = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
        staging.start()
        host, staging_port = staging.get_host_and_port()
        recorder.replay_recording(target_host=f"http://{host}:{staging_port}")
        staging.stop()
    server = ThreadedMotoServer("127.0.0.1", port, verbose=False)
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop()


@dataclass
class RestartableS3:
    """A moto server on a fixed port that can be stopped and started again, data intact."""

    server: S3Server
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "moto.log"

    def start(self) -> None:
        env = {
            **os.environ,
            "MOTO_ENABLE_RECORDING": "true",
            "MOTO_RECORDER_FILEPATH": str(self.directory / "recording.jsonl"),
        }
        args = [sys.executable, __file__, str(self.port), env["MOTO_RECORDER_FILEPATH"]]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=env)
        wait_ready(
            self.server.answers, self.process, self.log, what="moto", timeout_s=START_TIMEOUT_S
        )

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout_s=10)
            self.process = None


@contextmanager
def restartable_moto(directory: Path) -> Iterator[RestartableS3]:
    """Start one; skip without moto's server mode (``moto[server]``), fail so in CI."""
    if importlib.util.find_spec("flask") is None or importlib.util.find_spec("moto") is None:
        missing("moto's server mode is not installed; pip install 'moto[server]'")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    s3 = RestartableS3(S3Server(f"http://127.0.0.1:{port}", None), port, directory)
    s3.start()
    try:
        yield s3
    finally:
        s3.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))
