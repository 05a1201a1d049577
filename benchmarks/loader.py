"""The training data loader against the disk it reads and the training step it feeds.

Run from the repository root: ``.venv/bin/python benchmarks/loader.py [--dir /big/disk] [--device cuda]``.
Random 224×224 Lab shards in the data contract (4 × 2,000 photos, 1.2 GB; three trained on, one held out) are
written to a temporary directory under ``--dir`` and removed after. ``--batches`` batches of 64 of the loader's
epoch plan (those after its first ``--prefetch``) are then read in each of these ways, over ``--rounds``
interleaved rounds (medians printed):

- ``pread``: a plain loop of ``os.pread`` over the same rows in the same order, one thread; the baseline, the
  disk's rate for this access pattern. Its files, like the loader's, carry ``POSIX_FADV_RANDOM``, so that both
  read exactly the rows' bytes. Beside it, the same rows sorted by file offset, and over ``--readers`` threads
  (the disk at that queue depth);
- ``memmap``: the rows copied out of ``np.load`` memory maps by one thread, read by page faults;
- the loader (``model.data.BatchLoader``) with one reader thread and with ``--readers``, timed once its
  ``--prefetch`` batches ahead are under way, so that it reads as many batches as it is timed on; warm, also
  with every batch moved through ``to_device`` (flip, scale, resize to the training size).

Cold: before every pass each shard is flushed (``fsync``: dirty pages stay cached) and evicted from the page
cache (``POSIX_FADV_DONTNEED``), which ``mincore`` then confirms; the figures say so where it cannot. Warm: the
shards are read once first, as for a dataset smaller than memory after its first epoch. ``read×`` is the
page cache a cold pass filled over its rows' bytes. A memory map reads around every fault (as far as the
device's ``read_ahead_kb``): over these small shards the pages read around one row serve later ones, but over
150 GB of shards, a fraction of which memory holds, most are evicted before the epoch wants them; so the
memory map's first cold batch alone, before any such reuse, is timed as well.

Both are set against what training consumes: the training loop (``model.train.train``) measured on
``--device`` (on the CPU small networks at 64²; on CUDA the networks, resolution, bf16 and compilation of
``mirflickr1m_1gpu.yaml``), and that preset on an H100-class GPU at its documented rate: ``ckpt_every: 1000``
steps "~10 minutes of a fast GPU", 1.67 steps/s of ``n_critic`` batches each. (Its step is about 220 TFLOP,
conv and matmul FLOPs counted with ``torch.utils.flop_counter``'s formulas, so 1.67 steps/s is ~37 % of an
H100's 989 dense bf16 TFLOP/s.)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import TrainConfig, read_train_config
from model.data import BatchLoader, TokenIndex, TrainingSet, epoch_plan, to_device
from model.train import train
from pipeline.core.contract import PAD_ID, SHARD_NAME
from pipeline.core.layout import read_layout

PRESET = Path(__file__).resolve().parents[1] / "assets_config" / "train" / "mirflickr1m_1gpu.yaml"
PRESET_STEPS_PER_S = 1000 / 600
"""The preset's ``ckpt_every: 1000`` "~10 minutes of a fast GPU between checkpoints"."""
SMALL_NETWORKS = {"image_size": 64, "base_channels": 16, "depth": 3, "token_dim": 64, "compile": False}
"""What a CPU trains in under a minute a step, instead of the preset's networks."""
SEED = 0


def write_random_dataset(root: Path, shards: int, shard_size: int, size: int) -> None:
    """Random Lab shards, tokens and ``images.parquet`` rows in the data contract, a shard at a time in memory."""
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    (root / "images.parquet").mkdir()
    n_images = shards * shard_size
    tokens = np.full((n_images, 20), PAD_ID, dtype=np.int32)
    for i, length in enumerate(rng.integers(0, 21, n_images)):
        tokens[i, :length] = rng.integers(0, 50_000, length)
    np.save(root / "tokens.npy", tokens)
    for shard in range(shards):
        ids = np.arange(shard * shard_size, (shard + 1) * shard_size)
        np.save(
            root / "shards" / SHARD_NAME.format(shard=shard),
            rng.integers(0, 256, (shard_size, size, size, 3), dtype=np.uint8),
        )
        rows = {"image_id": ids, "shard": shard, "row": ids - ids[0], "valid": True, "is_grayscale": False}
        pd.DataFrame(rows).to_parquet(root / "images.parquet" / f"{shard:03d}.parquet")


