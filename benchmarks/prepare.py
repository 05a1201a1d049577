"""Photo → Lab conversion (pipeline.convert) against bare JPEG decoding and a naive float64 baseline.

Run from the repository root: ``.venv/bin/python benchmarks/prepare.py [--photos 200 --shards 6]``.
Flickr-like JPEGs (500×375 or 375×500, quality 90, ~70 KB: smooth gradients, texture at every scale, shapes,
noise) are made in memory first. Single-image rates (images per CPU second) are measured in this process with
one OpenCV thread, as a pool worker runs, all on the same photos:

- bare full-size decode (OpenCV, Pillow): what any conversion pays at least;
- ``decode_to_lab``: the pipeline's conversion of one photo;
- naive: what a straightforward implementation does, Pillow full decode, ``skimage`` ``rgb2lab`` of the whole
  photo in float64, center crop, ``skimage`` anti-aliased resize of the float Lab image, 8-bit encoding. The
  ≥ 6× target is against this one;
- smart float: crop and resize the uint8 RGB first, float64 Lab of the small square only; a reference line for
  how much working at the target size alone gains.

The Lab is compared with the baselines' and with a full-size decode plus an exact area (``INTER_AREA``)
resize. The same photos are then written into MIRFLICKR-1M-layout zips (the tag archive tokenized once by
``build_tag_tokens``, timed, for the tokenizer's throughput). A whole shard (``convert_shard``: zip reads,
decoding, colourfulness, chroma, rows and writes) is converted in this process, interleaved with bare
``cv2.imdecode`` of the same members, ``--shard-repeats`` times: the ratio of the least CPU times is the
end-to-end figure per worker. Then shards of 1,000 images are converted with 1 and N workers. Worker start-up
(spawn and imports) is timed on its own, and scaling is reported with it (wall clock) and without it. Then peak
RSS of fresh one-worker processes: imports only, a 1,000-image shard and a 10,000-image shard; equal peaks show
that memory does not grow with the shard. Last, the same photos as a folder of files (kind ``folder``): the scan
into the manifest (every file hashed) and the conversion of that shard, end to end in this process, against
bare ``cv2.imdecode`` of the same files read from disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image
from skimage.color import rgb2lab
from skimage.transform import resize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.convert import ShardResult, TagCounts, convert_shard, convert_shards, decode_to_lab, shard_tag_counts
from pipeline.core.layout import DatasetPaths
from pipeline.core.vocabulary import load_tag_encoding, resolve_o200k_file, tiktoken_cache_dir
from pipeline.datasets import DatasetSpec, load_dataset_spec
from pipeline.sources import folder
from pipeline.sources.synthetic import FILLER_TAGS
from pipeline.tokens import build_tag_tokens

GAP_PHOTOS = 50
"""Photos on which the Lab difference to the baselines is averaged."""

T = TypeVar("T")


def flickr_like_photo(rng: np.random.Generator, width: int, height: int, quality: int) -> bytes:
    """A JPEG with what costs a decoder time: smooth gradients, texture at every scale, edges and noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    image = rng.uniform(60, 200, 3).astype(np.float32) + np.stack(
        [rng.uniform(-60, 60) * xs + rng.uniform(-60, 60) * ys for _ in range(3)], axis=-1
    )
    for cell in (2, 4, 8, 16, 32, 64):
        coarse = rng.standard_normal((height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        image += 5.0 * cell**0.4 * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(40, 120))):
        shapes = image.copy()
        colour = [float(c) for c in rng.uniform(0, 255, 3)]
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        extent = int(np.exp(rng.uniform(np.log(3), np.log(height / 3))))
        if rng.random() < 0.5:
            cv2.circle(shapes, centre, extent, colour, -1, cv2.LINE_AA)
        else:
            corner = (centre[0] + extent, centre[1] + int(extent * rng.uniform(0.3, 3)))
            cv2.rectangle(shapes, centre, corner, colour, -1, cv2.LINE_AA)
        image = cv2.addWeighted(image, 0.4, shapes, 0.6, 0.0)
    image += rng.normal(0.0, 9.0, image.shape).astype(np.float32)
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def encode_lab(lab: np.ndarray) -> np.ndarray:
    """Float CIE Lab → the OpenCV 8-bit encoding of the shards (``L·255/100``, ``a+128``, ``b+128``)."""
    encoded = np.stack([lab[..., 0] * 255.0 / 100.0, lab[..., 1] + 128.0, lab[..., 2] + 128.0], axis=-1)
    return np.clip(np.rint(encoded), 0, 255).astype(np.uint8)


