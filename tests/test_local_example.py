"""``examples/local.toml``: every model_version and template on local open weights whose
licence allows commercial use, checked twice.

As shipped, without torch (every CI leg): the file parses; every catalog model_version has a
chain of ``diffusers`` backends only, each on a family whose licence is in the allow-list;
each chain paints what its model takes (text alone, references up to what a family takes),
the templates, the text_to_image model and the multiview model included; the weights are
local directories under one placeholder root.

End to end (``local``): the same file with its weights root pointed at tiny demo pipelines
(named as shipped, with a tiny LoRA in the Lightning file's place) and its backends on the CPU
(device, dtype, steps and size rewritten, nothing else), run by ``easel serve --no-worker``
and a separate ``easel worker``: every model is served; text and reference tasks on each
family, a v2 ``text_to_image``, a template and a multiview task succeed on the weights the
file names; the worker's health port serves their load times at ``/metrics``.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from diffusers_tools import write_lora
from easel.backends._diffusers_families import FAMILIES, Family, References
from easel.backends.diffusers import Options
from easel.config import Settings, load_settings
from easel.domain.catalog import CATALOG, ImageRule
from easel.domain.templates import TEMPLATES
from processes import create_key, easel_process, free_port, wait_healthy, wait_ready
from test_e2e_open_weights import final, reference, submit, succeed

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "local.toml"
ROOT = "/srv/weights"  # the placeholder root the operator replaces
# Licences that allow a paid service to run the weights.
COMMERCIAL = frozenset({"Apache-2.0", "MIT"})
LOCAL_MAX_REFERENCES = 4  # FLUX.2 klein's; the hosted models take up to 10 or 16
# What the test changes for a CPU, in every backend table (besides the weights root).
ON_THE_CPU = {"device": "cpu", "dtype": "float32", "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def shipped() -> Settings:
    return load_settings(EXAMPLE, env={})


def options(settings: Settings, backend: str) -> Options:
    return Options.model_validate(settings.backends[backend].options)


def chain(settings: Settings, version: str) -> list[Family]:
    return [options(settings, name).family for name in settings.models[version].backends]


def takes(family: Family, references: int) -> bool:
    """The family paints a task with this many references, every one of them used."""
    if references == 0:
        return not family.needs_references
    return family.references is not References.NONE and references <= family.max_references


def test_every_model_version_has_a_chain_of_local_backends_only(shipped: Settings) -> None:
    assert list(shipped.catalog) == list(CATALOG)  # no alias hides one
    assert set(shipped.models) == set(CATALOG)
    assert {table.kind for table in shipped.backends.values()} == {"diffusers"}


def test_every_family_it_runs_is_commercially_usable(shipped: Settings) -> None:
    licences = {name: options(shipped, name).family.licence for name in shipped.backends}
    assert set(licences.values()) <= COMMERCIAL, licences
    assert FAMILIES["flux"].licence not in COMMERCIAL  # the allow-list tells FLUX.1 apart
    assert FAMILIES["flux-kontext"].licence not in COMMERCIAL


def test_weights_are_local_directories_under_one_placeholder_root(shipped: Settings) -> None:
    """Nothing is downloaded at start, and the operator edits one root."""
    for name in shipped.backends:
        backend = options(shipped, name)
        for path in (backend.weights, backend.lora):
            assert path is None or path.startswith(ROOT + "/"), (name, path)
        assert backend.weights is not None
        assert backend.served_by().startswith(
            f"diffusers {backend.family.pipeline_class}, weights {Path(backend.weights).name}"
        )  # by the directory's name, never its path


@pytest.mark.parametrize("version", list(CATALOG))
def test_every_chain_paints_what_its_model_takes(shipped: Settings, version: str) -> None:
    """A text task on its first backend when the model is text only (no attempt wasted), else
    on some backend; each reference count up to what the local families take."""
    families, spec = chain(shipped, version), CATALOG[version]
    if spec.images is ImageRule.ACCEPTS:
        assert any(takes(family, 0) for family in families)
        for count in range(1, min(spec.max_files, LOCAL_MAX_REFERENCES) + 1):
            assert any(takes(family, count) for family in families), count
    else:
        assert takes(families[0], 0)


def test_templates_text_to_image_and_multiview_have_local_backends(shipped: Settings) -> None:
    """Templates ride on the default model (their images counted as references); text to
    image runs on text_to_image_model (with a style image: upgraded to the default); the
    views are made one reference at a time, first by an editing family."""
    default = chain(shipped, CATALOG.default)
    for template in TEMPLATES.values():
        assert any(takes(family, len(template.images)) for family in default), template.slug
    assert shipped.text_to_image_model is not None
    assert takes(chain(shipped, shipped.text_to_image_model)[0], 0)
    assert shipped.multiview_model is not None
    first = chain(shipped, shipped.multiview_model)[0]
    assert takes(first, 1)
    assert first.needs_references  # an editing model makes the views


def test_gpu_memory_is_budgeted_for_one_80_gb_gpu(shipped: Settings) -> None:
    assert shipped.gpu_memory_budget_gb is not None
    assert 0 < shipped.gpu_memory_budget_gb <= 70  # the rest for a run's activations
    assert shipped.gpu_offload == "cpu"
    assert {options(shipped, name).device for name in shipped.backends} == {"cuda"}


def on_the_cpu(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """The example's data with only what a CPU test must change: the weights root and each
    backend's device, dtype, steps and size."""
    changed = copy.deepcopy(data)
    for table in changed["backends"].values():
        for key in ("weights", "lora"):
            if key in table:
                table[key] = str(root / Path(table[key]).relative_to(ROOT))
        table.update(ON_THE_CPU)
    return changed


