"""The Dagster UI over the materialized sample, in a real headless Chromium (Debian's, driven by Playwright):
every picture in the ``data_stats``, ``colorizer`` and ``evaluation`` previews loads, and no page reports an error.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, Page, Response, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.helpers import REPO_ROOT, SampleInstance, free_port, query_when_ready

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PREVIEWS = {"data_stats": 4, "colorizer": 2, "evaluation": 3}
"""Each asset's preview and the pictures it embeds at least: plots; curves and the latest snapshot; collages."""


def system_chromium() -> str:
    """Debian's Chromium: the test never downloads a browser of its own."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no chromium on PATH: install Debian's (`apt-get install chromium`), as .ci/run does"
    return found


@pytest.fixture(scope="module")
def webserver(sample_instance: SampleInstance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dagster-webserver` on 127.0.0.1 over the demo's instance, stopped after the module."""
    port = free_port()
    env = sample_instance.env | {"TAGCOLOR_DATA_DIR": str(sample_instance.data)}
    command = [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path_factory.mktemp("webserver") / "webserver.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            query_when_ready(url, server)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Chromium on a fresh profile (an empty ``--user-data-dir``), closed after the module."""
    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=system_chromium(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


def errors_of(page: Page) -> list[str]:
    """Collect what the page reports as broken: uncaught exceptions, console errors, GraphQL errors."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)

    def graphql_errors(response: Response) -> None:
        if response.url.endswith("/graphql") and response.ok:
            body = json.loads(response.text())
            errors.extend(f"graphql: {error.get('message')}" for error in body.get("errors", []))

    page.on("response", graphql_errors)
    return errors


def dismiss_welcome(page: Page) -> None:
    """A fresh profile gets Dagster's one-time community dialog over the page; skip it."""
    with contextlib.suppress(PlaywrightTimeout):  # shown once per profile: gone on the module's later pages
        page.get_by_role("button", name="Skip").click(timeout=5_000)


@pytest.mark.slow
@pytest.mark.parametrize("asset", list(PREVIEWS))
def test_asset_preview_shows_every_picture(
    webserver: str, browser: BrowserContext, asset: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    page = browser.new_page()
    errors = errors_of(page)
    page.goto(f"{webserver}/assets/sample/{asset}")
    preview_link = page.get_by_text("[Show Markdown]").first
    preview_link.wait_for(timeout=60_000)
    dismiss_welcome(page)
    preview_link.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    images = dialog.locator("img")
    images.first.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=dialog] img')].every(image => image.complete)", timeout=30_000
    )
    widths = images.evaluate_all("images => images.map(image => image.naturalWidth)")
    screenshot = tmp_path_factory.mktemp("screenshots") / f"{asset}.png"
    page.evaluate("document.querySelectorAll('*').forEach(element => { element.scrollTop = 0; })")
    page.screenshot(path=screenshot)  # the preview from its top: for a person to look at when the test fails
    assert len(widths) >= PREVIEWS[asset], f"{asset}: {len(widths)} pictures in the preview ({screenshot})"
    assert all(width > 0 for width in widths), f"{asset}: pictures that did not load: {widths} ({screenshot})"
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    page.close()
    assert not errors, f"{asset}: {errors}"
