"""A Python client for Easel (and other Tripo v2 ``generate_image`` servers).

::

    from easel.client import Client

    with Client("http://127.0.0.1:8000", api_key="tsk_…") as client:
        task_id = client.generate_image("a red fox, style of image[1]", images=["fox.png"])
        task = client.wait(task_id, on_update=lambda t: print(t.status, t.progress))
        client.download(task, "fox-out.png")

:class:`AsyncClient` is its twin with the same methods as coroutines. Every error is an
:class:`EaselClientError` carrying ``code``, ``message`` and ``suggestion``.
"""

from easel.client._async import AsyncClient
from easel.client._sync import Client
from easel.client.errors import (
    AuthenticationError,
    ConnectionFailed,
    EaselClientError,
    InvalidRequest,
    NotEnoughCredit,
    PermissionDenied,
    RateLimited,
    ServerError,
    TaskFailed,
    TaskNotFound,
    WaitTimeout,
)
from easel.client.models import Balance, ModelInfo, Task, TaskStatus

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Balance",
    "Client",
    "ConnectionFailed",
    "EaselClientError",
    "InvalidRequest",
    "ModelInfo",
    "NotEnoughCredit",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "Task",
    "TaskFailed",
    "TaskNotFound",
    "TaskStatus",
    "WaitTimeout",
]
