"""How ``python -m model.train`` runs: under torchrun when it asks for several processes (``gpus``, ``nnodes``),
reporting to Dagster through Pipes when the ``colorizer`` asset launched it, printing its rows otherwise; every
user error ends in one line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

from model.config import TrainConfig, TrainConfigError, load_train_config, read_train_config
from model.curves import CURVES_NAME, plot_curves
from model.distributed import distributed_from_env
from model.reporting import METRICS, format_row
from model.snapshots import latest_snapshot
from pipeline.core.errors import USER_ERRORS as DATA_USER_ERRORS
from pipeline.core.layout import BEST_CHECKPOINT
from pipeline.core.render import preview_markdown

if TYPE_CHECKING:
    from model.train import TrainResult

Train = Callable[..., "TrainResult"]


FAILURE_EXTRA = "failure_file"
"""The Pipes extra naming the file where a Pipes-launched trainer writes the one line a user error ends in."""


def summary(result: TrainResult) -> dict[str, Any]:
    """What a finished run reports: steps, the checkpoint (``latest.pt``) and the validation's choice (``best.pt``,
    its step and figure), the run directory and the last metrics."""
    selection = result.state.selection
    best = {}
    if result.select_by and selection.best_step is not None:
        best = {
            "best_checkpoint": str(result.run_dir / BEST_CHECKPOINT),
            "best_step": selection.best_step,
            f"best_val_{result.select_by}": selection.best,
        }
    return {
        "steps": result.step,
        "checkpoint": str(result.checkpoint),
        **best,
        "run_dir": str(result.run_dir),
        **({"plan_progress": result.plan_progress} if result.plan_progress else {}),
        **{key: value for key, value in result.metrics.items() if key != "step"},
    }


def pipes_metadata(result: TrainResult) -> dict[str, Any]:
    """:func:`summary` for Dagster: the curves and the latest snapshot inline and as files, ``metrics.parquet``
    and the run as paths."""
    curves = plot_curves(pd.read_parquet(result.run_dir / METRICS), result.run_dir / CURVES_NAME)
    snapshot = latest_snapshot(result.run_dir)
    images = [("curves", curves, "training curves"), *([("snapshot", snapshot, "latest snapshot")] if snapshot else [])]
    paths = {key: path for key, path, _ in images} | {"metrics_parquet": result.run_dir / METRICS}
    return {
        "preview": {"raw_value": "\n\n".join(preview_markdown(path, title) for _, path, title in images), "type": "md"},
        **summary(result),
        **{key: {"raw_value": str(path), "type": "path"} for key, path in paths.items()},
    }


def torchrun_command(config: TrainConfig, argv: Sequence[str]) -> list[str]:
    """This entry point under torchrun: ``gpus`` processes on this machine, and with ``nnodes`` above 1 the
    c10d rendezvous that joins the machines (else ``--standalone``)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={config.gpus}"]
    if config.nnodes == 1:
        launcher.insert(3, "--standalone")
    else:
        rendezvous = f"--rdzv-endpoint={config.rdzv_endpoint}", f"--rdzv-id={config.rdzv_id or config.run_name}"
        launcher += [f"--nnodes={config.nnodes}", "--rdzv-backend=c10d", *rendezvous]
    return [*launcher, "-m", "model.train", *argv]


class _ForwardToPipes(logging.Handler):
    """The trainer's own log records (stage boundaries, resume and rank notes) also as Dagster log events: they
    would otherwise reach only the step's captured stderr."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__(logging.INFO)
        self._log = log

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "__main__" or record.name.split(".")[0] == "model"  # ``python -m model.train``

    def emit(self, record: logging.LogRecord) -> None:
        self._log.log(record.levelno, record.getMessage())


@contextlib.contextmanager
def _logs_forwarded_to(log: logging.Logger) -> Iterator[None]:
    handler = _ForwardToPipes(log)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)


USER_ERRORS = (*DATA_USER_ERRORS, torch.OutOfMemoryError)
"""Failures their message explains (a setting, a damaged file or checkpoint, the disk, GPU memory): one line,
never a traceback. A :class:`model.config.TrainConfigError` is a :class:`ConfigError`, so among them."""


def main(train: Train, argv: Sequence[str] | None = None) -> None:
    """``python -m model.train [--config PRESET] [key=value …]``, running ``train`` (:func:`model.train.train`)."""
    parser = argparse.ArgumentParser(prog="python -m model.train", description="Train the tag-conditioned colorizer.")
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig values")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a config value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        launch = read_train_config(args.config, args.overrides)
    except TrainConfigError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if (launch.gpus > 1 or launch.nnodes > 1) and "RANK" not in os.environ:
        # One process per GPU: torchrun starts them with this same command line and waits for them.
        os.execv(sys.executable, torchrun_command(launch, sys.argv[1:] if argv is None else list(argv)))
    # The machine Dagster started reports, from its first process: with several machines, global rank 0 (which
    # the rendezvous may place on another one) logs the rows, and the shared run directory has them for all.
    if PipesEnvVarParamsLoader().is_dagster_pipes_process() and os.environ.get("LOCAL_RANK", "0") == "0":
        with open_dagster_pipes() as pipes, _logs_forwarded_to(pipes.log):
            try:
                config = load_train_config(args.config, args.overrides)
                pipes.log.info(f"training {config.run_name} on {config.data_root}, shards {config.shards}")
                result = train(config, report=lambda row: pipes.log.info(format_row(row)))
            except USER_ERRORS as error:
                pipes.log.error(str(error))
                failure = pipes.extras.get(FAILURE_EXTRA)
                if failure:  # the Dagster step fails with this line instead of the exit code
                    with contextlib.suppress(OSError):  # a full disk: the line above reached the run's log anyway
                        Path(failure).write_text(str(error))
                message = str(error)
            else:
                pipes.report_asset_materialization(metadata=pipes_metadata(result))
                return
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    try:
        result = train(
            load_train_config(args.config, args.overrides), report=lambda row: print(format_row(row), flush=True)
        )
    except USER_ERRORS as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if distributed_from_env().is_main:
        print(format_row(summary(result)), flush=True)
