"""Fixtures of the browser tests: the web page in front of the test stack, and a fresh
headless Chromium (Debian's, driven by Playwright; skipped with the reason where none is
found) with a profile of its own and a phone-sized screen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright

from tests.support.portal import CHROMIUM_ARGS, PHONE, chromium_executable, running_page
from tests.support.stack import InProcessStack


@pytest.fixture(scope="module")
async def page_url(stack: InProcessStack) -> AsyncIterator[str]:
    async with running_page(stack.endpoints) as url:
        yield url


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    executable = chromium_executable()
    if executable is None:
        reason = "no Chromium found (apt-get install chromium, or set METERLINE_CHROMIUM)"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            ignore_https_errors=True,  # the test run's own authority signed the page's certificate
            viewport=PHONE,
            timezone_id="Europe/Zurich",
            locale="en-GB",
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def page(browser: BrowserContext) -> Page:
    return browser.pages[0] if browser.pages else await browser.new_page()
