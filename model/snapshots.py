"""Snapshot collages while a run trains: the same few photos coloured by the EMA generator every
``snapshot_every`` steps, as stylegan2-ada's ``fakes<kimg>.png``, so a run's progress (or its collapse) shows
by eye long before it ends.

The photos are the first ones of the evaluation's result collage (:func:`model.photo_sets.holdout_set` with
its defaults), so the snapshots of a run lead up to its evaluation. Where the held-out shard is not on disk
(a subset run on a machine without it), the first colour photos of the training shards stand in.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.collage import coloured_collage
from model.data import TokenIndex, checkpoint_ids
from model.inference import Colorizer
from model.networks import Generator
from model.photo_sets import IMAGE_COLUMNS, EvaluationSet, colour_photos, holdout_set, rows_set
from pipeline.core.files import atomic_path
from pipeline.core.layout import DataError, DatasetPaths, read_images_table

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"
STEP_NAME = "step_{step:06d}.png"
LATEST_NAME = "snapshot_latest.png"
SNAPSHOT_ROWS = 6
"""Photos per snapshot: enough to see colours and tags at work, few enough to cost a fraction of a step."""


def snapshot_photos(
    paths: DatasetPaths, holdout_shard: int, shards: Sequence[int], tokenizer: str, rows: int = SNAPSHOT_ROWS
) -> EvaluationSet:
    """The ``rows`` photos every snapshot of a run shows: held-out ones where the shard is here, else the first
    training photos. They depend on the dataset alone, so a resumed run shows the same ones."""
    reason = f"{paths.shard(holdout_shard)} is not on disk"
    if paths.shard(holdout_shard).is_file():
        try:
            held_out = holdout_set(paths, holdout_shard, tokenizer)
        except ValueError as error:
            reason = str(error)
        else:
            ids = held_out.image_ids[:rows]
            return EvaluationSet.of(paths, ids, tokenizer, held_out.description, held_out.read, held_out.protocol)
    first = colour_photos(read_images_table(paths, IMAGE_COLUMNS, shards), shards).head(rows)
    if first.empty:
        raise DataError(f"snapshot_every: shards {list(shards)} hold no colour photo to show; set it to 0")
    logger.info("snapshots: %s; showing the first training photos instead", reason)
    description = f"first training photos of {paths.root.name}"
    return rows_set(paths, first, tokenizer, description, {"split": "train", "shards": list(shards)})


class SnapshotWriter:
    """Writes a run's snapshots: ``snapshots/step_<step>.png`` and a copy as ``snapshot_latest.png``.

    Columns: grey input | generated | original, captioned with the tags. The generator is the run's EMA
    generator itself (always in eval mode, updated in place by training), run under ``no_grad`` without any
    randomness, so a snapshot never changes what training does next: a run with snapshots stays resume-exact.
    """

    def __init__(
        self, photos: EvaluationSet, ema: Generator, index: TokenIndex, image_size: int, run_dir: Path
    ) -> None:
        self.photos = photos
        self.positions = np.arange(len(photos))
        self.tokens = checkpoint_ids(photos.raw_tokens, photos.paths, index)
        self.colorizer = Colorizer(ema, index, image_size, next(ema.parameters()).device)
        self.run_dir = run_dir

    def write(self, step: int) -> Path:
        """The collage of ``step``, written atomically, then copied to ``snapshot_latest.png``."""
        path = self.run_dir / SNAPSHOT_DIR / STEP_NAME.format(step=step)
        coloured_collage(self.photos, self.positions, [self.tokens], self.colorizer, path)
        with atomic_path(self.run_dir / LATEST_NAME, suffix=".png") as tmp:
            shutil.copyfile(path, tmp)
        return path


def latest_snapshot(run_dir: Path) -> Path | None:
    """A run's ``snapshot_latest.png``; None while it has none (``snapshot_every: 0`` writes none)."""
    path = run_dir / LATEST_NAME
    return path if path.is_file() else None
