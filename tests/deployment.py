"""A deployment of Easel across hosts of the test's own (network namespaces, ``netns.py``).

One host each for PostgreSQL and the S3 server (moto), two API hosts (``easel serve
--no-worker``) and three worker hosts (``easel worker``), each worker in a UTS namespace of its
own (``unshare --uts``) with a 63-character hostname, the longest a host name label (and a
Kubernetes pod name) may have. Every server listens on its host's private address only.
The test's own namespace holds the bridge's address: the balancer and the webhook receiver
listen there, and the guard lets the test reach this network (``conftest.reachable``).
"""

from __future__ import annotations

import glob
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conftest import reachable
from netns import Host, Lan, lan
from pgserver import PostgresServer, postgres_server
from processes import easel_process, wait_healthy
from s3server import S3Server, moto_server

API_PORT, DB_PORT, S3_PORT = 8000, 5432, 9000  # each host has its own ports
STORAGE_PREFIX = "easel"  # in the bucket
LEASE_S = 3
HOSTNAME_MAX = 63


def worker_hostname(n: int) -> str:
    """``w<n>-easel-gpu-worker-…``, 63 characters, distinct in its first characters."""
    return f"w{n}-easel-gpu-worker-".ljust(HOSTNAME_MAX, "x")


@dataclass
class Deployment:
    net: Lan
    stack: ExitStack
    root: Path
    db: PostgresServer
    s3: S3Server
    bucket: str
    config: Path
    apis: list[Host] = field(default_factory=list)
    workers: list[Host] = field(default_factory=list)
    # every easel process started, with its host (a killed worker's replacement too)
    processes: list[tuple[Host, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.db.url()

    def api_urls(self) -> list[tuple[str, int]]:
        return [(host.address, API_PORT) for host in self.apis]

    def _start(self, host: Host, *args: str, prefix: list[str]) -> subprocess.Popen[bytes]:
        log = self.root / f"{host.name}.log"
        proc = self.stack.enter_context(
            easel_process(
                *args, "--config", str(self.config), log=log, env=self.s3.env(), prefix=prefix
            )
        )
        self.processes.append((host, proc))
        return proc

    def start_api(self, name: str) -> tuple[Host, subprocess.Popen[bytes]]:
        host = self.net.host(name)
        self.apis.append(host)
        args = ("serve", "--no-worker", "--host", host.address, "--port", str(API_PORT))
        return host, self._start(host, *args, prefix=self.net.exec(host))

    def start_worker(self, host: Host) -> subprocess.Popen[bytes]:
        """``easel worker`` on ``host``, under its own hostname (as a machine, or a pod)."""
        n = self.workers.index(host)
        named = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"']
        prefix = [*self.net.exec(host), *named, worker_hostname(n)]
        return self._start(host, "worker", prefix=prefix)

    def worker(self, host: Host) -> subprocess.Popen[bytes]:
        """The worker process running on ``host`` now."""
        return [proc for on, proc in self.processes if on == host][-1]

    def kill_worker(self, host: Host) -> None:
        proc = self.worker(host)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"== {Path(p).name}\n{Path(p).read_text(errors='replace')[-3000:]}"
            for p in [*sorted(glob.glob(f"{self.root}/*.log")), str(self.db.log)]
        )


def write_config(path: Path, database_url: str, bucket: str, allow: str) -> None:
    path.write_text(
        f'database_url = "{database_url}"\n'
        f'storage_url = "s3://{bucket}/{STORAGE_PREFIX}"\n'
        f'allow_outbound_cidrs = ["{allow}/32"]\n'  # the webhook receiver, and nothing else
        f"lease_s = {LEASE_S}\nmax_attempts = 10\npoll_interval_s = 0.3\nworker_concurrency = 3\n"
        "rate_limit_per_s = 0\n"  # its clients poll every task every 0.2 s, many a second
        '[backends.dry]\nkind = "placeholder"\ndelay_s = 1.0\nwidth = 64\nheight = 64\n'
        '[models."flux.1_kontext_pro"]\nbackends = ["dry"]\n'
    )


@contextmanager
def deployment(root: Path, api_hosts: int = 2, worker_hosts: int = 3) -> Iterator[Deployment]:
    """Start every host; stop them, and delete the namespaces, when the block ends."""
    with ExitStack() as stack:
        net = stack.enter_context(lan())
        stack.enter_context(reachable(net.network))
        db_host, s3_host = net.host("db"), net.host("s3")
        db = stack.enter_context(
            postgres_server(db_host.address, DB_PORT, net.exec(db_host), [str(net.network)])
        )
        s3 = stack.enter_context(
            moto_server(root / "moto", host=s3_host.address, port=S3_PORT, prefix=net.exec(s3_host))
        )
        bucket = s3.create_bucket()
        config = root / "easel.toml"
        write_config(config, db.url(), bucket, net.gateway)
        d = Deployment(net, stack, root, db, s3, bucket, config)
        started = [d.start_api(f"api{n}") for n in range(1, api_hosts + 1)]
        for n in range(worker_hosts):
            d.workers.append(net.host(f"worker{n}"))
            d.start_worker(d.workers[-1])
        for host, proc in started:
            base = f"http://{host.address}:{API_PORT}"
            wait_healthy(base, proc, root / f"{host.name}.log", timeout_s=120)
        yield d
