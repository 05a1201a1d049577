"""Training configuration: plain values with defaults, read from YAML and overridden by ``key=value``.

Every value is checked before any work starts, and an error always names the key, so a typo on the command
line or in ``assets_config/train/*.yaml`` fails in the first second rather than after an hour of training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from model.data import TOKENIZERS
from model.device import resolve_device
from model.plan import PlanError, TrainingPlan, resolve_subsets
from pipeline.core.config import ConfigError, dataclass_from_mapping, typed_value
from pipeline.core.layout import DataError, DatasetLayout, open_shard, read_layout

ARCHITECTURE_KEYS = ("base_channels", "depth", "token_dim", "pool")
"""Keys that shape the networks: a resumed or initialised run must keep the checkpoint's values."""

DATA_ORDER_KEYS = ("shards", "holdout_shard", "batch_size", "seed", "skip_grayscale", "plan")
"""Keys that fix which images a step sees: a resumed run continues the same sequence only with the same values
(a new subset is a new ``run_name`` with ``init_from``, or a stage of a ``plan``). The validation photos, set
aside from training, are the run's own: a resumed run takes them from its checkpoint."""

POSITIVE_KEYS = (
    "image_size", "batch_size", "epochs", "n_critic", "base_channels", "depth", "token_dim",
    "min_token_count", "log_every", "ckpt_every", "keep_checkpoints", "prefetch", "gpus", "gp_every", "nnodes",
    "val_every",
)  # fmt: skip


SELECT_BY = {"ab_error": -1, "hue_error": -1, "psnr": 1}
"""The validation figures ``best.pt`` may be chosen by, and their direction (1: higher is better)."""

DEFAULT_RUN_NAME = "colorizer"
"""The run name when neither a preset nor an override names one."""


class TrainConfigError(ConfigError):
    """A training setting is unknown or impossible; the message starts with the key."""


