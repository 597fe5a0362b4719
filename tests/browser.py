"""Debian's Chromium driven by Playwright, for the tests that use a page in a real browser.

Chromium comes from Debian (``apt-get install -y chromium``; ``make test`` installs it where
it can, see ``scripts/ensure-chromium``), not ``playwright install``: without
``/usr/bin/chromium`` the browser tests skip, except under ``EASEL_CI=1`` where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium; skips the test without one (fails it under ``EASEL_CI=1``)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("EASEL_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
