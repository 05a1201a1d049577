"""Score a trained run, this dataset's or any other's, on a dataset's photos: the one entry point of the
``evaluation`` asset and of this command line, which needs no Dagster.

    python -m pipeline.commands.evaluate imagenet-val --run mirflickr1m/mirflickr1m_1gpu \\
        --split all --crop center --size 256 --first-n 5000 --device cuda

``--split holdout`` (the default) scores the held-out shard (224² as stored); ``--split all`` scores every
original photo file of a folder dataset under the protocol (``--crop``, ``--size``, ``--first-n`` by sorted
file name), which is how published colorization figures are measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.config import ConfigError
from pipeline.core.errors import USER_ERRORS
from pipeline.core.layout import RUN_CONFIG, DatasetPaths
from pipeline.datasets import load_dataset_specs
from pipeline.sources.base import DatasetSpec
from pipeline.storage import Storage, dataset_dirs_from_environ

if TYPE_CHECKING:
    from model.evaluation import EvaluationResult


@dataclass(frozen=True)
class ScoringOptions:
    """Which run to score on which photos of a dataset, and how; the ``evaluation`` asset's run config holds the
    same fields (``pipeline.defs.evaluation.EvaluationConfig``), documented there."""

    run: str = ""
    split: str = "holdout"
    crop: str = "center"
    size: int = 256
    first_n: int | None = None
    n_images: int | None = 256
    collage_rows: int = 8
    steering: list[str] = field(default_factory=list)
    steering_rows: int = 4
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"


def named_run(storage: Storage, dataset: str, run: str) -> Path:
    """The run directory ``run`` names, ``<dataset>/<run_name>`` or ``<run_name>`` of ``dataset``, which must lie
    below the data root."""
    owner, _, name = run.rpartition("/")
    run_dir = storage.paths(owner or dataset).runs / name
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run {run!r}: no run directory {run_dir}")
    return DatasetPaths(Path(storage.data_dir)).inside(run_dir)


def score(spec: DatasetSpec, paths: DatasetPaths, run_dir: Path, options: ScoringOptions) -> EvaluationResult:
    """Score ``run_dir`` on ``spec``'s photos as ``options`` say (:func:`model.evaluation.score_run`)."""
    from model import evaluation  # torch: loaded by scoring only, not by the definitions
    from model.photo_sets import PhotoFiles, Protocol

    steering = options.steering or spec.steering_tags or evaluation.DEFAULT_STEERING
    common = {
        "n_images": options.n_images,
        "seed": options.seed,
        "device": options.device,
        "collage_rows": options.collage_rows,
        "steering": steering,
        "steering_rows": options.steering_rows,
        "batch_size": options.batch_size,
    }
    if options.split == "holdout":
        return evaluation.score_run(paths, run_dir, **common)
    if options.split != "all":
        raise ConfigError(f"split: must be holdout or all, got {options.split!r}")
    protocol = Protocol(crop=options.crop, size=options.size, first_n=options.first_n)
    with spec.open_photos(paths) as photos:
        files = PhotoFiles(spec.photo_names(paths), photos.read)
        return evaluation.score_run(paths, run_dir, photos=files, protocol=protocol, **common)


def _arguments(parser: argparse.ArgumentParser) -> None:
    """One option per field of :class:`ScoringOptions` (``--steering`` repeated for several tag sets)."""
    hints = typing.get_type_hints(ScoringOptions)
    for option in dataclasses.fields(ScoringOptions):
        flag = f"--{option.name.replace('_', '-')}"
        if option.name == "steering":
            parser.add_argument(flag, action="append", default=[], help='a tag set, e.g. "sunset, beach"; repeat')
        elif option.name != "run":
            kind = int if int in (typing.get_args(hints[option.name]) or (hints[option.name],)) else str
            parser.add_argument(flag, type=kind, default=option.default, help=f"default: {option.default}")
    parser.add_argument("--run", default="", help="<run_name>, <dataset>/<run_name> or a run directory")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.commands.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="the dataset whose photos are scored")
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        storage = Storage.from_environ()
        specs = load_dataset_specs(dataset_dirs_from_environ())
        if args.dataset not in specs:
            parser.error(f"no dataset {args.dataset!r}; known: {', '.join(sorted(specs))}")
        options = ScoringOptions(**{key: value for key, value in vars(args).items() if key != "dataset"})
        paths = storage.paths(args.dataset)
        run_dir = paths.latest_run()
        if args.run:
            given = Path(args.run)  # a run directory anywhere, as documented, or a run under the data root
            run_dir = given if (given / RUN_CONFIG).is_file() else named_run(storage, args.dataset, args.run)
        if run_dir is None:
            raise FileNotFoundError(f"no run under {paths.runs}: name one with --run")
        result = score(storage.resolve(specs[args.dataset]), paths, run_dir, options)
    except USER_ERRORS as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for key, value in result.figures.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"metrics: {result.metrics_path}\ncollages: {result.collage_path}, {result.steering_collage_path}")


if __name__ == "__main__":
    main()
