"""Train the tag-conditioned colorizer (cWGAN-GP).

One process:        python -m model.train --config assets_config/train/sample_demo.yaml [key=value ...]
Several GPUs (DDP): torchrun --standalone --nproc_per_node=8 -m model.train --config ... [key=value ...]

Each step is ``n_critic`` critic updates, each on a fresh batch, then one generator update on the last batch;
the first ``l1_warmup_steps`` steps are one generator update on the L1 term alone.
Rank 0 writes ``config.yaml``, ``metrics.parquet``, checkpoints, snapshot collages (``snapshots/``) and, with
the ``tensorboard`` package, TensorBoard event files (``tensorboard/``) under ``runs/<run_name>/``. Launched by
Dagster Pipes, progress and the final result go back to Dagster; standalone they are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
from PIL import Image

from model.checkpoint import (
    TrainState,
    architecture,
    checkpoint_payload,
    has_checkpoint,
    load_checkpoint,
    load_resumable,
    new_state,
    restore_state,
    rng_state,
    save_checkpoint,
    saved_index,
    set_rng_state,
)
from model.config import (
    DATA_ORDER_KEYS,
    TrainConfig,
    TrainConfigError,
    load_train_config,
    read_train_config,
    validate_train_config,
)
from model.curves import CURVES_NAME, plot_curves
from model.data import (
    BatchLoader,
    Position,
    TokenIndex,
    TrainingSet,
    batches_per_epoch,
    dataset_words,
    to_device,
    training_tokens,
)
from model.device import resolve_device
from model.losses import LossWeights, critic_loss, generator_loss
from model.plan import PlanError, Stage, TrainingPlan, plan_stages, stage_at
from model.snapshots import SnapshotWriter, latest_snapshot, snapshot_photos
from pipeline.core.files import DiskFullError, atomic_path, atomic_write_text
from pipeline.core.layout import LATEST_CHECKPOINT, RUN_CONFIG, DataError, DatasetLayout, read_layout, read_table
from pipeline.core.render import preview_markdown

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)

METRICS = "metrics.parquet"
FAILURE_EXTRA = "failure_file"
"""The Pipes extra naming the file where a Pipes-launched trainer writes the one line a user error ends in."""
PLAN_PROGRESS = "plan.json"
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun launch; one process when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """torchrun's contract: ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in the environment."""
    if "RANK" not in os.environ:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every rank rank 0's weights (one flat broadcast, whatever the tensors' memory format)."""
    tensors = list(module.state_dict().values())
    flat = torch.cat([tensor.flatten() for tensor in tensors])
    dist.broadcast(flat, src=0)
    for tensor, value in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        tensor.copy_(value.view_as(tensor))


def all_reduce_gradients(module: torch.nn.Module, world_size: int) -> None:
    """Average gradients over ranks with one flat all-reduce.

    Done by hand as in stylegan2-ada: DDP's hooks only follow gradients that land in ``.grad``, not the
    double backward of the gradient penalty.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([param.grad.flatten() for param in params])
    dist.all_reduce(flat)
    flat /= world_size
    for param, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        param.grad.copy_(grad.view_as(param))


