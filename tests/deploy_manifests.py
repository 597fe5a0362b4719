"""The deployment files as the tests read them: the Helm chart rendered by Helm's own engine
(``helm_python``, Helm's Go SDK in a wheel), ``compose.yaml`` interpolated as Compose does,
and a container of either turned into the ``easel`` process it would run.

:func:`container_process` is how the end-to-end tests run a pod or a compose service on this
machine (no Docker daemon, no cluster here): the image's ENTRYPOINT (read from the
Dockerfile) plus the container's args, the environment it declares with the Secret's and
ConfigMap's values resolved, and mounted ConfigMaps or bind mounts written to (or found in)
local directories. What a test then changes is said where it does: loopback instead of
``0.0.0.0``, a free port instead of 8000, and the addresses of this machine's PostgreSQL and
S3 server instead of in-cluster host names.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "easel"
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
EASEL = str(Path(sys.executable).parent / "easel")

Manifest = dict[str, Any]


def render_chart(values: Mapping[str, Any], release: str = "easel") -> list[Manifest]:
    """Every object the chart renders for ``values`` (checked against values.schema.json
    first, as ``helm install`` does)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(dict(values))
        rendered = chart.render(dict(values), name=release, namespace="easel")
    return [
        doc
        for name, text in sorted(rendered.items())
        if not name.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\})")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}`` and
    ``$$`` (the forms compose.yaml uses); any other ``$`` form fails, not passes unread."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group("name"), match.group("default")
        given = env.get(name)
        if match.group(0).startswith(f"${{{name}:-"):
            return given or (default or "")
        return given if given is not None else (default or "")

    out = _VARIABLE.sub(value, text)
    leftover = re.search(r"\$\{[^}]*\}", out)
    assert leftover is None, f"compose.yaml uses an interpolation this reader lacks: {leftover}"
    return out


def compose_services(env: Mapping[str, str]) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))["services"]
    return services


def entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT (exec form), ``easel`` mapped to this venv's."""
    line = next(
        line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT")
    )
    command: list[str] = json.loads(line.removeprefix("ENTRYPOINT"))
    return [EASEL if part == "easel" else part for part in command]


@dataclass
class Process:
    """The command and environment one container would run, and where it listens."""

    argv: list[str]
    env: dict[str, str]
    port: int | None = None
    probes: dict[str, str] = field(default_factory=dict)  # kind -> path

    def arg(self, flag: str) -> str:
        return self.argv[self.argv.index(flag) + 1]

    def set_arg(self, flag: str, value: str) -> None:
        self.argv[self.argv.index(flag) + 1] = value


def _secret_data(manifests: list[Manifest], name: str) -> dict[str, str]:
    secret = find(manifests, "Secret", name)
    data: dict[str, str] = secret.get("stringData", {})
    return data


def _mount_volumes(
    manifests: list[Manifest], pod: Manifest, container: Manifest, workdir: Path
) -> dict[str, Path]:
    """Write the ConfigMaps the container mounts under ``workdir``; the mount paths mapped
    to local directories."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounted: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue  # emptyDir and claims: the process's working directory stands in
        local = workdir / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        config_map = find(manifests, "ConfigMap", volume["configMap"]["name"])
        for key, content in config_map["data"].items():
            (local / key).write_text(content)
        mounted[mount["mountPath"]] = local
    return mounted


def _remap(value: str, mounts: Mapping[str, Path | str]) -> str:
    for inside, outside in mounts.items():
        if value == inside or value.startswith(inside.rstrip("/") + "/"):
            return str(outside) + value[len(inside.rstrip("/")) :]
    return value


def pod_process(manifests: list[Manifest], deployment: str, workdir: Path) -> Process:
    """The process the first container of Deployment ``deployment`` runs."""
    pod = find(manifests, "Deployment", deployment)["spec"]["template"]
    container = pod["spec"]["containers"][0]
    mounts = _mount_volumes(manifests, pod, container, workdir)
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _remap(item["value"], mounts)
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = _secret_data(manifests, ref["name"])
        if ref["key"] in data:
            env[item["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"{ref['name']} has no key {ref['key']}"
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    probes = {
        kind: container[f"{kind}Probe"]["httpGet"]["path"]
        for kind in ("startup", "liveness", "readiness")
        if f"{kind}Probe" in container
    }
    port = ports.get("http")
    return Process([*entrypoint(), *container["args"]], env, port, probes)


def compose_process(service: Mapping[str, Any]) -> Process:
    """The process a compose service runs: the image's ENTRYPOINT with the service's
    command; bind-mounted directories of the repository found where they are."""
    mounts: dict[str, Path | str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = ROOT / source[2:]
    env = {  # a null value passes the host's variable through: none here, so it is unset
        name: _remap(str(value), mounts)
        for name, value in service["environment"].items()
        if value is not None
    }
    return Process([*entrypoint(), *service["command"]], env)
