"""Test-wide settings: the offline tokenizer vocabulary and the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VOCABULARY = REPO_ROOT.parent / "shared" / "tiktoken"


@pytest.fixture(scope="session")
def vocabulary_dir() -> Path:
    """The verified o200k_base copy that CI provides beside the clone."""
    if not (SHARED_VOCABULARY / "fb374d419588a4632f3f557e76b4b70aebbca790").is_file():
        pytest.fail(f"the o200k_base vocabulary is missing from {SHARED_VOCABULARY}")
    return SHARED_VOCABULARY
