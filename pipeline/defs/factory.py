"""One asset graph per dataset: archives → shards and tokens → stats → colorizer → evaluation.

Each family of assets lives in its own module; this one puts a dataset's families together.
"""

import dagster as dg

from pipeline.defs.colorized import colorized_assets
from pipeline.defs.evaluation import evaluation_assets
from pipeline.defs.prepare import prepare_assets
from pipeline.defs.sources import source_assets
from pipeline.defs.stats import stats_assets
from pipeline.defs.training import training_assets
from pipeline.sources.base import DatasetSpec


def build_dataset_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """The asset graph of one dataset, keys prefixed and grouped by the dataset's name."""
    return [
        *source_assets(spec),
        *prepare_assets(spec),
        *stats_assets(spec),
        *training_assets(spec),
        *evaluation_assets(spec),
        *colorized_assets(spec),
    ]
