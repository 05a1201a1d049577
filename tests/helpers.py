"""What the test modules share besides fixtures (those are in ``conftest.py``): datasets written in the data
contract, archives and folders holding every bad case, the tiny training config, Dagster assets materialized in
process, a free port."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import dagster as dg
import numpy as np
import pandas as pd
import requests
import torch
from PIL import Image

from model.config import TrainConfig
from pipeline.core.color import colorfulness, lab_u8_to_rgb, rgb_to_lab_u8
from pipeline.core.contract import SHARD_NAME
from pipeline.core.layout import DatasetPaths
from pipeline.core.vocabulary import encode_tags, load_tag_encoding, tag_text
from pipeline.datasets import load_dataset_spec
from pipeline.sources.synthetic import sample_image, sample_tags

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = REPO_ROOT / "assets_config" / "train"
SAMPLE = load_dataset_spec("sample")


# The tiny training config, and what compares runs

TINY_SIZE = 32


def tiny_config(data_root: Path, runs_dir: Path | None = None, **changes: Any) -> TrainConfig:
    """Small widths and batches at 32²: about a quarter second per step on two CPU cores (runs below the data root
    when ``runs_dir`` is None)."""
    values: dict[str, Any] = dict(
        data_root=str(data_root),
        runs_dir=None if runs_dir is None else str(runs_dir),
        run_name="run",
        image_size=TINY_SIZE,
        batch_size=4,
        epochs=1000,
        base_channels=8,
        depth=2,
        token_dim=16,
        log_every=1,
        ckpt_every=2,
        keep_checkpoints=2,
        val_size=0,  # the tiny datasets' step counts are the tests' own; tests of validation turn it on
        device="cpu",
    )
    return TrainConfig(**(values | changes))


class Killed(RuntimeError):
    """Stands in for a process killed between two checkpoints."""


def tensors(payload: dict[str, Any], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every tensor under ``keys``, by a flat name."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)

    for key in keys:
        walk(key, payload[key])
    return flat


def training_refusal(*overrides: str) -> str:
    """What ``python -m model.train key=value …`` says when it refuses to train: exit code 2 and one line."""
    done = subprocess.run(
        [sys.executable, "-m", "model.train", *overrides], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()


# Datasets in the data contract


def contract_dataset(
    root: Path, lab: np.ndarray, tokens: np.ndarray, shard_size: int, valid: np.ndarray, grayscale: np.ndarray
) -> Path:
    """The files of the data contract: Lab shards, ``tokens.npy`` and the ``images.parquet`` directory."""
    (root / "shards").mkdir(parents=True)
    (root / "images.parquet").mkdir()
    np.save(root / "tokens.npy", tokens.astype(np.int32))
    for shard, start in enumerate(range(0, len(lab), shard_size)):
        ids = np.arange(start, min(start + shard_size, len(lab)))
        np.save(root / "shards" / SHARD_NAME.format(shard=shard), lab[ids])
        pd.DataFrame(
            {
                "image_id": ids,
                "shard": shard,
                "row": ids - start,
                "valid": valid[ids],
                "reason": np.where(valid[ids], "", "missing"),
                "is_grayscale": grayscale[ids],
                "colorfulness": 10.0,
            }
        ).to_parquet(root / "images.parquet" / f"{shard:03d}.parquet")
    return root


def sample_dataset(root: Path, vocabulary_dir: Path, n_images: int, shard_size: int, size: int) -> Path:
    """The synthetic sample's scenes and tags, center-cropped and resized to ``size``, in the data contract."""
    spec = dataclasses.replace(SAMPLE, n_images=n_images, width=4 * size // 2, height=3 * size // 2)
    photos = []
    for image_id in range(n_images):
        rgb = sample_image(spec, image_id)
        height, width = rgb.shape[:2]
        left = (width - height) // 2
        photos.append(cv2.resize(rgb[:, left : left + height], (size, size), interpolation=cv2.INTER_AREA))
    rgb = np.stack(photos)
    texts = [tag_text(sample_tags(spec, image_id)) for image_id in range(n_images)]
    tokens, _ = encode_tags(texts, load_tag_encoding(vocabulary_dir))
    grayscale = np.asarray(colorfulness(rgb)) < 2.0
    return contract_dataset(root, rgb_to_lab_u8(rgb), tokens, shard_size, np.ones(n_images, bool), grayscale)


TINY_SHARD_SIZE = 16
TINY_SHARDS = 2
TINY_HOLDOUT = 1
TINY_INVALID = 18
"""An image of the held-out shard whose photo could not be read (zeros, ``valid = false``)."""
TINY_GRAYSCALE = 21
"""A black-and-white photo of the held-out shard."""
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square")


@dataclass(frozen=True)
class TinyRun:
    """The dataset's paths, the trained checkpoint, and the facts tests check against.

    Tests read the facts from here rather than importing this module, which pytest loads as a plugin.
    """

    paths: DatasetPaths
    checkpoint: Path
    shard_size: int = TINY_SHARD_SIZE
    holdout_shard: int = TINY_HOLDOUT
    invalid_id: int = TINY_INVALID
    grayscale_id: int = TINY_GRAYSCALE


def draw_photo(image_id: int) -> tuple[np.ndarray, list[str]]:
    """A coloured shape on a background whose tone depends on the id; its tags name colour, shape and id."""
    colour = list(COLOURS)[image_id % len(COLOURS)]
    shape = SHAPES[(image_id // len(COLOURS)) % len(SHAPES)]
    tone = 60 + (9 * image_id) % 140
    rgb = np.empty((TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    rgb[:] = (tone, tone // 2 + 60, 255 - tone)
    if shape == "circle":
        cv2.circle(rgb, (TINY_SIZE // 2, TINY_SIZE // 2), TINY_SIZE // 3, COLOURS[colour], thickness=-1)
    else:
        cv2.rectangle(
            rgb,
            (TINY_SIZE // 4, TINY_SIZE // 4),
            (3 * TINY_SIZE // 4, 3 * TINY_SIZE // 4),
            COLOURS[colour],
            thickness=-1,
        )
    return rgb, [colour, shape, f"photo{image_id}"]


def write_tiny_dataset(root: Path, vocabulary_dir: Path, photo_offset: int = 0) -> DatasetPaths:
    """Shards, ``images.parquet``, ``tokens.npy`` and ``tags.parquet`` of ``TINY_SHARDS × TINY_SHARD_SIZE`` photos;
    ``photo_offset`` draws other photos for the same ids (a second dataset)."""
    paths = DatasetPaths(root)
    n = TINY_SHARDS * TINY_SHARD_SIZE
    photos, tags = zip(*(draw_photo(i + photo_offset) for i in range(n)), strict=True)
    rgb = np.stack(photos)
    rgb[TINY_GRAYSCALE] = rgb[TINY_GRAYSCALE].mean(axis=-1, keepdims=True).astype(np.uint8)
    rgb[TINY_INVALID] = 0
    lab = rgb_to_lab_u8(rgb)
    valid = np.arange(n) != TINY_INVALID
    paths.shards.mkdir(parents=True)
    paths.images_table.mkdir()
    for shard in range(TINY_SHARDS):
        ids = np.arange(shard * TINY_SHARD_SIZE, (shard + 1) * TINY_SHARD_SIZE)
        np.save(paths.shard(shard), lab[ids])
        pd.DataFrame(
            {
                "image_id": ids,
                "shard": shard,
                "row": ids - shard * TINY_SHARD_SIZE,
                "valid": valid[ids],
                "reason": np.where(valid[ids], "", "missing"),
                "is_grayscale": ids == TINY_GRAYSCALE,
                "colorfulness": colorfulness(lab_u8_to_rgb(lab[ids])),
            }
        ).to_parquet(paths.shard_rows(shard))
    tokens, n_tokens = encode_tags([tag_text(t) for t in tags], load_tag_encoding(vocabulary_dir))
    np.save(paths.tokens, tokens)
    pd.DataFrame(
        {"image_id": np.arange(n), "tags": list(tags), "n_tags": [len(t) for t in tags], "n_tokens": n_tokens}
    ).to_parquet(paths.tags_table)
    return paths


@dataclass(frozen=True)
class SampleInstance:
    """A Dagster instance and data root over which `make demo` has materialized the whole sample graph."""

    data: Path
    home: Path
    env: dict[str, str]
    make_output: str


# Archives holding every bad case, in MIRFLICKR-1M's layout

SPEC = dataclasses.replace(load_dataset_spec("sample"), n_images=12, shard_size=5, image_size=32)
SMALL, LARGE, GREY, CMYK, PNG, MISSING, EMPTY, TRUNCATED, CORRUPT, PORTRAIT, NEUTRAL, SEPIA = range(12)
BAD = {MISSING: "missing", EMPTY: "empty", TRUNCATED: "truncated", CORRUPT: "undecodable"}

UNSAFE = ("../evil.jpg", "images/0/../../../escape.jpg")

UNSAFE_TAGS = ("/etc/evil.txt",)

TAGS: dict[int, tuple[bytes, list[str]]] = {
    SMALL: (b"sky\nblue\n", ["sky", "blue"]),
    LARGE: (b"  sunset \r\n\r\nbeach\r\n", ["sunset", "beach"]),
    GREY: (b"bw\nblackandwhite\n", ["bw", "blackandwhite"]),
    CMYK: (b"", []),
    PNG: ("café\n東京\n".encode(), ["café", "東京"]),
    EMPTY: (b"caf\xe9\n", ["café"]),
    TRUNCATED: (
        "\n".join(f"interestingness{i}" for i in range(12)).encode(),
        [f"interestingness{i}" for i in range(12)],
    ),
    **{i: (f"tag{i}\n".encode(), [f"tag{i}"]) for i in (CORRUPT, PORTRAIT, NEUTRAL, SEPIA)},
}
"""Tag files by image id (raw bytes, expected tags); MISSING has no tag file at all."""


def picture(seed: int, width: int, height: int) -> np.ndarray:
    """Smooth colour gradients with noise: uint8 RGB whose resize and colour conversion are not trivial."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    ramps = np.stack([rng.uniform(-90, 90) * xs + rng.uniform(-90, 90) * ys for _ in range(3)], axis=-1)
    noisy = rng.uniform(60, 190, 3) + ramps + rng.normal(0.0, 12.0, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def toned(seed: int, cast: tuple[float, float, float], gain: tuple[float, float, float]) -> np.ndarray:
    """A greyscale picture printed with a colour ``gain`` per channel plus ``cast`` and a little noise."""
    grey = picture(seed, 40, 40).mean(axis=-1, keepdims=True)
    noise = np.random.default_rng(seed).normal(0.0, 1.5, (40, 40, 3))
    return np.clip(grey * np.array(gain) + np.array(cast) + noise, 0, 255).astype(np.uint8)


def encoded(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}), **options)
    return buffer.getvalue()


def photos() -> dict[int, bytes]:
    """Member bytes by image id: good photos of several kinds and every kind of bad one (MISSING absent)."""
    good = encoded(Image.fromarray(picture(7, 64, 48)))
    return {
        SMALL: encoded(Image.fromarray(picture(0, 60, 44))),
        LARGE: encoded(Image.fromarray(picture(1, 300, 200))),
        GREY: encoded(Image.fromarray(picture(2, 50, 40)).convert("L")),
        CMYK: encoded(Image.fromarray(picture(3, 48, 40)).convert("CMYK")),
        PNG: encoded(Image.fromarray(picture(4, 40, 40)).convert("RGBA"), "PNG"),
        EMPTY: b"",
        TRUNCATED: good[: len(good) * 2 // 3],
        CORRUPT: np.random.default_rng(9).bytes(3000),
        PORTRAIT: encoded(Image.fromarray(picture(5, 40, 70))),
        NEUTRAL: encoded(Image.fromarray(toned(10, (2.0, 0.0, -2.0), (1.0, 1.0, 1.0)))),
        SEPIA: encoded(Image.fromarray(toned(11, (10.0, 10.0, 10.0), (1.0, 0.9, 0.75)))),
    }


def write_raw(paths: DatasetPaths, images: dict[int, bytes]) -> None:
    paths.raw.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(paths.archive("images0"), "w") as archive:
        for image_id, data in images.items():
            archive.writestr(SPEC.image_member(image_id), data)
        for name in UNSAFE:
            archive.writestr(name, images[SMALL])
    with zipfile.ZipFile(paths.archive("tags"), "w") as archive:
        for image_id, (raw, _) in TAGS.items():
            archive.writestr(SPEC.tag_member(image_id), raw)
        for name in UNSAFE_TAGS:
            archive.writestr(name, b"sky\n")


# Folders of photos


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def scene(image_id: int) -> bytes:
    """One of the synthetic sample's tagged scenes, as a JPEG."""
    return jpeg(sample_image(SAMPLE, image_id))


def write_photos(root: Path, names: dict[str, bytes]) -> None:
    for name, data in names.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def folder_of_scenes(root: Path, n: int, sidecars: bool = True) -> dict[str, int]:
    """``n`` scenes as ``album<k // 10>/photo<k>.jpg`` with sidecar tags; returns path → scene id."""
    names = {f"album{k // 10}/photo{k:02d}.jpg": k for k in range(n)}
    write_photos(root, {name: scene(k) for name, k in names.items()})
    if sidecars:
        for name, k in names.items():
            (root / name).with_suffix(".txt").write_text("".join(f"{tag}\n" for tag in sample_tags(SAMPLE, k)))
    return names


# Dagster, in process and served


def materialize(assets: list, key: str, storage: dg.ConfigurableResource, **options: object) -> dg.ExecuteInJobResult:
    """The asset ``key`` (``<dataset>/<name>``) of ``assets`` with its checks, in process."""
    asset_key = dg.AssetKey.from_user_string(key)
    selected = [a for a in assets if asset_key in a.keys or {c.asset_key for c in a.check_keys} == {asset_key}]
    return dg.materialize(selected, resources={"storage": storage}, **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


QUERY = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } }
        schedules { name cronSchedule }
      }
    }
  }
}
"""


def query_when_ready(url: str, server: subprocess.Popen, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"dagster-webserver exited with {server.returncode}"
        try:
            response = requests.post(f"{url}/graphql", json={"query": QUERY}, timeout=10)
            if response.ok:
                data = response.json()["data"]
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"] is not None:
                    return data
        except requests.ConnectionError:
            pass
        time.sleep(1.0)
    raise AssertionError("dagster-webserver did not answer in time")


def wait_for_http(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Until ``url`` answers 200, while ``server`` runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited with {server.returncode}"
        try:
            if requests.get(url, timeout=10).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in time")


# The statistics report against its tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SOURCE_LINE = re.compile(r"^Source: `(?P<file>[\w.]+\.parquet)`(?: \(first (?P<shown>\d+) of (?P<rows>[\d,]+) rows\))?")
PLOT_LINK = re.compile(r"!\[[^\]]*\]\((?P<path>[^)]+\.png)\)")


def _cell_matches(cell: str, expected: object) -> bool:
    """Read a report cell the way a person would and compare it with the Parquet value."""
    if isinstance(expected, str):
        return (json.loads(cell) if cell.startswith('"') else cell) == expected
    if isinstance(expected, bool | np.bool_):
        return cell == str(bool(expected)).lower()
    if isinstance(expected, int | np.integer):
        return int(cell.replace(",", "")) == int(expected)
    if math.isnan(float(expected)):
        return cell == "n/a"
    number = float(cell.rstrip("%").replace(",", "")) / (100 if cell.endswith("%") else 1)
    return math.isclose(number, float(expected), rel_tol=1e-3, abs_tol=1e-12)


def _report_tables(text: str) -> list[tuple[re.Match[str], list[list[str]]]]:
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        source = SOURCE_LINE.match(line)
        if source is None:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        rows = []
        while j < len(lines) and lines[j].startswith("|"):
            rows.append([cell.strip() for cell in lines[j].strip().strip("|").split("|")])
            j += 1
        found.append((source, rows))
    return found


def assert_report_matches_tables(stats_dir: Path) -> set[str]:
    """Every table in ``data_stats.md`` agrees with its Parquet source; every linked plot is a PNG.

    Returns the Parquet files the report draws on.
    """
    text = (stats_dir / "data_stats.md").read_text()
    checked = set()
    for source, (header, separator, *rows) in _report_tables(text):
        frame = pd.read_parquet(stats_dir / source["file"])
        assert set(separator) == {"---"}, f"{source['file']}: malformed table"
        if header == ["figure", "value"]:
            assert len(frame) == 1, f"{source['file']}: a figure table needs a one-row source"
            assert [name for name, _ in rows] == list(frame.columns), f"{source['file']}: figures differ"
            for name, cell in rows:
                expected = frame[name].iloc[0]
                assert _cell_matches(cell, expected), f"{source['file']} {name}: {cell!r} ≠ {expected!r}"
        else:
            assert header == list(frame.columns), f"{source['file']}: columns {header} ≠ {list(frame.columns)}"
            if source["shown"] is None:
                assert len(rows) == len(frame), f"{source['file']}: {len(rows)} rows shown of {len(frame)}"
            else:
                assert int(source["shown"]) == len(rows) < len(frame)
                assert int(source["rows"].replace(",", "")) == len(frame)
            for r, row in enumerate(rows):
                for name, cell in zip(header, row, strict=True):
                    expected = frame[name].iloc[r]
                    assert _cell_matches(cell, expected), f"{source['file']} row {r} {name}: {cell!r} ≠ {expected!r}"
        checked.add(source["file"])
    links = [m["path"] for m in PLOT_LINK.finditer(text)]
    assert links, "the report links no plots"
    for link in links:
        assert (stats_dir / link).read_bytes().startswith(PNG_MAGIC), f"{link} is not a PNG"
    return checked


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` and holds no pixels: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )
