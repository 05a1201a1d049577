"""Training recipes on a dataset, for a time budget: chosen on validation photos, reported on the test shard.

Run from the repository root, on a prepared dataset (``make demo`` prepares ``data/sample``;
``benchmarks/real_photos.py`` a real-photo one, with its presets):

    .venv/bin/python benchmarks/quality.py --data-root data/sample --config sample_demo --budget-s 150 \\
        [--recipe "no_dropout tag_dropout=0" ...] [--compare sample_demo_old.yaml] [key=value ...]

A recipe is the ``--config`` preset with a ``--recipe``'s overrides (or another preset, ``--compare``). Each
trains from scratch in a temporary run directory until ``--budget-s`` seconds of training (its ``max_steps``
still applies), on the CPU unless a ``device=`` override says otherwise. Its chosen checkpoint (``best.pt``
where the run validates) is scored on the run's validation photos, which is what recipes are compared on, and
once on the dataset's held-out shard, which chooses nothing: ab error, hue error, PSNR, SSIM, ΔCF (and FID /
LPIPS where their weights are available) under true, no and shuffled tags, beside the grey and training-mean
baselines; a last table puts every recipe's figures side by side. For the synthetic sample the benchmark also
knows each photo's theme colour, which neither the model nor its losses may know, and reports how often the
generated foreground's mean colour is nearest to it among the 8 theme colours.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from model.checkpoint import run_checkpoint
from model.config import load_train_config
from model.data import checkpoint_ids
from model.evaluation import CONDITIONS, EvaluationResult, evaluate, evaluate_run, run_train_mean, trained_split
from model.inference import Colorizer
from model.photo_sets import holdout_set, validation_set
from model.train import train
from pipeline.core.layout import DatasetPaths, read_layout
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


@dataclass(frozen=True)
class Recipe:
    """A preset and the ``key=value`` overrides that make it this recipe."""

    name: str
    config: Path
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, config: Path) -> Recipe:
        """``"NAME key=value ..."`` on top of ``config``."""
        name, *overrides = text.split()
        if "=" in name:
            raise argparse.ArgumentTypeError(f"--recipe {text!r}: the first word names the recipe")
        return cls(name, config, tuple(overrides))


def shared_words(paths: DatasetPaths, image_ids: np.ndarray, training_ids: np.ndarray) -> np.ndarray:
    """Whether each photo of ``image_ids`` has a tag some training photo has too: where tags can carry what
    a word means from training photos to new ones."""
    tags = pd.read_parquet(paths.root / "tags.parquet", columns=["image_id", "tags"]).set_index("image_id")["tags"]
    known = {str(tag) for tag_list in tags.reindex(training_ids).dropna() for tag in tag_list}
    return np.array([bool(known & {str(tag) for tag in tags.get(int(i), [])}) for i in image_ids])


def tag_gain_by_shared_words(paths: DatasetPaths, result: EvaluationResult, run_dir: Path) -> dict[str, dict]:
    """The test photos' tag_gain (shuffled over true tags' ab error) and pad_gain (no tags over true tags), split
    by whether they share a tag word with the run's training photos."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    layout = read_layout(paths.root)
    holdout = layout.holdout_shard if config["holdout_shard"] is None else config["holdout_shard"]
    trained = [s for s in range(layout.n_shards) if s != holdout] if config["shards"] is None else config["shards"]
    training_ids = np.concatenate([np.asarray(layout.shard_ids(s)) for s in trained])
    training_ids = np.setdiff1d(training_ids, config.get("val_ids") or [])
    shared = shared_words(paths, np.asarray(result.metrics["image_ids"]), training_ids)
    errors = result.per_image_ab_error
    groups = {}
    for name, chosen in (("shared words", shared), ("no shared word", ~shared)):
        if chosen.any():
            tags = errors["tags"][chosen].mean()
            groups[name] = {
                "photos": int(chosen.sum()),
                "tag_gain": float(errors["shuffled"][chosen].mean() / tags),
                "pad_gain": float(errors["pad"][chosen].mean() / tags),
            }
    return groups


def run(data_root: Path, recipe: Recipe, budget_s: float, overrides: list[str], runs_dir: Path) -> dict:
    """Train ``recipe`` for the budget; score its chosen checkpoint on its validation photos and on the test
    shard. The figures of both tables."""
    train_config = load_train_config(
        recipe.config,
        [
            f"data_root={data_root}",
            f"runs_dir={runs_dir}",
            f"run_name={recipe.name}",
            f"max_seconds={budget_s}",
            "resume=false",
            "device=cpu",
            *overrides,
            *recipe.overrides,
        ],
    )
    started = time.perf_counter()
    result = train(train_config)
    trained_s = time.perf_counter() - started
    paths = DatasetPaths(data_root)
    spec = load_dataset_specs().get(paths.root.name)
    steering = {"steering": spec.steering_tags} if spec is not None and spec.steering_tags else {}
    validation = None
    if train_config.val_ids:
        val_set = validation_set(paths, train_config.val_ids, train_config.tokenizer)
        checkpoint = run_checkpoint(result.run_dir)
        validation = evaluate(
            val_set, checkpoint, result.run_dir / "validation", train_mean=run_train_mean(result.run_dir, 0), **steering
        ).metrics
    started = time.perf_counter()
    evaluation = evaluate_run(paths, result.run_dir, n_images=None, out_dir=result.run_dir / "evaluation", **steering)
    evaluated_s = time.perf_counter() - started
    theme = theme_accuracy(paths, evaluation, result.checkpoint)
    return {
        "by_shared_words": tag_gain_by_shared_words(paths, evaluation, result.run_dir),
        "recipe": recipe.name,
        "overrides": list(recipe.overrides),
        "steps": result.step,
        "chosen_step": evaluation.metrics.get("step"),
        "train_s": trained_s,
        "evaluate_s": evaluated_s,
        "validation": validation,
        "metrics": evaluation.metrics,
        "theme": theme,
        "run_dir": str(result.run_dir),
    }


