"""Hosts of a test's own: Linux network namespaces joined by a bridge on a private network.

``with lan() as net:`` makes a bridge (``ezb<id>``) in the test's own namespace holding the
first address of a free ``10.77.X.0/24``; ``net.host("api1")`` adds a namespace
(``easel-<pid>-<id>-api1``) joined to the bridge by a veth pair (``eth0`` inside, ``ez<id>-<n>``
outside) with the next address, and ``net.exec(host)`` is the command prefix that runs a
program "on" that host. Nothing else routes there: traffic between the hosts stays on the
bridge. ``net.cut(host)`` takes the host's link down (packets are dropped, connections hang
as on a real partition) and ``net.restore(host)`` brings it back.

Leaving the block, whatever ended it (a failure, KeyboardInterrupt), kills what still runs in
the namespaces (by pid: only processes in namespaces this run made), deletes them, their links
and the bridge. Namespaces left by a run that was itself killed (its pid gone) are deleted when
the next run starts.

Needs root, ``ip`` (iproute2), ``unshare`` and ``ss``: without them the test skips locally and
fails in CI (``EASEL_CI=1``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from s3server import missing

SUPERNET = ipaddress.IPv4Network("10.77.0.0/16")  # a /24 of it per run
_OURS = re.compile(r"^easel-(\d+)-([0-9a-f]{6})-")


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def require_namespaces() -> None:
    """Skip (fail in CI) unless this process can make namespaces and links."""
    for tool in ("ip", "unshare", "ss"):
        if shutil.which(tool) is None:
            missing(f"the hosts tier needs {tool!r} (iproute2, util-linux)")
    if os.geteuid() != 0:
        missing("the hosts tier makes network namespaces: run it as root")


@dataclass(frozen=True)
class Host:
    name: str  # short: api1
    ns: str  # the namespace: easel-<pid>-<id>-api1
    address: str  # its private address on the bridge
    veth: str  # the bridge's end of its link, in the test's own namespace


@dataclass
class Lan:
    run_id: str
    network: ipaddress.IPv4Network
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"ezb{self.run_id}"

    @property
    def gateway(self) -> str:
        """The bridge's address: the test's own namespace on this network."""
        return str(self.network.network_address + 1)

    def host(self, name: str) -> Host:
        n = len(self.hosts) + 2
        host = Host(
            name,
            f"easel-{os.getpid()}-{self.run_id}-{name}",
            str(self.network.network_address + n),
            f"ez{self.run_id}-{n}",
        )
        _ip("netns", "add", host.ns)
        self.hosts.append(host)  # from here on, teardown deletes it
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.address}/{self.network.prefixlen}", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    def exec(self, host: Host) -> list[str]:
        """The prefix that runs a command on ``host``."""
        return ["ip", "netns", "exec", host.ns]

    def cut(self, host: Host) -> None:
        _ip("link", "set", host.veth, "down")

    def restore(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def listeners(self, host: Host) -> list[str]:
        """``address:port`` of every listening TCP socket on ``host``."""
        done = subprocess.run(
            [*self.exec(host), "ss", "-ltnH"], capture_output=True, text=True, timeout=30
        )
        return [line.split()[3] for line in done.stdout.splitlines() if line.strip()]

    def runs_on(self, pid: int, host: Host) -> bool:
        """Whether process ``pid`` is in ``host``'s network namespace."""
        mine = os.stat(f"/proc/{pid}/ns/net").st_ino
        return mine == os.stat(Path("/run/netns") / host.ns).st_ino


def _free_network() -> ipaddress.IPv4Network:
    """A /24 of :data:`SUPERNET` that no address or route of this machine touches."""
    taken = [
        ipaddress.ip_network(word, strict=False)
        for line in (_ip("-4", "-o", "addr", "show") + _ip("-4", "route", "show")).splitlines()
        for word in line.split()
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+(/\d+)?", word)
    ]
    candidates: list[ipaddress.IPv4Network] = list(SUPERNET.subnets(new_prefix=24))
    random.shuffle(candidates)
    for network in candidates:
        if not any(network.overlaps(other) for other in taken):
            return network
    raise RuntimeError(f"no free /24 left in {SUPERNET}")


def _delete(run_id: str, namespaces: list[str]) -> None:
    """Kill what runs in the run's namespaces, delete them, their links and the bridge. The
    links are deleted by name too: a namespace outlives its deletion while the kernel still
    holds sockets of its killed processes."""
    for ns in namespaces:
        with contextlib.suppress(RuntimeError):
            for pid in _ip("netns", "pids", ns).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", ns)
    for line in _ip("-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == f"ezb{run_id}" or name.startswith(f"ez{run_id}-"):
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers() -> None:
    """Delete the namespaces, links and bridges of earlier runs whose process is gone."""
    left: dict[str, list[str]] = {}
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        found = _OURS.match(name)
        if found and not _alive(int(found[1])):
            left.setdefault(found[2], []).append(name)
    for run_id, namespaces in left.items():
        _delete(run_id, namespaces)


@contextlib.contextmanager
def lan() -> Iterator[Lan]:
    """A bridge on a free private /24; hosts are added with :meth:`Lan.host`."""
    require_namespaces()
    _remove_leftovers()
    net = Lan(secrets.token_hex(3), _free_network())
    try:
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("addr", "add", f"{net.gateway}/{net.network.prefixlen}", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        yield net
    finally:
        _delete(net.run_id, [host.ns for host in net.hosts])
