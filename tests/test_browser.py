"""The Dagster UI over the materialized sample, in a real headless Chromium (Debian's, driven by Playwright):
every picture in the ``data_stats``, ``colorizer`` and ``evaluation`` previews, and in the ``colorized``
gallery of a folder coloured by the sample's run, loads, and no page reports an error.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Response
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.helpers import REPO_ROOT, SampleInstance, folder_of_scenes, free_port, query_when_ready

PREVIEWS = {"sample/data_stats": 4, "sample/colorizer": 2, "sample/evaluation": 3, "scans/colorized?partition=000": 1}
"""Each asset page's preview and the pictures it embeds at least: plots; curves and the latest snapshot;
collages; the before/after gallery."""


@pytest.fixture(scope="module")
def instance_env(sample_instance: SampleInstance, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The demo's instance plus a folder dataset, ``scans``, coloured by the demo's run as a user would: with
    ``dg launch`` (its ``archives``, then ``colorized`` partition 000 with ``run: sample/<run>``)."""
    root = tmp_path_factory.mktemp("scans")
    folder_of_scenes(root / "photos", 6)
    datasets = root / "datasets"
    datasets.mkdir()
    (datasets / "scans.yaml").write_text(f"name: scans\nkind: folder\npath: {root / 'photos'}\n")
    (run,) = (path.name for path in (sample_instance.data / "sample" / "runs").iterdir())
    config = root / "colorized.yaml"
    config.write_text(f"ops:\n  scans__colorized:\n    config:\n      run: sample/{run}\n")
    env = sample_instance.env | {"TAGCOLOR_DATA_DIR": str(sample_instance.data), "TAGCOLOR_DATASETS_DIR": str(datasets)}
    launch = [str(Path(sys.prefix) / "bin" / "dg"), "launch", "--assets"]
    for command in ([*launch, "scans/archives", "--partition", "folder"],
                    [*launch, "scans/colorized", "--partition", "000", "--config", str(config)]):  # fmt: skip
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    return env


@pytest.fixture(scope="module")
def webserver(instance_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dagster-webserver` on 127.0.0.1 over that instance, stopped after the module."""
    port = free_port()
    command = [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path_factory.mktemp("webserver") / "webserver.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=instance_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            query_when_ready(url, server)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


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
@pytest.mark.parametrize("asset", list(PREVIEWS), ids=lambda asset: asset.split("?")[0])
def test_asset_preview_shows_every_picture(
    webserver: str, browser: BrowserContext, asset: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    page = browser.new_page()
    errors = errors_of(page)
    page.goto(f"{webserver}/assets/{asset}")
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
    screenshot = tmp_path_factory.mktemp("screenshots") / f"{asset.split('?')[0].replace('/', '_')}.png"
    page.evaluate("document.querySelectorAll('*').forEach(element => { element.scrollTop = 0; })")
    page.screenshot(path=screenshot)  # the preview from its top: for a person to look at when the test fails
    assert len(widths) >= PREVIEWS[asset], f"{asset}: {len(widths)} pictures in the preview ({screenshot})"
    assert all(width > 0 for width in widths), f"{asset}: pictures that did not load: {widths} ({screenshot})"
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    page.close()
    assert not errors, f"{asset}: {errors}"
