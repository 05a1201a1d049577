"""The batch loader's reading: the rows of the epoch plan byte for byte, whatever the number of reader threads,
from any resumed position; failures in a reader reach the training loop, and closing leaves no thread behind."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from model.data import Augmentation, BatchLoader, HostBatch, Position, TokenIndex, TrainingSet, epoch_plan
from pipeline.core.contract import SHARD_NAME
from pipeline.core.layout import DataError, read_layout

SHARD_SIZE = 10
N_SHARDS = 3
SIZE = 4
INVALID = (2, 13, 27)
BATCH = 4
SEED = 5
START = Position()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Random photos and tokens in three shards, a few rows invalid so that set and file indices differ."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "shards").mkdir(parents=True)
    (root / "images.parquet").mkdir()
    np.save(root / "tokens.npy", rng.integers(0, 300, (N_SHARDS * SHARD_SIZE, 20), dtype=np.int32))
    for shard in range(N_SHARDS):
        ids = np.arange(shard * SHARD_SIZE, (shard + 1) * SHARD_SIZE)
        np.save(
            root / "shards" / SHARD_NAME.format(shard=shard),
            rng.integers(0, 256, (SHARD_SIZE, SIZE, SIZE, 3), dtype=np.uint8),
        )
        rows = {"image_id": ids, "shard": shard, "row": ids - ids[0], "valid": ~np.isin(ids, INVALID)}
        pd.DataFrame(rows | {"is_grayscale": False}).to_parquet(root / "images.parquet" / f"{shard:03d}.parquet")
    return root


def training_set(root: Path) -> TrainingSet:
    return TrainingSet(read_layout(root), list(range(N_SHARDS)), skip_grayscale=True)


def token_index(root: Path) -> TokenIndex:
    return TokenIndex.build(np.load(root / "tokens.npy"))


def planned_stream(root: Path, start: Position, count: int, rank: int = 0, world_size: int = 1) -> list[HostBatch]:
    """The batches as the plan defines them, gathered from the whole shards loaded into memory."""
    photos = np.concatenate([np.load(root / "shards" / SHARD_NAME.format(shard=s)) for s in range(N_SHARDS)])
    tokens = np.load(root / "tokens.npy")
    eligible = np.setdiff1d(np.arange(len(photos)), INVALID)
    index, span = token_index(root), BATCH * world_size
    per_epoch = len(eligible) // span
    stream: list[HostBatch] = []
    epoch, batch = start.epoch, start.offset // span
    while len(stream) < count:
        perm, flips, _, _ = epoch_plan(len(eligible), SEED, epoch)
        for b in range(batch, per_epoch):
            taken = slice(b * span + rank * BATCH, b * span + (rank + 1) * BATCH)
            ids = eligible[perm[taken]]
            after = Position(epoch + 1, 0) if b + 1 == per_epoch else Position(epoch, (b + 1) * span)
            lab, dense = torch.from_numpy(photos[ids]), torch.from_numpy(index.dense(tokens[ids]))
            stream.append(HostBatch(lab=lab, flip=torch.from_numpy(flips[taken]), tokens=dense, position=after))
        epoch, batch = epoch + 1, 0
    return stream[:count]


def assert_same(expected: list[HostBatch], actual: list[HostBatch]) -> None:
    assert len(expected) == len(actual)
    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert want.lab.numpy().tobytes() == got.lab.numpy().tobytes(), f"batch {i}: photos"
        assert torch.equal(want.flip, got.flip), f"batch {i}: flips"
        assert torch.equal(want.tokens, got.tokens), f"batch {i}: tokens"
        assert want.position == got.position, f"batch {i}: position"


def read(root: Path, count: int, start: Position = START, **options: Any) -> list[HostBatch]:
    with BatchLoader(training_set(root), token_index(root), BATCH, SEED, start=start, **options) as loader:
        return [next(loader) for _ in range(count)]


@pytest.mark.parametrize(("readers", "prefetch"), [(1, 1), (3, 5)])
@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 2)])
def test_batches_are_the_planned_rows_across_epochs_and_after_a_resume(
    dataset: Path, readers: int, prefetch: int, rank: int, world_size: int
) -> None:
    per_epoch = (N_SHARDS * SHARD_SIZE - len(INVALID)) // (BATCH * world_size)
    count = 2 * per_epoch + 2
    options = {"readers": readers, "prefetch": prefetch, "rank": rank, "world_size": world_size}
    stream = read(dataset, count, **options)
    assert_same(planned_stream(dataset, START, count, rank, world_size), stream)
    assert stream[per_epoch - 1].position == Position(1, 0)
    for resume_after in (per_epoch - 2, per_epoch - 1):  # mid-epoch, and on the boundary
        start = stream[resume_after].position
        assert_same(stream[resume_after + 1 :], read(dataset, count - resume_after - 1, start, **options))


def test_the_plan_keeps_the_order_and_flips_of_runs_from_before_augmentation() -> None:
    rng = np.random.default_rng([SEED, 3])
    order, flip = rng.permutation(50), rng.random(50) < 0.5
    plan = epoch_plan(50, SEED, 3)
    assert np.array_equal(plan.order, order) and np.array_equal(plan.flip, flip)
    assert plan.crop.shape == (50, 3) and plan.tag_draw.shape == (50,)


def test_crops_and_dropped_tags_follow_the_plan_and_resume_exactly(dataset: Path) -> None:
    augmentation = Augmentation(crop_min_scale=0.5, tag_dropout=0.4)
    per_epoch = (N_SHARDS * SHARD_SIZE - len(INVALID)) // BATCH
    count = per_epoch + 2
    stream = read(dataset, count, augmentation=augmentation)
    plain = read(dataset, count)
    dropped = 0
    for epoch_batch, (augmented, original) in enumerate(zip(stream, plain, strict=True)):
        epoch, batch = divmod(epoch_batch, per_epoch)
        plan = epoch_plan(N_SHARDS * SHARD_SIZE - len(INVALID), SEED, epoch)
        taken = slice(batch * BATCH, (batch + 1) * BATCH)
        drop = torch.from_numpy(plan.tag_draw[taken] < 0.4)
        assert torch.equal(augmented.lab, original.lab) and torch.equal(augmented.flip, original.flip)
        assert (augmented.tokens[drop] == 0).all(), "a dropped photo's tags are all pads"
        assert torch.equal(augmented.tokens[~drop], original.tokens[~drop])
        dropped += int(drop.sum())
        side = augmented.crop[:, 0]
        assert ((side >= 0.5) & (side <= 1)).all() and (augmented.crop[:, 1:] <= 1 - side[:, None] + 1e-6).all()
        assert original.crop is None
    assert 0.2 < dropped / (count * BATCH) < 0.6
    start = stream[per_epoch - 2].position
    resumed = read(dataset, 3, start, augmentation=augmentation)
    for want, got in zip(stream[per_epoch - 1 :], resumed, strict=True):
        assert torch.equal(want.crop, got.crop) and torch.equal(want.tokens, got.tokens)


def test_reader_threads_finishing_out_of_order_keep_the_order(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gather = TrainingSet.gather

    def uneven(self: TrainingSet, items: np.ndarray, out: np.ndarray) -> np.ndarray:
        time.sleep(0.02 * (int(items[0]) % 3))  # later batches often finish first
        return gather(self, items, out)

    one = read(dataset, 12, readers=1, prefetch=1)
    monkeypatch.setattr(TrainingSet, "gather", uneven)
    assert_same(one, read(dataset, 12, readers=4, prefetch=8))


def test_a_failing_reader_raises_data_error(dataset: Path) -> None:
    train_set = training_set(dataset)
    shard = dataset / "shards" / SHARD_NAME.format(shard=1)
    os.truncate(shard, shard.stat().st_size - 2 * SIZE * SIZE * 3)  # rows 8 and 9 of shard 1 are gone
    failure = (
        r"the batch loader failed: \S+/lab_001\.npy ends before its row [89]: the file changed while training read"
        r" it; materialize \S+/lab_shards partition 001 \(dg launch .*\), then resume$"
    )
    with (
        BatchLoader(train_set, token_index(dataset), BATCH, SEED, readers=3) as loader,
        pytest.raises(DataError, match=failure),
    ):
        for _ in range(loader.batches_per_epoch):
            next(loader)


def test_closing_stops_the_reader_threads(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(threading.enumerate())
    gather = TrainingSet.gather

    def slow(self: TrainingSet, items: np.ndarray, out: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return gather(self, items, out)

    monkeypatch.setattr(TrainingSet, "gather", slow)
    loader = BatchLoader(training_set(dataset), token_index(dataset), BATCH, SEED, prefetch=6, readers=3)
    next(loader)
    readers = set(threading.enumerate()) - before
    assert len(readers) == 3 and all(thread.name.startswith("batch-reader") for thread in readers)
    loader.close()  # with batches still queued and being read
    assert set(threading.enumerate()) == before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_the_shard_files_close_with_the_set(dataset: Path) -> None:
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    train_set = training_set(dataset)
    assert len(os.listdir("/proc/self/fd")) >= before + N_SHARDS
    del train_set
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
