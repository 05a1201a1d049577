"""Colour a folder dataset's photos at full size with a trained run, shard by shard and incrementally: the one
entry point of the ``colorized`` asset and of this command line, which needs no Dagster.

    python -m pipeline.commands.colorize_folder my-scans --run mirflickr1m/mirflickr1m_1gpu \\
        [--checkpoint latest] [--tags own | --tags none | --tags "sunset, beach"] [--format png] [--prune]

Outputs go to ``<data>/<dataset>/colorized/<run's dataset>/<run_name>/``, mirroring the folder's tree
(:mod:`pipeline.colorized`); a second call colours only what changed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.colorized import (
    OutputSettings,
    ShardReport,
    colour_shard,
    manifest_path,
    read_colorized_manifest,
    write_gallery,
)
from pipeline.commands.evaluate import named_run
from pipeline.core.config import ConfigError
from pipeline.core.errors import USER_ERRORS
from pipeline.core.layout import BEST_CHECKPOINT, LATEST_CHECKPOINT
from pipeline.core.render import Markdown, preview_markdown
from pipeline.core.vocabulary import parse_tags
from pipeline.datasets import load_dataset_specs
from pipeline.sources import folder
from pipeline.sources.base import DatasetSpec
from pipeline.storage import Storage, dataset_dirs_from_environ
from pipeline.tokens import parse_tag_file

CHECKPOINTS = {"best": BEST_CHECKPOINT, "latest": LATEST_CHECKPOINT}


@dataclass(frozen=True)
class ColouringOptions:
    """Which run colours the folder and how; the ``colorized`` asset's run config holds the same fields.

    ``run``: ``<run_name>`` of this dataset or ``<dataset>/<run_name>``; empty: the dataset's newest run.
    ``checkpoint``: ``best`` (``best.pt`` where the run has one, else ``latest.pt``) or ``latest``. ``tags``:
    ``own`` (the folder's sidecars or ``tags.csv``), ``none``, or a tag list such as ``"sunset, beach"``.
    ``format``: ``jpeg`` (``quality``) or ``png``. ``prune``: delete the outputs of photos gone from the folder.
    """

    run: str = ""
    checkpoint: str = "best"
    tags: str = "own"
    format: str = "jpeg"
    quality: int = 95
    prune: bool = False
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"


GALLERY_ROWS = 4
"""Photos of each kind the preview shows: the shard's first, and the last this call coloured."""


@dataclass(frozen=True)
class FolderColouring:
    """What colouring one shard did, and with what."""

    report: ShardReport
    shard: int
    root: Path
    run_dir: Path
    checkpoint: Path
    step: int | None
    checkpoint_sha256: str
    out_dir: Path

    @property
    def summary(self) -> str:
        report = self.report
        refused = {reason: len(paths) for reason, paths in sorted(report.refused.items())}
        reasons = f" ({', '.join(f'{count} {reason}' for reason, count in refused.items())})" if refused else ""
        return (
            f"{len(report.coloured)} coloured, {report.skipped} up to date, {sum(refused.values())} refused{reasons},"
            f" {len(report.removed)} removed{' and deleted' if report.pruned else ''}; run"
            f" {self.run_dir.parent.parent.name}/{self.run_dir.name}, {self.checkpoint.name} (step {self.step})"
        )

    def gallery(self) -> Path | None:
        """Before/after of the shard's first photos and of the last this call coloured; None before any."""
        recorded = read_colorized_manifest(manifest_path(self.out_dir, self.shard)).sort_values("path")
        first = list(zip(recorded["path"], recorded["output"], strict=True))[:GALLERY_ROWS]
        pairs = list(dict.fromkeys([*first, *self.report.coloured[-GALLERY_ROWS:]]))
        if not pairs:
            return None
        return write_gallery(self.root, self.out_dir, pairs, self.out_dir / f"gallery_{self.shard:03d}.png")

    @property
    def metadata(self) -> dict[str, object]:
        """The summary and the gallery (the UI's preview), the counts, the run and checkpoint, where outputs go."""
        report, gallery = self.report, self.gallery()
        preview = self.summary + (f"\n\n{preview_markdown(gallery, 'before and after', width=512)}" if gallery else "")
        return {
            "preview": Markdown(preview),
            "coloured": len(report.coloured),
            "up_to_date": report.skipped,
            "refused": sum(len(paths) for paths in report.refused.values()),
            **{f"refused_{reason}": len(paths) for reason, paths in sorted(report.refused.items())},
            "removed": len(report.removed),
            "bytes_written": report.bytes_written,
            "checkpoint": self.checkpoint,
            "checkpoint_step": self.step if self.step is not None else -1,
            "checkpoint_sha256": self.checkpoint_sha256,
            "out_dir": self.out_dir,
            **({"gallery": gallery} if gallery else {}),
        }


def chosen_run(storage: Storage, dataset: str, run: str) -> Path:
    """The run ``run`` names, else the dataset's newest run; an error saying how to name one where it has none."""
    if run:
        return named_run(storage, dataset, run)
    newest = storage.paths(dataset).latest_run()
    if newest is None:
        raise ConfigError(
            f"run: {dataset} has no trained run to colour with; name one, e.g. run=<dataset>/<run_name>"
            " (a run of a dataset of colour photos: a folder of black-and-white scans cannot train one)"
        )
    return newest


def chosen_checkpoint(run_dir: Path, which: str) -> Path:
    """``best.pt`` (else ``latest.pt``) or ``latest.pt`` of ``run_dir``."""
    if which not in CHECKPOINTS:
        raise ConfigError(f"checkpoint: {which!r} is not one of {', '.join(CHECKPOINTS)}")
    names = [CHECKPOINTS[which], *([LATEST_CHECKPOINT] if which == "best" else [])]
    found = next((run_dir / name for name in names if (run_dir / name).is_file()), None)
    if found is None:
        raise ConfigError(f"checkpoint: {run_dir} holds no {' or '.join(names)}")
    return found


def tags_reader(root: Path, paths: Sequence[str], tags: str) -> Callable[[str], list[str]]:
    """Each photo's tags as ``tags`` says: its own (sidecar or ``tags.csv``, as training reads them), none, or
    the one list given."""
    if tags == "none":
        return lambda path: []
    if tags != "own":
        given = parse_tags(tags)
        return lambda path: given
    reader = folder.FolderTags(root, list(paths))
    position = {path: i for i, path in enumerate(paths)}

    def own(path: str) -> list[str]:
        raw = reader.read(position[path])
        return [] if raw is None else parse_tag_file(raw)[0]

    return own


def colour_folder_shard(
    storage: Storage,
    spec: DatasetSpec,
    shard: int,
    options: ColouringOptions,
) -> FolderColouring:
    """Colour the photos of ``shard`` of the folder dataset ``spec`` (its manifest's ids) with the chosen run."""
    if not isinstance(spec, folder.Spec):
        raise ConfigError(
            f"{spec.name}: colouring in place needs a folder of photo files (kind folder), not {spec.kind}"
        )
    paths = storage.paths(spec.name)
    manifest = folder.read_manifest(paths)
    split = spec.on_disk(paths).shard_size or len(manifest)
    photos = manifest["path"].tolist()
    in_shard = photos[shard * split : (shard + 1) * split]
    if not in_shard:
        raise ConfigError(f"shard {shard}: {spec.name}'s manifest holds {len(photos)} photos in shards of {split}")
    settings = OutputSettings(options.format, options.quality)
    run_dir = chosen_run(storage, spec.name, options.run)
    checkpoint = chosen_checkpoint(run_dir, options.checkpoint)
    from model.colorize import BatchColourer  # torch: loaded by colouring only, not by the definitions

    model = BatchColourer(checkpoint, options.device)
    out_dir = paths.root / "colorized" / run_dir.parent.parent.name / run_dir.name
    report = colour_shard(
        spec.root,
        in_shard,
        out_dir,
        shard,
        model,
        tags_reader(spec.root, photos, options.tags),
        settings,
        prune=options.prune,
        batch_size=options.batch_size,
        workers=options.workers,
    )
    return FolderColouring(report, shard, spec.root, run_dir, checkpoint, model.step, model.checkpoint_sha256, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.commands.colorize_folder DATASET``: every shard (or ``--shard``), a line each."""
    defaults = ColouringOptions()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.commands.colorize_folder", description=__doc__.splitlines()[0]
    )
    parser.add_argument("dataset", help="a folder dataset (kind folder)")
    parser.add_argument("--shard", type=int, action="append", help="only this shard; repeat (default: every one)")
    parser.add_argument("--run", default="", help="<run_name> or <dataset>/<run_name> (default: the newest run)")
    parser.add_argument("--checkpoint", default=defaults.checkpoint, choices=sorted(CHECKPOINTS))
    parser.add_argument("--tags", default=defaults.tags, help='own, none, or a tag list such as "sunset, beach"')
    parser.add_argument("--format", default=defaults.format, choices=["jpeg", "png"])
    parser.add_argument("--quality", type=int, default=defaults.quality, help="JPEG quality, 1-100")
    parser.add_argument("--prune", action="store_true", help="delete the outputs of photos gone from the folder")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="reading and writing threads")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    args = vars(parser.parse_args(argv))
    dataset, shards = args.pop("dataset"), args.pop("shard")
    try:
        storage = Storage.from_environ()
        specs = load_dataset_specs(dataset_dirs_from_environ())
        if dataset not in specs:
            parser.error(f"no dataset {dataset!r}; known: {', '.join(sorted(specs))}")
        spec = storage.resolve(specs[dataset])
        for shard in shards if shards is not None else range(spec.n_shards):
            done = colour_folder_shard(storage, spec, shard, ColouringOptions(**args))
            report = done.report
            refused = sum(len(paths) for paths in report.refused.values())
            print(
                f"shard {shard:03d}: {len(report.coloured)} coloured, {report.skipped} up to date, {refused} refused,"
                f" {len(report.removed)} removed{' (deleted)' if report.pruned else ''}; {done.out_dir}"
            )
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