class PageCache:
    """Evicts files from the page cache and counts their resident pages with ``mincore``."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._libc = self._mincore_libc()

    @staticmethod
    def _mincore_libc() -> ctypes.CDLL | None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name, use_errno=True) if name else None
        if libc is None or not hasattr(libc, "mincore"):
            return None
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return libc

    def evict(self) -> None:
        for path in self.paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # DONTNEED drops clean pages only: a file just written is still dirty
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def fill(self) -> None:
        for path in self.paths:
            with path.open("rb") as file:
                while file.read(1 << 24):
                    pass

    def resident_bytes(self) -> int | None:
        """Bytes of the files in the page cache; None where ``mincore`` cannot be called."""
        if self._libc is None:
            return None
        pages = 0
        for path in self.paths:
            fd, size = os.open(path, os.O_RDONLY), path.stat().st_size
            try:
                address = self._libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                if address in (None, ctypes.c_void_p(-1).value):
                    return None
                vector = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
                failed = self._libc.mincore(address, size, vector)
                self._libc.munmap(address, size)
                if failed:
                    return None
                pages += sum(byte & 1 for byte in vector.raw)
            finally:
                os.close(fd)
        return pages * mmap.PAGESIZE

    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths)


class Readers:
    """The ways of reading the rows of the timed batches, the ``--prefetch`` batches after the first ones of the
    plan: those the loader reads while it fills its queue, untimed, so that it is timed reading as many batches
    as the others."""

    def __init__(self, dataset: TrainingSet, index: TokenIndex, device: torch.device, args: argparse.Namespace) -> None:
        self.dataset, self.index, self.device, self.args = dataset, index, device, args
        order = epoch_plan(len(dataset), SEED, 0).order
        self.items = order[args.prefetch * args.batch_size :][: args.batches * args.batch_size]
        self.row_bytes = int(np.prod(dataset.image_shape))
        self.paths = {s: Path(array.filename) for s, array in dataset.shards.items()}
        starts = {s: array.offset for s, array in dataset.shards.items()}
        shards = dataset.shard[self.items]
        self.rows = [
            (int(s), starts[s] + int(r) * self.row_bytes) for s, r in zip(shards, dataset.row[self.items], strict=True)
        ]
        self.files = {s: os.open(path, os.O_RDONLY) for s, path in self.paths.items()}
        for fd in self.files.values():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)

    def _pread(self, row: tuple[int, int]) -> None:
        shard, offset = row
        os.pread(self.files[shard], self.row_bytes, offset)

    def pread(self) -> None:
        for row in self.rows:
            self._pread(row)

    def pread_sorted(self) -> None:
        for row in sorted(self.rows):
            self._pread(row)

    def pread_threads(self) -> None:
        with ThreadPoolExecutor(self.args.readers) as pool:
            for _ in pool.map(self._pread, self.rows):
                pass

    def memmap(self, batches: int | None = None) -> None:
        maps = {s: np.load(path, mmap_mode="r") for s, path in self.paths.items()}  # fresh: unmapped after
        out = np.empty((self.args.batch_size, *self.dataset.image_shape), dtype=np.uint8)
        for batch in range(batches or self.args.batches):
            for j, item in enumerate(self.items[batch * self.args.batch_size :][: self.args.batch_size]):
                out[j] = maps[int(self.dataset.shard[item])][self.dataset.row[item]]

    def loader(self, readers: int, moved: bool = False) -> Callable[[], float]:
        """Seconds of the loader's timed batches, pinned for a GPU as training reads them, and with ``moved``
        moved to the device at the training size."""

        def read() -> float:
            pin = self.device if self.device.type == "cuda" else None
            with BatchLoader(
                self.dataset,
                self.index,
                self.args.batch_size,
                SEED,
                pin_device=pin,
                prefetch=self.args.prefetch,
                readers=readers,
            ) as loader:
                for _ in range(self.args.prefetch):
                    next(loader)
                # From here on, every batch taken is one more read: the loader stays --prefetch batches ahead.
                started = time.perf_counter()
                for _ in range(self.args.batches):
                    host = next(loader)
                    if moved:
                        to_device(host, self.device, self.args.train_size)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter() - started

        return read


def timed(read: Callable[[], None]) -> Callable[[], float]:
    """``read`` made to return the seconds it took."""

    def clocked() -> float:
        started = time.perf_counter()
        read()
        return time.perf_counter() - started

    return clocked


def training_preset(device: str) -> TrainConfig:
    """The preset, with the small networks on the CPU."""
    small = SMALL_NETWORKS if device == "cpu" else {}
    return read_train_config(PRESET, [f"{key}={value}" for key, value in small.items()])


def step_rate(root: Path, runs: Path, args: argparse.Namespace) -> tuple[float, TrainConfig]:
    """Training steps/s of ``model.train.train`` after its first step, and the config it ran."""
    config = replace(
        training_preset(args.device),
        data_root=str(root),
        runs_dir=str(runs),
        run_name="benchmark",
        shards=[0, 1, 2],
        holdout_shard=3,
        epochs=1000,
        max_steps=args.steps + 1,
        log_every=1,
        ckpt_every=10_000,
        snapshot_every=0,
        tensorboard=False,
        resume=False,
        device=args.device,
    )
    elapsed: list[float] = []
    train(config, report=lambda row: elapsed.append(row["elapsed_s"]))
    return args.steps / (elapsed[-1] - elapsed[0]), config


BASELINE = "pread, 1 thread (baseline)"
MEMMAP = "memmap copies, 1 thread"


def measure(readers: Readers, cache: PageCache, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of every way of reading, cold and warm, over interleaved rounds, and what the page cache held."""
    ways: dict[str, Callable[[], float]] = {
        BASELINE: timed(readers.pread),
        "pread, sorted by offset": timed(readers.pread_sorted),
        f"pread, {args.readers} threads": timed(readers.pread_threads),
        MEMMAP: timed(readers.memmap),
        "loader, 1 reader": readers.loader(1),
        f"loader, {args.readers} readers": readers.loader(args.readers),
    }
    cold: dict[str, list[float]] = {name: [] for name in ways}
    amplification: dict[str, list[float]] = {name: [] for name in ways if not name.startswith("loader")}
    left_after_eviction: list[int | None] = []
    for _ in range(args.rounds):
        for name, read in ways.items():
            cache.evict()
            left_after_eviction.append(cache.resident_bytes())
            cold[name].append(read())
            filled = cache.resident_bytes()
            if filled is not None and name in amplification:  # a loader reads more batches than it is timed on
                amplification[name].append(filled / (len(readers.rows) * readers.row_bytes))
    first_batch: list[tuple[float, float]] = []  # seconds, amplification
    for _ in range(args.rounds if None not in left_after_eviction else 0):
        cache.evict()
        seconds = timed(lambda: readers.memmap(1))()
        first_batch.append((seconds, cache.resident_bytes() / (args.batch_size * readers.row_bytes)))
    cache.fill()
    filled_warm = cache.resident_bytes()
    ways[f"loader, {args.readers} readers + to_device"] = readers.loader(args.readers, moved=True)
    warm: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, read in ways.items():
            warm[name].append(read())
    evicted = None if None in left_after_eviction else max(left_after_eviction)
    return {
        "cold": cold,
        "warm": warm,
        "amplification": amplification,
        "first_batch": first_batch,
        "evicted": evicted,
        "warm_cache": filled_warm,
    }


