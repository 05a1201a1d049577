"""``colorized``: a folder's photos coloured at full size by a trained run, one partition per shard of the
folder's manifest, incrementally (:func:`pipeline.commands.colorize_folder.colour_folder_shard`)."""

from typing import Literal

import dagster as dg

from pipeline.commands.colorize_folder import ColouringOptions, colour_folder_shard
from pipeline.defs.errors import user_errors
from pipeline.defs.keys import GPU_POOL, asset_key, group_name
from pipeline.defs.metadata import to_metadata
from pipeline.defs.resources import TagcolorStorage
from pipeline.sources.base import DatasetSpec

DEFAULTS = ColouringOptions()


class ColorizedConfig(dg.Config):
    """Which run colours the folder and how (:class:`ColouringOptions`, whose fields these are).

    ``run``: ``<run_name>`` of this dataset or ``<dataset>/<run_name>``; empty: the dataset's newest run.
    ``checkpoint``: ``best`` (else ``latest``) or ``latest``. ``tags``: ``own``, ``none`` or a tag list.
    ``format``: ``jpeg`` (``quality``) or ``png``. ``prune``: delete the outputs of photos gone from the folder.
    """

    run: str = DEFAULTS.run
    checkpoint: Literal["best", "latest"] = "best"
    tags: str = DEFAULTS.tags
    format: Literal["jpeg", "png"] = "jpeg"
    quality: int = DEFAULTS.quality
    prune: bool = DEFAULTS.prune
    batch_size: int = DEFAULTS.batch_size
    workers: int = DEFAULTS.workers
    device: str = DEFAULTS.device


def colorized_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    """The ``colorized`` asset of a folder dataset; other kinds have no photo files to colour in place."""
    if spec.kind != "folder":
        return []

    @dg.asset(
        key=asset_key(spec, "colorized"),
        group_name=group_name(spec),
        partitions_def=dg.StaticPartitionsDefinition(spec.shard_keys()),
        deps=[asset_key(spec, "archives")],
        kinds={"pytorch", "jpeg"},
        pool=GPU_POOL,
        # In backticks: the UI renders descriptions as Markdown, where a bare <run> is an HTML tag and vanishes.
        description="Every photo of the folder coloured at full size by a chosen run (EXIF kept), mirroring the "
        "folder's tree under `colorized/<run's dataset>/<run>/`; only what changed is coloured again.",
    )
    def colorized(
        context: dg.AssetExecutionContext, config: ColorizedConfig, storage: TagcolorStorage
    ) -> dg.MaterializeResult:
        with user_errors():
            options = ColouringOptions(**config.model_dump())
            done = colour_folder_shard(storage.plain, storage.resolve(spec), int(context.partition_key), options)
            context.log.info(f"shard {context.partition_key}: {done.summary}")
            return dg.MaterializeResult(metadata=to_metadata(done.metadata))

    return [colorized]
