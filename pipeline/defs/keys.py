"""Asset keys and groups of one dataset's graph: keys prefixed by the dataset's name, grouped by it."""

import dagster as dg

from pipeline.datasets import identifier
from pipeline.sources.base import DatasetSpec

GPU_POOL = "tagcolor-gpu"
"""The concurrency pool of the steps that want the GPU (training, evaluation): one at a time."""


def asset_key(spec: DatasetSpec, asset: str) -> dg.AssetKey:
    return dg.AssetKey([spec.name, asset])


def group_name(spec: DatasetSpec) -> str:
    """Dagster group names allow no ``-``."""
    return identifier(spec.name)
