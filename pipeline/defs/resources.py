"""The storage resource: :class:`pipeline.storage.Storage`, the one reader of the environment, as Dagster
configures and passes it to every asset."""

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from pipeline.core.layout import DatasetPaths
from pipeline.sources.base import DatasetSpec
from pipeline.storage import Storage


class TagcolorStorage(dg.ConfigurableResource):
    """The data root, the archive mirrors and the tokenizer cache, resolved once per process
    (:class:`pipeline.storage.Storage`, whose fields these are)."""

    data_dir: str = "data"
    tiktoken_cache_dir: str
    url_overrides: dict[str, str] = {}
    path_overrides: dict[str, str] = {}

    @property
    def plain(self) -> Storage:
        return Storage(self.data_dir, self.tiktoken_cache_dir, dict(self.url_overrides), dict(self.path_overrides))

    def paths(self, dataset: str) -> DatasetPaths:
        return self.plain.paths(dataset)

    def base_url(self, spec: DatasetSpec) -> str | None:
        return self.plain.base_url(spec)

    def resolve(self, spec: DatasetSpec) -> DatasetSpec:
        return self.plain.resolve(spec)

    @property
    def vocabulary_dir(self) -> Path:
        return self.plain.vocabulary_dir


def storage_from_environ(environ: Mapping[str, str] = os.environ) -> TagcolorStorage:
    """The storage resource as the environment sets it (:meth:`pipeline.storage.Storage.from_environ`)."""
    return TagcolorStorage(**dataclasses.asdict(Storage.from_environ(environ)))
