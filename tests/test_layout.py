"""The core's contract checks: each names what is off, and passes a dataset that keeps the contract."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from pipeline.core.contract import PAD_ID, token_problems
from pipeline.core.layout import DatasetPaths, alignment_problems
from pipeline.datasets import load_dataset_spec


def test_alignment_problems_name_the_table_that_is_off(tmp_path) -> None:
    spec = dataclasses.replace(load_dataset_spec("sample"), n_images=4, shard_size=2)
    paths = DatasetPaths(tmp_path)
    assert "images.parquet holds 0 rows" in alignment_problems(paths, spec.n_images)
    assert "tokens.npy holds 0 rows" in alignment_problems(paths, spec.n_images)
    paths.images_table.mkdir(parents=True)
    for shard, ids in ((1, [2, 3]), (0, [0, 1])):
        pd.DataFrame({"image_id": ids, "shard": shard}).to_parquet(paths.shard_rows(shard))
    np.save(paths.tokens, np.zeros((4, 20), np.int32))
    assert alignment_problems(paths, spec.n_images) == ""
    np.save(paths.tokens, np.zeros((3, 20), np.int32))
    assert alignment_problems(paths, spec.n_images) == "tokens.npy holds 3 rows, expected 4"
    pd.DataFrame({"image_id": [1, 2], "shard": 1}).to_parquet(paths.shard_rows(1))
    assert alignment_problems(paths, spec.n_images).startswith("images.parquet holds 4 rows, not image ids 0 … 3")


def test_token_problems_detects_range_and_inner_pads() -> None:
    good = np.full((3, 20), PAD_ID, dtype=np.int32)
    good[0, :2] = [5, 7]
    assert token_problems(good) == ""
    inner = good.copy()
    inner[1, 5] = 9
    assert "after a pad" in token_problems(inner)
    negative = good.copy()
    negative[2, 0] = -1
    assert "outside" in token_problems(negative)
    assert "expected int32" in token_problems(good.astype(np.int64))
