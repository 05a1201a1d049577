"""Dataset specifications (``assets_config/datasets/*.yaml``) and the on-disk layout of a dataset.

A spec is plain, validated data: the asset factory builds one asset graph per spec and every plain
function takes the spec or the paths it needs, never the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ConfigError
from pipeline.core.layout import Sharding
from pipeline.sources.download import UnsupportedURLError, check_url
from pipeline.sources.layouts import ArchiveLayout

CONFIG_DIR = Path(__file__).resolve().parent.parent / "assets_config"
DATASETS = ("sample", "mirflickr25k", "mirflickr1m")
DATASET_LAYOUTS = {"sample": "mirflickr1m", "mirflickr25k": "mirflickr25k", "mirflickr1m": "mirflickr1m"}
"""The archive layout each dataset is published in (the sample imitates MIRFLICKR-1M)."""
MD5_HEX = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class SampleSpec:
    """How the synthetic sample's photos are drawn."""

    seed: int = 0
    width: int = 320
    height: int = 240


@dataclass(frozen=True)
class DatasetSpec(Sharding):
    """One dataset: its archive layout, size, sharding and where it is published."""

    name: str
    layout: ArchiveLayout
    image_size: int = 224
    base_url: str | None = None
    md5: dict[str, str] = field(default_factory=dict)
    sample: SampleSpec | None = None

    def archives(self) -> list[str]:
        """Partition keys of ``archives`` (image archives only)."""
        return self.layout.archives(self.n_images)

    def shards_by_archive(self) -> dict[str, list[str]]:
        """Which shards read from each image archive (a shard may span two)."""
        mapping: dict[str, list[str]] = {archive: [] for archive in self.archives()}
        for key in self.shard_keys():
            ids = self.shard_ids(int(key))
            for archive in {self.layout.archive_of(ids[0]), self.layout.archive_of(ids[-1])}:
                mapping[archive].append(key)
        return mapping


def _check_keys(section: str, raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _positive_int(section: str, raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{section}: '{key}' must be a positive integer, got {value!r}")
    return value


def parse_dataset_spec(raw: Any, source: str = "<config>") -> DatasetSpec:
    """Validate a parsed YAML mapping into a :class:`DatasetSpec`; errors name the offending field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    allowed = {f.name for f in fields(DatasetSpec)}
    _check_keys(source, raw, allowed)
    name = raw.get("name")
    if name not in DATASETS:
        raise ConfigError(f"{source}: 'name' must be one of {list(DATASETS)}, got {name!r}")
    layout = raw.get("layout")
    if layout != DATASET_LAYOUTS[name]:
        raise ConfigError(f"{source}: 'layout' of {name} must be {DATASET_LAYOUTS[name]!r}, got {layout!r}")
    sample = None
    if ("sample" in raw) != (name == "sample"):
        raise ConfigError(f"{source}: the 'sample' section belongs to the sample dataset and only to it")
    if "sample" in raw:
        sample_raw = raw["sample"] or {}
        if not isinstance(sample_raw, dict):
            raise ConfigError(f"{source}: 'sample' must be a mapping")
        _check_keys(f"{source}: sample", sample_raw, {f.name for f in fields(SampleSpec)})
        sample = SampleSpec(**sample_raw)
        for key in ("width", "height"):
            _positive_int(f"{source}: sample", sample_raw | {key: getattr(sample, key)}, key)
        seed = sample.seed
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{source}: sample: 'seed' must be a non-negative integer, got {seed!r}")
    base_url = raw.get("base_url")
    if sample is None and not isinstance(base_url, str):
        raise ConfigError(f"{source}: 'base_url' is required for a downloaded dataset")
    if base_url is not None:
        try:
            check_url(str(base_url))
        except UnsupportedURLError as error:
            raise ConfigError(f"{source}: 'base_url': {error}") from error
    md5 = raw.get("md5") or {}
    if not isinstance(md5, dict):
        raise ConfigError(f"{source}: 'md5' must map archive names to hex digests")
    archive_layout = ArchiveLayout(layout)
    n_images = _positive_int(source, raw, "n_images")
    archives = {*archive_layout.archives(n_images), archive_layout.tags_archive}
    for archive, digest in md5.items():
        if archive not in archives:
            raise ConfigError(f"{source}: md5: {archive!r} is not an archive of {name}; archives: {sorted(archives)}")
        if not isinstance(digest, str) or not MD5_HEX.fullmatch(digest.lower()):
            raise ConfigError(f"{source}: md5: {archive!r} must be 32 hex digits, got {digest!r}")
    return DatasetSpec(
        name=name,
        layout=archive_layout,
        n_images=n_images,
        shard_size=_positive_int(source, raw, "shard_size"),
        image_size=_positive_int(source, raw | {"image_size": raw.get("image_size", 224)}, "image_size"),
        base_url=base_url,
        md5={str(k): str(v).lower() for k, v in md5.items()},
        sample=sample,
    )


def load_dataset_spec(name: str, config_dir: Path = CONFIG_DIR) -> DatasetSpec:
    """Read ``assets_config/datasets/<name>.yaml``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    path = config_dir / "datasets" / f"{name}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the dataset config: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    spec = parse_dataset_spec(raw, source=str(path))
    if spec.name != name:
        raise ConfigError(f"{path}: 'name' must be {name!r}, the file's name, got {spec.name!r}")
    return spec