def naive_lab(data: bytes, size: int) -> np.ndarray:
    """The straightforward way: full decode, float64 Lab of the whole photo, crop, anti-aliased float resize."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    lab = rgb2lab(rgb)
    height, width = lab.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return encode_lab(resize(lab[top : top + side, left : left + side], (size, size), anti_aliasing=True))


def smart_float_lab(data: bytes, size: int) -> np.ndarray:
    """Full decode, crop and (bicubic) resize in uint8 RGB, then float64 Lab of the ``size``² square only."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = rgb.crop((left, top, left + side, top + side)).resize((size, size))
    return encode_lab(rgb2lab(np.asarray(square) / 255.0))


def cv2_decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def area_lab(data: bytes, size: int) -> np.ndarray:
    """Full-size decode, crop, exact area average (``INTER_AREA``) to ``size``², OpenCV Lab: every pixel counted."""
    rgb = cv2_decode(data)
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = cv2.resize(rgb[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(square, cv2.COLOR_RGB2LAB)


def pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def rate(run: Callable[[bytes], object], photos: list[bytes], repeats: int) -> float:
    """Best images per CPU second of ``repeats`` passes over ``photos``.

    CPU time of this (single-threaded) process rather than wall time: on a shared machine the time other jobs
    hold the core would otherwise count against whichever method happened to run then.
    """
    best = float("inf")
    for _ in range(repeats):
        began = time.process_time()
        for data in photos:
            run(data)
        best = min(best, time.process_time() - began)
    return len(photos) / best


def shard_and_decode_cpu_s(
    spec: DatasetSpec, paths: DatasetPaths, counts: TagCounts, repeats: int
) -> list[tuple[float, float]]:
    """CPU seconds of ``convert_shard`` of shard 0 and of bare ``cv2.imdecode`` of its members (read from the
    zip beforehand), alternated ``repeats`` times so that both see the same machine."""
    with spec.open_photos(paths) as source:
        members = [np.frombuffer(source.read(image_id), np.uint8) for image_id in spec.shard_ids(0)]
    runs = []
    for _ in range(repeats):
        began = time.process_time()
        for member in members:
            cv2.imdecode(member, cv2.IMREAD_COLOR_RGB)
        decoded = time.process_time()
        assert convert_shard(spec, paths, 0, counts).n_valid == len(members)
        runs.append((time.process_time() - decoded, decoded - began))
    return runs


def children_cpu_s() -> float:
    """User + system CPU seconds of finished child processes: equal per image with 1 and N workers means the
    workers do not slow each other down, whatever else the machine is running."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """This process's peak resident set, from ``VmHWM`` (Linux).

    Not ``ru_maxrss``: Linux carries it over ``exec`` from the forked parent, so a spawned worker would report
    at least the benchmark's own RSS.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def convert_and_peak_rss(
    spec: DatasetSpec, paths: DatasetPaths, shard: int, counts: TagCounts
) -> tuple[ShardResult, float]:
    """Run in a fresh worker: one shard converted as a pool worker does it, and the worker's peak RSS."""
    cv2.setNumThreads(1)
    return convert_shard(spec, paths, shard, counts), peak_rss_mib()


def in_fresh_worker(run: Callable[..., T], *args: object) -> T:
    """``run(*args)`` in a newly spawned process, so that its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run, *args).result()


def pool_startup_s(workers: int) -> float:
    """Seconds for a spawn pool of ``workers`` processes to start (interpreter, imports) and do nothing."""
    began = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(time.sleep, 0.0) for _ in range(workers)]:
            future.result()
    return time.perf_counter() - began


def write_dataset(paths: DatasetPaths, spec: DatasetSpec, photos: list[bytes], vocabulary: Path) -> float:
    """``images0.zip`` (photos reused cyclically, stored: JPEGs do not deflate) and a deflated ``tags.zip`` of
    0–15 Flickr-like tags plus a unique one per photo; returns the seconds ``build_tag_tokens`` takes over it."""
    paths.raw.mkdir(parents=True)
    with zipfile.ZipFile(paths.archive("images0"), "w") as archive:
        for image_id in range(spec.n_images):
            archive.writestr(spec.image_member(image_id), photos[image_id % len(photos)])
    rng = np.random.default_rng(1)
    with zipfile.ZipFile(paths.archive("tags"), "w", zipfile.ZIP_DEFLATED) as archive:
        for image_id in range(spec.n_images):
            tags = [*rng.choice(FILLER_TAGS, size=int(rng.integers(0, 16))).tolist(), f"img{image_id}"]
            archive.writestr(spec.tag_member(image_id), "\n".join(tags) + "\n")
    return build_tag_tokens(spec, paths, load_tag_encoding(vocabulary)).seconds


def folder_seconds(tmp: Path, photos: list[bytes], n: int, size: int, vocabulary: Path) -> tuple[float, float, float]:
    """Seconds to scan ``n`` photo files into a folder manifest, to convert them as one shard, and to decode
    the same files bare. Each file gets a unique tail after its JPEG end, so no two are duplicates."""
    root = tmp / "folder"
    names = [f"album{i // 500:02d}/photo{i:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(photos[i % len(photos)] + str(i).encode())
    spec = folder.Spec(name="bench", path=str(root), image_size=size, shard_size=n)
    paths = DatasetPaths(tmp / "data" / "bench")
    began = time.perf_counter()
    spec.obtain(folder.ARCHIVE, paths, None, print)
    scanned = time.perf_counter()
    live = spec.on_disk(paths)
    ((_, counts),) = shard_tag_counts(live, paths, [0], vocabulary)
    converted_from = time.perf_counter()
    assert convert_shard(live, paths, 0, counts).n_valid == n
    converted = time.perf_counter()
    for name in names:
        cv2.imdecode(np.frombuffer((root / name).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    return scanned - began, converted - converted_from, time.perf_counter() - converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200, help="distinct photos for the single-image rates")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=3, help="passes of the fast rates (the baselines: one)")
    parser.add_argument("--shard-repeats", type=int, default=5, help="whole-shard conversions against bare decode")
    parser.add_argument("--shards", type=int, default=6, help="shards converted with 1 and N workers")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rss-shard-images", type=int, default=10_000, help="images of the large RSS shard")
    parser.add_argument("--folder-photos", type=int, default=2000, help="files of the folder benchmark")
    parser.add_argument(
        "--vocabulary",
        type=Path,
        default=tiktoken_cache_dir(os.environ),
        help="tiktoken cache directory (default: tiktoken's own); o200k_base is fetched into it when missing",
    )
    args = parser.parse_args()
    resolve_o200k_file(args.vocabulary)

    rng = np.random.default_rng(0)
    shapes = [(375, 500) if rng.random() < 0.25 else (500, 375) for _ in range(args.photos)]
    photos = [flickr_like_photo(rng, width, height, args.quality) for width, height in shapes]
    print(f"{len(photos)} photos, mean {np.mean([len(p) for p in photos]) / 1e3:.0f} KB, target {args.size}²")

    cv2.setNumThreads(1)
    decoders = {"cv2.imdecode": cv2_decode, "Pillow": pillow_decode}
    decode_rates = {name: rate(run, photos, args.repeats) for name, run in decoders.items()}
    fastest = max(decode_rates, key=decode_rates.__getitem__)
    convert_rate = rate(lambda data: decode_to_lab(data, args.size), photos, args.repeats)
    naive_rate = rate(lambda data: naive_lab(data, args.size), photos, 1)
    smart_rate = rate(lambda data: smart_float_lab(data, args.size), photos, 1)
    sample = photos[:GAP_PHOTOS]
    ours = [decode_to_lab(p, args.size).lab.astype(int) for p in sample]
    gaps = {
        name: np.mean([np.abs(lab - run(p, args.size)).mean() for lab, p in zip(ours, sample, strict=True)])
        for name, run in (("naive", naive_lab), ("smart float", smart_float_lab), ("full-decode INTER_AREA", area_lab))
    }
    same_rgb = [decode_to_lab(p, args.size) for p in sample]
    channel_gap = np.mean(
        [np.abs(d.lab.astype(float) - encode_lab(rgb2lab(d.rgb / 255.0))).mean(axis=(0, 1)) for d in same_rgb], axis=0
    )

    for name, value in decode_rates.items():
        print(f"  bare full-size decode, {name:36s} {value:8.0f} images/CPU-s")
    print(f"  decode_to_lab (DCT-scaled decode, crop, resize, Lab)   {convert_rate:8.0f} images/CPU-s")
    print(f"  naive: full decode → float64 Lab → crop → AA resize    {naive_rate:8.0f} images/CPU-s")
    print(f"  smart float: full decode → crop + resize → float64 Lab {smart_rate:8.0f} images/CPU-s")
    print(f"  conversion / naive        ×{convert_rate / naive_rate:5.2f}  (target ≥ 6)")
    print(f"  conversion / smart float  ×{convert_rate / smart_rate:5.2f}")
    print(f"  conversion / decode       ×{convert_rate / decode_rates[fastest]:5.2f}  (target ≥ 0.4; vs {fastest})")
    print(
        f"  decode / naive            ×{decode_rates[fastest] / naive_rate:5.2f}  (conversion / naive if it were free)"
    )
    for name, gap in gaps.items():
        print(f"  mean |Lab − {name} Lab| {gap:.2f} levels (first {len(sample)} photos)")
    print(
        "  mean |Lab − skimage rgb2lab of the same cropped, resized RGB| per channel: "
        + ", ".join(f"{name} {gap:.2f}" for name, gap in zip("Lab", channel_gap, strict=True))
        + " levels (target ≤ 1)"
    )

    n_scaling = args.shards * args.shard_size
    with tempfile.TemporaryDirectory(prefix="tagcolor-bench-") as tmp:
        base = dataclasses.replace(load_dataset_spec("sample"), image_size=args.size)
        everything = dataclasses.replace(
            base, n_images=max(n_scaling, args.rss_shard_images), shard_size=args.shard_size
        )
        paths = DatasetPaths(Path(tmp) / "bench")
        tag_seconds = write_dataset(paths, everything, photos, args.vocabulary)
        scaling = dataclasses.replace(base, n_images=n_scaling, shard_size=args.shard_size)
        ((_, first_counts),) = shard_tag_counts(scaling, paths, [0], args.vocabulary)
        whole_shard = shard_and_decode_cpu_s(scaling, paths, first_counts, args.shard_repeats)
        startup: dict[int, float] = {}
        runs: dict[int, tuple[float, float, float]] = {}
        for workers in dict.fromkeys((1, args.workers)):
            startup[workers] = pool_startup_s(workers)
            cpu_before, began = children_cpu_s(), time.perf_counter()
            results = convert_shards(scaling, paths, range(scaling.n_shards), args.vocabulary, workers=workers)
            wall = time.perf_counter() - began
            runs[workers] = (wall, sum(r.seconds for r in results), children_cpu_s() - cpu_before)
            assert all(r.n_valid == r.n_images for r in results)
        idle_rss = in_fresh_worker(peak_rss_mib)
        shard_rss: dict[int, tuple[float, float]] = {}
        for n in dict.fromkeys((args.shard_size, args.rss_shard_images)):
            spec = dataclasses.replace(base, n_images=n, shard_size=n)
            ((_, counts),) = shard_tag_counts(spec, paths, [0], args.vocabulary)
            result, rss = in_fresh_worker(convert_and_peak_rss, spec, paths, 0, counts)
            assert result.n_valid == n
            shard_rss[n] = rss, n / result.seconds
        scan_s, convert_s, bare_s = folder_seconds(Path(tmp), photos, args.folder_photos, args.size, args.vocabulary)

    print(
        f"tokens.npy + tags.parquet for {everything.n_images} images by build_tag_tokens: {tag_seconds:.2f} s"
        f" ({everything.n_images / tag_seconds:,.0f} tag files/s, zip reading included:"
        f" {1e6 / everything.n_images * tag_seconds:.0f} s for 1M)"
    )
    shard_cpu, decode_cpu = (min(run[i] for run in whole_shard) for i in (0, 1))  # as rate(): noise only adds
    ratio = decode_cpu / shard_cpu
    print(f"one shard of {args.shard_size} images in this process (one OpenCV thread), {len(whole_shard)} runs:")
    print(f"  convert_shard (zip read … rows and writes) {shard_cpu / args.shard_size * 1e3:5.2f} CPU-ms per image")
    print(f"  bare cv2.imdecode of the same members       {decode_cpu / args.shard_size * 1e3:5.2f} CPU-ms per image")
    print(
        f"  whole shard / decode ×{ratio:4.2f} (least CPU time of each; runs"
        f" {', '.join(f'{decode / shard:.2f}' for shard, decode in whole_shard)}; target ≥ 0.45)"
    )
    print(f"{n_scaling} images in {scaling.n_shards} shards of {args.shard_size}:")
    for workers, (wall, busy, cpu) in runs.items():
        print(
            f"  {workers} worker(s): {wall:6.2f} s wall = {n_scaling / wall:4.0f} images/s; start-up"
            f" {startup[workers]:4.2f} s, without it {n_scaling / (wall - startup[workers]):4.0f} images/s"
        )
        print(
            f"      {n_scaling / busy:4.0f} images/s per busy worker;"
            f" {cpu / n_scaling * 1e3:4.2f} CPU-ms per image and {cpu / wall:4.2f} cores busy (start-up included)"
        )
    (wall_one, busy_one, _), (wall_many, busy_many, _) = runs[1], runs[args.workers]
    print(f"  scaling ×{wall_one / wall_many:4.2f} wall clock, start-up included (target ≥ 1.7 on 2 cores)")
    print(
        f"  scaling ×{(wall_one - startup[1]) / (wall_many - startup[args.workers]):4.2f} wall clock, start-up excluded"
    )
    print(f"  scaling ×{args.workers * busy_one / busy_many:4.2f} in-shard throughput (sum of per-worker rates)")
    print("  (N workers can only scale by ×N where they got N cores busy: a shared machine may not give them)")
    print(f"peak RSS of a fresh worker: {idle_rss:.0f} MiB after imports (this script's included)")
    for n, (rss, speed) in shard_rss.items():
        print(
            f"  one {n:6d}-image shard ({n * args.size**2 * 3 / 2**20:6.0f} MiB of Lab): peak {rss:4.0f} MiB,"
            f" {speed:.0f} images/s"
        )
    n = args.folder_photos
    print(f"a folder of {n} photo files (kind folder), one shard, in this process:")
    print(f"  scan into the manifest (every file read and hashed) {n / scan_s:7.0f} images/s")
    print(f"  conversion of the shard                            {n / convert_s:7.0f} images/s")
    print(f"  bare cv2.imdecode of the same files from disk       {n / bare_s:7.0f} images/s")
    print(f"  folder end to end / bare decode ×{bare_s / (scan_s + convert_s):4.2f}")


if __name__ == "__main__":
    main()
