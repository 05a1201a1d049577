"""Train the tag-conditioned colorizer (cWGAN-GP): the training loop.

One process:   python -m model.train --config assets_config/train/sample_demo.yaml [key=value ...]
Several GPUs:  gpus=8 in the preset or among the overrides; the command then starts itself under torchrun

Each step is ``n_critic`` critic updates, each on a fresh batch, then one generator update on the last batch;
the first ``l1_warmup_steps`` steps are one generator update on the L1 term alone. Rank 0 writes
``config.yaml``, checkpoints and snapshot collages under ``runs/<run_name>/``; the rest lives beside this loop:
the processes and what they exchange (:mod:`model.distributed`), where progress goes (:mod:`model.reporting`:
``metrics.parquet``, ``plan.json``, TensorBoard) and how the command runs (:mod:`model.launch`: torchrun,
Dagster Pipes or a shell).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from model import launch
from model.checkpoint import (
    TrainState,
    architecture,
    checkpoint_payload,
    has_checkpoint,
    load_checkpoint,
    load_resumable,
    new_state,
    restore_state,
    save_checkpoint,
    saved_index,
    set_rng_state,
)
from model.config import (
    DATA_ORDER_KEYS,
    SELECT_BY,
    TrainConfig,
    TrainConfigError,
    validate_train_config,
)
from model.data import (
    Augmentation,
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
from model.distributed import (
    Distributed,
    all_reduce_gradients,
    broadcast_parameters,
    check_ranks_agree,
    distributed_from_env,
    gather_rng_states,
    mean_over_ranks,
    rank0_flags,
    time_is_up,
)
from model.losses import LossWeights, critic_loss, generator_loss
from model.plan import PlanError, Stage, TrainingPlan, plan_stages, stage_at
from model.reporting import METRICS, TensorBoard, read_metrics, write_metrics, write_plan_progress
from model.snapshots import SnapshotWriter, snapshot_photos
from model.validation import Validation
from pipeline.core.files import atomic_write_text
from pipeline.core.layout import LATEST_CHECKPOINT, RUN_CONFIG, DatasetLayout, read_layout

logger = logging.getLogger(__name__)


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
        number: TrainingSet(layout, subset, config.skip_grayscale, config.tokenizer, exclude=config.val_ids or ())
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
    select_by: str = ""
    """The validation figure ``best.pt`` was chosen by (``state.selection`` holds its best value and step)."""


def _initial_state(
    config: TrainConfig, ddp: Distributed, device: torch.device
) -> tuple[TrainState, list[dict[str, Any]] | None, TrainConfig]:
    """A fresh state, one initialised from ``init_from``, or one resumed from ``latest.pt`` (or, where that is
    damaged, the run's newest readable ``ckpt_<step>.pt``: :func:`model.checkpoint.load_resumable`).

    Returns the resumed checkpoint's RNG states too (None unless resumed), and the config as the run goes on
    (a resumed run keeps its validation photos: :func:`kept_validation`).
    """
    if has_checkpoint(config.run_dir) and not config.resume:
        raise TrainConfigError(f"resume: {config.run_dir} holds a checkpoint; set resume=true or choose a new run_name")
    torch.manual_seed(config.seed + ddp.rank)
    if config.resume and has_checkpoint(config.run_dir):
        payload, source = load_resumable(config.run_dir)
        check_architecture(config, payload, source)
        check_data_order(config, payload["config"], source)
        return restore_state(payload, config, device, resume=True), payload["rng"], kept_validation(config, payload)
    if config.init_from is not None:
        payload = load_checkpoint(Path(config.init_from))
        check_architecture(config, payload, Path(config.init_from))
        return restore_state(payload, config, device, resume=False), None, config
    if config.resume:
        logger.info("resume: no checkpoint in %s yet, starting fresh", config.run_dir)
    layout = read_layout(Path(config.data_root), config.shards)
    tokens = training_tokens(layout, config.holdout_shard, config.tokenizer)
    words = dataset_words(layout.paths, config.tokenizer)
    index = TokenIndex.build(tokens, config.min_token_count, config.tokenizer, words)
    return new_state(config, index, device), None, config


def kept_validation(config: TrainConfig, payload: dict[str, Any]) -> TrainConfig:
    """A resumed run keeps the validation photos it started with, so it trains on the same photos: none for a run
    from before validation existed (whose checkpoint records none), whatever ``val_size`` says now."""
    saved = payload["config"]
    kept = dataclasses.replace(config, val_size=saved.get("val_size", 0), val_ids=saved.get("val_ids"))
    if kept.val_ids != config.val_ids:
        logger.info("resume: validation on the %d photo(s) the run started with", len(kept.val_ids or ()))
    return kept


def validate(
    validation: Validation | None, state: TrainState, config: TrainConfig, ddp: Distributed, device: torch.device
) -> tuple[dict[str, float], bool, bool]:
    """Rank 0 scores the EMA generator on the validation photos and updates the choice of the best step; every
    rank learns whether this step is the best so far (then checkpointed as ``best.pt``) and whether to stop early.
    """
    scores: dict[str, float] = {}
    improved = stop = False
    if validation is not None:
        scores = validation.score(state.ema, state.index, config.image_size, device)
        chosen = scores[f"val_{config.select_by}"]
        improved = state.selection.update(chosen, state.step, SELECT_BY[config.select_by])
        stop = config.patience is not None and state.selection.stale >= config.patience
        if stop:
            logger.info(
                "early stop at step %d: %d validations without a better %s than %.4g at step %d",
                state.step, state.selection.stale, config.select_by, state.selection.best, state.selection.best_step,
            )  # fmt: skip
    improved, stop = rank0_flags([improved, stop], ddp, device)
    return scores, improved, stop


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
    state, resumed_rng, config = _initial_state(config, ddp, device)
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
    if config.patience is not None and state.selection.stale >= config.patience:
        logger.info("the run stopped early at step %d (patience %d): nothing to train", state.step, config.patience)
        steps = state.step

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
            augmentation=Augmentation(config.crop_min_scale, config.tag_dropout),
        )

    validation = None
    if ddp.is_main and config.val_ids:
        validation = Validation(layout, config.val_ids, config.tokenizer, state.index)
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

        out_of_time = stopped = False
        while state.step < steps and not (out_of_time or stopped):
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
            validated, best = {}, False
            if config.val_ids and (state.step % config.val_every == 0 or last):
                validated, best, stopped = validate(validation, state, config, ddp, device)
                last = last or stopped
                last_log += validated.get("val_s", 0.0)  # images_per_s counts training time only
            if state.step % config.log_every == 0 or last or stage_ends or validated:
                now = time.perf_counter()
                row = {
                    "step": state.step,
                    **({"stage": stage.number, "subset": stage.subset} if config.plan is not None else {}),
                    "epoch": state.position.epoch + state.position.offset / samples_per_epoch,
                    **mean_over_ranks(stats_d | stats_g, ddp),
                    **validated,
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
            if state.step % config.ckpt_every == 0 or last or stage_ends or best:
                rng = gather_rng_states(ddp)
                if ddp.is_main:
                    payload = checkpoint_payload(state, config, rng)
                    save_checkpoint(run_dir, payload, config.keep_checkpoints, best=best)
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
        select_by=config.select_by if config.val_ids else "",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m model.train``: :func:`train` as :func:`model.launch.main` runs it (torchrun, Pipes, or a shell)."""
    launch.main(train, argv)


if __name__ == "__main__":
    main()
