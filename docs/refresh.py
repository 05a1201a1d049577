"""Refresh the README's sample pictures and figures from the demo's own output (`make docs`, after `make demo`).

The README shows the demo's collages and its table of figures; both are copied from
``<data>/sample/evaluation/`` here, never typed in, so they cannot drift from what the code produces.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.core.files import atomic_path, atomic_write_bytes, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- demo-figures:begin (make docs) -->", "<!-- demo-figures:end -->"
ROWS = (
    ("tags", "conditions", "tags"),
    ("no tags (`pad`)", "conditions", "pad"),
    ("shuffled tags", "conditions", "shuffled"),
    ("grey", "baselines", "grey"),
    ("training mean", "baselines", "train_mean"),
)
# (column title, metric key, digits, unit, which way is better: -1 lower, +1 higher, 0 neither)
COLUMNS = (
    ("ab error", "ab_error", 2, "", -1),
    ("hue error", "hue_error", 1, "°", -1),
    ("PSNR", "psnr", 2, "", +1),
    ("SSIM", "ssim", 3, "", +1),
    ("CF", "colorfulness_generated", 1, "", 0),
    ("ΔCF", "delta_cf", 1, "", -1),
)


def figures_block(metrics: dict[str, Any]) -> str:
    """The README's table of the demo's figures (best of each column in bold), between its markers."""
    rows = [(title, metrics[group][name]) for title, group, name in ROWS if name in metrics[group]]
    lines = [
        BEGIN,
        f"The sample demo run, on the {metrics['n_images']} photos of the held-out shard"
        f" (`tag_gain` {metrics['headline']['tag_gain']:.2f}):",
        "",
        "| set | " + " | ".join(title for title, *_ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    best = {key: (max if better > 0 else min)(s[key] for _, s in rows) for _, key, _, _, better in COLUMNS if better}
    for title, summary in rows:
        cells = []
        for _, key, digits, unit, better in COLUMNS:
            text = f"{summary[key]:.{digits}f}{unit}"
            cells.append(f"**{text}**" if better and summary[key] == best[key] else text)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    original_cf = metrics["conditions"]["tags"]["colorfulness_original"]
    lines += ["", f"The originals' CF is {original_cf:.1f}.", END]
    return "\n".join(lines)


def refresh(evaluation_dir: Path, docs_dir: Path, readme: Path) -> None:
    """Copy the demo's collages into ``docs_dir`` and rewrite the figures block of ``readme``."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no figures block ({BEGIN} … {END}) to refresh")
    metrics = json.loads((evaluation_dir / "metrics.json").read_text())
    docs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(docs_dir / "sample_collage.png", (evaluation_dir / "result_collage.png").read_bytes())
    steering_jpeg = docs_dir / "sample_steering.jpg"
    with Image.open(evaluation_dir / "steering_collage.png") as steering, atomic_path(steering_jpeg) as tmp:
        steering.convert("RGB").save(tmp, format="JPEG", quality=85)  # a JPEG: the PNG is several MB
    block = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    atomic_write_text(readme, block.sub(lambda _: figures_block(metrics), text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data", help="the demo's data root")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs", help="where the pictures go")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    args = parser.parse_args(argv)
    evaluation_dir = args.data / "sample" / "evaluation"
    if not (evaluation_dir / "metrics.json").is_file():
        sys.exit(f"{evaluation_dir}: no evaluation yet; run `make demo` first")
    refresh(evaluation_dir, args.docs, args.readme)
    print(f"refreshed {args.docs}/sample_collage.png, {args.docs}/sample_steering.jpg and {args.readme}")


if __name__ == "__main__":
    main()
