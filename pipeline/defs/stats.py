"""``data_stats``: tables, report and plots of a dataset, and the check that its two tables line up."""

import os

import dagster as dg

from pipeline.core.vocabulary import load_tag_encoding, token_text
from pipeline.defs.errors import user_errors
from pipeline.defs.keys import asset_key, group_name
from pipeline.defs.metadata import check_result, to_metadata
from pipeline.defs.resources import TagcolorStorage
from pipeline.sources.base import DatasetSpec
from pipeline.stats import ALIGNMENT_CHECK, check_alignment, compute_data_stats


class StatsConfig(dg.Config):
    """How many processes stream the shards' histograms (0: one per core)."""

    workers: int = 0


def stats_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    stats_key = asset_key(spec, "data_stats")

    @dg.asset(
        key=stats_key,
        group_name=group_name(spec),
        deps=[asset_key(spec, "lab_shards"), asset_key(spec, "tag_tokens")],
        kinds={"parquet", "markdown"},
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[
            dg.AssetCheckSpec(
                ALIGNMENT_CHECK,
                asset=stats_key,
                description="images.parquet and tokens.npy both hold the dataset's images once each, in id order.",
            )
        ],
        description="Token, tag and Lab statistics: Parquet tables, data_stats.md and plots.",
    )
    def data_stats(config: StatsConfig, storage: TagcolorStorage) -> dg.MaterializeResult:
        with user_errors():
            paths, live = storage.paths(spec.name), storage.resolve(spec)
            aligned = check_alignment(paths, live.n_images)  # recorded first: a failure stops the statistics too
            decode = token_text(load_tag_encoding(storage.vocabulary_dir))
            result = compute_data_stats(paths, live.n_shards, decode, workers=config.workers or os.cpu_count() or 1)
            return dg.MaterializeResult(
                metadata=to_metadata(result.metadata), check_results=[check_result(aligned, ALIGNMENT_CHECK)]
            )

    return [data_stats]
