"""Resources: the one layer that reads the environment and knows where data and archives live."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from pipeline.core.config import ConfigError
from pipeline.core.layout import DatasetPaths
from pipeline.core.vocabulary import tiktoken_cache_dir
from pipeline.datasets import DatasetSpec
from pipeline.sources.download import UnsupportedURLError, check_url

URL_ENV = {"mirflickr1m": "TAGCOLOR_MIRFLICKR1M_URL", "mirflickr25k": "TAGCOLOR_MIRFLICKR25K_URL"}


class TagcolorStorage(dg.ConfigurableResource):
    """The data root, the archive mirrors and the tokenizer cache, resolved once per process."""

    data_dir: str = "data"
    tiktoken_cache_dir: str
    url_overrides: dict[str, str] = {}

    def paths(self, dataset: str) -> DatasetPaths:
        return DatasetPaths(Path(self.data_dir).resolve() / dataset)

    def base_url(self, spec: DatasetSpec) -> str:
        url = self.url_overrides.get(spec.name) or spec.base_url
        if not url:
            raise ConfigError(f"dataset {spec.name!r} has no base_url and no {URL_ENV.get(spec.name)} override")
        return url

    @property
    def vocabulary_dir(self) -> Path:
        return Path(self.tiktoken_cache_dir)


def storage_from_environ(environ: Mapping[str, str] = os.environ) -> TagcolorStorage:
    """Build the storage resource from ``TAGCOLOR_DATA_DIR``, the mirror URLs and tiktoken's cache.

    A mirror URL that could never be fetched is refused here, naming its variable, not at download time.
    """
    overrides = {name: environ[var] for name, var in URL_ENV.items() if environ.get(var)}
    for name, url in overrides.items():
        try:
            check_url(url)
        except UnsupportedURLError as error:
            raise ConfigError(f"{URL_ENV[name]}: {error}") from error
    return TagcolorStorage(
        data_dir=environ.get("TAGCOLOR_DATA_DIR", "data"),
        tiktoken_cache_dir=str(tiktoken_cache_dir(environ)),
        url_overrides=overrides,
    )
