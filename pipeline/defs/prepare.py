"""``lab_shards`` and ``tag_tokens``: the photos as Lab shards, the tags as token rows, each checked."""

import warnings

import dagster as dg

from pipeline.convert import prepare_shards
from pipeline.core.contract import PAD_ID, TOKENS_PER_IMAGE, token_problems
from pipeline.core.layout import DataError, open_tokens
from pipeline.core.vocabulary import load_tag_encoding
from pipeline.defs.errors import user_errors
from pipeline.defs.keys import asset_key, group_name
from pipeline.defs.metadata import check_result, to_metadata
from pipeline.defs.resources import TagcolorStorage
from pipeline.sources.base import DatasetSpec
from pipeline.tokens import build_tag_tokens


class ShardsConfig(dg.Config):
    """How many processes convert shards in one run (0: one per core)."""

    workers: int = 0


def prepare_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    shards_key, tokens_key = asset_key(spec, "lab_shards"), asset_key(spec, "tag_tokens")
    archives_key, tags_key = asset_key(spec, "archives"), asset_key(spec, "tags_archive")

    # One run per backfill, so a process pool converts all its shards. `backfill_policy` is a beta parameter
    # of @dg.asset: its BetaWarning (three per load, six per materialize) is silenced here and only here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Parameter `backfill_policy` of function `asset`", dg.BetaWarning)

        @dg.asset(
            key=shards_key,
            group_name=group_name(spec),
            partitions_def=dg.StaticPartitionsDefinition(spec.shard_keys()),
            backfill_policy=dg.BackfillPolicy.single_run(),
            deps=[
                dg.AssetDep(archives_key, partition_mapping=dg.StaticPartitionMapping(spec.shards_by_archive())),
                tags_key,
            ],
            kinds={"numpy"},
            check_specs=[
                dg.AssetCheckSpec(
                    "shard_contract",
                    asset=shards_key,
                    description="Each shard's shape and dtype, and its images.parquet rows are its ids in order.",
                ),
                *(dg.AssetCheckSpec(name, asset=shards_key, description=text) for name, text in spec.checks.items()),
            ],
            description=f"Lab {spec.image_size}² uint8 shards of {spec.shard_size} images and images.parquet rows.",
        )
        def lab_shards(
            context: dg.AssetExecutionContext, config: ShardsConfig, storage: TagcolorStorage
        ) -> dg.MaterializeResult:
            with user_errors():
                context.log.info(f"converting shards {context.partition_keys} with {config.workers or 'all'} workers")
                result = prepare_shards(
                    storage.resolve(spec),
                    storage.paths(spec.name),
                    [int(key) for key in context.partition_keys],
                    storage.vocabulary_dir,
                    workers=config.workers or None,
                    progress=lambda shard: context.log.info(shard.summary),
                )
                checks = [check_result(v.problems, name, v.figures) for name, v in result.checks.items()]
                return dg.MaterializeResult(metadata=to_metadata(result.metadata), check_results=checks)

    @dg.asset(
        key=tokens_key,
        group_name=group_name(spec),
        deps=[tags_key],
        kinds={"numpy"},
        description=f"tokens.npy: int32 (N, {TOKENS_PER_IMAGE}) o200k_base ids padded with {PAD_ID}.",
    )
    def tag_tokens(context: dg.AssetExecutionContext, storage: TagcolorStorage) -> dg.MaterializeResult:
        with user_errors():
            result = build_tag_tokens(
                storage.resolve(spec),
                storage.paths(spec.name),
                load_tag_encoding(storage.vocabulary_dir),
                progress=lambda done, total: context.log.info(f"tags {done:,}/{total:,}"),
            )
            return dg.MaterializeResult(metadata=to_metadata(result.metadata))

    @dg.asset_check(asset=tokens_key, description="Token ids lie in [0, pad] and pads only trail.")
    def tokens_in_range(storage: TagcolorStorage) -> dg.AssetCheckResult:
        try:
            tokens = open_tokens(storage.paths(spec.name))
        except DataError as error:  # a damaged file is what this check is for
            return check_result(str(error))
        return check_result(token_problems(tokens))

    return [lab_shards, tag_tokens, tokens_in_range]