def toml_text(data: dict[str, Any]) -> str:
    """Top-level values, then tables of tables (``[backends."x"]``), as TOML."""
    lines = [
        f"{key} = {json.dumps(value)}" for key, value in data.items() if not isinstance(value, dict)
    ]
    for group, tables in data.items():
        if isinstance(tables, dict):
            for name, table in tables.items():
                lines.append(f"[{group}.{json.dumps(name)}]")
                lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == data
    return text


def test_the_cpu_copy_changes_only_the_weights_root_and_the_cpu_settings(tmp_path: Path) -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    cpu = on_the_cpu(data, tmp_path)
    assert {k: v for k, v in cpu.items() if k != "backends"} == {
        k: v for k, v in data.items() if k != "backends"
    }
    assert cpu["backends"].keys() == data["backends"].keys()
    for name, table in data["backends"].items():
        kept = set(table) - set(ON_THE_CPU) - {"weights", "lora"}
        assert {k: cpu["backends"][name][k] for k in kept} == {k: table[k] for k in kept}
        assert cpu["backends"][name]["weights"].startswith(str(tmp_path))
        assert Path(cpu["backends"][name]["weights"]).name == Path(table["weights"]).name


Server = tuple[httpx.Client, Path, int]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shipped: Settings) -> Iterator[Server]:
    from easel.backends.demo_weights import write_demo_weights

    root = tmp_path_factory.mktemp("local-example")
    pipelines = {options(shipped, name).pipeline for name in shipped.backends}
    tiny = write_demo_weights(root / "tiny", sorted(pipelines))
    weights = root / "weights"  # laid out as the example's root, each named as shipped
    for name in shipped.backends:
        backend = options(shipped, name)
        assert backend.weights is not None
        place = weights / Path(backend.weights).relative_to(ROOT)
        place.parent.mkdir(parents=True, exist_ok=True)
        place.symlink_to(tiny[backend.pipeline], target_is_directory=True)
        if backend.lora:
            assert backend.lora_weight_name is not None
            where = weights / Path(backend.lora).relative_to(ROOT)
            write_lora(tiny[backend.pipeline], where, backend.lora_weight_name)
    data = on_the_cpu(tomllib.loads(EXAMPLE.read_text()), weights)
    data = {
        "database_url": f"sqlite+aiosqlite:///{root / 'easel.db'}",
        "storage_url": f"file://{root / 'objects'}",
        **data,
    }
    config = root / "easel.toml"
    config.write_text(toml_text(data))
    key = create_key(config, 1000)
    port, health, log = free_port(), free_port(), root / "easel.log"
    base = f"http://127.0.0.1:{port}"
    api = ("serve", "--no-worker", "--port", str(port), "--config", str(config))
    worker = ("worker", "--config", str(config), "--health-port", str(health))
    with easel_process(*api, log=log) as serving, easel_process(*worker, log=log) as working:
        wait_healthy(base, serving, log)
        ready = f"http://127.0.0.1:{health}/readyz"
        probe = lambda: httpx.get(ready, timeout=5).status_code == 200  # noqa: E731
        wait_ready(probe, working, log, what="worker", timeout_s=300)  # it loads first
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, log, health


def served_by(shipped: Settings, backend: str) -> str:
    return options(shipped, backend).served_by()


def attempts(task: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["backend"], a["outcome"]) for a in task["attempts"]]


@pytest.mark.e2e
@pytest.mark.local
def test_every_model_version_is_served_by_the_local_backends(
    server: Server, shipped: Settings
) -> None:
    client, _, _ = server
    rows = client.get("/v2/openapi/models").json()["data"]["models"]
    assert {row["model_version"] for row in rows} == set(CATALOG)
    for row in rows:
        assert row["served"] is True, row
        names = shipped.models[row["model_version"]].backends
        assert [b["name"] for b in row["backends"]] == names
        assert [b["served_by"] for b in row["backends"]] == [served_by(shipped, n) for n in names]


