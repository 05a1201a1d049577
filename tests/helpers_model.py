"""A tiny dataset in the data contract and a checkpoint trained on it for a few steps, once per session.

Test modules load this file as a plugin (``pytest_plugins = ["tests.helpers_model"]``), which registers
the fixtures once, so the session-scoped training runs once however many modules use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from model.config import TrainConfig
from model.train import train
from pipeline.core.color import colorfulness, lab_u8_to_rgb, rgb_to_lab_u8
from pipeline.core.layout import DatasetPaths
from pipeline.core.vocabulary import encode_tags, load_tag_encoding, tag_text

SIZE = 32
SHARD_SIZE = 16
N_SHARDS = 2
HOLDOUT_SHARD = 1
INVALID = 18
"""An image of the held-out shard whose photo could not be read (zeros, ``valid = false``)."""
GRAYSCALE = 21
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
    shard_size: int = SHARD_SIZE
    holdout_shard: int = HOLDOUT_SHARD
    invalid_id: int = INVALID
    grayscale_id: int = GRAYSCALE


def draw_photo(image_id: int) -> tuple[np.ndarray, list[str]]:
    """A coloured shape on a background whose tone depends on the id; its tags name colour, shape and id."""
    colour = list(COLOURS)[image_id % len(COLOURS)]
    shape = SHAPES[(image_id // len(COLOURS)) % len(SHAPES)]
    tone = 60 + (9 * image_id) % 140
    rgb = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    rgb[:] = (tone, tone // 2 + 60, 255 - tone)
    if shape == "circle":
        cv2.circle(rgb, (SIZE // 2, SIZE // 2), SIZE // 3, COLOURS[colour], thickness=-1)
    else:
        cv2.rectangle(rgb, (SIZE // 4, SIZE // 4), (3 * SIZE // 4, 3 * SIZE // 4), COLOURS[colour], thickness=-1)
    return rgb, [colour, shape, f"photo{image_id}"]


def write_tiny_dataset(root: Path, vocabulary_dir: Path, photo_offset: int = 0) -> DatasetPaths:
    """Shards, ``images.parquet``, ``tokens.npy`` and ``tags.parquet`` of ``N_SHARDS × SHARD_SIZE`` photos;
    ``photo_offset`` draws other photos for the same ids (a second dataset)."""
    paths = DatasetPaths(root)
    n = N_SHARDS * SHARD_SIZE
    photos, tags = zip(*(draw_photo(i + photo_offset) for i in range(n)), strict=True)
    rgb = np.stack(photos)
    rgb[GRAYSCALE] = rgb[GRAYSCALE].mean(axis=-1, keepdims=True).astype(np.uint8)
    rgb[INVALID] = 0
    lab = rgb_to_lab_u8(rgb)
    valid = np.arange(n) != INVALID
    paths.shards.mkdir(parents=True)
    paths.images_table.mkdir()
    for shard in range(N_SHARDS):
        ids = np.arange(shard * SHARD_SIZE, (shard + 1) * SHARD_SIZE)
        np.save(paths.shard(shard), lab[ids])
        pd.DataFrame(
            {
                "image_id": ids,
                "shard": shard,
                "row": ids - shard * SHARD_SIZE,
                "valid": valid[ids],
                "reason": np.where(valid[ids], "", "missing"),
                "is_grayscale": ids == GRAYSCALE,
                "colorfulness": colorfulness(lab_u8_to_rgb(lab[ids])),
            }
        ).to_parquet(paths.shard_rows(shard))
    tokens, n_tokens = encode_tags([tag_text(t) for t in tags], load_tag_encoding(vocabulary_dir))
    np.save(paths.tokens, tokens)
    pd.DataFrame(
        {"image_id": np.arange(n), "tags": list(tags), "n_tags": [len(t) for t in tags], "n_tokens": n_tokens}
    ).to_parquet(paths.tags_table)
    return paths


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, vocabulary_dir: Path) -> TinyRun:
    """The tiny dataset and a checkpoint of a few training steps on its first shard.

    The learning rate is high so that six steps already move the zero-initialised output away from grey.
    """
    root = tmp_path_factory.mktemp("tiny") / "data"
    paths = write_tiny_dataset(root, vocabulary_dir)
    config = TrainConfig(
        data_root=str(root),
        run_name="tiny",
        holdout_shard=HOLDOUT_SHARD,
        image_size=SIZE,
        batch_size=4,
        epochs=100,
        max_steps=6,
        lr=5e-3,
        n_critic=1,
        base_channels=8,
        depth=2,
        token_dim=16,
        log_every=6,
        ckpt_every=6,
        keep_checkpoints=1,
        device="cpu",
        prefetch=1,
    )
    return TinyRun(paths=paths, checkpoint=train(config).checkpoint)


@pytest.fixture(scope="session")
def write_dataset(vocabulary_dir: Path) -> Callable[..., DatasetPaths]:
    """:func:`write_tiny_dataset` for tests of a second dataset (``root``, ``photo_offset``)."""
    return lambda root, photo_offset=0: write_tiny_dataset(root, vocabulary_dir, photo_offset)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: TinyRun) -> Path:
    """Just the checkpoint, for tests that bring their own photos."""
    return tiny_run.checkpoint
