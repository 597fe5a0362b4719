"""``GET /user/balance`` and the health probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import declare
from easel.supervise import supervised_checks

router = APIRouter()
health = APIRouter()


@router.get("/user/balance", summary="Credits available and held")
@declare(example={"balance": 95, "frozen": 5})
async def balance(caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    current = await runtime.accounts.balance(caller)
    return ok({"balance": current.balance, "frozen": current.frozen})


@health.get("/healthz", summary="Liveness: 200 once the server has started")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    summary="Readiness: the database, the object store, the models, and a dead worker or API "
    "process",
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """503 when the database or the object store fails (the store's check says why in a
    short line, probed at most every few seconds), or when models are configured and
    none can run (every backend failed to load, say). A server that still serves some
    models stays ready, naming the others and why under ``checks.models``: taking it out
    of the load balancer would refuse the models it serves too."""
    checks: dict[str, str] = {}
    try:
        await runtime.ping_database()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"
    checks["object_store"] = await runtime.storage.problem() or "ok"
    unserved = await runtime.models.unserved()
    configured = len(runtime.models.configured)
    checks["models"] = "ok"
    if unserved:
        checks["models"] = "not served: " + "; ".join(f"{m} ({why})" for m, why in unserved.items())
    checks.update(supervised_checks())  # easel serve --processes N: the sibling processes
    checks.update(runtime.problems)  # e.g. an in-process worker that stopped
    healthy = all(value == "ok" for name, value in checks.items() if name != "models")
    healthy = healthy and not (configured and len(unserved) == configured)
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )
