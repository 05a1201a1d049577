"""A training recipe on a dataset, for a time budget: the evaluation's table, so recipes compare in one command.

Run from the repository root, on a prepared dataset (``make demo`` prepares ``data/sample``):

    .venv/bin/python benchmarks/quality.py --data-root data/sample --config sample_demo --budget-s 150 \\
        [--compare sample_demo_old.yaml] [key=value ...]

Each recipe trains from scratch in a temporary run directory until ``--budget-s`` seconds of training (its
``max_steps`` still applies), on the CPU unless a ``device=`` override says otherwise, and is scored on the
dataset's held-out shard: ab error, hue error, PSNR, SSIM, ΔCF (and FID / LPIPS where their weights are
available) under true, no and shuffled tags, beside the grey and training-mean baselines. For the synthetic
sample the benchmark also knows each photo's theme colour, which neither the model nor its losses may
know, and reports how often the generated foreground's mean colour is nearest to it among the 8 theme colours.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from model.config import load_train_config
from model.data import checkpoint_ids
from model.evaluation import CONDITIONS, EvaluationResult, evaluate_run, trained_split
from model.inference import Colorizer
from model.photo_sets import holdout_set
from model.train import train
from pipeline.core.layout import DatasetPaths
from pipeline.core.vocabulary import load_tag_encoding, tag_text, tiktoken_cache_dir
from pipeline.datasets import load_dataset_specs
from pipeline.sources import synthetic

TRAIN_DIR = Path(__file__).resolve().parents[1] / "assets_config" / "train"
COLUMNS = ("ab_error", "hue_error", "psnr", "ssim", "delta_cf", "fid", "lpips")
FOREGROUND_CHROMA = 12.0
"""Lab chroma above which an original pixel belongs to a theme-coloured object (the sample's ground is grey)."""
MIN_FOREGROUND = 20


def preset(name: str) -> Path:
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else TRAIN_DIR / f"{name}.yaml"


def theme_accuracy(paths: DatasetPaths, result: EvaluationResult, checkpoint: Path) -> tuple[float, int] | None:
    """Share of held-out colour photos whose colour tag lies within their first 20 tokens and whose generated
    foreground is nearest to their own theme colour; None unless ``paths`` holds the synthetic sample."""
    spec = load_dataset_specs().get(paths.root.name)
    if not isinstance(spec, synthetic.Spec):
        return None
    encoding = load_tag_encoding(tiktoken_cache_dir(os.environ))
    names = list(synthetic.COLOURS)
    palette = np.array([synthetic.COLOURS[name] for name in names])
    colorizer = Colorizer.from_checkpoint(checkpoint)
    eval_set = holdout_set(paths, trained_split(checkpoint.parent)[0], colorizer.index.tokenizer, n_images=None)
    tokens = checkpoint_ids(eval_set.raw_tokens, paths, colorizer.index)
    hits = counted = 0
    for position, image_id in enumerate(eval_set.image_ids):
        tags = synthetic.sample_tags(spec, int(image_id))
        colour = next((tag for tag in tags if tag in synthetic.COLOURS), None)
        # The colour tag counts only where it lies within the first 20 tokens the model reads.
        if colour is None or len(encoding.encode_ordinary(tag_text(tags[: tags.index(colour) + 1]))) > 20:
            continue
        lab = eval_set.read(np.array([position]))
        foreground = np.hypot(*(lab[0, ..., 1:].astype(np.float32) - 128).transpose(2, 0, 1)) > FOREGROUND_CHROMA
        if foreground.sum() < MIN_FOREGROUND:
            continue
        ab = colorizer.predict_ab(lab[..., 0], tokens[position : position + 1])[0]
        mean = ab[foreground].astype(np.float32).mean(axis=0) - 128
        counted += 1
        hits += names[int(np.argmin(np.linalg.norm(palette - mean, axis=1)))] == colour
    return (hits / counted if counted else float("nan")), counted


def run(data_root: Path, config: Path, budget_s: float, overrides: list[str], runs_dir: Path) -> dict:
    """Train ``config`` for the budget and evaluate it; the table's figures."""
    name = config.stem
    train_config = load_train_config(
        config,
        [
            f"data_root={data_root}",
            f"runs_dir={runs_dir}",
            f"run_name={name}",
            f"max_seconds={budget_s}",
            "resume=false",
            "device=cpu",
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = train(train_config)
    trained_s = time.perf_counter() - started
    paths = DatasetPaths(data_root)
    started = time.perf_counter()
    evaluation = evaluate_run(paths, result.run_dir, n_images=None, out_dir=result.run_dir / "evaluation")
    evaluated_s = time.perf_counter() - started
    theme = theme_accuracy(paths, evaluation, result.checkpoint)
    return {
        "recipe": name,
        "steps": result.step,
        "train_s": trained_s,
        "evaluate_s": evaluated_s,
        "metrics": evaluation.metrics,
        "theme": theme,
    }


def print_table(outcome: dict) -> None:
    metrics = outcome["metrics"]
    trained = f"{outcome['steps']} steps in {outcome['train_s']:.0f} s"
    scored = f"{outcome['evaluate_s']:.0f} s on {metrics['n_images']} photos ({metrics['evaluated_on']})"
    print(f"\n## {outcome['recipe']}: {trained}, evaluated in {scored}")
    print("| set | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for group in ("conditions", "baselines"):
        for name, summary in metrics[group].items():
            cells = [f"{summary[c]:.4g}" if isinstance(summary.get(c), float) else "n/a" for c in COLUMNS]
            print(f"| {name} | " + " | ".join(cells) + " |")
    headline = metrics["headline"]
    grey = metrics["baselines"]["grey"]["ab_error"]
    ratio = metrics["conditions"]["tags"]["ab_error"] / grey
    print(f"tag_gain {headline['tag_gain']:.3g}, ab error with tags / grey {ratio:.3g}", end="")
    if outcome["theme"] is not None:
        share, counted = outcome["theme"]
        print(f", theme colour right {share:.1%} of {counted} photos", end="")
    print("\n" + "; ".join(f"{k}: {v}" for k, v in metrics["learned_metrics"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("data/sample"))
    parser.add_argument("--config", default="sample_demo", help="a preset under assets_config/train or a YAML path")
    parser.add_argument("--compare", action="append", default=[], help="another recipe, scored the same way")
    parser.add_argument("--budget-s", type=float, default=150.0, help="seconds of training per recipe")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every recipe")
    args = parser.parse_args()
    if not (args.data_root / "images.parquet").exists():
        parser.error(f"{args.data_root} is not a prepared dataset (make demo prepares data/sample)")
    conditions = ", ".join(CONDITIONS)
    print(f"{args.data_root}: {args.budget_s:.0f} s of training per recipe, conditions {conditions}", flush=True)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="tagcolor-quality-") as runs_dir:
        for config in [args.config, *args.compare]:
            outcome = run(args.data_root, preset(config), args.budget_s, args.overrides, Path(runs_dir))
            print_table(outcome)
            outcomes.append(outcome)
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
