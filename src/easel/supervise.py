"""Supervision of ``easel serve --processes N``: N API processes and one worker process.

Before, the worker was started once and never looked at again: when it died (a migration
race on an empty PostgreSQL database killed it about 3 starts in 10) the API processes kept
accepting tasks that no one would run, and ``/readyz`` said all was well. Now the parent
process watches every child twice a second (uvicorn's loop, extended here):

- a child that dies is logged (which one, its pid, the signal or exit status) and started
  again after a back-off of 1, 2, 4, 8 … s (at most 30 s);
- a child that dies 5 times in a row, each time within 60 s of starting, is not started
  again: the server stops and ``easel serve`` exits 1, so that systemd, Kubernetes or an
  operator sees a crash loop instead of a server that looks up and runs nothing;
- while any child is dead, restarting or not yet serving, ``/readyz`` answers 503 and names
  it, with the reason (the API processes read what the parent writes to a small JSON file,
  named by ``$EASEL_SUPERVISOR_STATE``; the worker touches ``$EASEL_WORKER_READY_FILE``
  once it has registered with the database).

The loops inside one process (the worker of a one-process ``easel serve``, the webhook
dispatcher, the janitor) are kept running the same way by :mod:`easel.services.loops`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from easel.services.loops import Backoff, timestamp

log = logging.getLogger("easel.supervise")

STATE_ENV = "EASEL_SUPERVISOR_STATE"
READY_ENV = "EASEL_WORKER_READY_FILE"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's name
WORKER_COMMAND = (sys.executable, "-m", "easel", "worker")
WORKER_STOP_S = 30.0  # how long the worker gets to put its running tasks back in the queue
OK = "ok"


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass(slots=True)
class Child:
    """One supervised place (the worker, or API process k): what /readyz says about it."""

    name: str
    backoff: Backoff = field(default_factory=Backoff)
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None  # set while dead and waiting to be started again
    death: str | None = None  # how the last one died, until its replacement serves
    state: str = "starting"

    def died(self, pid: int | None, code: int | None) -> bool:
        """Record a death; False when it is time to give up."""
        how = describe_exit(code) if code is not None else "stopped answering and was killed"
        self.death = f"the {self.name} (pid {pid}) {how} at {timestamp()}"
        delay = self.backoff.after_death(time.monotonic() - self.started_at)
        if delay is None:
            self.state = (
                f"{self.death}; it died {self.backoff.quick_deaths} times in a row, each "
                f"within {self.backoff.stable_s:g} s of starting: the server stops"
            )
            log.error("%s", self.state)
            return False
        self.restart_at = time.monotonic() + delay
        self.state = f"{self.death}; starting it again in {delay:g} s"
        log.error("%s", self.state)
        return True

    def due(self) -> bool:
        return self.restart_at is not None and time.monotonic() >= self.restart_at

    def restarted(self, pid: int | None) -> None:
        self.restart_at, self.started_at = None, time.monotonic()
        self.state = f"{self.death}; its replacement (pid {pid}) is starting"
        log.info("started the %s again (pid %s)", self.name, pid)

    def serving(self) -> None:
        if self.state != OK and self.death is not None:
            log.info("the %s serves again", self.name)
        self.state, self.death = OK, None


class WorkerProcess:
    """``easel worker`` as a child process, and whether it has registered yet."""

    def __init__(self, ready_file: Path) -> None:
        self.ready_file = ready_file
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        env = {**os.environ, READY_ENV: str(self.ready_file)}
        self.popen = subprocess.Popen(WORKER_COMMAND, env=env)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def registered(self) -> bool:
        return self.ready_file.exists()

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()  # SIGTERM: the worker puts running tasks back in the queue
        try:
            self.popen.wait(timeout=WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


class Supervisor(Multiprocess):
    """uvicorn's process manager, which also runs the worker, starts dead children again
    with back-off, and writes what /readyz reports."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[Any], state_dir: Path, *, worker: bool
    ) -> None:
        super().__init__(config, sockets)
        self.state_file = state_dir / "state.json"
        self.worker = WorkerProcess(state_dir / "worker.ready") if worker else None
        self.worker_child = Child("worker process")
        self.api_children: list[Child] = []
        self.gave_up: str | None = None
        self._written: dict[str, str] | None = None

    def run(self) -> None:
        self._write_state()
        if self.worker is not None:
            self.worker.start()
        try:
            super().run()
        finally:
            if self.worker is not None:
                self.worker.stop()

    def init_processes(self) -> None:
        super().init_processes()
        self.api_children = [Child(f"API process {n + 1}") for n in range(len(self.processes))]

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for index, child in enumerate(self.api_children):
            if not self._watch_api(index, child):
                return self._give_up(child)
        if self.worker is not None and not self._watch_worker(self.worker, self.worker_child):
            return self._give_up(self.worker_child)
        self._write_state()

    def _watch_api(self, index: int, child: Child) -> bool:
        process = self.processes[index]
        if child.restart_at is not None:
            if child.due():
                self.processes[index] = replacement = Process(self.config, self.sockets)
                replacement.start()
                child.restarted(replacement.pid)
            return True
        if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
            if child.state != OK and process.is_ready(timeout=0.05):
                child.serving()
            return True
        process.kill()  # dead, or hung: not answering the health check
        process.join()
        if process.exitcode == STARTUP_FAILURE:  # its app cannot start: nor will the next
            child.death = f"the {child.name} (pid {process.pid}) failed to start"
            child.state = f"{child.death}; see the log above: the server stops"
            log.error("%s", child.state)
            return False
        return child.died(process.pid, process.exitcode)

    def _watch_worker(self, worker: WorkerProcess, child: Child) -> bool:
        if child.restart_at is not None:
            if child.due():
                worker.start()
                child.restarted(worker.pid)
            return True
        code = worker.exit_code()
        if code is None:
            if child.state != OK and worker.registered():
                child.serving()
            return True
        return child.died(worker.pid, code)

    def _give_up(self, child: Child) -> None:
        self.gave_up = child.state
        self._write_state()
        self.should_exit.set()

    def checks(self) -> dict[str, str]:
        checks = {"api_processes": OK}
        problems = [c.state for c in self.api_children if c.state != OK]
        if problems or not self.api_children:
            checks["api_processes"] = "; ".join(problems) or "starting"
        if self.worker is not None:
            checks["worker"] = self.worker_child.state
        return checks

    def _write_state(self) -> None:
        """Replace the state file (atomically: a reader sees the old or the new one)."""
        checks = self.checks()
        if checks == self._written:
            return
        partial = self.state_file.with_suffix(".tmp")
        partial.write_text(json.dumps(checks))
        partial.replace(self.state_file)
        self._written = checks


