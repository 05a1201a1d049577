"""Damaged files and a full disk, as a user meets them: each ends in one line naming the file, what is wrong and
what to materialize again, from the plain functions, the command lines and the Dagster steps alike."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import torch

import model.train as train_module
from model.checkpoint import CheckpointError, load_checkpoint
from model.config import TrainConfigError, validate_train_config
from model.data import TrainingSet
from model.evaluation import evaluate_run
from model.photo_sets import holdout_set
from model.train import train
from pipeline.convert import TagCounts, convert_shard
from pipeline.core import files
from pipeline.core.files import DiskFullError
from pipeline.core.layout import DataError, DatasetPaths, open_tokens, read_images_table, read_layout, read_words
from pipeline.core.vocabulary import load_tag_encoding
from pipeline.datasets import load_dataset_spec
from pipeline.defs.factory import build_dataset_assets
from pipeline.defs.resources import storage_from_environ
from pipeline.stats import compute_data_stats
from pipeline.tokens import build_tag_tokens
from tests.helpers import SPEC, materialize, photos, sample_dataset, tensors, tiny_config, training_refusal, write_raw


def halve(path: Path) -> None:
    """Cut a file to half its length, as a copy that stopped or a disk that lost its end."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remedy(asset: str, partition: str | None = None, dataset: str = "data") -> str:
    """The remedy's pattern: the asset (and partition) to materialize again, with its command."""
    where, flag = (f" partition {partition}", f" --partition {partition}") if partition else ("", "")
    return re.escape(f"materialize {dataset}/{asset}{where} (dg launch --assets '{dataset}/{asset}'{flag})")


def config(paths: DatasetPaths, tmp_path: Path, **changes: Any) -> Any:
    return tiny_config(paths.root, tmp_path / "runs", **changes)


