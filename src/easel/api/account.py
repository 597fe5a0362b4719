"""``GET /user/balance`` and the health probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.supervise import supervised_checks

router = APIRouter()
health = APIRouter()


@router.get("/user/balance", summary="Credits available and held")
async def balance(caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    current = await runtime.store.accounts.balance(caller.account_id)
    return ok({"balance": current.balance, "frozen": current.frozen})


@health.get("/healthz", summary="Liveness: 200 once the server has started")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    summary="Readiness: pings the database and the object store; names a dead worker or "
    "API process",
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await runtime.store.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"
    try:
        await runtime.objects.ping()
        checks["object_store"] = "ok"
    except Exception as exc:
        checks["object_store"] = f"error: {exc}"
    checks.update(supervised_checks())  # easel serve --processes N: the sibling processes
    checks.update(runtime.problems)  # e.g. an in-process worker that stopped
    healthy = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )
