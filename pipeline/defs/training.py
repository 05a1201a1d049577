"""``colorizer``: the cWGAN-GP, trained by ``python -m model.train`` in its own process, through Pipes."""

import sys
import tempfile
import warnings
from pathlib import Path

import dagster as dg

from pipeline.datasets import CONFIG_DIR, REPO_ROOT, resolve_repo_path
from pipeline.defs.keys import GPU_POOL, asset_key, group_name
from pipeline.defs.metadata import readable
from pipeline.defs.resources import TagcolorStorage
from pipeline.sources.base import DatasetSpec

TRAIN_CONFIG_DIR = CONFIG_DIR / "train"


class ColorizerConfig(dg.Config):
    """Which training preset to run, under which name, and what to change for this run.

    ``train_config``: a name under ``assets_config/train`` or a YAML path (relative to the repository root);
    empty: the dataset's own (its YAML's ``train_config``). ``run_name``: empty: the preset's name, as for a
    standalone run. ``overrides``: ``key=value`` of ``TrainConfig``, e.g. ``["max_steps=100", "gpus=2"]``.
    """

    train_config: str = ""
    run_name: str = ""
    overrides: list[str] = []


def train_config_path(name: str) -> Path | None:
    """The preset file a name (``ci``) or path stands for; ``None`` for an empty name (the defaults)."""
    if not name:
        return None
    path = resolve_repo_path(name) if name.endswith((".yaml", ".yml")) else TRAIN_CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in TRAIN_CONFIG_DIR.glob("*.yaml"))
        raise dg.Failure(f"train_config {name!r}: no such file {path}; available: {available}")
    return path


def training_arguments(spec: DatasetSpec, config: ColorizerConfig, data_root: Path) -> tuple[Path | None, list[str]]:
    """The preset and the ``key=value`` overrides a run of ``spec``'s data gets from ``config``."""
    preset = train_config_path(config.train_config or spec.train_config)
    overrides = [f"data_root={data_root}", *([f"run_name={config.run_name}"] if config.run_name else [])]
    return preset, [*overrides, *config.overrides]


def training_command(spec: DatasetSpec, config: ColorizerConfig, data_root: Path) -> list[str]:
    """``python -m model.train`` on the dataset's data; it starts ``torchrun`` itself when ``gpus`` > 1."""
    preset, overrides = training_arguments(spec, config, data_root)
    return [sys.executable, "-m", "model.train", *(["--config", str(preset)] if preset else []), *overrides]


def check_training_config(spec: DatasetSpec, config: ColorizerConfig, data_root: Path) -> None:
    """Refuse a config the training process would refuse, here, with its one-line reason (not as an exit code
    of another process)."""
    from model.config import TrainConfigError, load_train_config  # torch: loaded by this step only

    try:
        load_train_config(*training_arguments(spec, config, data_root))
    except TrainConfigError as error:
        raise dg.Failure(description=f"training config: {error}") from error


def run_training(
    context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient, command: list[str], failure: Path
) -> dg.MaterializeResult:
    """Run the trainer through Pipes; where it ends in a user error (a damaged file, a full disk), the step fails
    with that error's one line, which the trainer writes to ``failure``, not with its exit code."""
    from model.launch import FAILURE_EXTRA  # torch: loaded by this step only

    extras = {FAILURE_EXTRA: str(failure)}
    try:
        invocation = pipes.run(context=context, command=command, cwd=str(REPO_ROOT), extras=extras)
    except Exception as error:
        if failure.is_file():
            raise dg.Failure(description=failure.read_text()) from error
        raise
    return invocation.get_materialize_result()


def training_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=asset_key(spec, "colorizer"),
        group_name=group_name(spec),
        deps=[asset_key(spec, "lab_shards"), asset_key(spec, "tag_tokens")],
        kinds={"pytorch"},
        pool=GPU_POOL,
        description="The tag-conditioned cWGAN-GP, trained in its own process (torchrun for several GPUs).",
    )
    def colorizer(
        context: dg.AssetExecutionContext,
        config: ColorizerConfig,
        storage: TagcolorStorage,
        pipes: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        check_training_config(spec, config, storage.paths(spec.name).root)
        command = training_command(spec, config, storage.paths(spec.name).root)
        context.log.info(" ".join(command))
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="tagcolor-colorizer-") as scratch:
            # Dagster's own Pipes client reads one of its preview properties: nothing here to act on.
            warnings.filterwarnings("ignore", r"Function `PipesMessageReader\.", dg.PreviewWarning)
            result = run_training(context, pipes, command, Path(scratch) / "failure.txt")
        return dg.MaterializeResult(metadata=readable(result.metadata or {}))

    return [colorizer]
