"""The training data loader against the training step it feeds, on this machine's CPU.

Run from the repository root: ``.venv/bin/python benchmarks/loader.py [--images 512 --image-size 64]``.
A dataset in the data contract (random 224×224 Lab shards, random tokens) is written to a temporary directory
first, so its pages are in the OS cache, as they are for a dataset trained on for more than one epoch. Then:

- the loader alone: host batches (gathered from the memory-mapped shards by the prefetch thread) per second,
  and host batches moved through ``to_device`` (flip, scale, resize to the training size) per second;
- the full training loop (``model.train.train``: ``n_critic`` critic updates with gradient penalty and one
  generator update per step) in steps per second, its first step (warm-up) left out.

A step consumes ``n_critic`` batches; the ratio printed is loader batches/s over the batches/s a step needs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import TrainConfig
from model.data import BatchLoader, TokenIndex, TrainingSet, to_device
from model.train import train
from pipeline.core.contract import PAD_ID, SHARD_NAME
from pipeline.core.layout import read_layout


def write_random_dataset(root: Path, n_images: int, shard_size: int, size: int, seed: int = 0) -> None:
    """Random Lab shards, tokens and ``images.parquet`` rows in the data contract."""
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    (root / "images.parquet").mkdir()
    tokens = np.full((n_images, 20), PAD_ID, dtype=np.int32)
    lengths = rng.integers(0, 21, n_images)
    for i, length in enumerate(lengths):
        tokens[i, :length] = rng.integers(0, 50_000, length)
    np.save(root / "tokens.npy", tokens)
    for shard, start in enumerate(range(0, n_images, shard_size)):
        ids = np.arange(start, min(start + shard_size, n_images))
        lab = rng.integers(0, 256, (len(ids), size, size, 3), dtype=np.uint8)
        np.save(root / "shards" / SHARD_NAME.format(shard=shard), lab)
        rows = {"image_id": ids, "shard": shard, "row": ids - start, "valid": True, "is_grayscale": False}
        pd.DataFrame(rows).to_parquet(root / "images.parquet" / f"{shard:03d}.parquet")


def loader_rates(
    root: Path, shards: list[int], batch_size: int, image_size: int, batches: int, device: torch.device
) -> tuple[float, float]:
    """Host batches/s from the prefetch thread, and batches/s through ``to_device`` as well."""
    dataset = TrainingSet(read_layout(root), shards, skip_grayscale=True)
    index = TokenIndex.build(np.load(root / "tokens.npy"))
    rates = []
    for convert in (False, True):
        with BatchLoader(dataset, index, batch_size, seed=0, prefetch=8) as loader:
            next(loader)
            started = time.perf_counter()
            for _ in range(batches):
                host = next(loader)
                if convert:
                    to_device(host, device, image_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(batches / (time.perf_counter() - started))
    return rates[0], rates[1]


def step_rate(root: Path, runs: Path, args: argparse.Namespace) -> float:
    """Training steps/s of ``model.train.train`` after its first step."""
    config = TrainConfig(
        data_root=str(root),
        runs_dir=str(runs),
        run_name="benchmark",
        image_size=args.image_size,
        batch_size=args.batch_size,
        n_critic=args.n_critic,
        base_channels=args.base_channels,
        depth=args.depth,
        token_dim=args.token_dim,
        epochs=1000,
        max_steps=args.steps + 1,
        log_every=1,
        ckpt_every=10_000,
        device=args.device,
    )
    elapsed: list[float] = []
    train(config, report=lambda row: elapsed.append(row["elapsed_s"]))
    return args.steps / (elapsed[-1] - elapsed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images in the dataset: four shards, one held out")
    parser.add_argument("--source-size", type=int, default=224, help="side of the stored shards")
    parser.add_argument("--image-size", type=int, default=64, help="training resolution")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-critic", type=int, default=5)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--token-dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--batches", type=int, default=200, help="timed loader batches")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to compare with a GPU's step rate")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tagcolor-loader-") as scratch:
        root = Path(scratch) / "data"
        write_random_dataset(root, args.images, args.images // 4, args.source_size)
        host, moved = loader_rates(
            root, [0, 1, 2], args.batch_size, args.image_size, args.batches, torch.device(args.device)
        )
        steps = step_rate(root, Path(scratch) / "runs", args)

    needed = steps * args.n_critic
    print(
        f"{torch.get_num_threads()} torch threads; batches of {args.batch_size} × {args.source_size}² uint8 Lab, "
        f"trained at {args.image_size}² on {args.device} (base_channels {args.base_channels}, depth {args.depth})"
    )
    print(f"loader, host batches:          {host:9.1f} batches/s")
    print(f"loader, host + to_device:      {moved:9.1f} batches/s")
    print(f"training:                      {steps:9.2f} steps/s = {needed:.2f} batches/s (n_critic {args.n_critic})")
    print(f"ratio loader / training need:  {moved / needed:9.1f}× (host only: {host / needed:.1f}×)")


if __name__ == "__main__":
    main()
