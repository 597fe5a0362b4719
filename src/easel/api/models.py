"""``GET /models`` (an extension): the catalog, and which backends serve each model here."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import declare
from easel.backends.fallback import Router
from easel.domain.errors import StoreUnavailable
from easel.runtime import Runtime

router = APIRouter()


def describe_models(router: Router, served: set[str]) -> list[dict[str, Any]]:
    """Each catalog entry with this server's backends; ``served`` also counts the models
    that live workers elsewhere take. A model not served says why (``reason``)."""
    rows = []
    for spec in router.catalog.values():
        backends = [
            {
                "name": leg.backend.name,
                "kind": leg.backend.kind,
                "ready": (reason := leg.backend.unavailable_reason()) is None,
                "reason": reason,
                "load_state": leg.backend.load_state.value,
            }
            for leg in router.chain(spec.version)
        ]
        is_served = spec.version in served
        rows.append(
            {
                "model_version": spec.version,
                "description": spec.description,
                "credits": spec.credits,
                "images": spec.images.value,
                "max_files": spec.max_files,
                "accepts_webp": spec.accepts_webp,
                "served": is_served,
                "reason": None if is_served else router.unserved_reason(spec.version),
                "backends": backends,
            }
        )
    return rows


async def unserved_models(runtime: Runtime) -> dict[str, str]:
    """The models configured here that nothing serves (no ready backend here, no live
    worker), with why. The database's answer is left out while it is unreachable: the
    readiness probe reports that outage itself."""
    configured = [version for version in runtime.settings.catalog if runtime.router.chain(version)]
    live: set[str] = set()  # the database is away: no worker elsewhere is known to be live
    with contextlib.suppress(StoreUnavailable):
        live = await runtime.service.live_models()
    return {
        version: reason
        for version in configured
        if version not in live and (reason := runtime.router.unserved_reason(version))
    }


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
    served = set(await runtime.service.served())
    default = runtime.settings.catalog.default
    return ok({"default": default, "models": describe_models(runtime.router, served)})
