"""One-command GPU check: the 1-GPU MIRFLICKR-1M training config at 224² on data this script writes.

Run from the repository root on a CUDA machine: ``.venv/bin/python benchmarks/gpu.py`` (``make gpu-check``).
It trains ``--steps`` steps of ``assets_config/train/mirflickr1m_1gpu.yaml`` (bf16) with ``torch.compile``
off and on, and prints images/s, peak memory, the step's model FLOPs (``torch.utils.flop_counter``) and their
utilisation of the GPU's dense bf16 peak (MFU). The step's split into critic, generator, gradient penalty and
data is measured by ablation, compile off: the same steps without the penalty (``gp_every`` beyond the run),
the generator alone (``l1_warmup_steps`` over the run: one batch and a generator update a step), and the loader
with ``to_device`` alone; it is an estimate, and the data share overlaps compute (the loader runs ahead).

The data: random Lab shards and tokens in the data contract, written to a temporary directory (throughput does
not depend on what the photos show). On a machine without CUDA it says so and exits; ``--device cpu`` runs
the same measurements there on the GPU's code path (``gpu_path_on_cpu``: bf16 autocast, channels_last, fused
Adam; slowly: small ``--steps``, ``--image-size`` and ``--batch-size`` check the script itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader import write_random_dataset  # this directory's loader benchmark

from model.config import TrainConfig, load_train_config
from model.data import BatchLoader, TokenIndex, TrainingSet, to_device
from model.train import train
from pipeline.core.layout import read_layout

PRESET = Path(__file__).resolve().parents[1] / "assets_config" / "train" / "mirflickr1m_1gpu.yaml"
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
"""Dense bf16 tensor-core peaks (vendor data sheets, SXM parts); ``--peak-tflops`` for others."""


def steps_per_second(config: TrainConfig, warmup: int) -> tuple[float, float | None]:
    """Train ``config`` and return its steps/s after ``warmup`` steps (compilation, cudnn autotuning) and the
    peak GPU memory in GiB (None on the CPU, where torch keeps no such count)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(config)
    rows = pd.read_parquet(result.run_dir / "metrics.parquet")
    timed = rows[rows["step"] > warmup]
    seconds = timed["elapsed_s"].iloc[-1] - rows[rows["step"] <= warmup]["elapsed_s"].iloc[-1]
    steps = timed["step"].iloc[-1] - warmup
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return steps / seconds, peak


class FlopCount(TorchDispatchMode):
    """Model FLOPs of the ops that run under it, by ``torch.utils.flop_counter``'s formulas.

    ``FlopCounterMode`` itself cannot count this step: its module tracker's hooks refuse the gradient
    penalty's ``autograd.grad`` on an input (a leaf), so the formulas are applied here without it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flops_per_step(config: TrainConfig) -> float:
    """Model FLOPs of one training step (critic updates with their penalties, the generator update), counted
    on an uncompiled step."""
    with FlopCount() as counter:
        train(dataclasses.replace(config, run_name="flops", max_steps=1, compile=False))
    return float(counter.total)


def data_seconds_per_batch(config: TrainConfig, device: torch.device, batches: int) -> float:
    """Seconds per batch of the loader and ``to_device`` alone, as the training loop takes them."""
    layout = read_layout(Path(config.data_root), config.shards)
    dataset = TrainingSet(layout, config.shards, config.skip_grayscale, config.tokenizer)
    index = TokenIndex.build(np.asarray(dataset.tokens), config.min_token_count)
    pin = device if device.type == "cuda" else None
    with BatchLoader(
        dataset, index, config.batch_size, config.seed, pin_device=pin, prefetch=config.prefetch
    ) as loader:
        to_device(next(loader), device, config.image_size)
        started = time.perf_counter()
        for _ in range(batches):
            batch = to_device(next(loader), device, config.image_size, channels_last=config.gpu_path(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        del batch
        return (time.perf_counter() - started) / batches


def peak_tflops(name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the rates (compilation)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu check: no CUDA GPU visible to torch {torch.__version__} (a CPU build, or no driver): nothing"
            " to measure here. On a GPU machine install a CUDA build of torch (README, Training on GPUs) and"
            " run `make gpu-check`; `--device cpu --steps 2 --warmup 1 --image-size 64 --batch-size 4` checks"
            " this script on the CPU."
        )
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory(prefix="tagcolor-gpu-") as tmp:
        root = Path(tmp) / "data"
        write_random_dataset(root, shards=2, shard_size=2048, size=args.image_size)
        total = args.warmup + args.steps
        base = load_train_config(
            PRESET,
            [f"data_root={root}", f"runs_dir={Path(tmp) / 'runs'}", f"image_size={args.image_size}",
             f"device={args.device}", f"max_steps={total}", "log_every=1", f"ckpt_every={total}",
             "snapshot_every=0", "tensorboard=false", "holdout_shard=1", "shards=[0]", "min_token_count=1",
             f"gpu_path_on_cpu={device.type == 'cpu'}",  # the CPU rehearses the GPU's code path
             *([f"batch_size={args.batch_size}"] if args.batch_size else [])],
        )  # fmt: skip
        print(f"gpu check on {name}: batch {base.batch_size}, {args.image_size}², n_critic {base.n_critic}, bf16")
        rates = {}
        for compiled in (False, True):
            config = dataclasses.replace(base, run_name=f"compile_{compiled}", compile=compiled)
            rates[compiled] = steps_per_second(config, args.warmup)
            per_s, peak = rates[compiled]
            print(
                f"  compile {'on ' if compiled else 'off'}: {per_s:.3g} steps/s, "
                f"{per_s * base.batch_size * base.n_critic:.3g} images/s, "
                + (f"peak memory {peak:.1f} GiB" if peak is not None else "peak memory: only counted on a GPU")
            )
        no_gp, _ = steps_per_second(dataclasses.replace(base, run_name="no_gp", gp_every=10**9), args.warmup)
        alone, _ = steps_per_second(dataclasses.replace(base, run_name="g_alone", l1_warmup_steps=total), args.warmup)
        data = data_seconds_per_batch(base, device, batches=50)
        full = 1 / rates[False][0]
        generator = max(1 / alone - data, 0.0)
        penalty = max(full - 1 / no_gp, 0.0)
        critic = max(1 / no_gp - 1 / alone - (base.n_critic - 1) * data, 0.0)
        print(f"  step {full * 1e3:.0f} ms (compile off), by ablation:")
        for part, seconds in (("critic", critic), ("gradient penalty", penalty), ("generator", generator)):
            print(f"    {part:17s} {seconds * 1e3:7.1f} ms  {seconds / full:5.1%}")
        print(f"    {'data (overlapped)':17s} {base.n_critic * data * 1e3:7.1f} ms  {base.n_critic * data / full:5.1%}")
        flops = flops_per_step(base)
        peak_flops = peak_tflops(name, args.peak_tflops)
        for compiled, (per_s, _) in rates.items():
            achieved = flops * per_s / 1e12
            utilisation = f", MFU {achieved / peak_flops:.1%} of {peak_flops:.0f}" if peak_flops else ""
            print(f"  model FLOPs {flops / 1e12:.2f} TFLOP/step: compile {'on ' if compiled else 'off'} "
                  f"{achieved:.1f} TFLOP/s{utilisation}")  # fmt: skip
        if peak_flops is None:
            print(f"  (no bf16 peak known for {name}: give --peak-tflops for MFU)")


if __name__ == "__main__":
    main()
