"""Where a run's progress goes besides its checkpoints: ``metrics.parquet`` (every logged row), ``plan.json``
(where a staged plan stands), TensorBoard event files, and the one-line rows printed or sent to Dagster."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from model.config import TrainConfig
from model.distributed import Distributed
from model.plan import Stage, stage_at
from pipeline.core.files import atomic_path, atomic_write_text
from pipeline.core.layout import read_table

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)


METRICS = "metrics.parquet"


PLAN_PROGRESS = "plan.json"


TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Rows logged before a resumed checkpoint; rows a killed run logged after it are dropped."""
    if not path.is_file():
        return []
    table = read_table(path, "delete it to resume without the earlier rows, or restore it")
    return table[table["step"] <= up_to_step].to_dict("records")


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


def write_plan_progress(run_dir: Path, stages: Sequence[Stage], step: int) -> None:
    """``plan.json``: the stages and where the run stands, beside the checkpoint it describes."""
    current = stage_at(stages, step)
    progress = {
        "step": step,
        "stage": current.number,
        "stages": len(stages),
        "done": step >= stages[-1].end_step,
        "plan": [dataclasses.asdict(stage) for stage in stages],
    }
    atomic_write_text(run_dir / PLAN_PROGRESS, json.dumps(progress, indent=2) + "\n")


class TensorBoard:
    """Rank 0's TensorBoard event files in ``runs/<run_name>/tensorboard/``: every logged metrics row and every
    snapshot; nothing on other ranks, with ``tensorboard: false``, or by default without the package.

    Each process starts a new event file; its ``purge_step`` tells TensorBoard to drop what a killed process
    logged after the checkpoint this one resumed from, as ``metrics.parquet`` drops those rows.
    """

    def __init__(self, writer: SummaryWriter | None) -> None:
        self.writer = writer

    @classmethod
    def open(cls, config: TrainConfig, ddp: Distributed, step: int) -> TensorBoard:
        """Event files from ``step + 1`` on, where ``config`` asks for them."""
        if not ddp.is_main or config.tensorboard is False:
            return cls(None)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if config.tensorboard:
                raise
            logger.info("tensorboard: not installed, so no event files (pip install -e '.[tensorboard]')")
            return cls(None)
        return cls(SummaryWriter(config.run_dir / TENSORBOARD_DIR, purge_step=step + 1))

    def scalars(self, row: dict[str, Any]) -> None:
        """One metrics row, each value under its column's name."""
        if self.writer is not None:
            for key, value in row.items():
                if key != "step":
                    self.writer.add_scalar(key, value, row["step"])

    def image(self, path: Path, step: int) -> None:
        """A snapshot PNG, under one tag, so TensorBoard's step slider runs through the snapshots."""
        if self.writer is not None:
            with Image.open(path) as image:
                self.writer.add_image("snapshot", np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()


def format_row(row: dict[str, Any]) -> str:
    return " ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in row.items()
    )
