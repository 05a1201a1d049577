"""The data assets through Dagster on archives holding every bad case: metadata counts and asset checks."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from pipeline.core.layout import DatasetPaths
from pipeline.defs.factory import build_dataset_assets
from pipeline.defs.resources import storage_from_environ
from tests.helpers import BAD, SPEC, UNSAFE, UNSAFE_TAGS, materialize, photos, write_raw


def metadata_of(result: dg.ExecuteInJobResult, partitions: int = 1) -> dict:
    """The metadata of the run's materialization (one event per partition, all with the run's figures)."""
    events = result.get_asset_materialization_events()
    assert len(events) == partitions
    return {name: value.value for name, value in events[0].materialization.metadata.items()}


def test_data_assets_count_every_bad_case_and_pass_their_checks(tmp_path: Path, vocabulary_dir: Path) -> None:
    write_raw(DatasetPaths(tmp_path / "sample"), photos())
    storage = storage_from_environ({"TAGCOLOR_DATA_DIR": str(tmp_path), "TIKTOKEN_CACHE_DIR": str(vocabulary_dir)})
    assets = build_dataset_assets(SPEC)
    every_shard = {"dagster/asset_partition_range_start": "000", "dagster/asset_partition_range_end": "002"}

    shards = materialize(assets, "sample/lab_shards", storage, tags=every_shard)
    counts = metadata_of(shards, partitions=3)
    assert (counts["images"], counts["valid"], counts["grayscale"]) == (12, 12 - len(BAD), 2)
    assert {reason: counts[f"count/{reason}"] for reason in BAD.values()} == dict.fromkeys(BAD.values(), 1)
    assert (counts["count/not_jpeg"], counts["count/cmyk"], counts["count/unsafe_members"]) == (1, 1, len(UNSAFE))
    assert [c.passed for c in shards.get_asset_check_evaluations()] == [True]

    tokens = materialize(assets, "sample/tag_tokens", storage)
    tag_counts = metadata_of(tokens)
    assert (tag_counts["images"], tag_counts["missing_tag_files"], tag_counts["invalid_utf8"]) == (12, 1, 1)
    assert tag_counts["unsafe_members"] == len(UNSAFE_TAGS) and tag_counts["truncated"] == 1
    assert [(c.check_name, c.passed) for c in tokens.get_asset_check_evaluations()] == [("tokens_in_range", True)]

    stats = materialize(assets, "sample/data_stats", storage)
    assert metadata_of(stats)["valid_images"] == 12 - len(BAD)
    assert [(c.check_name, c.passed) for c in stats.get_asset_check_evaluations()] == [
        ("tokens_align_with_images", True)
    ]
