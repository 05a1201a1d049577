"""Imports go one way (docs/ARCHITECTURE.md, "Layers"): core ← plain steps ← Dagster layer, core ← model, and
the command lines over both steps and model, without Dagster.

Read from the source with ``ast``, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

DAGSTER = ("dagster", "dagster_webserver", "dagster_graphql", "dagster_dg_cli", "dagster_shared")
TORCH = ("torch", "torchvision")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: relative import; the layer test reads absolute imports only")
    return modules


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(f"{package}.") for package in packages)


def layer_of(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).parts
    if parts[0] == "model":
        return "model"
    if parts[:2] == ("pipeline", "core"):
        return "core"
    if parts[:2] == ("pipeline", "defs"):
        return "dagster"
    if parts[:2] == ("pipeline", "commands"):
        return "commands"
    return "steps"


RULES = {
    "core": ((*DAGSTER, "dagster_pipes", *TORCH, "model", "pipeline"), ("pipeline.core",)),
    "steps": ((*DAGSTER, "dagster_pipes", *TORCH, "model", "pipeline.defs", "pipeline.commands"), ()),
    "model": ((*DAGSTER, "dagster_pipes", "pipeline"), ("pipeline.core",)),
    "commands": ((*DAGSTER, "dagster_pipes", "pipeline.defs"), ()),
    "dagster": ((), ()),
}
"""Per layer: the packages it must not import, and the parts of them it may. The plain steps are every
pipeline module outside ``core``, ``defs`` and ``commands``."""

EDGES = {"model/launch.py": ("dagster_pipes",)}
"""The training process reports to Dagster through Pipes, at its edge."""

SOURCES = sorted(path for folder in ("pipeline", "model") for path in (REPO_ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_imports_stay_within_their_layer(path: Path) -> None:
    name, layer = str(path.relative_to(REPO_ROOT)), layer_of(path)
    forbidden, allowed = RULES[layer]
    allowed += EDGES.get(name, ())
    crossing = sorted(m for m in imported_modules(path) if within(m, forbidden) and not within(m, allowed))
    assert not crossing, f"{name} ({layer} layer) imports {crossing}"


def test_only_the_dagster_layer_imports_dagster() -> None:
    importers = {
        str(path.relative_to(REPO_ROOT))
        for path in SOURCES
        if any(within(module, DAGSTER) for module in imported_modules(path))
    }
    assert importers and all(name.startswith("pipeline/defs/") for name in importers), sorted(importers)


def test_pipeline_package_imports_nothing() -> None:
    """``import pipeline.core.…`` must pull in nothing else: the package itself is empty."""
    assert (REPO_ROOT / "pipeline" / "__init__.py").read_text().strip() == ""


def test_the_checker_sees_crossings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from dagster import asset\n    import torch.nn\n")
    assert {"dagster", "dagster.asset", "torch.nn"} <= imported_modules(bad)
    assert within("torch.nn", TORCH) and not within("torchmetrics", TORCH)


def import_closure(module: str) -> set[str]:
    """Every project module ``module`` loads, directly or through others (``model`` and ``pipeline`` only)."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        path = REPO_ROOT / Path(*name.split(".")).with_suffix(".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        pending += [m for m in imported_modules(path) if within(m, ("model", "pipeline"))]
    return seen


def test_training_never_loads_evaluation_or_the_command_lines() -> None:
    """The trainer's snapshots reuse the photo sets and the collage, not the evaluation stack (FID's networks,
    the metrics) nor the colorize command line."""
    reached = import_closure("model.train")
    assert {"model.data", "model.snapshots", "model.photo_sets", "model.collage"} <= reached
    assert not reached & {"model.evaluation", "model.fid", "model.colorize"}, sorted(reached)
