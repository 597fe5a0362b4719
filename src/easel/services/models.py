"""What the catalog's models are served by here: ``GET /models`` and ``/readyz``'s check.

A model is served when a backend of this process can run it or a worker with a recent
heartbeat takes it (a worker on another host); one that is not says why.
"""

from __future__ import annotations

import contextlib
from typing import Any

from easel.backends.fallback import Router
from easel.domain.errors import StoreUnavailable
from easel.store.ports import QueuePort


class ServedModels:
    def __init__(self, router: Router, queue: QueuePort) -> None:
        self._router = router
        self._queue = queue

    @property
    def configured(self) -> list[str]:
        """The models that have a backend configured in this process."""
        return [version for version in self._router.catalog if self._router.chain(version)]

    async def describe(self) -> list[dict[str, Any]]:
        """Each catalog entry with this server's backends, whether it is served, and if
        not why (``reason``)."""
        live = await self._queue.live_models()
        rows = []
        for spec in self._router.catalog.values():
            backends = [
                {
                    "name": leg.backend.name,
                    "kind": leg.backend.kind,
                    "ready": (reason := leg.backend.unavailable_reason()) is None,
                    "reason": reason,
                    "load_state": leg.backend.load_state.value,
                    "served_by": leg.backend.served_by(leg.provider_model),
                }
                for leg in self._router.chain(spec.version)
            ]
            served = spec.version in live or self._router.is_served(spec.version)
            rows.append(
                {
                    "model_version": spec.version,
                    "v3_names": list(spec.v3_names),
                    "description": spec.description,
                    "credits": spec.credits,
                    "images": spec.images.value,
                    "max_files": spec.max_files,
                    "accepts_webp": spec.accepts_webp,
                    "served": served,
                    "reason": None if served else self._router.unserved_reason(spec.version),
                    "backends": backends,
                }
            )
        return rows

    async def unserved(self) -> dict[str, str]:
        """The models configured here that nothing serves (no ready backend here, no live
        worker), with why. The database's answer is left out while it is unreachable: the
        readiness probe reports that outage itself."""
        live: set[str] = set()  # the database is away: no worker elsewhere is known to be live
        with contextlib.suppress(StoreUnavailable):
            live = await self._queue.live_models()
        return {
            version: reason
            for version in self.configured
            if version not in live and (reason := self._router.unserved_reason(version))
        }
