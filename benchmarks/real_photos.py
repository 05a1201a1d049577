"""A small folder dataset of real photos, for comparing recipes where colours are not drawn by a program.

    .venv/bin/python benchmarks/real_photos.py OUT_DIR [--crops 64]

Cuts ``--crops`` random crops (30–80 % of the short side) out of each colour photo scikit-image ships
(astronaut, cat, coffee, galaxy, tissue, motorcycle, retina, rocket), writes them as PNG with a tag sidecar
naming what the photo shows, and writes ``OUT_DIR/datasets/real-photos.yaml`` (kind ``folder``). Shards hold
two photos' crops each, so the held-out shard (the last) holds only crops of photos never trained on. Then:

    export TAGCOLOR_DATASETS_DIR=OUT_DIR/datasets TAGCOLOR_DATA_DIR=OUT_DIR/data DAGSTER_HOME=OUT_DIR/dagster
    .venv/bin/dg launch --assets real-photos/archives --partition folder
    .venv/bin/dg launch --assets real-photos/tags_archive
    .venv/bin/dg launch --assets real-photos/lab_shards --partition-range 000...003
    .venv/bin/dg launch --assets real-photos/tag_tokens
    .venv/bin/python benchmarks/quality.py --data-root OUT_DIR/data/real-photos --config sample_demo \\
        --compare old_recipe.yaml --budget-s 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = {
    "astronaut": ("astronaut", "space", "flag", "portrait", "nasa"),
    "chelsea": ("cat", "pet", "orange", "fur"),
    "coffee": ("coffee", "cup", "table", "food"),
    "hubble_deep_field": ("galaxy", "space", "stars", "night"),
    "immunohistochemistry": ("microscope", "tissue", "science", "pink"),
    "stereo_motorcycle": ("motorcycle", "bike", "studio", "red"),
    "retina": ("retina", "eye", "medical", "red"),
    "rocket": ("rocket", "launch", "sky", "sunset"),
}
"""scikit-image's colour photos, in the order their crops are named (so the last two are held out)."""


def crops(rgb: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    height, width = rgb.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.3, 0.8))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        out.append(rgb[top : top + side, left : left + side])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--crops", type=int, default=64, help="crops per photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    folder = args.out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, tags) in enumerate(PHOTOS.items()):
        loaded = getattr(data, name)()
        rgb = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)[..., :3]  # the stereo pair's left
        for k, crop in enumerate(crops(rgb, args.crops, rng)):
            stem = f"{index:02d}_{name}_{k:03d}"
            Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{stem}.png")
            (folder / f"{stem}.txt").write_text("\n".join(tags) + "\n")
    datasets = args.out / "datasets"
    datasets.mkdir(exist_ok=True)
    (datasets / "real-photos.yaml").write_text(
        f"name: real-photos\nkind: folder\npath: {folder.resolve()}\nshard_size: {2 * args.crops}\n"
        "train_config: folder\n"
    )
    print(f"{len(PHOTOS) * args.crops} crops in {folder}; dataset file {datasets / 'real-photos.yaml'}")


if __name__ == "__main__":
    main()
