"""Colouring a folder at full size against a bare decode + encode of the same photos, in one run.

    .venv/bin/python benchmarks/colorize.py --checkpoint data/sample/runs/sample_demo/best.pt \\
        [--photos 200] [--workers 2] [--batch-size 8] [--device cpu]

Writes ``--photos`` JPEGs of 1-4 megapixels (scikit-image's photos, resized) into a temporary folder, then
times (1) a bare loop that decodes each photo and encodes it again as JPEG quality 95, and (2)
:func:`pipeline.colorized.colour_shard` with the checkpoint (the sample demo's nets are the folder preset's)
over the whole folder (its Lab → RGB table loaded or built first, timed apart: built once a machine, then
cached). Prints photos/s and their ratio, and the process's resident memory while colouring,
sampled every 50 ms: its peak in each quarter of the colouring time, flat when memory does not grow with the
number of photos done.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from model.colorize import BatchColourer
from model.gamut import gamut_table, table_cache_dir
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


class MemorySampler(threading.Thread):
    """Samples this process's resident memory (MiB) until stopped; the peak of each quarter of the time."""

    PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20

    def __init__(self, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.samples = interval_s, list[float]()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
            self.samples.append(resident_pages * self.PAGE_MIB)

    def quarter_peaks(self) -> list[float]:
        self.stopped.set()
        self.join()
        quarters = np.array_split(np.asarray(self.samples), 4)
        return [float(quarter.max()) for quarter in quarters if quarter.size]


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

        started = time.perf_counter()
        table_s = (gamut_table(), time.perf_counter() - started)[1]  # built on a machine's first run, then cached
        memory = MemorySampler()
        memory.start()
        started = time.perf_counter()
        report = colour_shard(
            folder, names, Path(temporary) / "coloured", 0, colourer, lambda path: [], OutputSettings(),
            batch_size=args.batch_size, workers=args.workers,
        )  # fmt: skip
        colour_s = time.perf_counter() - started
        peaks = memory.quarter_peaks()
        assert len(report.coloured) == len(names), report.refused
    bare_rate, rate = len(names) / bare_s, len(names) / colour_s
    print(f"bare decode + encode: {bare_rate:.2f} photos/s ({bare_s:.1f} s)")
    print(f"colour_shard:         {rate:.2f} photos/s ({colour_s:.1f} s)")
    print(f"ratio to bare: {rate / bare_rate:.2f}x")
    print(
        f"Lab -> RGB table: {table_s:.1f} s to load or build ({table_cache_dir()}); with it counted, "
        f"{len(names) / (colour_s + table_s):.2f} photos/s, {len(names) / (colour_s + table_s) / bare_rate:.2f}x"
    )
    quarters = ", ".join(f"{peak:.0f}" for peak in peaks)
    print(f"resident memory, peak of each quarter of the colouring: {quarters} MiB")


if __name__ == "__main__":
    main()
