"""A run's training curves, drawn from its ``metrics.parquet``: what the colorizer's materialization shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.core.render import save_figure

CURVES_NAME = "curves.png"
PANELS = (
    ("critic_loss", "critic loss", False),
    ("wasserstein", "Wasserstein estimate", False),
    ("gp", "gradient penalty", True),
    ("l1", "L1 (ab, [-1, 1] units)", True),
    ("generator_loss", "generator loss", False),
    ("images_per_s", "images / s", False),
    ("val_ab_error", "validation ab error (lower: better)", False),
    ("val_psnr", "validation PSNR, dB (higher: better)", False),
)
"""Column, title, and whether the values span decades (log scale)."""


def plot_curves(metrics: pd.DataFrame, path: Path) -> Path:
    """One panel per logged value against the step, all on one step axis; a value a phase does not log (the
    critic's during the L1 warm-up) is absent there, and a dashed line marks where the critic joins; validation
    figures, logged every ``val_every`` steps, are drawn as points joined by lines. Written atomically to
    ``path``."""
    figure = Figure(figsize=(16, 6), layout="constrained")
    steps = metrics["step"].to_numpy()
    critic = metrics["critic_loss"].notna().to_numpy() if "critic_loss" in metrics else np.zeros(len(steps), bool)
    joins = steps[critic][0] if critic.any() and not critic[0] else None
    for axis, (column, title, log) in zip(figure.subplots(2, 4, sharex=True).flat, PANELS, strict=True):
        if joins is not None:
            axis.axvline(joins, color="grey", linestyle="--", linewidth=1, label="critic joins")
        axis.set_title(title)
        axis.set_xlabel("step")
        values = metrics[column].to_numpy(dtype=np.float64) if column in metrics else np.full(len(steps), np.nan)
        shown = np.isfinite(values) & ((values > 0) if log else True)
        if not shown.any():
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes)
            continue
        axis.plot(steps[shown], values[shown], linewidth=1.2, marker="o" if column.startswith("val_") else None)
        if log:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    return save_figure(figure, path)