@dataclass
class TrainConfig:
    """Everything a training run needs; see ``assets_config/train/*.yaml`` for commented examples."""

    data_root: str = "data/sample"
    run_name: str = ""
    """The run directory's name, ``runs/<run_name>``; empty: the preset's file name (``colorizer`` without one),
    the same whether Dagster or a shell starts the run."""
    runs_dir: str | None = None
    """Default: ``<data_root>/runs``."""
    shards: list[int] | None = None
    """Training shards; None: every shard of the dataset except the held-out one."""
    holdout_shard: int | None = None
    """Kept for evaluation and never trained on; None: the one the dataset recorded (``split.json``), else its
    last shard."""
    skip_grayscale: bool = True
    image_size: int = 64
    batch_size: int = 32
    """Per process (GPU): a critic step sees ``gpus × batch_size`` photos."""
    gpus: int = 1
    """Processes per machine, one per GPU; above 1, ``python -m model.train`` starts them through torchrun."""
    nnodes: int = 1
    """Machines; above 1, each runs this same command, and torchrun's c10d rendezvous at ``rdzv_endpoint`` makes
    them one job of ``nnodes × gpus`` processes (data root and runs on a filesystem they all share)."""
    rdzv_endpoint: str = ""
    """``host:port`` where the machines of a multi-node run meet (any one of them, e.g. the first)."""
    rdzv_id: str = ""
    """The multi-node job's id, the same on every machine; empty: the run name."""
    epochs: int = 10
    """Passes over the training shards; with a ``plan``, its stages set the length instead."""
    plan: TrainingPlan | None = None
    """A staged schedule (:class:`model.plan.TrainingPlan`): ``subsets`` of the training shards, ``stages`` of
    ``epochs_per_stage`` epochs each, cycling through the subsets, each stage continuing from the one before."""
    stage: int | None = None
    """With a ``plan``: train only stage ``stage`` (from 1), continuing the run from where the stage before it
    ended; None: the whole plan."""
    max_steps: int | None = None
    """Caps the number of generator steps (each follows ``n_critic`` critic steps)."""
    max_seconds: float | None = None
    """Stops after this many seconds of training in this process: a time budget for comparing recipes
    (``benchmarks/quality.py``); the step reached depends on the machine, so a run cut by it is not repeatable."""
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    n_critic: int = 5
    gp_lambda: float = 10.0
    gp_every: int = 1
    """Lazy regularisation (StyleGAN2): the gradient penalty on every k-th critic update only, weighted ×k.
    Its double backward costs more than the rest of a critic update, and a penalty every 4 updates keeps the
    critic as Lipschitz as one every update."""
    drift: float = 1e-3
    l1_weight: float = 100.0
    """The L1 term is a mean over pixels while the critic's gradient has norm about 1 per image, so the L1
    weight must grow with the pixel count to matter; at 10 the adversarial term drowns the tag signal."""
    l1_warmup_steps: int = 0
    """Generator steps on the L1 term alone before the critic trains and the adversarial term joins, as
    DeOldify's NoGAN pre-training: alone, the L1 term finds the colours several times faster per second (no
    critic updates, no gradient penalty); the critic then restores the vividness L1 averages away."""
    ema_decay: float = 0.999
    tag_dropout: float = 0.0
    """Condition dropout: the share of training photos (drawn per epoch, :class:`model.data.EpochPlan`) that
    train without their tags, as classifier-free guidance trains, so that the no-tag path stays a colorizer of
    its own and the tags refine it rather than standing in for the photo (on a small dataset tags otherwise
    name which training photo this is)."""
    crop_min_scale: float = 1.0
    """Random resized crops: each training photo is cut to a square of ``U(crop_min_scale, 1)`` of its side at a
    random place (drawn per epoch) before it is resized to ``image_size``; 1: the whole photo."""
    base_channels: int = 32
    depth: int = 4
    token_dim: int = 128
    pool: str = "attention"
    """How the tag encoders pool tokens: "attention" learns to pick out the telling tags among the filler
    (on the sample it halves the error ratio of true to shuffled tags against "mean" at equal steps)."""
    tokenizer: str = "o200k"
    """``o200k`` (20 tokens of the tags' text) or ``words`` (the seed's first tokenizer: 8 whole tags)."""
    min_token_count: int = 1
    """Tokens seen fewer times in the training split share the "unknown" embedding."""
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    snapshot_every: int = 500
    """Steps between snapshot collages of a few fixed held-out photos (``snapshots/step_<step>.png`` and
    ``snapshot_latest.png``), and one at the last step, to watch a run learn while it trains; 0: none."""
    tensorboard: bool | None = None
    """TensorBoard event files in ``runs/<run_name>/tensorboard/``: the logged metrics and the snapshots.
    None: when the ``tensorboard`` package is installed; true: required; false: none."""
    val_size: int = 1000
    """Validation photos: a seeded, fixed set of the training shards' valid colour photos, never trained on, scored
    every ``val_every`` steps to choose ``best.pt``: at most this many, and at most a tenth of the training photos
    (:meth:`pipeline.core.layout.DatasetLayout.validation_ids`); 0: no validation. The held-out shard stays the
    test set and chooses nothing."""
    val_every: int = 500
    """Steps between validations, and one at the last step."""
    val_ids: list[int] | None = None
    """The validation photos' image ids, drawn from ``val_size`` and recorded in ``config.yaml``; None: none
    (runs from before validation existed resume with it off)."""
    select_by: str = "ab_error"
    """The validation figure ``best.pt`` is chosen by, with true tags: ``ab_error`` or ``hue_error`` (lower is
    better) or ``psnr`` (higher is better)."""
    patience: int | None = None
    """Early stopping: end the run after this many validations in a row without a better ``select_by``; None:
    train to the end."""
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    bf16: bool = True
    """bf16 autocast, on CUDA (and on the CPU with ``gpu_path_on_cpu``)."""
    gpu_path_on_cpu: bool = False
    """On the CPU, train as on a GPU: bf16 autocast (with ``bf16``), channels_last tensors and fused Adam, so the
    GPU presets' code path runs (and is tested) without a GPU; slower than the CPU's own path on most CPUs. What
    only CUDA has stays CUDA-only: TF32 and cuDNN autotuning, pinned host memory, NCCL, GPU memory counts."""
    resume: bool = False
    """Continue exactly where ``runs/<run_name>/latest.pt`` stopped (where it is damaged, the run's newest readable
    ``ckpt_<step>.pt``); without a checkpoint, start as if false."""
    init_from: str | None = None
    """A previous run's checkpoint: weights and token index only; optimizers and data position start fresh.
    Used when the run has no ``latest.pt`` of its own yet (with ``resume``, a restarted run continues)."""
    prefetch: int = 4
    """Batches the loader's reader threads keep in flight ahead of the training loop."""

    def gpu_path(self, device: torch.device) -> bool:
        """Whether training on ``device`` takes the GPU's code path (bf16 autocast, channels_last, fused Adam)."""
        return device.type == "cuda" or self.gpu_path_on_cpu

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir or Path(self.data_root) / "runs") / self.run_name

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, for ``config.yaml`` and checkpoints."""
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's annotation (:func:`pipeline.core.config.typed_value`)."""
    try:
        return typed_value(value, hint)
    except TypeError as error:
        raise TrainConfigError(f"{key}: {error}") from None


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise TrainConfigError(f"{key}: {message}")


