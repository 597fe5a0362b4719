"""``GET /models`` (an extension): the catalog, and which backends serve each model here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import declare

router = APIRouter()


EXAMPLE = {
    "default": "flux.1_kontext_pro",
    "models": [
        {
            "model_version": "flux.1_kontext_pro",
            "description": "FLUX.1 Kontext [pro]",
            "credits": 5,
            "images": "accepts",
            "max_files": 4,
            "accepts_webp": False,
            "served": True,
            "reason": None,
            "backends": [
                {
                    "name": "bfl",
                    "kind": "bfl",
                    "ready": True,
                    "reason": None,
                    "load_state": "nothing to load",
                }
            ],
        }
    ],
}


@router.get("/models", summary="The model catalog with prices and serving backends")
@declare(example=EXAMPLE)
async def models(caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    default = runtime.settings.catalog.default
    return ok({"default": default, "models": await runtime.models.describe()})
