"""Metadata a person reads: floats to four significant digits, timings apart and last, the producer's order."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from pipeline.core.render import Markdown
from pipeline.defs.metadata import to_metadata


def test_floats_are_rounded_and_timings_filed_last_under_their_own_prefix(tmp_path: Path) -> None:
    values = {
        "preview": Markdown("# report"),
        "seconds": 12.345678,
        "tag_gain": 1.6997289679187906,
        "scan_gb_per_s": 1.23456,
        "n_images": 247,
        "ab_error/tags": 0.000123456,
        "report": tmp_path / "report.md",
        "table/top": pd.DataFrame({"a": [1]}),
        "duration_s": 3.0,
        "fid_status": "unavailable: offline",
        "psnr": math.inf,
    }
    metadata = to_metadata(values)
    assert list(metadata) == [
        "preview", "tag_gain", "n_images", "ab_error/tags", "report", "table/top", "fid_status",
        "timing/seconds", "timing/scan_gb_per_s", "timing/duration_s",
    ]  # fmt: skip
    assert metadata["tag_gain"].value == 1.7 and metadata["ab_error/tags"].value == 0.0001235
    assert metadata["timing/seconds"].value == 12.35 and metadata["n_images"].value == 247
    assert metadata["report"].value == str(tmp_path / "report.md")
