"""Lab channel histograms: streamed OpenCV calcHist (pipeline.stats) against plain NumPy, on random shards.

Run from the repository root: ``.venv/bin/python benchmarks/stats.py [--shards 4 --images 500]``. The shards
are written to a temporary directory first, so they are read from the page cache, not the disk: the figures
are compute throughput. Every method's histograms are checked against each other.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.convert import init_opencv_worker
from pipeline.stats import channel_histograms, shard_channel_histograms


def write_shard(path: Path, images: int, size: int, seed: int) -> None:
    """A random uint8 (images, size, size, 3) ``.npy``, written image by image so memory stays small."""
    rng = np.random.default_rng(seed)
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, size, size, 3), dtype=np.uint8))
    header["shape"] = (images, size, size, 3)
    with path.open("wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        for _ in range(images):
            file.write(rng.integers(0, 256, (size, size, 3), dtype=np.uint8).tobytes())


def histogram_baseline(path: Path, rows: np.ndarray) -> np.ndarray:
    """The obvious way: load the shard, select the valid rows, ``np.histogram`` each channel."""
    selected = np.load(path)[rows]
    return np.stack([np.histogram(selected[..., c], bins=256, range=(0, 256))[0] for c in range(3)])


def bincount_baseline(path: Path, rows: np.ndarray) -> np.ndarray:
    """A better plain way: load, select, ``np.bincount`` each strided channel."""
    selected = np.load(path)[rows].reshape(-1, 3)
    return np.stack([np.bincount(selected[:, c], minlength=256) for c in range(3)])


def timed(run: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of ``repeats`` runs, and the result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        began = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - began)
    return best, result


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--images", type=int, default=500, help="images per shard")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    init_opencv_worker()

    with tempfile.TemporaryDirectory(prefix="tagcolor-bench-") as tmp:
        paths = [Path(tmp) / f"lab_{s:03d}.npy" for s in range(args.shards)]
        for seed, path in enumerate(paths):
            write_shard(path, args.images, args.size, seed)
        keep = np.ones(args.images, dtype=bool)
        keep[::50] = False
        rows = [np.flatnonzero(keep)] * args.shards
        gigabytes = args.shards * int(keep.sum()) * args.size * args.size * 3 / 1e9
        print(f"{args.shards} shards × {args.images} images of {args.size}²×3, {gigabytes:.3f} GB of valid rows")
        rss_start = peak_rss_mib(resource.RUSAGE_SELF)

        one_s, one = timed(lambda: shard_channel_histograms(paths, rows, workers=1), args.repeats)
        rss_streamed = peak_rss_mib(resource.RUSAGE_SELF)
        many_s, many = timed(lambda: shard_channel_histograms(paths, rows, workers=args.workers), args.repeats)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context, initializer=init_opencv_worker) as pool:
            list(pool.map(channel_histograms, paths[:1], rows[:1]))
            warm_s, warm = timed(lambda: np.sum(list(pool.map(channel_histograms, paths, rows)), axis=0), args.repeats)
        rss_workers = peak_rss_mib(resource.RUSAGE_CHILDREN)
        bincount_s, by_bincount = timed(
            lambda: np.sum([bincount_baseline(p, r) for p, r in zip(paths, rows, strict=True)], axis=0), 1
        )
        histogram_s, by_histogram = timed(
            lambda: np.sum([histogram_baseline(p, r) for p, r in zip(paths, rows, strict=True)], axis=0), 1
        )
        rss_baselines = peak_rss_mib(resource.RUSAGE_SELF)
        for other in (many, warm, by_bincount, by_histogram):
            np.testing.assert_array_equal(other, one)

    def line(name: str, seconds: float, cores: int = 1) -> None:
        rate = gigabytes / seconds
        print(
            f"  {name:50s} {seconds:7.3f} s  {rate:6.2f} GB/s  {rate / cores:6.2f} GB/s/core"
            f"  ×{histogram_s / seconds:5.1f} vs np.histogram  ×{bincount_s / seconds:4.1f} vs bincount"
        )

    line("streamed calcHist, 1 worker", one_s)
    line(f"streamed calcHist, {args.workers} workers (incl. spawn)", many_s, args.workers)
    line(f"streamed calcHist, {args.workers} warm workers", warm_s, args.workers)
    line("baseline: load + np.bincount per channel", bincount_s)
    line("baseline: load + np.histogram per channel", histogram_s)
    print(
        f"peak RSS: start {rss_start:.0f} MiB, after streaming {rss_streamed:.0f} MiB, "
        f"largest worker {rss_workers:.0f} MiB, after the load-whole-shard baselines {rss_baselines:.0f} MiB"
    )


if __name__ == "__main__":
    main()
