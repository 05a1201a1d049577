"""A dataset on disk: where each file lives, how the global image order maps onto shards, and the checks of
that contract (docs/ARCHITECTURE.md, "Data contract").

Everything of a dataset lives below ``$TAGCOLOR_DATA_DIR/<dataset>``. Image ``i`` of the global order is row
``i mod shard_size`` of shard ``i // shard_size``, row ``i`` of ``tokens.npy`` and of ``images.parquet``.
The pipeline writes this layout and the model reads it; both take it from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from pipeline.core.config import ConfigError
from pipeline.core.contract import SHARD_NAME, TOKENS_PER_IMAGE, WORDS_PER_IMAGE
from pipeline.core.files import atomic_write_text


class DataError(ValueError):
    """The dataset on disk does not hold what a reader needs; the message says which step to run."""


VALIDATION_SHARE = 0.1
"""At most this share of a run's training photos is set aside for validation."""
VALIDATION_STREAM = 0x7A11
"""Seeds the validation draw apart from every other use of a run's seed."""

LATEST_CHECKPOINT = "latest.pt"
"""``runs/<run_name>/latest.pt``: a run's newest checkpoint, the one it resumes from."""
BEST_CHECKPOINT = "best.pt"
"""``runs/<run_name>/best.pt``: the checkpoint of the step that scored best on the validation photos, scored by
evaluation and used by colorize where it exists."""
EVALUATIONS = "evaluations.jsonl"
"""``runs/<run_name>/evaluations.jsonl``: one line per scoring of the run, whatever dataset it was scored on."""
RUN_CONFIG = "config.yaml"
"""``runs/<run_name>/config.yaml``: the settings a run was trained with, every default resolved."""

SHARD_ROWS_FILE = re.compile(r"(\d{3,})\.parquet")
"""``images.parquet/NNN.parquet``: one shard's rows (temporaries start with a dot and never match)."""


def shard_key(shard: int) -> str:
    """A shard's partition key of ``lab_shards`` (``000``, ``001``, …), which also names its rows' file."""
    return f"{shard:03d}"


def _below_root(name: str, doc: str) -> property:
    """The read-only attribute ``root / name`` of a :class:`DatasetPaths`."""
    return property(lambda self: self.root / name, doc=doc)


