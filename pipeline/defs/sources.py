"""``archives`` and ``tags_archive``: each dataset's sources, obtained by its kind and verified."""

import dagster as dg

from pipeline.defs.errors import user_errors
from pipeline.defs.keys import asset_key, group_name
from pipeline.defs.metadata import byte_progress_logger, to_metadata
from pipeline.defs.resources import TagcolorStorage
from pipeline.sources.base import DatasetSpec


def source_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    archives_key = asset_key(spec, "archives")

    @dg.asset(
        key=archives_key,
        group_name=group_name(spec),
        partitions_def=dg.StaticPartitionsDefinition(spec.archives()),
        kinds={"zip"},
        description=f"{spec.name} image archives, obtained ({spec.kind}) and verified.",
    )
    def archives(context: dg.AssetExecutionContext, storage: TagcolorStorage) -> dg.MaterializeResult:
        with user_errors():
            archive = context.partition_key
            progress = byte_progress_logger(context.log, archive)
            live = storage.resolve(spec)
            result = live.obtain(archive, storage.paths(spec.name), storage.base_url(spec), progress)
            return dg.MaterializeResult(metadata=to_metadata(result.metadata))

    inside = spec.tags_in_image_archives

    @dg.asset(
        key=asset_key(spec, "tags_archive"),
        group_name=group_name(spec),
        deps=[archives_key] if inside else [],
        kinds={"zip"},
        description="Tag files: they live inside the image archive, so this checks they are there."
        if inside
        else f"{spec.tags_archive}.zip, obtained and verified.",
    )
    def tags_archive(context: dg.AssetExecutionContext, storage: TagcolorStorage) -> dg.MaterializeResult:
        with user_errors():
            progress = byte_progress_logger(context.log, spec.tags_archive)
            live = storage.resolve(spec)
            result = live.obtain_tags(storage.paths(spec.name), storage.base_url(spec), progress)
            return dg.MaterializeResult(metadata=to_metadata(result.metadata))

    return [archives, tags_archive]