def report(measured: dict[str, Any], total: int, steps: float, config: TrainConfig, args: argparse.Namespace) -> None:
    batch_mb = args.batch_size * 224 * 224 * 3 / 1e6
    rows_mb = args.batches * batch_mb
    print(
        f"3 × {args.shard_size:,} photos of 224² ({total / 1e9:.2f} GB) under {args.dir}; passes of {args.batches} "
        f"batches of {args.batch_size} ({rows_mb:.0f} MB of rows), {args.rounds} interleaved rounds, medians"
    )
    if measured["evicted"] is None or measured["warm_cache"] is None:
        print("page cache: mincore unavailable, eviction NOT verified: the cold figures may be warm ones")
    else:
        left = measured["evicted"] / total
        verdict = "verified" if left < 0.01 else "NOT effective on this filesystem: the cold figures are warm ones"
        print(
            f"page cache: eviction {verdict} ({left:.1%} resident after it, {measured['warm_cache'] / total:.0%} warm)"
        )
    cold, warm = (
        {name: args.batches / statistics.median(s) for name, s in measured[k].items()} for k in ("cold", "warm")
    )
    print(f"{'':36s}  {'cold':-^34s}  {'warm':-^23s}")
    columns = f"{'batches/s':>9s} {'MB/s':>6s} {'×pread':>6s}"
    print(f"{'':36s}  {columns} {'read×':>11s}  {columns}")

    def cells(rate: float, baseline: float) -> str:
        return f"{rate:9.1f} {rate * batch_mb:6.0f} {rate / baseline:6.2f}"

    for name, rate in warm.items():
        over = measured["amplification"].get(name)
        cold_cells = ""
        if name in cold:
            cold_cells = f"{cells(cold[name], cold[BASELINE])} {f'{statistics.median(over):.1f}' if over else '–':>11s}"
        print(f"{name:36s}  {cold_cells:34s}  {cells(rate, warm[BASELINE])}")
    memmap_first = None
    if measured["first_batch"]:
        memmap_first = 1 / statistics.median(seconds for seconds, _ in measured["first_batch"])
        over = statistics.median(amplification for _, amplification in measured["first_batch"])
        print(
            f"memmap, first cold batch alone: {memmap_first:.1f} batches/s, read× {over:.0f}: no page read around a "
            f"row is another's yet, as on shards far larger than memory, where every batch costs that"
        )
    loader = cold[f"loader, {args.readers} readers"]
    needed = steps * config.n_critic
    print(
        f"training on {args.device} ({config.base_channels} channels, depth {config.depth}, {config.image_size}²): "
        f"{steps:.2f} steps/s = {needed:.2f} batches/s (n_critic {config.n_critic}); the loader delivers "
        f"{loader / needed:.0f}× that cold"
    )
    preset = read_train_config(PRESET)
    gpu = PRESET_STEPS_PER_S * preset.n_critic
    print(
        f"{PRESET.name} on an H100-class GPU at its documented {PRESET_STEPS_PER_S:.2f} steps/s: {gpu:.1f} batches/s "
        f"of {preset.batch_size} at {preset.image_size}²; the loader delivers {loader / gpu:.1f}× that cold "
        f"(memmap copies: {cold[MEMMAP] / gpu:.1f}× over these small shards"
        + (f", {memmap_first / gpu:.1f}× at its first-batch rate)" if memmap_first else ")")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to write the shards")
    parser.add_argument("--shard-size", type=int, default=2000, help="photos a shard; 4 shards")
    parser.add_argument("--batches", type=int, default=24, help="batches a pass")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--readers", type=int, default=4, help="reader threads of the loader and of threaded pread")
    parser.add_argument("--prefetch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every way of reading")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps, after a first one")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to measure the preset's step on a GPU")
    args = parser.parse_args()
    if args.batches < args.prefetch:
        parser.error(
            "--batches must be at least --prefetch, or the loader's timed batches are read before its clock starts"
        )
    args.train_size = training_preset(args.device).image_size

    shard_bytes = args.shard_size * 224 * 224 * 3
    free = shutil.disk_usage(args.dir).free
    if 4 * shard_bytes > free / 4:
        sys.exit(f"{args.dir} has {free / 1e9:.1f} GB free; 4 shards of {shard_bytes / 1e9:.2f} GB want 4× that")
    with tempfile.TemporaryDirectory(prefix="tagcolor-loader-", dir=args.dir) as scratch:
        root = Path(scratch) / "data"
        write_random_dataset(root, 4, args.shard_size, 224)
        dataset = TrainingSet(read_layout(root), [0, 1, 2], skip_grayscale=True)
        index = TokenIndex.build(np.load(root / "tokens.npy"))
        readers = Readers(dataset, index, torch.device(args.device), args)
        cache = PageCache(list(readers.paths.values()))
        try:
            measured = measure(readers, cache, args)
        finally:
            readers.close()
        total = cache.total_bytes()
        steps, config = step_rate(root, Path(scratch) / "runs", args)
    report(measured, total, steps, config, args)


if __name__ == "__main__":
    main()
