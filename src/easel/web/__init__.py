"""The web playground: a static page at ``/`` that drives the API from the browser.

Plain HTML, CSS and JavaScript modules under ``static/`` (package data, no build step), served
by explicit routes: ``GET /`` is the page, ``GET /playground/<file>`` its assets and
``GET /playground/templates.json`` the template catalog (the API has no route for it). The
page talks to ``/v2/openapi`` with the key the user pastes; nothing here needs a key.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from easel.domain.errors import NotAllowed
from easel.domain.templates import TEMPLATES

router = APIRouter(include_in_schema=False)

STATIC = resources.files(__name__) / "static"
MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
# Same-origin only; output links may live on another host (public_url, S3 presigned URLs).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data: http: https:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
TITLES = {"t_pose": "T-pose", "3d_enhance": "3D enhance"}


def _asset(name: str) -> Response:
    media_type = MEDIA_TYPES.get(name.rsplit(".", 1)[-1])
    file = STATIC / name
    if media_type is None or "/" in name or not file.is_file():
        raise NotAllowed(f"no playground file {name!r}", "Open the playground at /.")
    return Response(file.read_bytes(), media_type=media_type, headers=HEADERS)


def template_catalog() -> list[dict[str, Any]]:
    """Each template's slug, title, description and how many reference images it adds."""
    return [
        {
            "slug": t.slug,
            "title": TITLES.get(t.slug, t.slug.replace("_", " ").capitalize()),
            "description": t.description,
            "images": len(t.images),
        }
        for t in TEMPLATES.values()
    ]


@router.get("/")
def index() -> Response:
    return _asset("index.html")


@router.get("/playground/templates.json")
def templates_json() -> JSONResponse:
    return JSONResponse(template_catalog(), headers={"Cache-Control": "no-cache"})


@router.get("/playground/{name}")
def asset(name: str) -> Response:
    return _asset(name)
