"""Which backends serve which ``model_version``, in fallback order.

Built from ``[models."…"] backends = [...]``: the first ready backend runs a task; on a
retryable failure the next one runs it under the same task id. A model is *served* when at
least one of its backends is ready (has its key, its GPU, its weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from easel.backends.base import ImageBackend, LoadState
from easel.backends.registry import create_backend
from easel.config import Settings
from easel.domain.catalog import CATALOG, Catalog
from easel.outbound import OutboundPolicy


@dataclass(frozen=True, slots=True)
class Leg:
    """One backend of a model's chain, with the provider's id for that model: the model
    table's ``provider_model`` for this backend, else the catalog's for the backend's kind."""

    backend: ImageBackend
    provider_model: str | None


@dataclass(slots=True)
class Router:
    chains: dict[str, list[Leg]] = field(default_factory=dict)
    backends: dict[str, ImageBackend] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=lambda: CATALOG)

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        outbound = OutboundPolicy.from_strings(settings.allow_outbound_cidrs)
        backends = {
            name: create_backend(name, table, outbound) for name, table in settings.backends.items()
        }
        ids = {version: spec.provider_models for version, spec in settings.catalog.items()}
        chains = {
            version: [
                Leg(
                    backends[name],
                    table.provider_model.get(name) or ids[version].get(backends[name].kind),
                )
                for name in table.backends
            ]
            for version, table in settings.models.items()
        }
        return cls(chains=chains, backends=backends, catalog=settings.catalog)

    def chain(self, model_version: str) -> list[Leg]:
        return self.chains.get(model_version, [])

    def ready_backends(self, model_version: str) -> list[str]:
        return [
            leg.backend.name
            for leg in self.chain(model_version)
            if leg.backend.unavailable_reason() is None
        ]

    def served(self) -> list[str]:
        """The model_versions with at least one ready backend, in catalog order."""
        return [version for version in self.catalog if self.ready_backends(version)]

    def is_served(self, model_version: str) -> bool:
        return bool(self.ready_backends(model_version))

    def unserved_reason(self, model_version: str) -> str | None:
        """None when a backend here is ready for the model, else why none is, in short:
        each backend's reason, or that none is configured."""
        legs = self.chain(model_version)
        if not legs:
            return "no backend is configured for it"
        reasons = []
        for leg in legs:
            reason = leg.backend.unavailable_reason()
            if reason is None:
                return None
            reasons.append(f"backend {leg.backend.name!r}: {reason}")
        return "; ".join(reasons)

    def load_failure(self, model_version: str) -> str | None:
        """Why the model can never run in this process, when that is because its backends
        failed to load: none is ready and at least one has ``LoadState.FAILED`` (a backend
        that merely lacks a key was never this process's to run). None otherwise."""
        legs = self.chain(model_version)
        if not any(leg.backend.load_state is LoadState.FAILED for leg in legs):
            return None
        return self.unserved_reason(model_version)

    def describe(self) -> list[str]:
        """Human-readable lines for the start-up log."""
        lines = []
        for version, legs in self.chains.items():
            parts = []
            for leg in legs:
                reason = leg.backend.unavailable_reason()
                state = "ready" if reason is None else f"not ready: {reason}"
                parts.append(f"{leg.backend.name} ({leg.backend.kind}, {state})")
            lines.append(f"{version} -> {', '.join(parts)}")
        return lines

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()
