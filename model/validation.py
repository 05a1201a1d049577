"""Validation while a run trains: the EMA generator scored on the run's validation photos (training-shard photos
set aside, never trained on; never the held-out test shard) with the evaluation's own metric functions, every
``val_every`` steps; the figures go into the run's metrics, and the best step by ``select_by`` is kept as
``best.pt``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from model.collage import with_ab
from model.data import TokenIndex, checkpoint_ids
from model.inference import Colorizer
from model.metrics import ImageMetrics, Reference, image_metrics
from model.photo_sets import IMAGE_COLUMNS, rows_set
from pipeline.core.layout import DatasetLayout, read_images_table

FIGURES = ("ab_error", "psnr", "hue_error", "delta_cf")
"""What a validation reports (with true tags), as ``val_<figure>`` columns of ``metrics.parquet``."""
BATCH = 32


class Validation:
    """The run's validation photos as stored (224² Lab), read once, with their tags as the checkpoint's ids."""

    def __init__(self, layout: DatasetLayout, val_ids: Sequence[int], tokenizer: str, index: TokenIndex) -> None:
        ids = np.asarray(sorted(val_ids))
        shards = sorted({int(image_id) // layout.shard_size for image_id in ids})
        images = read_images_table(layout.paths, IMAGE_COLUMNS, shards)
        selected = images[images["image_id"].isin(ids)].reset_index(drop=True)
        photos = rows_set(layout.paths, selected, tokenizer, "validation photos", {})
        self.lab = photos.read(np.arange(len(photos)))
        self.tokens = checkpoint_ids(photos.raw_tokens, layout.paths, index)

    def __len__(self) -> int:
        return len(self.lab)

    def score(self, ema: torch.nn.Module, index: TokenIndex, image_size: int, device: torch.device) -> dict[str, float]:
        """The ``val_`` figures of the EMA generator now, and ``val_s``, the seconds they took. Deterministic and
        drawing no random number, so training goes on exactly as without it."""
        started = time.perf_counter()
        colorizer = Colorizer(ema, index, image_size, device)
        parts = []
        for start in range(0, len(self), BATCH):
            reference = Reference.of(self.lab[start : start + BATCH])
            ab = colorizer.predict_ab(reference.lab[..., 0], self.tokens[start : start + BATCH])
            parts.append(image_metrics(with_ab(reference.lab, ab), reference))
        summary = ImageMetrics.concat(parts).summary()
        return {f"val_{name}": summary[name] for name in FIGURES} | {"val_s": time.perf_counter() - started}
