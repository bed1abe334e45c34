"""Fixtures of the dashboard's browser tests: one headless chromium for the module, and a real
``cake serve`` per test. Helpers live in ``dashboard_support``.

A missing chromium or Playwright fails the tests with a message that says how to install them;
nothing here is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_support import CHROMIUM, Served, launch_chromium, start_served

HOW_TO_INSTALL = "run `bash scripts/test.sh` (it installs playwright and apt-gets chromium)"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed; {HOW_TO_INSTALL}")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; {HOW_TO_INSTALL}")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``cake serve`` on the embedded defaults (SQLite, local store, filesystem broker, a real
    Celery worker child) in local mode (no keys)."""
    server = start_served(tmp_path)
    try:
        yield server
    finally:
        server.stop()
