"""Where each dataset's files are, as the environment says: the one place that reads it, for the Dagster
resource (:class:`pipeline.defs.resources.TagcolorStorage`) and the command lines alike."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import ConfigError
from pipeline.core.layout import DatasetPaths
from pipeline.core.vocabulary import tiktoken_cache_dir
from pipeline.datasets import DATASETS_DIR, env_var, resolve_repo_path
from pipeline.sources.base import DatasetSpec
from pipeline.sources.download import UnsupportedURLError, check_url

URL_VARIABLE = re.compile(r"TAGCOLOR_[A-Z0-9_]+_URL")
PATH_VARIABLE = re.compile(r"TAGCOLOR_[A-Z0-9_]+_PATH")
"""A dataset's mirror and folder overrides, ``TAGCOLOR_<NAME>_URL`` and ``TAGCOLOR_<NAME>_PATH``
(:func:`pipeline.datasets.env_var`)."""


@dataclass(frozen=True)
class Storage:
    """The data root, the archive mirrors, the folders of photos and the tokenizer cache."""

    data_dir: str = "data"
    tiktoken_cache_dir: str = ""
    url_overrides: dict[str, str] = field(default_factory=dict)
    """Mirror URLs by environment variable name."""
    path_overrides: dict[str, str] = field(default_factory=dict)
    """Folders of photos by environment variable name."""

    def paths(self, dataset: str) -> DatasetPaths:
        return DatasetPaths(Path(self.data_dir).resolve() / dataset)

    def base_url(self, spec: DatasetSpec) -> str | None:
        """Where the dataset's archives are fetched from: ``TAGCOLOR_<NAME>_URL`` when set, else the spec's own."""
        return self.url_overrides.get(env_var(spec.name, "url")) or spec.default_url

    def resolve(self, spec: DatasetSpec) -> DatasetSpec:
        """The spec as this environment and the dataset's own files make it: the folder ``TAGCOLOR_<NAME>_PATH``
        names, and the size a growing dataset has now."""
        variable = env_var(spec.name, "path")
        if variable in self.path_overrides:
            if "path" not in {field.name for field in dataclasses.fields(spec)}:
                raise ConfigError(f"{variable}: dataset {spec.name!r} (kind {spec.kind}) reads no folder")
            spec = dataclasses.replace(spec, path=self.path_overrides[variable])
        return spec.on_disk(self.paths(spec.name))

    @property
    def vocabulary_dir(self) -> Path:
        return Path(self.tiktoken_cache_dir)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Storage:
        """``TAGCOLOR_DATA_DIR``, the mirror URLs, the folder overrides and tiktoken's cache.

        A mirror URL that could never be fetched is refused here, naming its variable, not at download time.
        """
        overrides = {name: url for name, url in environ.items() if URL_VARIABLE.fullmatch(name) and url}
        for name, url in overrides.items():
            try:
                check_url(url)
            except UnsupportedURLError as error:
                raise ConfigError(f"{name}: {error}") from error
        return cls(
            data_dir=environ.get("TAGCOLOR_DATA_DIR", "data"),
            tiktoken_cache_dir=str(tiktoken_cache_dir(environ)),
            url_overrides=overrides,
            path_overrides={name: path for name, path in environ.items() if PATH_VARIABLE.fullmatch(name) and path},
        )


def dataset_dirs_from_environ(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where dataset files are read: ``assets_config/datasets/``, then ``TAGCOLOR_DATASETS_DIR`` when set
    (a path relative to the repository root, or absolute)."""
    extra = environ.get("TAGCOLOR_DATASETS_DIR")
    return [DATASETS_DIR, *([resolve_repo_path(extra)] if extra else [])]
