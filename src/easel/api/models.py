"""``GET /models`` (an extension): the catalog, and which backends serve each model here.

Each row is a model a request can reach, with its price (the configured one) and the names
v3's ``model`` also takes for it; ``aliases`` maps each configured alias to the
``model_version`` it runs as (an aliased entry has no row of its own); ``text_to_image`` says
which model a text_to_image task runs on and its flat price."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import declare
from easel.domain.catalog import TEXT_TO_IMAGE_CREDITS

router = APIRouter()


EXAMPLE = {
    "default": "flux.1_kontext_pro",
    "text_to_image": {"model_version": "flux.1_kontext_pro", "credits": TEXT_TO_IMAGE_CREDITS},
    "models": [
        {
            "model_version": "flux.1_kontext_pro",
            "v3_names": [],
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
                    "served_by": "bfl flux-kontext-pro",
                }
            ],
        }
    ],
    "aliases": {"chat_image_1": "gpt_image_2"},
}


@router.get("/models", summary="The model catalog with prices and serving backends")
@declare(example=EXAMPLE)
async def models(caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    catalog = runtime.settings.catalog
    rows = await runtime.models.describe()
    text_to_image = {
        "model_version": catalog.lookup(
            runtime.settings.text_to_image_model or catalog.default
        ).version,
        "credits": TEXT_TO_IMAGE_CREDITS,
    }
    return ok(
        {
            "default": catalog.default,
            "text_to_image": text_to_image,
            "models": rows,
            "aliases": dict(catalog.aliases),
        }
    )