def check_ranks_agree(state: TrainState, ddp: Distributed) -> None:
    """Every rank must end with rank 0's weights: averaged gradients keep them equal, and a rank that drifted
    (a launcher mix-up, a non-deterministic kernel on one machine) would make the checkpoint one rank's alone."""
    agree = True
    for module in (state.generator, state.critic, state.ema):
        for tensor in module.state_dict().values():
            reference = tensor.detach().clone()
            dist.broadcast(reference, src=0)
            agree &= torch.equal(reference, tensor)
    flag = torch.tensor([1 if agree else 0], device=next(state.generator.parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if not flag.item():
        raise RuntimeError(f"rank {ddp.rank}: the weights of the {ddp.world_size} processes differ after training")
    logger.info("rank %d of %d: weights equal to rank 0's", ddp.rank, ddp.world_size)


def gather_rng_states(ddp: Distributed) -> list[dict[str, Any]]:
    """Every rank's RNG states, so each rank resumes its own random stream."""
    if not ddp.enabled:
        return [rng_state()]
    states: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(states, rng_state())
    return states


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param, 1.0 - decay)


def ema_decay(target: float, step: int) -> float:
    """Warm-up: the EMA follows closely at first, so it is usable after a short run too."""
    return min(target, (1.0 + step) / (10.0 + step))


def training_stages(
    config: TrainConfig, layout: DatasetLayout, world_size: int
) -> tuple[list[Stage], dict[int, TrainingSet]]:
    """The run's stages (one over all training shards without a plan) and each subset's photos, by subset."""
    plan = config.plan or TrainingPlan(subsets=[config.shards], stages=1, epochs_per_stage=config.epochs)
    subsets = plan.subsets
    datasets = {
        number: TrainingSet(layout, subset, config.skip_grayscale, config.tokenizer)
        for number, subset in enumerate(subsets, start=1)
    }
    batches = [
        batches_per_epoch(len(data), config.batch_size, world_size, f"subset {number}" if config.plan else "")
        for number, data in datasets.items()
    ]
    try:
        stages = plan_stages(
            plan, subsets, batches, config.n_critic, "plan.epochs_per_stage" if config.plan else "epochs"
        )
    except PlanError as error:
        raise TrainConfigError(str(error)) from None
    return stages, datasets


def final_step(config: TrainConfig, stages: Sequence[Stage], step: int) -> int:
    """Where this process stops: the plan's end, or the end of ``config.stage``; capped by ``max_steps``.

    A stage runs only from where the stage before it ended (or from within itself, resumed): it never starts
    over from weights that are not its predecessor's.
    """
    end = stages[-1].end_step
    if config.stage is not None:
        stage = stages[config.stage - 1]
        if step < stage.first_step:
            raise TrainConfigError(
                f"stage: stage {stage.number} starts at step {stage.first_step}, but the run stands at step {step}"
                f" (stage {stage_at(stages, step).number}): run the stages before it first, or the whole plan"
            )
        end = stage.end_step
    return min(end, config.max_steps) if config.max_steps is not None else end


def write_plan_progress(run_dir: Path, stages: Sequence[Stage], step: int) -> None:
    """``plan.json``: the stages and where the run stands, beside the checkpoint it describes."""
    current = stage_at(stages, step)
    progress = {
        "step": step,
        "stage": current.number,
        "stages": len(stages),
        "done": step >= stages[-1].end_step,
        "plan": [dataclasses.asdict(stage) for stage in stages],
    }
    atomic_write_text(run_dir / PLAN_PROGRESS, json.dumps(progress, indent=2) + "\n")


def time_is_up(max_seconds: float | None, started: float, ddp: Distributed, device: torch.device) -> bool:
    """Whether the time budget is spent, as rank 0's clock says, so that every rank stops at the same step."""
    if max_seconds is None:
        return False
    spent = torch.tensor([float(time.perf_counter() - started >= max_seconds)], device=device)
    if ddp.enabled:
        dist.broadcast(spent, src=0)
    return bool(spent.item())


def mean_over_ranks(stats: dict[str, torch.Tensor], ddp: Distributed) -> dict[str, float]:
    """Logged losses averaged over every rank's batch, so a multi-GPU run logs what it trains on."""
    values = torch.stack([value.detach().float() for value in stats.values()])
    if ddp.enabled:
        dist.all_reduce(values)
        values /= ddp.world_size
    return dict(zip(stats, values.tolist(), strict=True))


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: torch.nn.Module, ddp: Distributed
) -> None:
    """Back-propagate ``loss``, average ``module``'s gradients over the ranks, and step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if ddp.enabled:
        all_reduce_gradients(module, ddp.world_size)
    optimizer.step()


def check_architecture(config: TrainConfig, payload: dict[str, Any], source: Path) -> None:
    """The networks' shape and the tokenizer their tag embeddings were learnt for must be the checkpoint's."""
    saved = architecture(payload["config"]) | {"tokenizer": saved_index(payload).tokenizer}
    for key, value in saved.items():
        if getattr(config, key) != value:
            raise TrainConfigError(f"{key}: {source} was trained with {value!r}, not {getattr(config, key)!r}")


def check_data_order(config: TrainConfig, saved: dict[str, Any], source: Path) -> None:
    """Refuse to resume a run on other data: its step and data position would mean nothing there."""
    current = config.to_dict()
    for key in DATA_ORDER_KEYS:
        if saved.get(key) != current[key]:
            raise TrainConfigError(
                f"{key}: resuming {source}, trained with {saved.get(key)!r}, not {current[key]!r};"
                " to train on other data start a new run_name with init_from"
            )


def read_metrics(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Rows logged before a resumed checkpoint; rows a killed run logged after it are dropped."""
    if not path.is_file():
        return []
    table = read_table(path, "delete it to resume without the earlier rows, or restore it")
    return table[table["step"] <= up_to_step].to_dict("records")


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


