"""Colouring a folder at full size against a bare decode + encode of the same photos, in one run.

    .venv/bin/python benchmarks/colorize.py --checkpoint data/sample/runs/sample_demo/best.pt \\
        [--photos 200] [--workers 2] [--batch-size 8] [--device cpu]

Writes ``--photos`` JPEGs of 1-4 megapixels (scikit-image's photos, resized) into a temporary folder, then
times (1) a bare loop that decodes each photo and encodes it again as JPEG quality 95, and (2)
:func:`pipeline.colorized.colour_shard` with the checkpoint (the sample demo's nets are the folder preset's),
twice over the first half and then the whole folder in a fresh directory, so the peak memory of half the photos
and of all of them compare. Prints photos/s, their ratio, and the peak RSS of each.
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from model.colorize import BatchColourer
from pipeline.colorized import OutputSettings, colour_shard

SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def write_photos(folder: Path, count: int, seed: int) -> list[str]:
    """``count`` JPEGs of 1-4 megapixels with a random aspect ratio; their names."""
    rng = np.random.default_rng(seed)
    names = []
    for k in range(count):
        source = Image.fromarray(np.asarray(getattr(data, SOURCES[k % len(SOURCES)])())[..., :3])
        pixels = rng.uniform(1e6, 4e6)
        aspect = rng.uniform(0.66, 1.5)
        width = int((pixels * aspect) ** 0.5)
        photo = source.resize((width, int(pixels / width)), Image.Resampling.BILINEAR)
        name = f"photo_{k:04d}.jpg"
        photo.save(folder / name, quality=90)
        names.append(name)
    return names


def bare(folder: Path, names: list[str]) -> float:
    """Seconds to decode every photo and encode it as JPEG quality 95 (to memory), one after another."""
    started = time.perf_counter()
    for name in names:
        with Image.open(folder / name) as image:
            rgb = image.convert("RGB")
        rgb.save(io.BytesIO(), format="JPEG", quality=95, subsampling=0)
    return time.perf_counter() - started


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="e.g. data/sample/runs/sample_demo/best.pt")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="reading and writing threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    colourer = BatchColourer(args.checkpoint, args.device)
    with tempfile.TemporaryDirectory(prefix="tagcolor-colorize-") as temporary:
        folder = Path(temporary) / "photos"
        folder.mkdir()
        names = write_photos(folder, args.photos, seed=0)
        megapixels = sum(np.prod(Image.open(folder / name).size) for name in names) / 1e6
        print(f"{len(names)} photos, {megapixels / len(names):.2f} MP on average; {args.workers} threads", flush=True)
        bare_s = bare(folder, names)

        def colour(subset: list[str], out: str) -> float:
            started = time.perf_counter()
            report = colour_shard(
                folder, subset, Path(temporary) / out, 0, colourer, lambda path: [], OutputSettings(),
                batch_size=args.batch_size, workers=args.workers,
            )  # fmt: skip
            assert len(report.coloured) == len(subset), report.refused
            return time.perf_counter() - started

        half_s = colour(names[: len(names) // 2], "half")
        half_rss = peak_rss_mib()
        whole_s = colour(names, "whole")
        whole_rss = peak_rss_mib()
    bare_rate, rate = len(names) / bare_s, len(names) / whole_s
    print(f"bare decode + encode: {bare_rate:.2f} photos/s ({bare_s:.1f} s)")
    print(
        f"colour_shard:         {rate:.2f} photos/s ({whole_s:.1f} s); half the photos {len(names) // 2 / half_s:.2f}"
    )
    print(
        f"ratio to bare: {rate / bare_rate:.2f}x; peak RSS {half_rss:.0f} MiB after half, {whole_rss:.0f} MiB after all"
    )


if __name__ == "__main__":
    main()
