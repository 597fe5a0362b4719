"""What a route declares about itself, written on the route: the protocol errors it can answer,
an example of its success, the JSON body its handler reads by hand, and the larger body limit
of a route that takes an image.

``@declare(...)`` goes under the route's decorator::

    @router.get("/task/{task_id}", summary="Get a task")
    @declare(errors=[2001], example=TASK)
    async def get_task(...): ...

The OpenAPI document (:mod:`easel.api.openapi`) and the body limit (:mod:`easel.api.limits`)
read them from the app's routes, so adding a route never means editing a table of paths
elsewhere. A route that authenticates (``CallerDep``) can answer 1002 and 1007 without saying
so: those come with the dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi.dependencies.models import Dependant
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.routing import BaseRoute

from easel.api.deps import get_caller

EXAMPLE_ID = "ef731ad6-aeb0-4950-9a2e-2298359dfaf8"  # the task id (or token) of the examples
AUTH_ERRORS = (1002, 1007)  # every authenticated request counts against the key's rate limit

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class JsonBody:
    """A JSON request body the handler decodes itself (every route does: the API's one JSON
    decoder keeps the text rules), which FastAPI therefore cannot describe. A ``name`` puts
    the schema under the document's components, beside the ``components`` it refers to."""

    schema: Mapping[str, Any]
    name: str | None = None
    examples: Mapping[str, Any] | None = None  # named examples, or one ``example``
    example: Any = None
    components: Mapping[str, Any] = field(default_factory=dict)

    def request_body(self) -> dict[str, Any]:
        """The operation's ``requestBody``."""
        ref = f"#/components/schemas/{self.name}"
        schema = dict(self.schema) if self.name is None else {"$ref": ref}
        content: dict[str, Any] = {"schema": schema}
        if self.examples is not None:
            content["examples"] = dict(self.examples)
        if self.example is not None:
            content["example"] = self.example
        return {"required": True, "content": {"application/json": content}}

    def schemas(self) -> dict[str, Any]:
        """The component schemas the body refers to, its own included."""
        named = {} if self.name is None else {self.name: dict(self.schema)}
        return {**self.components, **named}


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What one route declared with :func:`declare`."""

    errors: tuple[int, ...] = ()  # protocol codes, besides 1000 (any route) and the caller's
    example: Any = None  # the ``data`` of the success envelope; None: no JSON to show
    body: JsonBody | None = None
    upload_limit: int | None = None  # bytes: the body is an image, not a JSON body


_DECLARED: dict[Callable[..., Any], RouteFacts] = {}


def declare(
    *,
    errors: Iterable[int] = (),
    example: Any = None,
    body: JsonBody | None = None,
    upload_limit: int | None = None,
) -> Callable[[Endpoint], Endpoint]:
    """Record the route's facts for the endpoint it decorates (the endpoint is unchanged)."""

    def attach(endpoint: Endpoint) -> Endpoint:
        _DECLARED[endpoint] = RouteFacts(tuple(errors), example, body, upload_limit)
        return endpoint

    return attach


def declared(routes: Sequence[BaseRoute]) -> Iterator[tuple[RouteContext, RouteFacts]]:
    """The routes whose endpoint declared its facts, with them; a route of an included
    router as the app serves it (its full path, its router's dependencies)."""
    for route in iter_route_contexts(routes):
        if route.endpoint is not None and route.endpoint in _DECLARED:
            yield route, _DECLARED[route.endpoint]


def error_codes(route: RouteContext, facts: RouteFacts) -> list[int]:
    """The codes the route can answer: its caller's first, then its own declared ones."""
    return [*(AUTH_ERRORS if _authenticates(route.dependant) else ()), *facts.errors]


def _authenticates(dependant: Dependant) -> bool:
    return any(sub.call is get_caller or _authenticates(sub) for sub in dependant.dependencies)