@dataclass(frozen=True)
class DatasetPaths:
    """Every file of one dataset lives below ``root`` = ``$TAGCOLOR_DATA_DIR/<dataset>``."""

    root: Path

    raw = _below_root("raw", "The archives exactly as published (or drawn, for the synthetic kind).")
    shards = _below_root("shards", "``lab_NNN.npy``: the Lab shards.")
    images_table = _below_root("images.parquet", "A Parquet dataset directory, one file per shard (``NNN.parquet``).")
    tokens = _below_root("tokens.npy", "int32 ``(N, 20)`` token rows, row ``i`` ↔ image ``i``.")
    tags_table = _below_root("tags.parquet", "Each image's tags and their counts.")
    stats = _below_root("stats", "``data_stats``: tables, report and plots.")
    runs = _below_root("runs", "One directory per training run, ``runs/<run_name>/``.")
    evaluation = _below_root("evaluation", "Metrics and collages of the last evaluation.")
    tag_words = _below_root("tag_words.npy", "int32 ``(N, 8)`` word ids, row ``i`` ↔ image ``i``, 0 = pad.")
    words = _below_root("words.json", "The word vocabulary: a JSON list, the word of id ``k`` at index ``k``.")
    split = _below_root("split.json", "The sharding and held-out shard a growing dataset fixed when first obtained.")
    checks = _below_root("checks", "The last verdict of each data check, ``<check>[.<partition>].json``.")
    manifest = _below_root("raw/manifest.parquet", "A folder dataset's photos: id, relative path, size, SHA-1.")

    def archive(self, archive: str) -> Path:
        """A published zip archive, kept under ``raw/`` exactly as published."""
        return self.raw / f"{archive}.zip"

    def shard(self, shard: int) -> Path:
        return self.shards / SHARD_NAME.format(shard=shard)

    def shard_rows(self, shard: int) -> Path:
        return self.images_table / f"{shard_key(shard)}.parquet"

    def remedy(self, asset: str, partition: str | None = None) -> str:
        """What makes a file of this dataset (again): the asset, its partition, and the command that runs it."""
        key = f"{self.root.name}/{asset}"
        where, flag = (f" partition {partition}", f" --partition {partition}") if partition else ("", "")
        return f"materialize {key}{where} (dg launch --assets '{key}'{flag})"

    def shard_remedy(self, shard: int) -> str:
        """:meth:`remedy` of a shard's files (its Lab rows, its ``images.parquet`` rows): its ``lab_shards``
        partition."""
        return self.remedy("lab_shards", shard_key(shard))

    def latest_run(self) -> Path | None:
        """The run directory whose ``latest.pt`` was written last, if any run has one."""
        checkpoints = sorted(self.runs.glob(f"*/{LATEST_CHECKPOINT}"), key=lambda path: path.stat().st_mtime_ns)
        return checkpoints[-1].parent if checkpoints else None

    def inside(self, path: Path) -> Path:
        """Resolve ``path`` and refuse it unless it lies below the dataset root."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ConfigError(f"{path} lies outside the data root {self.root}")
        return resolved


@dataclass(frozen=True, kw_only=True)
class Sharding:
    """How ``n_images`` images in global order are cut into shards of ``shard_size`` (the last may be short)."""

    n_images: int
    shard_size: int

    @property
    def n_shards(self) -> int:
        return -(-self.n_images // self.shard_size) if self.n_images else 0  # a folder not yet scanned: none

    def shard_keys(self) -> list[str]:
        """Partition keys of ``lab_shards``: ``000``, ``001``, …"""
        return [shard_key(shard) for shard in range(self.n_shards)]

    def shard_ids(self, shard: int) -> range:
        """Image ids (global order, rows of ``tokens.npy``) held by ``shard``."""
        if not 0 <= shard < self.n_shards:
            raise ConfigError(f"shard {shard} does not exist (0 … {self.n_shards - 1})")
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.n_images))


@dataclass(frozen=True, kw_only=True)
class DatasetLayout(Sharding):
    """A dataset found on disk: its files and its sharding, as a reader that has no config sees them.

    ``recorded_holdout`` is the shard the dataset keeps for evaluation where it recorded one (``split.json``).
    """

    paths: DatasetPaths
    recorded_holdout: int | None = None

    @property
    def holdout_shard(self) -> int:
        """The shard kept for evaluation: the recorded one, else the last shard."""
        return self.n_shards - 1 if self.recorded_holdout is None else self.recorded_holdout

    def validation_ids(self, shards: Sequence[int], size: int, seed: int) -> list[int]:
        """The validation photos of a run over the training ``shards`` (the caller leaves out the held-out test
        shard): ``size`` at most, and at most :data:`VALIDATION_SHARE` of the shards' valid colour photos, drawn
        with ``seed``; ascending ids.

        A folder's photo whose content is also another training photo's (the manifest's SHA-1) is never drawn:
        it would be validated on what it trained on.
        """
        images = read_images_table(self.paths, ["valid", "is_grayscale"], shards)
        eligible = images[images["valid"] & ~images["is_grayscale"]]["image_id"].to_numpy()
        if self.paths.manifest.is_file():
            remedy = f"restore it, or {self.paths.remedy('archives', 'folder')}"
            manifest = read_table(self.paths.manifest, remedy, ["image_id", "sha1"])
            training = manifest[manifest["image_id"].isin(images["image_id"])]
            copies = training[training["sha1"].duplicated(keep=False)]["image_id"]
            eligible = eligible[~np.isin(eligible, copies.to_numpy())]
        count = min(size, int(len(eligible) * VALIDATION_SHARE))
        rng = np.random.default_rng([seed, VALIDATION_STREAM])
        return sorted(int(i) for i in rng.choice(eligible, size=count, replace=False))


@dataclass(frozen=True)
class Split:
    """What a dataset that grows fixed when it was first obtained: its shard size and its held-out shard.

    Photos added later take new ids, so they never move a held-out photo into training or back.
    """

    shard_size: int
    holdout_shard: int

    def write(self, paths: DatasetPaths) -> None:
        atomic_write_text(paths.split, json.dumps(dataclasses.asdict(self)) + "\n")

    @classmethod
    def read(cls, paths: DatasetPaths) -> Split | None:
        """The recorded split, None when the dataset records none; a damaged record is an error."""
        if not paths.split.is_file():
            return None
        try:
            return cls(**json.loads(paths.split.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise DataError(f"{paths.split}: not a split record ({error}); restore it from a backup") from error


NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
"""The header readers of the ``.npy`` versions ``np.save`` writes for arrays of plain numbers."""


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, str]:
    """Shape and dtype from a ``.npy`` file's header, and what is wrong with the file ('' when nothing).

    Checked before the file is mapped: a file cut short would otherwise fail inside NumPy as "mmap length is
    greater than file size", naming no file; a length beyond the rows means it was not written as a whole.
    """
    try:
        with path.open("rb") as file:
            version = np.lib.format.read_magic(file)
            if version not in NPY_HEADERS:
                raise ValueError(f".npy format version {version} is not one NumPy writes for plain arrays")
            shape, fortran_order, dtype = NPY_HEADERS[version](file)
            size = os.fstat(file.fileno()).st_size
            expected = file.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except FileNotFoundError:
        return (), np.dtype(np.uint8), "does not exist"
    except (OSError, ValueError, EOFError) as error:
        return (), np.dtype(np.uint8), f"not a readable .npy file ({str(error).splitlines()[0][:120]})"
    if fortran_order:
        return shape, dtype, "stored in Fortran order, not as rows"
    if size != expected:
        cut = "truncated" if size < expected else "longer than its header says"
        return shape, dtype, f"{cut}: {size:,} bytes where its header ({dtype} {shape}) makes {expected:,}"
    return shape, dtype, ""


def write_npy_header(file: BinaryIO, shape: tuple[int, ...], dtype: type | np.dtype) -> int:
    """Make ``file`` a zero-filled ``.npy`` of ``shape`` and ``dtype``; returns where its rows begin.

    Only the header is written and the length set: the file stays sparse (rows read as zeros) until its rows
    are written with plain writes, so the writer holds none of it in memory, and a full disk says ENOSPC at the
    write (through a memory map it would kill the process with SIGBUS).
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(file, header)
    offset = file.tell()
    file.truncate(offset + math.prod(shape) * np.dtype(dtype).itemsize)
    return offset


def npy_problem(path: Path, dtype: type | np.dtype, shape: Sequence[int | None]) -> str:
    """'' when ``path`` is a whole ``.npy`` file of ``dtype`` whose shape fits ``shape`` (None: any length)."""
    found, found_dtype, problem = npy_header(path)
    if problem:
        return problem
    if found_dtype != np.dtype(dtype):
        return f"dtype {found_dtype}, expected {np.dtype(dtype)}"
    if len(found) != len(shape) or any(
        want is not None and want != got for want, got in zip(shape, found, strict=True)
    ):
        wanted = "(" + ", ".join("n" if want is None else str(want) for want in shape) + ")"
        return f"shape {found}, expected {wanted}"
    return ""


def open_npy(path: Path, dtype: type | np.dtype, shape: Sequence[int | None], remedy: str) -> np.ndarray:
    """``path`` memory-mapped read-only once :func:`npy_problem` finds nothing wrong; else a one-line
    :class:`DataError` naming the file, what is wrong and ``remedy``."""
    problem = npy_problem(path, dtype, shape)
    if problem:
        raise DataError(f"{path}: {problem}; {remedy}")
    return np.load(path, mmap_mode="r")


def open_shard(paths: DatasetPaths, shard: int) -> np.ndarray:
    """Shard ``shard``'s Lab rows, memory-mapped: uint8 ``(n, S, S, 3)``, whole, else a :class:`DataError`."""
    path = paths.shard(shard)
    array = open_npy(path, np.uint8, (None, None, None, 3), paths.shard_remedy(shard))
    if array.shape[1] != array.shape[2]:
        raise DataError(f"{path}: shape {array.shape}, expected square photos; {paths.shard_remedy(shard)}")
    return array


def open_tokens(paths: DatasetPaths, words: bool = False) -> np.ndarray:
    """``tokens.npy`` (int32 ``(N, 20)``) or, with ``words``, ``tag_words.npy`` (int32 ``(N, 8)``), memory-mapped
    and checked whole."""
    path, width = (paths.tag_words, WORDS_PER_IMAGE) if words else (paths.tokens, TOKENS_PER_IMAGE)
    return open_npy(path, np.int32, (None, width), paths.remedy("tag_tokens"))


def read_words(paths: DatasetPaths) -> list[str]:
    """``words.json``, the word tokenizer's vocabulary: a JSON list of words, ``''`` (the pad) first."""
    remedy = paths.remedy("tag_tokens")
    try:
        words = json.loads(paths.words.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{paths.words} does not exist; {remedy}") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{paths.words}: not readable JSON ({error}); {remedy}") from error
    if not isinstance(words, list) or not words or words[0] != "" or not all(isinstance(w, str) for w in words):
        raise DataError(f"{paths.words}: not a list of words with '' first; {remedy}")
    return words


PARQUET_ERRORS = (OSError, ValueError, pa.ArrowException)
"""What pyarrow raises for a damaged or foreign Parquet file (ArrowInvalid is a ValueError, too)."""


@contextlib.contextmanager
def table_errors(path: Path, remedy: str) -> Iterator[None]:
    """Reading the Parquet file ``path`` inside the block: a missing or damaged file becomes a one-line
    :class:`DataError` naming it, what is wrong and ``remedy``."""
    if not path.exists():
        raise DataError(f"{path} does not exist; {remedy}")
    try:
        yield
    except PARQUET_ERRORS as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise DataError(f"{path}: not a readable table ({reason}); {remedy}") from error


def read_table(path: Path, remedy: str, columns: Sequence[str] | None = None, **options: Any) -> pd.DataFrame:
    """A Parquet file's ``columns`` (all where None), read under :func:`table_errors`."""
    with table_errors(path, remedy):
        return pd.read_parquet(path, columns=None if columns is None else list(columns), **options)


@dataclass(frozen=True)
class CheckRecord:
    """A data check's last verdict, kept with the dataset: each asset runs as its own run (a backfill, a
    schedule, ``make dataset``), so training, statistics and evaluation learn that the data failed a check (rows
    beside another photo's tags, a shard off its contract) only from the disk. ``problems`` is '' when it passed.
    """

    check: str
    asset: str
    problems: str
    partition: str | None = None

    def path(self, paths: DatasetPaths) -> Path:
        return paths.checks / (f"{self.check}.{self.partition}.json" if self.partition else f"{self.check}.json")

    def write(self, paths: DatasetPaths) -> None:
        """Record this verdict in place of the check's last one (a passing run clears a failure)."""
        atomic_write_text(self.path(paths), json.dumps(dataclasses.asdict(self), ensure_ascii=False) + "\n")


def failed_checks(paths: DatasetPaths) -> list[CheckRecord]:
    """The recorded verdicts that did not pass, by file name."""
    failed = []
    for path in sorted(paths.checks.glob("*.json")) if paths.checks.is_dir() else ():
        try:
            record = CheckRecord(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            raise DataError(f"{path}: not a check record ({error}); delete it and run its check again") from error
        if record.problems:
            failed.append(record)
    return failed


def refuse_failed_checks(paths: DatasetPaths) -> None:
    """A :class:`DataError` naming the first check of the dataset that did not pass, and what runs it again."""
    failed = failed_checks(paths)
    if failed:
        first = failed[0]
        target = f"{paths.root.name}/{first.asset}" + (f" partition {first.partition}" if first.partition else "")
        more = f" ({len(failed) - 1} more in {paths.checks})" if len(failed) > 1 else ""
        raise DataError(
            f"{paths.root}: the check {first.check} of {target} did not pass: {first.problems}{more}; the data"
            f" may not line up, so it is not used until the check passes: fix what it names, then"
            f" {paths.remedy(first.asset, first.partition)}"
        )


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The settings a run was trained with (its ``config.yaml``), as plain values."""
    path = run_dir / RUN_CONFIG
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: {run_dir} is not a training run") from None
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"{path}: not readable ({error})") from error
    if not isinstance(saved, dict):
        raise DataError(f"{path}: not a mapping of settings")
    return saved


def read_layout(root: Path, shards: Sequence[int] | None = None) -> DatasetLayout:
    """Inspect ``root``: the image count from ``tokens.npy``, the shard size from the rows of shard 0; refused
    while a recorded data check has not passed (:func:`refuse_failed_checks`).

    A run over a later subset may not have shard 0 on disk; then the largest listed shard tells the size
    (only the dataset's last shard can be short).
    """
    paths = DatasetPaths(root)
    refuse_failed_checks(paths)
    tokens = open_tokens(paths)
    if not paths.images_table.exists():
        raise DataError(f"{paths.images_table} does not exist; {paths.remedy('lab_shards')}")
    first = paths.shard(0)
    candidates = [0] if first.is_file() else [s for s in shards or () if paths.shard(s).is_file()]
    sizes = [len(open_shard(paths, shard)) for shard in candidates]
    if not sizes or max(sizes) == 0:
        raise DataError(f"cannot tell the shard size: {first} does not exist and no listed shard does")
    split = Split.read(paths)
    return DatasetLayout(
        n_images=len(tokens),
        shard_size=max(sizes),
        paths=paths,
        recorded_holdout=split.holdout_shard if split else None,
    )


def shard_rows_on_disk(paths: DatasetPaths) -> list[int]:
    """The shards whose rows ``images.parquet`` holds, ascending."""
    found = paths.images_table.iterdir() if paths.images_table.is_dir() else ()
    return sorted(int(match[1]) for path in found if (match := SHARD_ROWS_FILE.fullmatch(path.name)))


def read_images_table(
    paths: DatasetPaths, columns: Sequence[str] | None = None, shards: Sequence[int] | None = None
) -> pd.DataFrame:
    """The rows of ``images.parquet`` of ``shards`` (None: every shard on disk), ``columns`` only if given,
    sorted by ``image_id``. Each shard's file is read on its own, so a damaged one is named with its partition.
    """
    columns = None if columns is None else list(dict.fromkeys(["image_id", *columns]))
    shards = shard_rows_on_disk(paths) if shards is None else shards
    if not shards:
        raise DataError(f"{paths.images_table} holds no shard's rows; {paths.remedy('lab_shards')}")
    frames = [read_table(paths.shard_rows(shard), paths.shard_remedy(shard), columns) for shard in shards]
    return pd.concat(frames, ignore_index=True).sort_values("image_id", ignore_index=True)


def shard_problems(paths: DatasetPaths, shard: int, ids: range, image_size: int) -> list[str]:
    """Contract violations of one shard: file shape and dtype, and its images.parquet rows are ``ids`` in order."""
    path = paths.shard(shard)
    problems = []
    problem = npy_problem(path, np.uint8, (len(ids), image_size, image_size, 3))
    if problem:
        problems.append(f"{path.name}: {problem}")
    try:
        rows = read_table(paths.shard_rows(shard), paths.shard_remedy(shard), ["image_id", "row"])
    except DataError as error:
        return [*problems, str(error)]
    if not (np.array_equal(rows["image_id"], np.asarray(ids)) and np.array_equal(rows["row"], np.arange(len(ids)))):
        problems.append(f"{paths.shard_rows(shard).name}: rows are not image ids {ids[0]}…{ids[-1]} in order")
    return problems


def alignment_problems(paths: DatasetPaths, n_images: int) -> str:
    """'' when ``images.parquet`` and ``tokens.npy`` hold images ``0 … n_images − 1`` once each, in order; a
    table not written yet holds no rows, a damaged one is named."""
    problems = []
    try:
        ids = read_images_table(paths, ["image_id"])["image_id"].to_numpy() if shard_rows_on_disk(paths) else []
    except DataError as error:
        problems.append(str(error))
    else:
        if not np.array_equal(ids, np.arange(n_images)):
            problems.append(f"images.parquet holds {len(ids):,} rows, not image ids 0 … {n_images - 1:,} once each")
    shape, _, problem = npy_header(paths.tokens) if paths.tokens.exists() else ((0,), None, "")
    if problem:
        problems.append(f"tokens.npy: {problem}")
    elif shape[0] != n_images:
        problems.append(f"tokens.npy holds {shape[0]:,} rows, expected {n_images:,}")
    return "; ".join(problems)
