"""Checkpoints: everything needed to resume a run exactly, written atomically and checked when read.

A checkpoint is a plain dict of tensors and Python values (loadable with ``weights_only=True``): both
networks, the EMA generator, both optimizers, step, data position, every rank's RNG states, the token index
and the config. Loading validates it completely and builds fresh objects, so a bad file never leaves a
half-restored run behind.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import ARCHITECTURE_KEYS, TrainConfig
from model.data import Position, TokenIndex
from model.networks import Critic, Generator
from pipeline.core.files import atomic_path
from pipeline.core.layout import BEST_CHECKPOINT, LATEST_CHECKPOINT, DataError, DatasetPaths, read_run_config

logger = logging.getLogger(__name__)

FORMAT = "tagcolor-cwgan-gp"
VERSION = 1
STEP_NAME = "ckpt_{step:08d}.pt"
STEP_GLOB = STEP_NAME.replace("{step:08d}", "*")

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "generator": dict,
    "critic": dict,
    "ema": dict,
    "opt_g": dict,
    "opt_d": dict,
    "step": int,
    "epoch": int,
    "offset": int,
    "rng": list,
    "token_index": torch.Tensor,
    "config": dict,
}


class CheckpointError(DataError):
    """A file is not a readable checkpoint of this project, or does not fit the run; like any damaged file of a
    dataset, the message names it and what makes it again."""


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The network-shaping values of a config (as a dict, so a saved config works too)."""
    return {key: config[key] for key in ARCHITECTURE_KEYS}


@dataclass
class Selection:
    """Which validated step scored best so far (``best`` of ``select_by`` at ``best_step``), and how many
    validations in a row have not beaten it since: kept in every checkpoint, so a resumed run chooses ``best.pt``
    and stops early exactly as an uninterrupted one."""

    best: float | None = None
    best_step: int | None = None
    stale: int = 0

    def update(self, value: float, step: int, direction: int) -> bool:
        """Record the validation of ``step``; whether it is the best so far (``direction`` 1: higher is better)."""
        better = math.isfinite(value) and (self.best is None or (value - self.best) * direction > 0)
        if better:
            self.best, self.best_step, self.stale = value, step, 0
        else:
            self.stale += 1
        return better


@dataclass
class TrainState:
    """What training changes: networks, optimizers, step, data position and the choice of the best step."""

    generator: Generator
    critic: Critic
    ema: Generator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    index: TokenIndex
    step: int = 0
    position: Position = field(default_factory=Position)
    selection: Selection = field(default_factory=Selection)


def new_state(config: TrainConfig, index: TokenIndex, device: torch.device) -> TrainState:
    """Freshly initialised networks and optimizers (channels_last and fused Adam on the GPU's code path)."""
    shape = architecture(config.to_dict())
    gpu_path = config.gpu_path(device)
    memory_format = torch.channels_last if gpu_path else torch.contiguous_format
    generator = Generator(index.size, **shape).to(device, memory_format=memory_format)
    critic = Critic(index.size, **shape).to(device, memory_format=memory_format)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    fused = True if gpu_path else None
    betas = (config.betas[0], config.betas[1])
    return TrainState(
        generator=generator,
        critic=critic,
        ema=ema,
        opt_g=torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas, fused=fused),
        opt_d=torch.optim.Adam(critic.parameters(), lr=config.lr, betas=betas, fused=fused),
        index=index,
    )


def saved_index(payload: dict[str, Any]) -> TokenIndex:
    """The token index a checkpoint was trained with (checkpoints from before ``words`` existed: o200k)."""
    return TokenIndex.from_state(payload["token_index"], payload.get("tokenizer", "o200k"), payload.get("words", ()))


def restore_state(payload: dict[str, Any], config: TrainConfig, device: torch.device, *, resume: bool) -> TrainState:
    """A new state holding the checkpoint's weights; with ``resume`` also its optimizers and position.

    Learning rate and betas come from ``config``, so a resumed run may change them.
    """
    state = new_state(config, saved_index(payload), device)
    try:
        state.generator.load_state_dict(payload["generator"])
        state.critic.load_state_dict(payload["critic"])
        state.ema.load_state_dict(payload["ema"])
        if resume:
            state.opt_g.load_state_dict(payload["opt_g"])
            state.opt_d.load_state_dict(payload["opt_d"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"the checkpoint does not fit the networks: {error}") from error
    if resume:
        for optimizer in (state.opt_g, state.opt_d):
            for group in optimizer.param_groups:
                group["lr"], group["betas"] = config.lr, (config.betas[0], config.betas[1])
        state.step = payload["step"]
        state.position = Position(payload["epoch"], payload["offset"])
        state.selection = Selection(**payload.get("selection", {}))  # none in checkpoints from before validation
    return state


RNG_KEYS = frozenset({"torch", "cuda", "numpy", "python"})


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (``weights_only``-loadable); CUDA: its own device."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def checkpoint_payload(state: TrainState, config: TrainConfig, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """The dict that is saved; ``rng`` holds one entry per rank."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "generator": state.generator.state_dict(),
        "critic": state.critic.state_dict(),
        "ema": state.ema.state_dict(),
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "step": state.step,
        "epoch": state.position.epoch,
        "offset": state.position.offset,
        "rng": rng,
        "token_index": state.index.state(),
        "tokenizer": state.index.tokenizer,
        "words": list(state.index.words),
        "config": config.to_dict(),
        "selection": dataclasses.asdict(state.selection),
    }


