"""Build a real Easel app (SQLite file, memory object store, placeholder backends) for tests."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from easel.api.app import create_app
from easel.config import Settings
from easel.domain import errors, v3
from easel.domain.catalog import CATALOG
from easel.runtime import Runtime
from easel.services.loops import LOOP_RESTARTS, Backoff
from easel.store import SqlStore, Store
from easel.store.memory import MemoryStore
from easel.store.tables import files, ledger, tasks, webhooks

UNFINISHED = ("queued", "running")
UNSERVED = "gemini_3.1_flash_image_preview"  # served by no backend, on purpose
ALL_MODELS = tuple(version for version in CATALOG if version != UNSERVED)


# Refusals only the /v3 routes answer.
V3_ONLY = (errors.MethodNotAllowed, errors.UnsupportedContentType, errors.UnknownRoute)


def _statuses_of_code(on_v3: bool) -> dict[int, set[int]]:
    table: dict[int, set[int]] = {}
    for error in vars(errors).values():
        if (
            isinstance(error, type)
            and issubclass(error, errors.EaselError)
            and (on_v3 or not issubclass(error, V3_ONLY))
        ):
            code, status = v3.error_code(error) if on_v3 else (error.code, error.status)
            table.setdefault(code, set()).add(status)
    return table


# The HTTP statuses each protocol code goes with, on v2 routes and on /v3 (v3's codes).
STATUSES_OF_CODE = _statuses_of_code(on_v3=False)
V3_STATUSES_OF_CODE = _statuses_of_code(on_v3=True)


def statuses_of(code: int, path: str) -> set[int]:
    """The HTTP statuses that go with ``code`` on ``path``."""
    return (V3_STATUSES_OF_CODE if path.startswith("/v3/") else STATUSES_OF_CODE).get(code, set())


def settings_for(database_url: str, **overrides: Any) -> Settings:
    backend = {"kind": "placeholder", **overrides.pop("placeholder", {})}
    data: dict[str, Any] = {
        "database_url": database_url,
        "storage_url": "memory://",
        "poll_interval_s": 0.05,
        "backends": {"dry": backend},
        "models": {model: {"backends": ["dry"]} for model in ALL_MODELS},
    }
    data.update(overrides)
    return Settings.model_validate(data)


def has_estimate(task: Mapping[str, Any]) -> bool:
    """An unfinished task's ``running_left_time`` is seconds ahead, or -1 with the server's
    word that nothing is measured yet (``running_left_basis`` "none")."""
    if task["running_left_basis"] == "none":
        return bool(task["running_left_time"] == -1)
    return bool(task["running_left_time"] >= 1)


def png(width: int = 64, height: int = 64, color: str = "red", fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


@dataclass
class Api:
    client: httpx.AsyncClient
    runtime: Runtime
    key: str

    async def upload(self, data: bytes, name: str = "ref.png") -> str:
        response = await self.client.post(
            "/v2/openapi/upload", files={"file": (name, data, "application/octet-stream")}
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["data"]["image_token"]
        return token

    async def submit(self, **body: Any) -> httpx.Response:
        return await self.client.post("/v2/openapi/task", json={"type": "generate_image", **body})

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v2/openapi/task/{task_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def wait(
        self, task_id: str, timeout_s: float = 20.0, until: Collection[str] | None = None
    ) -> dict[str, Any]:
        """Poll until the task's status is in ``until`` (by default: any final status)."""
        async with asyncio.timeout(timeout_s):
            while True:
                task = await self.task(task_id)
                if (task["status"] in until) if until else task["status"] not in UNFINISHED:
                    return task
                await asyncio.sleep(0.05)

    async def balance(self) -> dict[str, int]:
        data: dict[str, int] = (await self.client.get("/v2/openapi/user/balance")).json()["data"]
        return data


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings,
    *,
    run_worker: bool = True,
    credits: int = 100,
    restarts: Backoff = LOOP_RESTARTS,
) -> AsyncIterator[Api]:
    app = create_app(settings, run_worker=run_worker, restarts=restarts)
    async with app.router.lifespan_context(app):
        runtime: Runtime = app.state.runtime
        key = await runtime.store.accounts.create_key("test", credits)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {key}"},
        ) as client:
            yield Api(client, runtime, key)


def engine_of(store: Store) -> AsyncEngine:
    """The database under ``store``: for the tests of what only a SQL store has."""
    assert isinstance(store, SqlStore), f"this test needs a SQL store, not {store!r}"
    return store.engine


@dataclass(frozen=True)
class State:
    """What a refused request must leave as it was: an account's credits and the row counts."""

    balance: int
    frozen: int
    tasks: int
    files: int
    webhooks: int
    ledger: int


async def row_counts(store: Store) -> tuple[int, int, int, int]:
    """How many tasks, files, webhooks and ledger rows the store holds (any kind of store)."""
    if isinstance(store, MemoryStore):
        m = store.memory
        return len(m.tasks), len(m.files), len(m.hooks), len(m.ledger)
    async with engine_of(store).connect() as conn:
        tasks_, files_, webhooks_, ledger_ = [
            int(await conn.scalar(select(func.count()).select_from(table)) or 0)
            for table in (tasks, files, webhooks, ledger)
        ]
    return tasks_, files_, webhooks_, ledger_


async def account_state(runtime: Runtime, account_id: str) -> State:
    """The account's balance and frozen credits, and how many tasks, files, webhooks and
    ledger rows exist (any refused request must leave all of them as they were)."""
    balance = await runtime.store.accounts.balance(account_id)
    return State(balance.balance, balance.frozen, *await row_counts(runtime.store))