@dataclass(slots=True)
class SupervisedRun:
    """Runs like ``uvicorn.run(app, workers=N, ...)`` under a :class:`Supervisor`;
    ``gave_up`` says why the server stopped by itself, if it did."""

    worker: bool
    gave_up: str | None = None

    def __call__(self, app: str, **options: Any) -> None:
        config = uvicorn.Config(app, **options)
        sock = config.bind_socket()
        with tempfile.TemporaryDirectory(prefix="easel-serve-") as state_dir:
            os.environ[STATE_ENV] = str(Path(state_dir) / "state.json")  # the API processes
            share_http_metrics(Path(state_dir) / "metrics")
            supervisor = Supervisor(config, [sock], Path(state_dir), worker=self.worker)
            try:
                supervisor.run()
            finally:
                sock.close()
            self.gave_up = supervisor.gave_up


def share_http_metrics(directory: Path) -> None:
    """Let the API processes (spawned after this) keep their HTTP metrics in ``directory``,
    so a scrape that reaches any one of them reports the whole server's (prometheus_client's
    multiprocess mode; see easel.api.metrics). A fresh directory for each run: values left
    by an earlier run would be added in."""
    directory.mkdir()
    os.environ[MULTIPROCESS_ENV] = str(directory)


def supervised_checks() -> dict[str, str]:
    """What the parent of this API process says about its siblings, for /readyz; nothing
    when this process is not one of ``easel serve --processes N``."""
    path = os.environ.get(STATE_ENV)
    if path is None:
        return {}
    try:
        checks: dict[str, str] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return {"supervisor": f"error: its state cannot be read ({exc}); is the parent alive?"}
    return checks


def announce_registered() -> None:
    """In a supervised worker: tell the parent that this worker has registered."""
    path = os.environ.get(READY_ENV)
    if path is not None:
        Path(path).touch()
