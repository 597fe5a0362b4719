"""``/docs`` and ``/redoc`` work without internet: their Swagger UI and ReDoc assets come from
the server (fastapi-offline's package data), not from a CDN.

The browser test opens the pages in Debian's Chromium (see ``browser.py``) against a real
``easel serve`` and aborts every request that leaves the server's origin, as a machine without
internet would; the in-process test checks that every asset the pages name is served here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, Route, expect

from browser import chromium
from easel.api.app import create_app
from easel.config import Settings
from processes import easel_process, free_port, wait_healthy, write_config

SUBMIT = "/v2/openapi/task"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("docs")
    config = write_config(directory)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = directory / "server.log"
    with easel_process("serve", "--config", str(config), "--port", str(port), log=log) as proc:
        wait_healthy(url, proc, log)
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def offline_page(browser: Browser, base_url: str) -> Iterator[tuple[Page, list[str]]]:
    """A page that reaches only ``base_url``; the second item lists the URLs it blocked."""
    context = browser.new_context(base_url=base_url)
    blocked: list[str] = []

    def only_the_server(route: Route) -> None:
        url = route.request.url
        if url.startswith(base_url + "/"):
            route.continue_()
        else:
            blocked.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", only_the_server)
    yield context.new_page(), blocked
    context.close()


@pytest.mark.e2e
def test_swagger_ui_renders_the_operations_offline(offline_page: tuple[Page, list[str]]) -> None:
    page, blocked = offline_page
    page.goto("/docs")
    submit = page.locator(".opblock-post").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{SUBMIT}"]')
    )
    expect(submit).to_contain_text("Submit a task: generate_image, text_to_image")
    submit.locator(".opblock-summary").click()  # open it: the request body and its examples
    expect(submit.get_by_text("Request body", exact=True)).to_be_visible()
    assert blocked == []


@pytest.mark.e2e
def test_redoc_renders_the_operations_offline(offline_page: tuple[Page, list[str]]) -> None:
    page, blocked = offline_page
    page.goto("/redoc")
    expect(page.get_by_role("heading", name=re.compile("Easel")).first).to_be_visible()
    expect(page.get_by_text("Submit a task: generate_image, text_to_image").first).to_be_visible()
    # ReDoc's "API docs by Redocly" badge links its logo from Redocly's CDN: a blank image
    # offline, nothing the page needs.
    assert set(blocked) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_the_docs_pages_name_is_served_here(page: str) -> None:
    """No absolute URL to another host, and each local one answers 200 (no lifespan needed:
    the pages and assets are static)."""
    client = TestClient(create_app(Settings(), run_worker=False))
    html = client.get(page)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
    assert urls, html.text
    for url in urls:
        assert not urlsplit(url).netloc, f"{page} loads {url} from another host"
        assert client.get(url).status_code == 200, url
