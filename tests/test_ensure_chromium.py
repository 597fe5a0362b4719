"""``scripts/ensure-chromium.sh``, which ``make test`` and ``.ci/run`` call: it installs Debian's
Chromium where apt-get is usable (root, or sudo without a password), and otherwise prints the
command to run and lets the browser tests skip (fails under ``EASEL_CI=1``).

The script runs for real; ``apt-get``, ``id`` and ``sudo`` are stand-ins first on ``PATH``
that log how they were called (``apt-get install`` "installs" an executable at ``CHROMIUM``,
a path in the test's directory), so nothing is installed on the machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensure-chromium.sh"
APT_GET = """#!/bin/sh
echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "$LOG"
[ -n "$APT_FAILS" ] && exit 100
if [ "$1" = install ]; then printf '#!/bin/sh\\n' > "$CHROMIUM"; chmod +x "$CHROMIUM"; fi
"""
ID = """#!/bin/sh
echo "$FAKE_UID"
"""
# sudo -n succeeds only with SUDO_OK (a password would be needed otherwise).
SUDO = """#!/bin/sh
[ "$1" = -n ] && shift
[ -n "$SUDO_OK" ] || exit 1
echo "sudo $*" >> "$LOG"
exec "$@"
"""


class Run(NamedTuple):
    code: int
    stderr: str
    calls: list[str]
    installed: bool


def ensure(tmp_path: Path, *, uid: int, **env: str) -> Run:
    fakes = tmp_path / "bin"
    fakes.mkdir(exist_ok=True)
    for name, text in {"apt-get": APT_GET, "id": ID, "sudo": SUDO}.items():
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    log, chromium = tmp_path / "calls.log", tmp_path / "chromium"
    base = {k: v for k, v in os.environ.items() if k not in ("EASEL_CI", "SUDO_OK", "APT_FAILS")}
    out = subprocess.run(
        [str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **base,
            "PATH": f"{fakes}:{os.environ['PATH']}",
            "CHROMIUM": str(chromium),
            "LOG": str(log),
            "FAKE_UID": str(uid),
            **env,
        },
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return Run(out.returncode, out.stderr, calls, os.access(chromium, os.X_OK))


def test_a_chromium_in_place_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "chromium").write_text("#!/bin/sh\n")
    (tmp_path / "chromium").chmod(0o755)
    run = ensure(tmp_path, uid=1000, EASEL_CI="1")
    assert run == Run(0, "", [], True)


def test_root_installs_debians_chromium_with_apt_get(tmp_path: Path) -> None:
    run = ensure(tmp_path, uid=0)
    assert run.code == 0, run.stderr
    assert run.calls == [
        "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
        "apt-get install -y -qq chromium DEBIAN_FRONTEND=noninteractive",
    ]
    assert run.installed


def test_passwordless_sudo_installs_it_through_sudo(tmp_path: Path) -> None:
    run = ensure(tmp_path, uid=1000, SUDO_OK="1")
    assert run.code == 0, run.stderr
    assert run.calls == [
        "sudo true",  # sudo -n true: no password asked
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
        "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
        "apt-get install -y -qq chromium DEBIAN_FRONTEND=noninteractive",
    ]
    assert run.installed


@pytest.mark.parametrize("ci", ["", "1"])
def test_without_root_it_prints_the_command_and_fails_only_in_ci(tmp_path: Path, ci: str) -> None:
    run = ensure(tmp_path, uid=1000, EASEL_CI=ci)
    assert run.calls == []
    assert "run: sudo apt-get install -y chromium" in run.stderr
    if ci:
        assert run.code == 1
    else:
        assert run.code == 0
        assert "The browser tests skip without it." in run.stderr


@pytest.mark.parametrize("ci", ["", "1"])
def test_a_failing_apt_get_goes_on_outside_ci(tmp_path: Path, ci: str) -> None:
    run = ensure(tmp_path, uid=0, APT_FAILS="1", EASEL_CI=ci)
    assert run.calls == ["apt-get update -qq DEBIAN_FRONTEND=noninteractive"]
    assert "apt-get failed; run: sudo apt-get install -y chromium" in run.stderr
    assert run.code == (1 if ci else 0)
    assert not run.installed
