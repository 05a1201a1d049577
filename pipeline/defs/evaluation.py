"""``evaluation``: a trained run — this dataset's or any other's — scored on this dataset, with the collages.

The same scoring runs without Dagster:

    python -m pipeline.defs.evaluation imagenet-val --run mirflickr1m/mirflickr1m_1gpu \\
        --split all --crop center --size 256 --first-n 5000 --device cuda

``--split holdout`` (the default) scores the held-out shard (224² as stored); ``--split all`` scores every
original photo file of a folder dataset under the protocol (``--crop``, ``--size``, ``--first-n`` by sorted
file name), which is how published colorization figures are measured.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dagster as dg

from pipeline.core.config import ConfigError
from pipeline.core.layout import RUN_CONFIG, DatasetPaths
from pipeline.datasets import load_dataset_specs
from pipeline.defs.errors import user_errors
from pipeline.defs.keys import GPU_POOL, asset_key, group_name
from pipeline.defs.metadata import to_metadata
from pipeline.defs.resources import TagcolorStorage, dataset_dirs_from_environ, storage_from_environ
from pipeline.sources.base import DatasetSpec

if TYPE_CHECKING:
    from model.evaluation import EvaluationResult


class EvaluationConfig(dg.Config):
    """Which run to score on which photos of this dataset, and how.

    ``run``: ``<run_name>`` of this dataset or ``<dataset>/<run_name>`` of another; empty:
    the run this dataset's colorizer last trained. ``split``: ``holdout`` (the held-out shard, ``n_images``
    of it) or ``all`` (every original file of a folder dataset, cropped and resized per ``crop``/``size``,
    the first ``first_n`` by file name). ``steering``: tag sets for the steering collage (empty: the
    dataset's ``steering_tags``, else sunset / snow / forest / sea). ``device``: ``auto`` takes the GPU if
    there is one.
    """

    run: str = ""
    split: Literal["holdout", "all"] = "holdout"
    crop: Literal["center", "resize"] = "center"
    size: int = 256
    first_n: int | None = None
    n_images: int | None = 256
    collage_rows: int = 8
    steering: list[str] = []
    steering_rows: int = 4
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"


def last_trained_run(instance: dg.DagsterInstance, colorizer_key: dg.AssetKey) -> Path | None:
    """The ``run_dir`` the latest ``colorizer`` materialization reported, so automation scores that run."""
    event = instance.get_latest_materialization_event(colorizer_key)
    reported = event.asset_materialization.metadata.get("run_dir") if event and event.asset_materialization else None
    return Path(str(reported.value)) if reported is not None else None


def named_run(storage: TagcolorStorage, dataset: str, run: str) -> Path:
    """The run directory ``run`` names: ``<dataset>/<run_name>``, or ``<run_name>`` of ``dataset``."""
    owner, _, name = run.rpartition("/")
    run_dir = storage.paths(owner or dataset).runs / name
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run {run!r}: no run directory {run_dir}")
    return run_dir


def select_device(device: str) -> str:
    import torch  # loaded by this step only, not by the definitions

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {device} requested but this torch sees no GPU (install a CUDA build of torch, or use auto or cpu)"
        )
    return device


def score(spec: DatasetSpec, paths: DatasetPaths, run_dir: Path, config: EvaluationConfig) -> "EvaluationResult":
    """Score ``run_dir`` on ``spec``'s photos as ``config`` says."""
    from model import evaluation  # torch-heavy: loaded by this step only, not by the definitions

    options = {
        "collage_rows": config.collage_rows,
        "steering": config.steering or spec.steering_tags or evaluation.DEFAULT_STEERING,
        "steering_rows": config.steering_rows,
        "batch_size": config.batch_size,
        "device": select_device(config.device),
    }
    if config.split == "holdout":
        return evaluation.evaluate_run(paths, run_dir, n_images=config.n_images, seed=config.seed, **options)
    protocol = evaluation.Protocol(crop=config.crop, size=config.size, first_n=config.first_n)
    with spec.open_photos(paths) as photos:
        eval_set = evaluation.photo_set(
            paths, spec.photo_names(paths), photos.read, evaluation.run_tokenizer(run_dir), protocol
        )
        return evaluation.evaluate(
            eval_set,
            evaluation.run_checkpoint(run_dir),
            paths.evaluation,
            train_mean=evaluation.run_train_mean(run_dir, config.seed),
            seed=config.seed,
            **options,
        )


def evaluation_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    colorizer_key = asset_key(spec, "colorizer")

    @dg.asset(
        key=asset_key(spec, "evaluation"),
        group_name=group_name(spec),
        deps=[colorizer_key, asset_key(spec, "lab_shards"), asset_key(spec, "tag_tokens")],
        kinds={"pytorch", "png"},
        pool=GPU_POOL,
        automation_condition=dg.AutomationCondition.eager().allow(dg.AssetSelection.assets(colorizer_key)),
        description="FID, ΔCF, PSNR, SSIM, hue and ab error under true / no / shuffled tags, baselines and the "
        "collages (results, best, tag steering); any run, held-out shard or whole folder under a protocol.",
    )
    def evaluation(
        context: dg.AssetExecutionContext, config: EvaluationConfig, storage: TagcolorStorage
    ) -> dg.MaterializeResult:
        with user_errors():
            paths = storage.paths(spec.name)
            if config.run:  # any dataset's run, but one under the data directory
                run_dir = DatasetPaths(Path(storage.data_dir)).inside(named_run(storage, spec.name, config.run))
            else:
                run_dir = last_trained_run(context.instance, colorizer_key) or paths.latest_run()
                if run_dir is None:
                    raise dg.Failure(f"no run under {paths.runs}: materialize {spec.name}/colorizer first")
                run_dir = paths.inside(run_dir)
            result = score(storage.resolve(spec), paths, run_dir, config)
            return dg.MaterializeResult(metadata=to_metadata(result.metadata))

    return [evaluation]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.defs.evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="the dataset whose photos are scored")
    parser.add_argument("--run", default="", help="<run_name>, <dataset>/<run_name> or a run directory")
    fields = EvaluationConfig.model_fields
    for name in ("split", "crop", "size", "first_n", "n_images", "seed", "batch_size", "device"):
        kind = int if name in ("size", "first_n", "n_images", "seed", "batch_size") else str
        default = fields[name].default
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=f"default: {default}")
    parser.add_argument("--steering", action="append", default=[], help='a tag set, e.g. "sunset, beach"; repeat')
    args = parser.parse_args(argv)
    storage = storage_from_environ()
    specs = load_dataset_specs(dataset_dirs_from_environ())
    if args.dataset not in specs:
        parser.error(f"no dataset {args.dataset!r}; known: {', '.join(sorted(specs))}")
    values = {key: value for key, value in vars(args).items() if key != "dataset"}
    try:
        config = EvaluationConfig(**values)
        paths = storage.paths(args.dataset)
        run_dir = paths.latest_run()
        if args.run:
            given = Path(args.run)
            run_dir = given if (given / RUN_CONFIG).is_file() else named_run(storage, args.dataset, args.run)
        if run_dir is None:
            raise FileNotFoundError(f"no run under {paths.runs}: name one with --run")
        result = score(storage.resolve(specs[args.dataset]), paths, run_dir, config)
    except (ConfigError, OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for key, value in result.figures.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"metrics: {result.metrics_path}\ncollages: {result.collage_path}, {result.steering_collage_path}")


if __name__ == "__main__":
    main()