@pytest.mark.e2e
@pytest.mark.local
@pytest.mark.parametrize(
    ("version", "painted_by"),
    [("flux.1_dev", "zimage"), ("seedream_v4", "zimage"), ("midjourney", "zimage")],
)
def test_a_text_only_model_paints_on_its_first_backend(
    server: Server, shipped: Settings, version: str, painted_by: str
) -> None:
    client, log, _ = server
    task = succeed(client, {"prompt": "a lighthouse at dusk", "model_version": version}, log)
    assert attempts(task) == [(painted_by, "success")]
    assert task["served_by"] == served_by(shipped, painted_by)
    v3 = client.get(f"/v3/tasks/{task['task_id']}").json()["data"]
    assert (v3["model"], v3["served_by"]) == (version, task["served_by"])


@pytest.mark.e2e
@pytest.mark.local
def test_a_text_task_on_an_editing_model_is_painted_by_klein(
    server: Server, shipped: Settings
) -> None:
    """Qwen-Image-Edit needs a reference: it passes the task on, without a swap."""
    client, log, _ = server
    task = succeed(client, {"prompt": "a red kite", "model_version": "gpt_image_2"}, log)
    assert attempts(task) == [("qwen-edit", "retryable"), ("klein", "success")]
    assert "needs at least one reference image" in task["attempts"][0]["error"]
    assert task["served_by"] == served_by(shipped, "klein")


@pytest.mark.e2e
@pytest.mark.local
@pytest.mark.parametrize(
    ("version", "references", "painted_by"),
    [
        ("flux.1_kontext_pro", 1, "qwen-edit"),
        ("gemini_3_pro_image_preview", 2, "qwen-edit"),
        ("seedream_v5", 4, "klein"),  # more than Qwen takes
    ],
)
def test_references_are_edited_by_the_family_that_takes_them(
    server: Server, shipped: Settings, version: str, references: int, painted_by: str
) -> None:
    client, log, _ = server
    files = [reference(client) for _ in range(references)]
    task = succeed(
        client, {"prompt": "image[1] in blue", "model_version": version, "files": files}, log
    )
    assert attempts(task)[-1] == (painted_by, "success")
    assert task["served_by"] == served_by(shipped, painted_by)
    if painted_by == "qwen-edit":
        assert task["served_by"].endswith(
            ", LoRA Qwen-Image-Edit-2511-Lightning-8steps-V1.0-bf16.safetensors"
        )


@pytest.mark.e2e
@pytest.mark.local
def test_text_to_image_runs_on_z_image(server: Server, shipped: Settings) -> None:
    client, log, _ = server
    response = client.post("/v2/openapi/task", json={"type": "text_to_image", "prompt": "a fox"})
    assert response.status_code == 200, response.text
    task = final(client, response.json()["data"]["task_id"], log)
    assert (task["status"], task["progress"]) == ("success", 100), task
    assert task["served_by"] == served_by(shipped, "zimage")


@pytest.mark.e2e
@pytest.mark.local
def test_a_template_with_its_reference_is_edited_locally(server: Server, shipped: Settings) -> None:
    client, log, _ = server
    task = succeed(client, {"prompt": "", "template": "t_pose"}, log)
    assert task["input"]["model_version"] == CATALOG.default
    assert task["served_by"] == served_by(shipped, "qwen-edit")


@pytest.mark.e2e
@pytest.mark.local
def test_a_multiview_task_makes_four_views_locally(server: Server, shipped: Settings) -> None:
    client, log, _ = server
    task_id = submit(client, {"type": "generate_multiview_image", "file": reference(client)})
    task = final(client, task_id, log)
    assert (task["status"], task["progress"]) == ("success", 100), task
    views = task["output"]["generate_multiview_image"]
    assert {f"{view}_view_url" for view in ("front", "left", "back", "right")} <= set(views)
    assert task["served_by"] == served_by(shipped, "qwen-edit")
    assert attempts(task) == [("qwen-edit", "success")] * 4


@pytest.mark.e2e
@pytest.mark.local
def test_the_workers_health_port_serves_its_pipelines_load_times(
    server: Server, shipped: Settings
) -> None:
    _, _, health = server
    text = httpx.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for name in shipped.backends:
        label = options(shipped, name).label()
        loads = ("easel_pipeline_load_seconds_count", (("kind", "load"), ("pipeline", label)))
        assert samples.get(loads, 0) >= 1, (label, text)
        assert samples[("easel_pipeline_resident_bytes", (("pipeline", label),))] > 0