def _check_values(config: TrainConfig) -> None:
    """Ranges and choices that need no files."""
    for key in POSITIVE_KEYS:
        _require(getattr(config, key) > 0, key, f"must be positive, got {getattr(config, key)}")
    for key in ("gp_lambda", "drift", "l1_weight", "l1_warmup_steps", "snapshot_every"):
        _require(getattr(config, key) >= 0, key, f"must not be negative, got {getattr(config, key)}")
    _require(config.lr > 0, "lr", f"must be positive, got {config.lr}")
    _require(0 <= config.tag_dropout < 1, "tag_dropout", f"must be in [0, 1), got {config.tag_dropout}")
    _require(0 < config.crop_min_scale <= 1, "crop_min_scale", f"must be in (0, 1], got {config.crop_min_scale}")
    _require(
        len(config.betas) == 2 and all(0 <= b < 1 for b in config.betas),
        "betas",
        f"must be two numbers in [0, 1), got {config.betas}",
    )
    _require(0 <= config.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {config.ema_decay}")
    _require(config.max_steps is None or config.max_steps > 0, "max_steps", "must be positive or null")
    _require(
        config.nnodes == 1 or config.rdzv_endpoint.rpartition(":")[2].isdigit(),
        "rdzv_endpoint",
        f"a run over {config.nnodes} machines needs host:port where they meet, got {config.rdzv_endpoint!r}",
    )
    if config.stage is not None:
        _require(config.plan is not None, "stage", f"{config.stage} given, but the config has no plan")
        _require(
            1 <= config.stage <= config.plan.stages,
            "stage",
            f"must be one of the plan's stages 1 … {config.plan.stages}, got {config.stage}",
        )
    _require(config.max_seconds is None or config.max_seconds > 0, "max_seconds", "must be positive or null")
    _require(config.val_size >= 0, "val_size", f"must not be negative, got {config.val_size}")
    _require(config.select_by in SELECT_BY, "select_by", f"one of {sorted(SELECT_BY)}, not {config.select_by!r}")
    _require(config.patience is None or config.patience > 0, "patience", "must be positive or null")
    _require(config.pool in ("mean", "attention"), "pool", f"must be 'mean' or 'attention', got {config.pool!r}")
    _require(config.tokenizer in TOKENIZERS, "tokenizer", f"must be one of {TOKENIZERS}, got {config.tokenizer!r}")
    _require(config.device in ("auto", "cpu", "cuda"), "device", f"must be auto, cpu or cuda, not {config.device!r}")
    try:
        resolve_device(config.device)
    except ConfigError as error:
        raise TrainConfigError(str(error)) from None
    _require(
        config.tensorboard is not True or importlib.util.find_spec("tensorboard") is not None,
        "tensorboard",
        "true, but the tensorboard package is not installed (pip install -e '.[tensorboard]')",
    )
    _require(
        config.image_size % 2**config.depth == 0,
        "image_size",
        f"{config.image_size} is not divisible by 2**depth = {2**config.depth}",
    )
    _require(
        bool(config.run_name) and Path(config.run_name).name == config.run_name and config.run_name != "..",
        "run_name",
        f"must be a plain directory name, got {config.run_name!r}",
    )


def _check_data(config: TrainConfig) -> DatasetLayout:
    """The dataset must exist, and the listed shards must be shards of it."""
    try:
        layout = read_layout(Path(config.data_root), config.shards)
    except DataError as error:
        raise TrainConfigError(f"data_root: {error}") from error
    holdout = config.holdout_shard
    _require(
        holdout is None or 0 <= holdout < layout.n_shards,
        "holdout_shard",
        f"{holdout} is not a shard of {config.data_root} (0 … {layout.n_shards - 1})",
    )
    if config.shards is not None:
        _require(len(config.shards) > 0, "shards", "must list at least one shard (or be null for all)")
        for shard in config.shards:
            _require(0 <= shard < layout.n_shards, "shards", f"shard {shard} is not in 0 … {layout.n_shards - 1}")
    return layout


def validate_train_config(config: TrainConfig) -> TrainConfig:
    """Check every value and return a copy with the defaults that depend on the data filled in.

    ``runs_dir``, ``holdout_shard`` and ``shards`` become explicit, so ``config.yaml`` records exactly what
    was trained on.
    """
    hints = typing.get_type_hints(TrainConfig)
    config = dataclasses.replace(
        config, **{key: _coerce(key, getattr(config, key), hint) for key, hint in hints.items()}
    )
    config = dataclasses.replace(config, run_name=config.run_name or DEFAULT_RUN_NAME)
    _check_values(config)
    layout = _check_data(config)
    holdout = config.holdout_shard
    if holdout is None:
        holdout = layout.holdout_shard
    shards = config.shards if config.shards is not None else [s for s in range(layout.n_shards) if s != holdout]
    _require(holdout not in shards, "holdout_shard", f"shard {holdout} is held out but listed in 'shards'")
    _require(bool(shards), "shards", f"no shard is left for training besides the held-out {holdout}")
    plan = config.plan
    if plan is not None:
        try:
            subsets = resolve_subsets(plan, shards, holdout)
        except PlanError as error:
            raise TrainConfigError(str(error)) from None
        plan = dataclasses.replace(plan, subsets=subsets)
        shards = sorted({shard for subset in subsets for shard in subset})
    for shard in shards:
        try:
            open_shard(layout.paths, shard)  # whole, before any work starts
        except DataError as error:
            raise TrainConfigError(f"shards: {error}") from error
    val_ids = config.val_ids
    if val_ids is None and config.val_size > 0:
        val_ids = layout.validation_ids(shards, config.val_size, config.seed)
    if val_ids is not None:
        training = {image for shard in shards for image in layout.shard_ids(shard)}
        outside = sorted(set(val_ids) - training)
        _require(not outside, "val_ids", f"{outside[:5]} are not photos of the training shards {shards}")
    if config.init_from is not None:
        _require(Path(config.init_from).is_file(), "init_from", f"{config.init_from} does not exist")
    return dataclasses.replace(
        config,
        runs_dir=str(Path(config.runs_dir or Path(config.data_root) / "runs")),
        holdout_shard=holdout,
        shards=sorted(set(shards)),
        plan=plan,
        val_ids=val_ids or None,
    )


def _parse_value(text: str, hint: Any) -> Any:
    """One override's text as YAML, read the way the field needs it.

    YAML 1.1 reads ``1e-4`` (no dot) as text, so text that is a number becomes one; a text field keeps the
    text as typed (``run_name=2024`` is the name "2024").
    """
    value = yaml.safe_load(text)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if str in (typing.get_args(hint) or (hint,)) and value is not None and not isinstance(value, str):
        return text.strip()
    return value


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings → values parsed as YAML (``null``, ``true``, ``[0, 1]``, ``1e-4``)."""
    hints = typing.get_type_hints(TrainConfig)
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TrainConfigError(f"{item}: an override must look like key=value")
        if key not in hints:
            raise TrainConfigError(f"{key}: unknown key (known: {', '.join(sorted(hints))})")
        try:
            parsed[key] = _parse_value(text, hints[key])
        except yaml.YAMLError as error:
            raise TrainConfigError(f"{key}: cannot parse {text!r}: {error}") from error
    return parsed


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from plain values; unknown keys and wrongly typed values are refused by name."""
    try:
        return dataclass_from_mapping(TrainConfig, values)
    except TypeError as error:
        raise TrainConfigError(str(error)) from None


def load_train_config(path: Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read ``path`` (YAML mapping), apply ``key=value`` overrides, validate; see :func:`validate_train_config`."""
    return validate_train_config(read_train_config(path, overrides))


def read_train_config(path: Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """``path`` (a preset) with ``key=value`` overrides applied, its values typed but not yet checked against
    the data; the run is named after the preset unless it names itself."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise TrainConfigError(f"config: cannot read {path}: {error}") from error
        if not isinstance(loaded, dict | None):
            raise TrainConfigError(f"config: {path} must hold a mapping of keys to values")
        values = {"run_name": Path(path).stem} | (loaded or {})
    return config_from_dict(values | parse_overrides(overrides))
