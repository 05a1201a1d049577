"""Collages of photos coloured by a checkpoint: the grey input, the photo coloured under each tag set, the
original; shown by the evaluation and by the snapshots a run writes while it trains."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.inference import Colorizer
from model.photo_sets import EvaluationSet
from pipeline.core.color import NEUTRAL_AB, lab_u8_to_rgb
from pipeline.core.render import CollageRow, render_collage

MIN_TILE = 128
"""Smaller photos are enlarged in collages so that column titles and captions stay legible."""


def with_ab(lab: np.ndarray, ab: np.ndarray | int) -> np.ndarray:
    """A copy of uint8 Lab ``lab`` with its a, b replaced by ``ab`` (broadcast)."""
    out = lab.copy()
    out[..., 1:] = ab
    return out


def coloured_collage(
    eval_set: EvaluationSet,
    positions: np.ndarray,
    token_sets: Sequence[np.ndarray],
    colorizer: Colorizer,
    path: Path,
    titles: Sequence[str] = ("generated",),
) -> Path:
    """Grey input | the photos coloured under each of ``token_sets`` (one row of tags per photo) | original,
    for the photos at ``positions``."""
    lab = eval_set.read(positions)
    coloured = [lab_u8_to_rgb(with_ab(lab, colorizer.predict_ab(lab[..., 0], tokens))) for tokens in token_sets]
    grey = lab_u8_to_rgb(with_ab(lab, NEUTRAL_AB))
    originals = lab_u8_to_rgb(lab)
    collage_rows = [
        CollageRow(
            (grey[i], *(c[i] for c in coloured), originals[i]), eval_set.captions.get(int(eval_set.image_ids[p]), "")
        )
        for i, p in enumerate(positions)
    ]
    columns = ("grey input", *titles, "original")
    return render_collage(collage_rows, path, tile=max(lab.shape[1], MIN_TILE), columns=columns)
