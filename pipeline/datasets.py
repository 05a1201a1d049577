"""Datasets as data: one YAML file each, of a registered kind.

A dataset file (``assets_config/datasets/<name>.yaml``, or one in ``$TAGCOLOR_DATASETS_DIR``) names its
``kind``; the kind's module (:data:`KINDS`) defines its schema and knows its layout and sources, so a new
dataset of a known kind is one YAML file and a new kind is one module plus one line here. A spec is plain,
validated data: the Dagster layer builds one asset graph per spec, and every plain function takes the spec
or the paths it needs, never the environment.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ConfigError
from pipeline.sources.base import DatasetSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "assets_config"
DATASETS_DIR = CONFIG_DIR / "datasets"

KINDS = {
    "folder": "pipeline.sources.folder",
    "kaggle_lab": "pipeline.sources.kaggle_lab",
    "mirflickr1m": "pipeline.sources.mirflickr1m",
    "mirflickr25k": "pipeline.sources.mirflickr25k",
    "synthetic": "pipeline.sources.synthetic",
}
"""Each kind's module; its ``Spec`` class is that kind's :class:`DatasetSpec`."""

NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
"""Dataset names: asset key prefixes and file names; ``-`` becomes ``_`` where Dagster or a shell needs it."""


def kind_spec(kind: Any, source: str = "<config>") -> type[DatasetSpec]:
    """The :class:`DatasetSpec` subclass of a registered kind."""
    if kind not in KINDS:
        raise ConfigError(f"{source}: 'kind' must be one of {sorted(KINDS)}, got {kind!r}")
    return importlib.import_module(KINDS[kind]).Spec


def identifier(name: str) -> str:
    """``name`` as Dagster group, op and environment names need it: ``-`` → ``_``."""
    return name.replace("-", "_")


def env_var(name: str, setting: str) -> str:
    """The environment variable overriding ``setting`` of dataset ``name``: ``TAGCOLOR_<NAME>_<SETTING>``."""
    return f"TAGCOLOR_{identifier(name).upper()}_{setting.upper()}"


def parse_dataset_spec(raw: Any, source: str = "<config>") -> DatasetSpec:
    """Validate a parsed YAML mapping into its kind's :class:`DatasetSpec`; errors name the offending field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{source}: 'name' must be lower-case letters, digits, '_' or '-', got {name!r}")
    values = {key: value for key, value in raw.items() if key != "kind"}
    return kind_spec(raw.get("kind"), source).from_mapping(values, source)


def read_dataset_file(path: Path) -> DatasetSpec:
    """One dataset file; its ``name`` must be the file's own name."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the dataset config: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    spec = parse_dataset_spec(raw, source=str(path))
    if spec.name != path.stem:
        raise ConfigError(f"{path}: 'name' must be {path.stem!r}, the file's name, got {spec.name!r}")
    return spec


def dataset_files(dirs: Iterable[Path]) -> list[Path]:
    """The ``*.yaml`` dataset files of ``dirs``, in order; a directory that does not exist is an error."""
    files: list[Path] = []
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError(f"{directory}: no such directory of dataset files")
        files += sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    return files


def load_dataset_specs(dirs: Iterable[Path] = (DATASETS_DIR,)) -> dict[str, DatasetSpec]:
    """Every dataset of ``dirs`` by name; two files of one name (or of names equal up to ``-``/``_``) clash."""
    specs: dict[str, DatasetSpec] = {}
    seen: dict[str, Path] = {}
    for path in dataset_files(dirs):
        spec = read_dataset_file(path)
        key = identifier(spec.name)
        if key in seen:
            raise ConfigError(f"{path}: dataset {spec.name!r} is defined in {seen[key]} already")
        seen[key] = path
        specs[spec.name] = spec
    return specs


def load_dataset_spec(name: str, dirs: Iterable[Path] = (DATASETS_DIR,)) -> DatasetSpec:
    """The dataset ``name`` of ``dirs``."""
    specs = load_dataset_specs(dirs)
    if name not in specs:
        raise ConfigError(f"unknown dataset {name!r}; known: {sorted(specs)}")
    return specs[name]


def resolve_repo_path(path: str | Path) -> Path:
    """A path from a config file: relative ones resolve against the repository root, not the working directory."""
    return Path(path) if Path(path).is_absolute() else REPO_ROOT / path