def test_a_truncated_shard_is_named_with_its_partition_wherever_it_is_read(
    write_dataset: Callable[..., DatasetPaths], tmp_path: Path
) -> None:
    paths = write_dataset(tmp_path / "data")
    intact = paths.shard(0).read_bytes()
    halve(paths.shard(0))
    truncated = r"lab_000\.npy: truncated: .*; "
    message = truncated + remedy("lab_shards", "000")
    with pytest.raises(DataError, match=message):
        compute_data_stats(paths, 2, str)
    with pytest.raises(TrainConfigError, match=f"^data_root: .*{message}$"):
        validate_train_config(config(paths, tmp_path))
    refusal = training_refusal(f"data_root={paths.root}", "image_size=32", "device=cpu")
    assert re.search(message, refusal), refusal

    paths.shard(0).write_bytes(intact)
    halve(paths.shard(1))
    message = r"lab_001\.npy: truncated: .*; " + remedy("lab_shards", "001")
    with pytest.raises(DataError, match=message):
        holdout_set(paths, 1, "o200k").read(np.arange(4))
    with pytest.raises(DataError, match=message):
        TrainingSet(read_layout(paths.root), [0, 1], skip_grayscale=True)
    np.save(paths.shard(1), np.zeros((16, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match=r"lab_001\.npy: dtype float32, expected uint8; " + remedy("lab_shards", "001")):
        TrainingSet(read_layout(paths.root), [0, 1], skip_grayscale=True)


def test_damaged_token_matrices_and_tables_name_the_asset_that_writes_them(
    write_dataset: Callable[..., DatasetPaths], tmp_path: Path
) -> None:
    paths = write_dataset(tmp_path / "data")
    tokens = paths.tokens.read_bytes()
    halve(paths.tokens)
    message = r"tokens\.npy: truncated: .*; " + remedy("tag_tokens")
    for read in (lambda: read_layout(paths.root), lambda: compute_data_stats(paths, 2, str)):
        with pytest.raises(DataError, match=message):
            read()
    np.save(paths.tokens, np.zeros((32, 20), np.int64))
    with pytest.raises(DataError, match=r"tokens\.npy: dtype int64, expected int32; " + remedy("tag_tokens")):
        open_tokens(paths)
    np.save(paths.tokens, np.zeros((32, 8), np.int32))
    with pytest.raises(DataError, match=r"tokens\.npy: shape \(32, 8\), expected \(n, 20\); "):
        open_tokens(paths)
    paths.tokens.write_bytes(tokens)

    halve(paths.shard_rows(1))
    message = r"images\.parquet/001\.parquet: not a readable table \(.+\); " + remedy("lab_shards", "001")
    with pytest.raises(DataError, match=message):
        read_images_table(paths)
    with pytest.raises(DataError, match=message):
        compute_data_stats(paths, 2, str)
    with pytest.raises(DataError, match=message):
        holdout_set(paths, 1, "o200k")
    paths.shard_rows(1).unlink()
    with pytest.raises(DataError, match=r"001\.parquet does not exist; " + remedy("lab_shards", "001")):
        holdout_set(paths, 1, "o200k")

    write_dataset(tmp_path / "again")  # the tables whole again
    paths = DatasetPaths(tmp_path / "again")
    halve(paths.tags_table)
    with pytest.raises(
        DataError, match=r"tags\.parquet: not a readable table \(.+\); " + remedy("tag_tokens", None, "again")
    ):
        compute_data_stats(paths, 2, str)
    paths.words.write_text("[1, 2")
    with pytest.raises(DataError, match=r"words\.json: not readable JSON .*; " + remedy("tag_tokens", None, "again")):
        read_words(paths)


def test_data_stats_fails_in_dagster_with_the_damaged_files_line(tmp_path: Path, vocabulary_dir: Path) -> None:
    write_raw(DatasetPaths(tmp_path / "sample"), photos())
    storage = storage_from_environ({"TAGCOLOR_DATA_DIR": str(tmp_path), "TIKTOKEN_CACHE_DIR": str(vocabulary_dir)})
    assets = build_dataset_assets(SPEC)
    materialize(
        assets,
        "sample/lab_shards",
        storage,
        tags={"dagster/asset_partition_range_start": "000", "dagster/asset_partition_range_end": "002"},
    )
    materialize(assets, "sample/tag_tokens", storage)
    halve(DatasetPaths(tmp_path / "sample").shard(2))
    with pytest.raises(
        dg.Failure, match=r"^[^\n]*lab_002\.npy: truncated: .*; " + remedy("lab_shards", "002", "sample") + "$"
    ):
        materialize(assets, "sample/data_stats", storage)


@pytest.fixture
def trained(write_dataset: Callable[..., DatasetPaths], tmp_path: Path) -> tuple[DatasetPaths, Any]:
    """A run of 4 steps checkpointed every 2 (``latest.pt``, ``ckpt_00000002.pt``, ``ckpt_00000004.pt``)."""
    paths = write_dataset(tmp_path / "data")
    damaged = config(paths, tmp_path, run_name="damaged", max_steps=4, ckpt_every=2, keep_checkpoints=3)
    train(damaged)
    return paths, damaged


def test_a_damaged_latest_checkpoint_resumes_from_the_newest_readable_step_file_exactly(
    trained: tuple[DatasetPaths, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths, damaged = trained
    run_dir = damaged.run_dir
    full = train(config(paths, tmp_path, run_name="full", max_steps=6, ckpt_every=2, keep_checkpoints=3))
    halve(run_dir / "latest.pt")
    halve(run_dir / "ckpt_00000004.pt")
    with caplog.at_level(logging.WARNING, logger="model.checkpoint"):
        resumed = train(dataclasses.replace(damaged, max_steps=6, resume=True))
    (warning,) = [record.getMessage() for record in caplog.records if record.name == "model.checkpoint"]
    assert re.fullmatch(
        rf"resume: {re.escape(str(run_dir / 'latest.pt'))}: not a readable checkpoint \(.+\); resuming from "
        rf"{re.escape(str(run_dir / 'ckpt_00000002.pt'))} \(step 2\) instead",
        warning,
    ), warning
    keys = ("generator", "critic", "ema", "opt_g", "opt_d", "rng")
    expected, actual = (
        tensors(load_checkpoint(full.checkpoint), keys),
        tensors(load_checkpoint(resumed.checkpoint), keys),
    )
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name

    for path in run_dir.glob("*.pt"):
        halve(path)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(run_dir))}: no readable checkpoint to resume \("):
        train(dataclasses.replace(damaged, max_steps=8, resume=True))
    message = (
        r"latest\.pt: not a readable checkpoint \(.+\); train run damaged again \(materialize data/colorizer"
        r" \(dg launch --assets 'data/colorizer'\) with run_name damaged; with resume=true it continues from its"
        r" newest intact ckpt_<step>\.pt\)"
    )
    with pytest.raises(CheckpointError, match=message):
        evaluate_run(paths, run_dir, n_images=4)


# Dagster's own Pipes session asks the context for the deprecated ``run_id``; nothing of ours calls it.
@pytest.mark.filterwarnings("ignore:AssetExecutionContext.run_id is deprecated:DeprecationWarning")
def test_a_damaged_checkpoint_fails_the_colorizer_step_with_the_trainers_line(
    tmp_path: Path, vocabulary_dir: Path
) -> None:
    """The trainer runs in its own process, launched through Pipes: its one line, not an exit code, is the step's
    failure."""
    sample_dataset(tmp_path / "sample", vocabulary_dir, n_images=48, shard_size=24, size=32)
    run_dir = tmp_path / "sample" / "runs" / "ci"
    run_dir.mkdir(parents=True)
    (run_dir / "latest.pt").write_bytes(b"PK\x03\x04 a checkpoint cut short")
    key = dg.AssetKey(["sample", "colorizer"])
    (asset,) = [a for a in build_dataset_assets(load_dataset_spec("sample")) if key in a.keys]
    overrides = ["image_size=32", "snapshot_every=0", "tensorboard=false"]
    run_config = {"ops": {asset.op.name: {"config": {"train_config": "ci", "overrides": overrides}}}}
    resources = {
        "storage": storage_from_environ({"TAGCOLOR_DATA_DIR": str(tmp_path)}),
        "pipes": dg.PipesSubprocessClient(),
    }
    where = re.escape(str(run_dir))
    message = (
        rf"^{where}: no readable checkpoint to resume \({where}/latest\.pt: not a readable checkpoint .*\);"
        r" start a new run_name$"
    )
    with pytest.raises(dg.Failure, match=message):
        dg.materialize([asset], resources=resources, run_config=run_config)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``full_disk(*names)``: from then on, every file written atomically whose name holds one of ``names`` goes
    to ``/dev/full``, whose writes fail with ENOSPC: the kernel's own error, reported by NumPy, pyarrow, Pillow
    and torch's zip writer each in its own way."""
    real = files.tempfile.mkstemp

    def fill(*names: str) -> None:
        def temporary(prefix: str, suffix: str, dir: Path) -> tuple[int, str]:
            if not any(name in prefix for name in names):
                return real(prefix=prefix, suffix=suffix, dir=dir)
            path = os.path.join(dir, f"{prefix}fulldisk{suffix}")
            os.symlink("/dev/full", path)
            return os.open("/dev/full", os.O_WRONLY), path

        monkeypatch.setattr(files.tempfile, "mkstemp", temporary)

    return fill


def leftovers(root: Path) -> list[str]:
    """Temporaries a failed write left behind."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if "fulldisk" in path.name)


FULL = (
    r"the disk is full \([\d.,]+ [kMGT]?B free now\); free some space, or move the data directory"
    r" \(TAGCOLOR_DATA_DIR\) to a larger disk$"
)


def test_a_full_disk_names_the_file_being_written_and_the_space_left(
    tmp_path: Path, vocabulary_dir: Path, full_disk: Callable[..., None]
) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    counts = TagCounts(np.zeros(5, np.int32), np.zeros(5, np.int32))
    full_disk("lab_000.npy")
    with pytest.raises(
        DiskFullError, match=rf"^{re.escape(str(paths.shard(0)))} \(the Lab photos of shard 000\): {FULL}"
    ) as error:
        convert_shard(SPEC, paths, 0, counts)
    assert error.value.errno == errno.ENOSPC
    copy = pickle.loads(pickle.dumps(error.value))  # as a conversion worker's error reaches the Dagster run
    assert (str(copy), copy.errno) == (str(error.value), errno.ENOSPC)
    full_disk("000.parquet")
    with pytest.raises(
        DiskFullError, match=rf"images\.parquet/000\.parquet \(the images\.parquet rows of shard 000\): {FULL}"
    ):
        convert_shard(SPEC, paths, 0, counts)
    storage = storage_from_environ({"TAGCOLOR_DATA_DIR": str(tmp_path), "TIKTOKEN_CACHE_DIR": str(vocabulary_dir)})
    full_disk("tokens.npy")
    with pytest.raises(dg.Failure, match=rf"^{re.escape(str(paths.tokens))}: {FULL}"):
        materialize(build_dataset_assets(SPEC), "sample/tag_tokens", storage)
    full_disk("tag_words.npy")
    with pytest.raises(DiskFullError, match=rf"tag_words\.npy: {FULL}"):
        build_tag_tokens(SPEC, paths, load_tag_encoding(vocabulary_dir))
    assert leftovers(tmp_path) == [] and not (paths.shard(0).exists() or paths.tag_words.exists())


def test_a_full_disk_while_training_and_evaluating(
    write_dataset: Callable[..., DatasetPaths],
    tiny_run: Any,
    tmp_path: Path,
    full_disk: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = write_dataset(tmp_path / "data")
    full_disk("channel_summary.parquet")
    with pytest.raises(DiskFullError, match=rf"stats/channel_summary\.parquet: {FULL}"):
        compute_data_stats(paths, 2, str)
    full_disk("ckpt_")
    with pytest.raises(
        DiskFullError, match=rf"runs/full/ckpt_00000002\.pt \(the checkpoint of step 2\): {FULL}"
    ):  # through torch's zip writer
        train(config(paths, tmp_path, run_name="full", max_steps=2))
    assert not (tmp_path / "runs" / "full" / "latest.pt").exists()
    overrides = ["run_name=cli", "image_size=32", "batch_size=4", "max_steps=2", "base_channels=8", "depth=2"]
    with pytest.raises(SystemExit) as exit_code:
        train_module.main([f"data_root={paths.root}", f"runs_dir={tmp_path / 'runs'}", *overrides, "device=cpu"])
    assert exit_code.value.code == 2
    error = capsys.readouterr().err.strip()
    assert re.fullmatch(
        rf"python -m model\.train: error: \S+/runs/cli/ckpt_00000002\.pt \(the checkpoint of step 2\): {FULL}", error
    ), error
    full_disk("result_collage.png")
    with pytest.raises(DiskFullError, match=rf"evaluation/result_collage\.png: {FULL}"):
        evaluate_run(tiny_run.paths, tiny_run.checkpoint.parent, n_images=8, out_dir=tmp_path / "evaluation")
    assert leftovers(tmp_path) == [] and leftovers(tiny_run.paths.root) == []
