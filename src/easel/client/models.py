"""Typed views of the protocol's answers: :class:`Task`, :class:`Balance`, :class:`ModelInfo`.

Each is a frozen dataclass built by ``from_json`` from the ``data`` of a response. Parsing is
lenient where the protocol lets servers differ (missing fields get the protocol's defaults,
an unknown status reads as :attr:`TaskStatus.UNKNOWN`) and keeps the whole object in ``raw``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    BANNED = "banned"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: object) -> TaskStatus:
        try:
            return cls(str(value))
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_final(self) -> bool:
        """No further change will come: every status but queued and running."""
        return self not in (TaskStatus.QUEUED, TaskStatus.RUNNING)


def _int(value: object, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return default
    try:
        return int(float(value))
    except ValueError:
        return default


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class Task:
    """A task as ``GET /task/{task_id}`` shows it."""

    task_id: str
    status: TaskStatus
    progress: int = 0
    queuing_num: int = -1
    """Queued tasks ahead of this one; -1 when not queued."""
    running_left_time: int = -1
    """Estimated seconds until the task ends; -1 once final, and while the server has no
    estimate yet (no measured run of the model: ``raw["running_left_basis"]`` is "none")."""
    image_url: str | None = None
    """``output.generated_image``: a signed link to the image, once the task succeeded."""
    consumed_credit: int = 0
    error_code: int | None = None
    error_msg: str | None = None
    create_time: int = 0
    input: Mapping[str, Any] = field(default_factory=dict)
    attempts: Sequence[Mapping[str, Any]] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def succeeded(self) -> bool:
        return self.status is TaskStatus.SUCCESS

    @property
    def model_version(self) -> str | None:
        return _str(self.input.get("model_version"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        output = data.get("output")
        given = data.get("input")
        attempts = data.get("attempts")
        code = data.get("error_code")
        return cls(
            task_id=str(data.get("task_id", "")),
            status=TaskStatus.parse(data.get("status")),
            progress=_int(data.get("progress"), 0),
            queuing_num=_int(data.get("queuing_num"), -1),
            running_left_time=_int(data.get("running_left_time"), -1),
            image_url=_str(output.get("generated_image")) if isinstance(output, dict) else None,
            consumed_credit=_int(data.get("consumed_credit"), 0),
            error_code=None if code is None else _int(code, 1001),
            error_msg=_str(data.get("error_msg")),
            create_time=_int(data.get("create_time"), 0),
            input=dict(given) if isinstance(given, dict) else {},
            attempts=tuple(a for a in attempts if isinstance(a, dict))
            if isinstance(attempts, list)
            else (),
            raw=dict(data),
        )


@dataclass(frozen=True, slots=True)
class Balance:
    """Credits available (``balance``) and held by unfinished tasks (``frozen``)."""

    balance: int
    frozen: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Balance:
        return cls(balance=_int(data.get("balance"), 0), frozen=_int(data.get("frozen"), 0))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of ``GET /models``: a model_version, its price and whether it is served."""

    model_version: str
    credits: int
    served: bool
    description: str = ""
    default: bool = False
    images: str = ""
    """How the model takes reference images (see docs/models.md)."""
    max_files: int = 0
    accepts_webp: bool = False
    backends: Sequence[Mapping[str, Any]] = ()
    reason: str | None = None
    """Why the model is not served (say, its weights failed to load); None when it is."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any], default: str | None = None) -> ModelInfo:
        version = str(data.get("model_version", ""))
        backends = data.get("backends")
        return cls(
            model_version=version,
            credits=_int(data.get("credits"), 0),
            served=bool(data.get("served", False)),
            description=str(data.get("description") or ""),
            default=version == default,
            images=str(data.get("images") or ""),
            max_files=_int(data.get("max_files"), 0),
            accepts_webp=bool(data.get("accepts_webp", False)),
            reason=str(data["reason"]) if data.get("reason") else None,
            backends=tuple(b for b in backends if isinstance(b, dict))
            if isinstance(backends, list)
            else (),
        )