def save_checkpoint(run_dir: Path, payload: dict[str, Any], keep: int, best: bool = False) -> Path:
    """Write ``ckpt_<step>.pt`` and ``latest.pt`` atomically, and ``best.pt`` too when ``best``; keep the newest
    ``keep`` step files."""
    path = run_dir / STEP_NAME.format(step=payload["step"])
    with (
        atomic_path(path, suffix=".pt", writing=f"the checkpoint of step {payload['step']}") as tmp,
        tmp.open("wb") as file,
    ):
        torch.save(payload, file)  # through Python's file: a full disk then says ENOSPC, not "unexpected pos"
    for name in (LATEST_CHECKPOINT, BEST_CHECKPOINT) if best else (LATEST_CHECKPOINT,):
        with atomic_path(run_dir / name, suffix=".pt") as tmp:
            shutil.copyfile(path, tmp)
    for old in sorted(run_dir.glob(STEP_GLOB))[:-keep]:
        old.unlink()
    return path


WEIGHTS_UNPICKLER = "WeightsUnpickler error:"


def checkpoint_remedy(path: Path) -> str:
    """What makes a checkpoint again: training its run once more, on the dataset its ``config.yaml`` names."""
    run_dir = path.parent
    try:
        data_root = read_run_config(run_dir)["data_root"]
    except (DataError, KeyError):
        return "train its run again, or name another checkpoint"
    colorizer = DatasetPaths(Path(str(data_root))).remedy("colorizer").removeprefix("materialize ")
    return (
        f"train run {run_dir.name} again (materialize {colorizer} with run_name {run_dir.name}; with resume=true it"
        " continues from its newest intact ckpt_<step>.pt)"
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and validate a checkpoint onto the CPU; a one-line :class:`CheckpointError` naming the file, what is
    wrong and what makes it again for anything else."""
    try:
        return _validated(path)
    except CheckpointError as error:
        raise CheckpointError(f"{error}; {checkpoint_remedy(path)}") from error.__cause__


def _validated(path: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on pickle protocols of foreign files
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: no such checkpoint") from error
    except Exception as error:
        # torch wraps whatever its safe unpickler refuses in a page of advice on untrusted files; the reason
        # itself follows "WeightsUnpickler error:".
        text = str(error).partition(WEIGHTS_UNPICKLER)[2] or str(error)
        line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        reason = line.split(". ")[0][:200]  # the first sentence: the rest is advice on miniz or pickles
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {reason})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}, expected {VERSION}")
    for key, kind in _FIELDS.items():
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: '{key}' is missing or not a {kind}")
    missing = [key for key in (*ARCHITECTURE_KEYS, "image_size") if key not in payload["config"]]
    if missing:
        raise CheckpointError(f"{path}: the saved config lacks {missing}")
    if not payload["rng"] or not all(isinstance(s, dict) and s.keys() >= RNG_KEYS for s in payload["rng"]):
        raise CheckpointError(f"{path}: 'rng' must hold one state per rank with {sorted(RNG_KEYS)}")
    return payload


def run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run is scored by: ``best.pt`` (the validation's choice) where the run has one, else
    ``latest.pt``."""
    for name in (BEST_CHECKPOINT, LATEST_CHECKPOINT):
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"no checkpoint at {run_dir / LATEST_CHECKPOINT}: train the run first")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run directory holds a checkpoint to resume: ``latest.pt`` or a ``ckpt_<step>.pt``."""
    return (run_dir / LATEST_CHECKPOINT).is_file() or any(run_dir.glob(STEP_GLOB))


def load_resumable(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint a run resumes from: ``latest.pt``, or where it is missing or unreadable the newest readable
    ``ckpt_<step>.pt`` of the same run, with a warning naming both.

    Falling back is safe: every ``ckpt_<step>.pt`` is a whole state of this run (``latest.pt`` is a copy of the
    newest), and a run resumed from an earlier step repeats the steps after it exactly; only the time they took
    is lost. It never falls back to anything but the run's own step files (no best or exported weights).
    """
    candidates = [run_dir / LATEST_CHECKPOINT, *sorted(run_dir.glob(STEP_GLOB), reverse=True)]
    refused: list[str] = []
    for path in candidates:
        try:
            payload = _validated(path)
        except CheckpointError as error:
            refused.append(str(error))
            continue
        if refused:
            logger.warning("resume: %s; resuming from %s (step %d) instead", refused[0], path, payload["step"])
        return payload, path
    raise CheckpointError(f"{run_dir}: no readable checkpoint to resume ({'; '.join(refused)}); start a new run_name")
