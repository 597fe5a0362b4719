"""The GPU benchmark of every diffusers family (``bench/gpu_families.py``), checked on the CPU.

Its ``--tiny`` mode runs the same code as on a GPU, with the tiny demo pipelines' configs:
the table has a row per case and path, with figures. And the published configs it builds
full-size models from make models of the published sizes (built on the meta device: no
memory, no time), so a GPU session's figures are of the real architectures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.local  # torch and diffusers: the local extra

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_tiny_run_prints_a_row_per_case_and_path_with_figures() -> None:
    arguments = ["--tiny", "--families", "z-image,flux2-klein", "--runs", "1", "--warmups", "1"]
    out = subprocess.run(
        [sys.executable, str(BENCH / "gpu_families.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    report = json.loads(out.split("\njson: ", 1)[1])
    rows = {(row["case"], row["path"]): row for row in report["rows"]}
    cases = ["Z-Image-Turbo", "FLUX.2 klein 4B", "klein 4B, 1 reference"]
    assert set(rows) == {(case, path) for case in cases for path in ("plain", "easel")}
    for (case, path), row in rows.items():
        assert row["error"] is None, (case, path, row["error"])
        assert row["timing"]["seconds_mean"] > 0
        assert row["steps"] == (9 if case == "Z-Image-Turbo" else 4)
    for family in ("z-image", "flux2-klein"):  # load and swap: on each path's first case
        first = rows[("Z-Image-Turbo" if family == "z-image" else "FLUX.2 klein 4B", "easel")]
        assert first["load_s"] > 0
        assert first["swap_s"] >= 0
        assert first["after_swap_s"] > 0
        assert report["families"][family]["weights_gib"] > 0
    assert rows[("FLUX.2 klein 4B", "easel")]["applied"] == ["fused-qkv", "channels-last-vae"]
    table = out.split("\njson: ", 1)[0].splitlines()
    for case in cases:
        lines = [line for line in table if line.startswith(case)]
        assert len(lines) == 2  # plain and easel
        assert all(_figures(line[len(case) :]) >= 5 for line in lines)  # steps, s, min, ×, GiB


def _figures(text: str) -> int:
    """How many numbers ``text`` holds."""
    count = 0
    for word in text.split():
        try:
            float(word.rstrip("×"))
            count += 1
        except ValueError:
            pass
    return count


# family -> component -> billions of parameters, as published (the models' cards and configs)
PUBLISHED_SIZES = {
    "flux": {"transformer": 11.90, "text_encoder_2": 4.76, "text_encoder": 0.123, "vae": 0.084},
    "z-image": {"transformer": 6.15, "text_encoder": 4.02, "vae": 0.084},
    "flux2-klein": {"transformer": 3.88, "text_encoder": 4.02, "vae": 0.084},
    "qwen-image-edit-plus": {"transformer": 20.43, "text_encoder": 8.29, "vae": 0.127},
}


@pytest.mark.parametrize("family", PUBLISHED_SIZES)
def test_the_full_size_models_have_the_published_sizes(family: str) -> None:
    import torch

    sys.path.insert(0, str(BENCH))
    from gpu_families import build

    pipe: Any = build(family, False, "meta", torch.bfloat16)
    billions = {
        name: sum(p.numel() for p in module.parameters()) / 1e9
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
    assert billions == pytest.approx(PUBLISHED_SIZES[family], rel=0.01)
    assert pipe.vae_scale_factor == 8