def print_table(title: str, metrics: dict) -> None:
    print(f"\n### {title}")
    print("| set | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for group in ("conditions", "baselines"):
        for name, summary in metrics[group].items():
            cells = [f"{summary[c]:.4g}" if isinstance(summary.get(c), float) else "n/a" for c in COLUMNS]
            print(f"| {name} | " + " | ".join(cells) + " |")
    headline = metrics["headline"]
    grey = metrics["baselines"]["grey"]["ab_error"]
    ratio = metrics["conditions"]["tags"]["ab_error"] / grey
    print(f"tag_gain {headline['tag_gain']:.3g}, ab error with tags / grey {ratio:.3g}")


def print_outcome(outcome: dict) -> None:
    metrics = outcome["metrics"]
    trained = f"{outcome['steps']} steps in {outcome['train_s']:.0f} s, scored at step {outcome['chosen_step']}"
    print(f"\n## {outcome['recipe']} {' '.join(outcome['overrides'])}: {trained}")
    if outcome["validation"] is not None:
        print_table(f"validation: {outcome['validation']['n_images']} photos", outcome["validation"])
    print_table(f"test: {metrics['n_images']} photos ({metrics['evaluated_on']})", metrics)
    for group, figures in outcome["by_shared_words"].items():
        print(
            f"{group} with training photos: {figures['photos']} test photos, tag_gain {figures['tag_gain']:.3g},"
            f" pad_gain {figures['pad_gain']:.3g}"
        )
    if outcome["theme"] is not None:
        share, counted = outcome["theme"]
        print(f"theme colour right {share:.1%} of {counted} photos")
    print("; ".join(f"{k}: {v}" for k, v in metrics["learned_metrics"].items()))


SUMMARY = ("ab tags", "ab pad", "ab grey", "PSNR − grey", "hue", "ΔCF", "tag_gain")


def summary_cells(metrics: dict | None) -> list[str]:
    """One split's headline figures: ab error with tags, without, grey's; PSNR above grey's; hue error; ΔCF."""
    if metrics is None:
        return ["–"] * len(SUMMARY)
    tags, pad, grey = metrics["conditions"]["tags"], metrics["conditions"]["pad"], metrics["baselines"]["grey"]
    values = [tags["ab_error"], pad["ab_error"], grey["ab_error"], tags["psnr"] - grey["psnr"]]
    values += [tags["hue_error"], tags["delta_cf"], metrics["headline"]["tag_gain"]]
    return [f"{value:.3g}" if isinstance(value, float) else "n/a" for value in values]


def print_summary(outcomes: list[dict]) -> None:
    """Every recipe in one table: validation (what recipes are chosen on), then test (reported, never chosen on)."""
    header = ["recipe", "steps", *(f"val {c}" for c in SUMMARY), *(f"test {c}" for c in SUMMARY)]
    print("\n## Recipes (chosen on validation; test reported once per recipe)")
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for outcome in outcomes:
        steps = f"{outcome['chosen_step']} / {outcome['steps']}"
        cells = [outcome["recipe"], steps, *summary_cells(outcome["validation"]), *summary_cells(outcome["metrics"])]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("data/sample"))
    parser.add_argument("--config", default="sample_demo", help="a preset under assets_config/train or a YAML path")
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar='"NAME key=value ..."',
        help="a recipe: the --config preset with these overrides (repeatable; none: the preset as it is)",
    )
    parser.add_argument("--compare", action="append", default=[], help="another preset, scored the same way")
    parser.add_argument("--budget-s", type=float, default=150.0, help="seconds of training per recipe")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    parser.add_argument("--runs-dir", type=Path, help="keep the runs here (their collages, curves, best.pt)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every recipe")
    args = parser.parse_args()
    if not (args.data_root / "images.parquet").exists():
        parser.error(f"{args.data_root} is not a prepared dataset (make demo prepares data/sample)")
    base = preset(args.config)
    recipes = [Recipe.parse(text, base) for text in args.recipe] or [Recipe(base.stem, base)]
    recipes += [Recipe(preset(name).stem, preset(name)) for name in args.compare]
    conditions = ", ".join(CONDITIONS)
    print(f"{args.data_root}: {args.budget_s:.0f} s of training per recipe, conditions {conditions}", flush=True)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="tagcolor-quality-") as temporary:
        for recipe in recipes:
            outcome = run(args.data_root, recipe, args.budget_s, args.overrides, args.runs_dir or Path(temporary))
            print_outcome(outcome)
            outcomes.append(outcome)
            if args.json:  # after each recipe: a long comparison keeps what it has measured
                args.json.write_text(json.dumps(outcomes, indent=2, default=str) + "\n")
    print_summary(outcomes)


if __name__ == "__main__":
    main()
