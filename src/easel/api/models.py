"""``GET /models`` (an extension): the catalog, and which backends serve each model here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from easel import catalog
from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.routing import Router

router = APIRouter()


def describe_models(router: Router, served: set[str]) -> list[dict[str, Any]]:
    """Each catalog entry with this server's backends; ``served`` also counts the models
    that live workers elsewhere take."""
    rows = []
    for spec in catalog.CATALOG.values():
        backends = [
            {
                "name": leg.backend.name,
                "kind": leg.backend.kind,
                "ready": (reason := leg.backend.unavailable_reason()) is None,
                "reason": reason,
            }
            for leg in router.chain(spec.version)
        ]
        rows.append(
            {
                "model_version": spec.version,
                "description": spec.description,
                "credits": spec.credits,
                "images": spec.images.value,
                "max_files": spec.max_files,
                "accepts_webp": spec.accepts_webp,
                "served": spec.version in served,
                "backends": backends,
            }
        )
    return rows


@router.get("/models", summary="The model catalog with prices and serving backends")
async def models(caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    served = set(await runtime.service.served())
    return ok({"default": catalog.DEFAULT_MODEL, "models": describe_models(runtime.router, served)})