class TensorBoard:
    """Rank 0's TensorBoard event files in ``runs/<run_name>/tensorboard/``: every logged metrics row and every
    snapshot; nothing on other ranks, with ``tensorboard: false``, or by default without the package.

    Each process starts a new event file; its ``purge_step`` tells TensorBoard to drop what a killed process
    logged after the checkpoint this one resumed from, as ``metrics.parquet`` drops those rows.
    """

    def __init__(self, writer: SummaryWriter | None) -> None:
        self.writer = writer

    @classmethod
    def open(cls, config: TrainConfig, ddp: Distributed, step: int) -> TensorBoard:
        """Event files from ``step + 1`` on, where ``config`` asks for them."""
        if not ddp.is_main or config.tensorboard is False:
            return cls(None)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if config.tensorboard:
                raise
            logger.info("tensorboard: not installed, so no event files (pip install -e '.[tensorboard]')")
            return cls(None)
        return cls(SummaryWriter(config.run_dir / TENSORBOARD_DIR, purge_step=step + 1))

    def scalars(self, row: dict[str, Any]) -> None:
        """One metrics row, each value under its column's name."""
        if self.writer is not None:
            for key, value in row.items():
                if key != "step":
                    self.writer.add_scalar(key, value, row["step"])

    def image(self, path: Path, step: int) -> None:
        """A snapshot PNG, under one tag, so TensorBoard's step slider runs through the snapshots."""
        if self.writer is not None:
            with Image.open(path) as image:
                self.writer.add_image("snapshot", np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class TrainResult:
    """Where a run ended: its step, ``latest.pt``, the last logged metrics and the trained state."""

    step: int
    checkpoint: Path
    run_dir: Path
    metrics: dict[str, Any]
    state: TrainState
    plan_progress: str | None = None
    """With a plan: where the run stands in it, e.g. ``stage 2 of 6 (subset 2), done``."""


def _initial_state(
    config: TrainConfig, ddp: Distributed, device: torch.device
) -> tuple[TrainState, list[dict[str, Any]] | None]:
    """A fresh state, one initialised from ``init_from``, or one resumed from ``latest.pt`` (or, where that is
    damaged, the run's newest readable ``ckpt_<step>.pt``: :func:`model.checkpoint.load_resumable`).

    Returns the resumed checkpoint's RNG states too (None unless resumed).
    """
    if has_checkpoint(config.run_dir) and not config.resume:
        raise TrainConfigError(f"resume: {config.run_dir} holds a checkpoint; set resume=true or choose a new run_name")
    torch.manual_seed(config.seed + ddp.rank)
    if config.resume and has_checkpoint(config.run_dir):
        payload, source = load_resumable(config.run_dir)
        check_architecture(config, payload, source)
        check_data_order(config, payload["config"], source)
        return restore_state(payload, config, device, resume=True), payload["rng"]
    if config.init_from is not None:
        payload = load_checkpoint(Path(config.init_from))
        check_architecture(config, payload, Path(config.init_from))
        return restore_state(payload, config, device, resume=False), None
    if config.resume:
        logger.info("resume: no checkpoint in %s yet, starting fresh", config.run_dir)
    layout = read_layout(Path(config.data_root), config.shards)
    tokens = training_tokens(layout, config.holdout_shard, config.tokenizer)
    words = dataset_words(layout.paths, config.tokenizer)
    index = TokenIndex.build(tokens, config.min_token_count, config.tokenizer, words)
    return new_state(config, index, device), None


def train(config: TrainConfig, report: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train until ``epochs`` or ``max_steps``; ``report`` gets each logged metrics row (rank 0 only)."""
    config = validate_train_config(config)
    ddp = distributed_from_env()
    launched = os.environ.get("LOCAL_WORLD_SIZE")
    if launched is not None and int(launched) != config.gpus:
        raise TrainConfigError(
            f"gpus: the config asks for {config.gpus} process(es) per machine, torchrun started {launched}"
        )
    device = resolve_device(config.device, ddp.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    own_group = ddp.enabled and not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(config, ddp, device, report)
    except torch.OutOfMemoryError as error:
        raise torch.OutOfMemoryError(
            f"CUDA ran out of memory with batch_size={config.batch_size} (per GPU), "
            f"image_size={config.image_size}, base_channels={config.base_channels}: lower batch_size first, "
            "then image_size or base_channels"
        ) from error
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    ddp: Distributed,
    device: torch.device,
    report: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    run_dir = config.run_dir
    state, resumed_rng = _initial_state(config, ddp, device)
    if ddp.enabled:
        for module in (state.generator, state.critic, state.ema):
            broadcast_parameters(module)
    if resumed_rng is not None and len(resumed_rng) == ddp.world_size:
        set_rng_state(resumed_rng[ddp.rank])
    elif resumed_rng is not None:
        logger.warning("resume: checkpoint from %d rank(s), now %d: RNG reseeded", len(resumed_rng), ddp.world_size)
        torch.manual_seed(config.seed + ddp.rank + state.step)
    rows = read_metrics(run_dir / METRICS, state.step) if resumed_rng is not None else []
    if ddp.is_main:
        atomic_write_text(run_dir / RUN_CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))

    layout = read_layout(Path(config.data_root), config.shards)
    stages, datasets = training_stages(config, layout, ddp.world_size)
    steps = final_step(config, stages, state.step)

    def open_loader(stage: Stage) -> BatchLoader:
        """The stage's stream of batches: from its first epoch, or where a resumed run stopped inside it."""
        start = state.position if state.step > stage.first_step else Position(stage.first_epoch, 0)
        if config.plan is not None and ddp.is_main:
            logger.info(
                "stage %d of %d: subset %d (shards %s), epochs %d … %d, steps %d … %d, from step %d",
                stage.number, len(stages), stage.subset, list(stage.shards), stage.first_epoch,
                stage.first_epoch + config.plan.epochs_per_stage, stage.first_step, stage.end_step, state.step,
            )  # fmt: skip
        return BatchLoader(
            datasets[stage.subset],
            state.index,
            config.batch_size,
            config.seed,
            start=start,
            rank=ddp.rank,
            world_size=ddp.world_size,
            pin_device=device if device.type == "cuda" else None,
            prefetch=config.prefetch,
        )

    snapshots = None
    if ddp.is_main and config.snapshot_every > 0:
        photos = snapshot_photos(layout.paths, config.holdout_shard, config.shards, config.tokenizer)
        snapshots = SnapshotWriter(photos, state.ema, state.index, config.image_size, run_dir)
    with contextlib.ExitStack() as open_loaders, TensorBoard.open(config, ddp, state.step) as board:
        on_cuda, gpu_path = device.type == "cuda", config.gpu_path(device)
        bf16 = gpu_path and config.bf16
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        generator = torch.compile(state.generator) if config.compile else state.generator
        critic = torch.compile(state.critic) if config.compile else state.critic
        weights = LossWeights(config.gp_lambda * config.gp_every, config.drift, config.l1_weight)
        started = last_log = time.perf_counter()
        images_since_log = 0
        last_gp: dict[str, torch.Tensor] = {}
        stage, loader = None, None

        out_of_time = False
        while state.step < steps and not out_of_time:
            if stage is None or state.step >= stage.end_step:
                open_loaders.close()  # the previous stage's reader thread, if any
                stage = stage_at(stages, state.step)
                loader = open_loaders.enter_context(open_loader(stage))
                samples_per_epoch = loader.batches_per_epoch * config.batch_size * ddp.world_size
            adversarial = state.step >= config.l1_warmup_steps
            stats_d: dict[str, torch.Tensor] = {}
            batches = config.n_critic if adversarial else 1  # the warm-up's step trains the generator only
            for update in range(batches):
                batch = to_device(next(loader), device, config.image_size, channels_last=gpu_path)
                if not adversarial:
                    continue
                # The update's number, not a counter of this process, picks the penalised ones: resume-exact.
                penalise = ((state.step - config.l1_warmup_steps) * config.n_critic + update) % config.gp_every == 0
                with autocast:
                    with torch.no_grad():
                        fake = generator(batch.lightness, batch.tokens)
                    loss_d, stats_d = critic_loss(critic, state.critic, fake, batch, weights, penalise)
                optimizer_step(state.opt_d, loss_d, state.critic, ddp)
                last_gp = {"gp": stats_d["gp"]} if penalise else last_gp
            stats_d |= last_gp  # empty until the first penalised update, which follows the warm-up
            images_since_log += batches * config.batch_size * ddp.world_size

            state.critic.requires_grad_(False)
            with autocast:
                fake = generator(batch.lightness, batch.tokens)
                loss_g, stats_g = generator_loss(critic, fake, batch, weights, adversarial)
            optimizer_step(state.opt_g, loss_g, state.generator, ddp)
            state.critic.requires_grad_(True)
            update_ema(state.ema, state.generator, ema_decay(config.ema_decay, state.step))
            state.step += 1
            state.position = batch.position

            out_of_time = time_is_up(config.max_seconds, started, ddp, device)
            last = state.step == steps or out_of_time
            stage_ends = state.step == stage.end_step  # checkpointed, so the next stage starts from its weights
            if state.step % config.log_every == 0 or last or stage_ends:
                now = time.perf_counter()
                row = {
                    "step": state.step,
                    **({"stage": stage.number, "subset": stage.subset} if config.plan is not None else {}),
                    "epoch": state.position.epoch + state.position.offset / samples_per_epoch,
                    **mean_over_ranks(stats_d | stats_g, ddp),
                    "images_per_s": images_since_log / (now - last_log),
                    "elapsed_s": now - started,
                    **({"gpu_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30} if on_cuda else {}),
                }
                last_log, images_since_log = now, 0
                if ddp.is_main:
                    rows.append(row)
                    write_metrics(run_dir / METRICS, rows)
                    board.scalars(row)
                    if report is not None:
                        report(row)
            if state.step % config.ckpt_every == 0 or last or stage_ends:
                rng = gather_rng_states(ddp)
                if ddp.is_main:
                    save_checkpoint(run_dir, checkpoint_payload(state, config, rng), config.keep_checkpoints)
                    if config.plan is not None:
                        write_plan_progress(run_dir, stages, state.step)
            if snapshots is not None and (state.step % config.snapshot_every == 0 or last):
                board.image(snapshots.write(state.step), state.step)

    if ddp.enabled:
        check_ranks_agree(state, ddp)
        dist.barrier()  # rank 0's metrics and checkpoint are written: every rank reads the same run
        if not ddp.is_main:
            rows = read_metrics(run_dir / METRICS, state.step)
    progress = None
    if config.plan is not None:
        current = stage_at(stages, max(state.step - 1, 0))  # the stage the last trained step belongs to
        finished = "done" if state.step >= current.end_step else f"at step {state.step} of {current.end_step}"
        progress = f"stage {current.number} of {len(stages)} (subset {current.subset}), {finished}"
    return TrainResult(
        step=state.step,
        checkpoint=run_dir / LATEST_CHECKPOINT,
        run_dir=run_dir,
        metrics=rows[-1] if rows else {},
        state=state,
        plan_progress=progress,
    )


def format_row(row: dict[str, Any]) -> str:
    return " ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in row.items()
    )


def summary(result: TrainResult) -> dict[str, Any]:
    """What a finished run reports: steps, checkpoint, run directory and the last metrics."""
    return {
        "steps": result.step,
        "checkpoint": str(result.checkpoint),
        "run_dir": str(result.run_dir),
        **({"plan_progress": result.plan_progress} if result.plan_progress else {}),
        **{key: value for key, value in result.metrics.items() if key != "step"},
    }


def pipes_metadata(result: TrainResult) -> dict[str, Any]:
    """:func:`summary` for Dagster: the curves and the latest snapshot inline and as files, ``metrics.parquet``
    and the run as paths."""
    curves = plot_curves(pd.read_parquet(result.run_dir / METRICS), result.run_dir / CURVES_NAME)
    snapshot = latest_snapshot(result.run_dir)
    images = [("curves", curves, "training curves"), *([("snapshot", snapshot, "latest snapshot")] if snapshot else [])]
    paths = {key: path for key, path, _ in images} | {"metrics_parquet": result.run_dir / METRICS}
    return {
        "preview": {"raw_value": "\n\n".join(preview_markdown(path, title) for _, path, title in images), "type": "md"},
        **summary(result),
        **{key: {"raw_value": str(path), "type": "path"} for key, path in paths.items()},
    }


def torchrun_command(config: TrainConfig, argv: Sequence[str]) -> list[str]:
    """This entry point under torchrun: ``gpus`` processes on this machine, and with ``nnodes`` above 1 the
    c10d rendezvous that joins the machines (else ``--standalone``)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={config.gpus}"]
    if config.nnodes == 1:
        launcher.insert(3, "--standalone")
    else:
        rendezvous = f"--rdzv-endpoint={config.rdzv_endpoint}", f"--rdzv-id={config.rdzv_id or config.run_name}"
        launcher += [f"--nnodes={config.nnodes}", "--rdzv-backend=c10d", *rendezvous]
    return [*launcher, "-m", "model.train", *argv]


class _ForwardToPipes(logging.Handler):
    """The trainer's own log records (stage boundaries, resume and rank notes) also as Dagster log events: they
    would otherwise reach only the step's captured stderr."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__(logging.INFO)
        self._log = log

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "__main__" or record.name.split(".")[0] == "model"  # ``python -m model.train``

    def emit(self, record: logging.LogRecord) -> None:
        self._log.log(record.levelno, record.getMessage())


@contextlib.contextmanager
def _logs_forwarded_to(log: logging.Logger) -> Iterator[None]:
    handler = _ForwardToPipes(log)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)


USER_ERRORS = (TrainConfigError, DataError, DiskFullError, torch.OutOfMemoryError)
"""Failures their message explains (a setting, a damaged file or checkpoint, the disk, GPU memory): one line,
never a traceback."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig values")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a config value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        launch = read_train_config(args.config, args.overrides)
    except TrainConfigError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if (launch.gpus > 1 or launch.nnodes > 1) and "RANK" not in os.environ:
        # One process per GPU: torchrun starts them with this same command line and waits for them.
        os.execv(sys.executable, torchrun_command(launch, sys.argv[1:] if argv is None else list(argv)))
    # The machine Dagster started reports, from its first process: with several machines, global rank 0 (which
    # the rendezvous may place on another one) logs the rows, and the shared run directory has them for all.
    if PipesEnvVarParamsLoader().is_dagster_pipes_process() and os.environ.get("LOCAL_RANK", "0") == "0":
        with open_dagster_pipes() as pipes, _logs_forwarded_to(pipes.log):
            try:
                config = load_train_config(args.config, args.overrides)
                pipes.log.info(f"training {config.run_name} on {config.data_root}, shards {config.shards}")
                result = train(config, report=lambda row: pipes.log.info(format_row(row)))
            except USER_ERRORS as error:
                pipes.log.error(str(error))
                failure = pipes.extras.get(FAILURE_EXTRA)
                if failure:  # the Dagster step fails with this line instead of the exit code
                    with contextlib.suppress(OSError):  # a full disk: the line above reached the run's log anyway
                        Path(failure).write_text(str(error))
                message = str(error)
            else:
                pipes.report_asset_materialization(metadata=pipes_metadata(result))
                return
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    try:
        result = train(
            load_train_config(args.config, args.overrides), report=lambda row: print(format_row(row), flush=True)
        )
    except USER_ERRORS as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if distributed_from_env().is_main:
        print(format_row(summary(result)), flush=True)


if __name__ == "__main__":
    main()
