"""What every dataset kind provides: its config schema, its image archives, how to obtain them and how to read
one photo or one tag file by image id.

A dataset is one YAML file (``assets_config/datasets/<name>.yaml``); its ``kind`` names a module of this
package whose :class:`DatasetSpec` subclass is the kind's schema (its dataclass fields) and knows the rest.
Everything downstream (conversion, tokens, stats, training, evaluation) sees only this interface, so a new
kind is one module and one line in :data:`pipeline.datasets.KINDS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from pipeline.core.config import ConfigError, dataclass_from_mapping
from pipeline.core.layout import DatasetPaths, Sharding
from pipeline.sources.download import DownloadProgress

MAX_PHOTO_BYTES = 64 << 20
"""A photo is ~100 KB to a few MB; an entry declaring more than this is refused before it is read."""


class PhotoUnavailable(ValueError):
    """A photo that yields no row; ``reason`` says why, the source size is 0 when unknown."""

    def __init__(self, reason: str, width: int = 0, height: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.width = width
        self.height = height


class TagFileUnreadable(ValueError):
    """A tag file that exists but cannot be read (a damaged or encrypted archive entry)."""


class PhotoSource(Protocol):
    """Open photos of one dataset, read by image id."""

    def read(self, image_id: int) -> bytes | np.ndarray:
        """The photo's file bytes, or its pixels where the source holds them as Lab already (uint8
        ``(H, W, 3)`` in the contract's encoding); :class:`PhotoUnavailable` when it cannot be had."""
        ...

    def unsafe_entries(self, ids: range) -> int:
        """Source entries whose names would leave the extraction directory (never read), counted once per
        dataset over a partition of its ids into shards."""
        ...


class TagSource(Protocol):
    """Open tag files of one dataset, read by image id."""

    def unsafe_entries(self) -> int:
        """Entries of the tag source named outside the extraction directory; never read."""
        ...

    def read(self, image_id: int) -> bytes | None:
        """The tag file's bytes, ``None`` when the photo has none; :class:`TagFileUnreadable` when damaged."""
        ...


@dataclass(frozen=True)
class SourceResult:
    """What obtaining one archive did: where it lies and the figures worth keeping as metadata."""

    path: Path
    figures: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return {"path": self.path, **self.figures}


Progress = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class Verdict:
    """A kind's own check: its problems ('' when it passes) and what it measured."""

    problems: str
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DatasetSpec(Sharding):
    """One dataset: its name, size and sharding; a kind's subclass adds its own fields and its sources.

    ``train_config`` names the dataset's default training preset (``assets_config/train/<name>.yaml``);
    empty means ``TrainConfig``'s defaults. ``steering_tags`` are the alternative tag sets of the
    evaluation's steering collage, each comma-separated (``"sunset, beach"``); empty: the evaluation's own.
    """

    name: str
    image_size: int = 224
    train_config: str = ""
    steering_tags: list[str] = dataclasses.field(default_factory=list)

    kind: ClassVar[str]
    tags_in_image_archives: ClassVar[bool] = False
    """True when the tag files live inside the image archives (``tags_archive`` then only checks them)."""

    # --- the kind's layout -------------------------------------------------------------------------------

    def archives(self) -> list[str]:
        """Partition keys of ``archives``: the image archives covering ids ``0 … n_images − 1``, in order."""
        raise NotImplementedError

    def archive_of(self, image_id: int) -> str:
        """The image archive holding ``image_id``."""
        raise NotImplementedError

    @property
    def tags_archive(self) -> str:
        """The archive holding the tag files."""
        raise NotImplementedError

    def shards_by_archive(self) -> dict[str, list[str]]:
        """Which shards read from each image archive (a shard may span two)."""
        mapping: dict[str, list[str]] = {archive: [] for archive in self.archives()}
        for key in self.shard_keys():
            ids = self.shard_ids(int(key))
            for archive in dict.fromkeys((self.archive_of(ids[0]), self.archive_of(ids[-1]))):
                mapping[archive].append(key)
        return mapping

    # --- the kind's sources ------------------------------------------------------------------------------

    def photo_names(self, paths: DatasetPaths) -> pd.DataFrame:
        """``image_id`` and ``name`` (relative path) of each original photo file still as first seen, so a
        whole dataset can be scored from its files under an evaluation protocol; only kinds that keep files."""
        raise ConfigError(
            f"dataset {self.name!r} (kind {self.kind}) keeps no photo files to score whole: score its held-out shard"
        )

    @property
    def default_url(self) -> str | None:
        """Where the archives are fetched from unless ``TAGCOLOR_<NAME>_URL`` says otherwise (None: not fetched)."""
        return None

    def obtain(self, archive: str, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """Put ``archive`` (an image archive or the tag archive) under ``paths.raw``, verified."""
        raise NotImplementedError

    def obtain_tags(self, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """Put the tag archive under ``paths.raw``, verified (or check the tags inside the image archives)."""
        return self.obtain(self.tags_archive, paths, base_url, progress)

    def open_photos(self, paths: DatasetPaths) -> AbstractContextManager[PhotoSource]:
        raise NotImplementedError

    def open_tags(self, paths: DatasetPaths) -> AbstractContextManager[TagSource]:
        raise NotImplementedError

    def on_disk(self, paths: DatasetPaths) -> DatasetSpec:
        """This spec with what the dataset's own files fix (a growing dataset's size and sharding); most
        kinds fix everything in their YAML file."""
        return self

    # --- the kind's schema -------------------------------------------------------------------------------

    def check(self, source: str) -> None:
        """Refuse values no dataset can have; a kind extends this with its own fields' checks."""
        for key in ("n_images", "shard_size", "image_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: '{key}' must be a positive integer, got {getattr(self, key)!r}")

    checks: ClassVar[dict[str, str]] = {}
    """A kind's own asset checks on ``lab_shards``, by name: their descriptions (see :meth:`verify`)."""

    def verify(self, paths: DatasetPaths) -> dict[str, Verdict]:
        """What each of :attr:`checks` finds once the shards exist."""
        return {}

    derived: ClassVar[tuple[str, ...]] = ()
    """Fields the dataset's files fix (see :meth:`on_disk`), never set in YAML."""

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str) -> DatasetSpec:
        """Validate a YAML mapping (without ``kind``) against this kind's fields; errors name the field."""
        try:
            spec = dataclass_from_mapping(cls, raw, skip=cls.derived)
        except TypeError as error:
            raise ConfigError(f"{source}: {error}") from None
        spec.check(source)
        return spec
