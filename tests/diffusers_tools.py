"""What the tests of the ``diffusers`` backend share: a JobControl double, reference pictures,
PNG sizes, corrupted weights, a tiny LoRA and a backend table for tiny CPU pipelines."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from easel.backends.base import InputImage


class Control:
    """A JobControl double: records progress; cancels once ``cancel_after`` steps reported."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.fractions: list[float] = []
        self.cancel_after = cancel_after

    def progress(self, fraction: float) -> None:
        self.fractions.append(fraction)

    @property
    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.fractions) >= self.cancel_after


def picture(width: int, height: int, color: tuple[int, int, int] = (200, 40, 40)) -> InputImage:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return InputImage(data=out.getvalue(), format="png", width=width, height=height)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def corrupt_copy(weights: Path, where: Path) -> Path:
    """The pipeline with its transformer's weights cut in half: it looks saved, and fails
    only when loaded."""
    shutil.copytree(weights, where)
    (tensors,) = (where / "transformer").glob("*.safetensors")
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    return where


def write_lora(pipeline_dir: Path, where: Path, name: str = "tiny-lora.safetensors") -> Path:
    """A random rank-2 LoRA on every ``to_q`` projection of a tiny pipeline's transformer
    (of the class its config names), in diffusers' key format
    (``transformer.<module>.lora_A/B.weight``), saved as ``where / name``; returns ``where``."""
    import diffusers
    import torch
    from safetensors.torch import save_file

    folder = pipeline_dir / "transformer"
    config = json.loads((folder / "config.json").read_text())
    model: Any = getattr(diffusers, config["_class_name"]).from_pretrained(folder)
    torch.manual_seed(1)
    tensors = {}
    for key, module in model.named_modules():
        if key.endswith("to_q") and isinstance(module, torch.nn.Linear):
            tensors[f"transformer.{key}.lora_A.weight"] = torch.randn(2, module.in_features)
            tensors[f"transformer.{key}.lora_B.weight"] = torch.randn(module.out_features, 2)
    assert tensors
    where.mkdir(parents=True, exist_ok=True)
    save_file(tensors, where / name)
    return where


def backend_table(name: str, pipeline: str, weights: Path, steps: int = 3, side: int = 64) -> str:
    """A ``[backends.<name>]`` table of a tiny pipeline on the CPU, ``side``×``side``."""
    return (
        f'[backends.{name}]\nkind = "diffusers"\npipeline = "{pipeline}"\n'
        f'weights = "{weights}"\ndevice = "cpu"\ndtype = "float32"\nsteps = {steps}\n'
        f"width = {side}\nheight = {side}\n"
    )
