"""Turning plain results into Dagster metadata and log lines."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from pipeline.core.render import Markdown
from pipeline.sources.download import DownloadProgress

_COLUMN_TYPES = {"i": "int", "u": "int", "f": "float", "b": "bool"}


def table(df: pd.DataFrame, max_rows: int = 50) -> dg.TableMetadataValue:
    """A small DataFrame as a Dagster table (the UI renders it with column types)."""
    head = df.head(max_rows)
    schema = dg.TableSchema(
        columns=[dg.TableColumn(str(c), _COLUMN_TYPES.get(head[c].dtype.kind, "string")) for c in head.columns]
    )
    records = [dg.TableRecord({str(k): _plain(v) for k, v in row.items()}) for row in head.to_dict(orient="records")]
    return dg.MetadataValue.table(records=records, schema=schema)


def _plain(value: object) -> str | int | float | bool | None:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


SIGNIFICANT_DIGITS = 4
"""Floats are shown to what they mean: ``tag_gain 3.158``, not ``3.1577540793579244``."""
TIMING_PREFIX = "timing/"


def is_timing(key: str) -> bool:
    """Producers name their timings ``seconds``, ``…_s`` or ``…_per_s``; those are filed under ``timing/``."""
    return key == "seconds" or key.endswith("_s")


def rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def numbers(figures: dict[str, float | int]) -> dict[str, dg.MetadataValue]:
    """Numeric figures as metadata the UI plots across materializations, floats to 4 significant digits.

    A non-finite value is left out: a text entry would change the key's type and break its plot.
    """
    out: dict[str, dg.MetadataValue] = {}
    for key, value in figures.items():
        if isinstance(value, bool):
            out[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, int | np.integer):
            out[key] = dg.MetadataValue.int(int(value))
        elif math.isfinite(float(value)):
            out[key] = dg.MetadataValue.float(rounded(float(value)))
    return out


def to_metadata(values: Mapping[str, object]) -> dict[str, dg.MetadataValue]:
    """A plain result's figures as Dagster metadata: paths, Markdown, tables, numbers and text.

    Numbers become plottable entries; a non-finite one is left out (see :func:`numbers`). The producer's order
    is kept (headline figures first), except that timings go last, under ``timing/``, apart from the data's
    figures.
    """
    out: dict[str, dg.MetadataValue] = {}
    ordered = sorted(values.items(), key=lambda item: is_timing(item[0]))  # stable: timings move to the end
    for key, value in ordered:
        key = TIMING_PREFIX + key if is_timing(key) and not isinstance(value, str | Path) else key
        if isinstance(value, Path):
            out[key] = dg.MetadataValue.path(str(value))
        elif isinstance(value, Markdown):
            out[key] = dg.MetadataValue.md(value)
        elif isinstance(value, pd.DataFrame):
            out[key] = table(value)
        elif isinstance(value, str):
            out[key] = dg.MetadataValue.text(value)
        else:
            out |= numbers({key: value})
    return out


def readable(metadata: Mapping[str, dg.MetadataValue]) -> dict[str, dg.MetadataValue]:
    """Metadata another process reported (through Pipes) made as readable as :func:`to_metadata` makes its own:
    floats rounded, timings last under ``timing/``."""
    out: dict[str, dg.MetadataValue] = {}
    for key, value in sorted(metadata.items(), key=lambda item: is_timing(item[0])):
        if isinstance(value, dg.FloatMetadataValue) and value.value is not None and math.isfinite(value.value):
            value = dg.MetadataValue.float(rounded(value.value))
        out[TIMING_PREFIX + key if is_timing(key) else key] = value
    return out


def check_result(
    problems: str, check_name: str | None = None, figures: Mapping[str, object] | None = None
) -> dg.AssetCheckResult:
    """A check's outcome: passed when there are no problems (''), which are listed otherwise, with its figures."""
    metadata = {"problems": dg.MetadataValue.text(problems or "none"), **to_metadata(figures or {})}
    return dg.AssetCheckResult(check_name=check_name, passed=not problems, metadata=metadata)


def byte_progress_logger(log: dg.DagsterLogManager, label: str) -> Callable[[DownloadProgress], None]:
    """A download progress callback writing bytes, rate and ETA to the Dagster log."""

    def report(progress: DownloadProgress) -> None:
        done = progress.bytes_done / 2**20
        total = f"{progress.total_bytes / 2**20:,.1f}" if progress.total_bytes else "?"
        eta = f"{progress.eta_s:,.0f} s" if progress.eta_s is not None else "?"
        log.info(f"{label}: {done:,.1f} / {total} MiB at {progress.rate_bytes_per_s / 2**20:,.1f} MiB/s, ETA {eta}")

    return report
