"""Training data read in place: Lab shards read row by row from disk and tag tokens, batched by reader threads.

The order of an epoch depends only on ``(seed, epoch)``, and a position in it is two integers, so a run can
stop anywhere and resume on exactly the next batch. A batch travels as uint8 (one third of float's bytes) in
one copy to the device; scaling, flipping and resizing happen there.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.color import AB_HALF_RANGE, L_HALF_RANGE, NEUTRAL_AB
from pipeline.core.contract import PAD_ID, TOKENS_PER_IMAGE, VOCAB_SIZE_WITH_PAD, WORDS_PER_IMAGE
from pipeline.core.layout import (
    DataError,
    DatasetLayout,
    DatasetPaths,
    open_shard,
    open_tokens,
    read_images_table,
    read_words,
)
from pipeline.core.vocabulary import encode_tags, kept_words, load_tag_encoding, tag_text, tiktoken_cache_dir

logger = logging.getLogger(__name__)

TOKENIZERS = ("o200k", "words")
"""``o200k``: 20 o200k_base ids per photo (``tokens.npy``); ``words``: the seed's first tokenizer, 8 whole-tag
words per photo (``tag_words.npy``, ids into the dataset's ``words.json``)."""


class TokenIndex:
    """Dense re-indexing of a tokenizer's raw ids: 0 is the pad, 1 … V the known tokens, V + 1 "unknown".

    o200k has 200k ids but a tag corpus uses a small fraction of them; a dense index keeps the embedding
    tables (and their optimizer state) that small. For ``words`` the raw ids index ``words`` (``''`` = 0, the
    pad), which the index keeps so that a checkpoint can turn a user's tags into ids without the dataset.
    """

    def __init__(self, vocabulary: np.ndarray, tokenizer: str = "o200k", words: Sequence[str] = ()) -> None:
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        self.tokenizer = tokenizer
        self.words = tuple(words)
        self.pad = PAD_ID if tokenizer == "o200k" else 0
        raw_size = VOCAB_SIZE_WITH_PAD if tokenizer == "o200k" else max(len(self.words), 1)
        self.vocabulary = np.unique(np.asarray(vocabulary, dtype=np.int64))
        ordinary = (self.vocabulary >= 0) & (self.vocabulary < raw_size) & (self.vocabulary != self.pad)
        if not ordinary.all():
            raise ValueError(f"a {tokenizer} token index holds ids 0 … {raw_size - 1} but the pad {self.pad} only")
        self.unknown = len(self.vocabulary) + 1
        self._lookup = np.full(raw_size, self.unknown, dtype=np.int64)
        self._lookup[self.pad] = 0
        self._lookup[self.vocabulary] = np.arange(1, len(self.vocabulary) + 1)

    @classmethod
    def build(
        cls, tokens: np.ndarray, min_count: int = 1, tokenizer: str = "o200k", words: Sequence[str] = ()
    ) -> TokenIndex:
        """Index the ids occurring at least ``min_count`` times in ``tokens``."""
        pad = PAD_ID if tokenizer == "o200k" else 0
        counts = np.bincount(np.asarray(tokens).ravel(), minlength=pad + 1)
        counts[pad] = 0
        return cls(np.flatnonzero(counts >= min_count), tokenizer, words)

    @property
    def size(self) -> int:
        """Rows an embedding table needs: pad, the vocabulary and "unknown"."""
        return len(self.vocabulary) + 2

    @property
    def width(self) -> int:
        """Raw ids per photo: 20 o200k tokens or 8 words."""
        return TOKENS_PER_IMAGE if self.tokenizer == "o200k" else WORDS_PER_IMAGE

    def dense(self, tokens: np.ndarray) -> np.ndarray:
        """Raw ids ``(..., width)`` → dense int64 ids; an id outside the tokenizer's range counts as unknown."""
        tokens = np.asarray(tokens)
        inside = (tokens >= 0) & (tokens < len(self._lookup))
        return np.where(inside, self._lookup[np.where(inside, tokens, 0)], self.unknown)

    def state(self) -> torch.Tensor:
        """The vocabulary as a tensor; with :attr:`tokenizer` and :attr:`words`, what a checkpoint needs."""
        return torch.from_numpy(self.vocabulary.copy())

    @classmethod
    def from_state(cls, state: torch.Tensor, tokenizer: str = "o200k", words: Sequence[str] = ()) -> TokenIndex:
        return cls(state.numpy(), tokenizer, words)


def tag_ids(tags: list[str], index: TokenIndex) -> np.ndarray:
    """The raw ids of ``tags`` for ``index``'s tokenizer: 20 o200k tokens, or the ids of up to 8 words of its
    training vocabulary (tags it never saw are skipped, with a warning naming them)."""
    if index.tokenizer == "o200k":
        tokens, _ = encode_tags([tag_text(tags)], load_tag_encoding(tiktoken_cache_dir(os.environ)))
        return tokens[0]
    known = {word: i for i, word in enumerate(index.words)}
    unseen = unknown_words(tags, index)
    if unseen:
        logger.warning("tags this checkpoint never saw, skipped: %s", ", ".join(unseen))
    ids = [known[word] for word in kept_words(tags) if word in known][:WORDS_PER_IMAGE]
    return np.array(ids + [index.pad] * (WORDS_PER_IMAGE - len(ids)), dtype=np.int32)


def unknown_words(tags: list[str], index: TokenIndex) -> list[str]:
    """The words of ``tags`` a ``words`` checkpoint never saw (they cannot steer it); none for o200k, whose
    tokens spell any text."""
    if index.tokenizer == "o200k":
        return []
    known = set(index.words)
    return [word for word in kept_words(tags) if word not in known]


def token_rows(paths: DatasetPaths, tokenizer: str) -> np.ndarray:
    """The token matrix a tokenizer reads, memory-mapped and checked: ``tokens.npy`` or ``tag_words.npy``."""
    return open_tokens(paths, words=tokenizer == "words")


def dataset_words(paths: DatasetPaths, tokenizer: str) -> list[str]:
    """The word vocabulary (``words.json``) for ``words``, nothing for ``o200k``."""
    return [] if tokenizer == "o200k" else read_words(paths)


def checkpoint_ids(tokens: np.ndarray, paths: DatasetPaths, index: TokenIndex) -> np.ndarray:
    """A dataset's raw tag ids as the checkpoint's index reads them. o200k ids are the same everywhere; word ids
    index each dataset's own ``words.json``, so they are mapped through the words themselves (a word the
    checkpoint never saw becomes unknown)."""
    if index.tokenizer == "o200k":
        return tokens
    own = {word: i for i, word in enumerate(index.words)}
    remap = np.array([own.get(word, len(index.words)) for word in dataset_words(paths, "words")], dtype=np.int32)
    return remap[tokens]


def training_tokens(layout: DatasetLayout, holdout_shard: int, tokenizer: str = "o200k") -> np.ndarray:
    """Token rows of every image outside the held-out shard: the corpus a :class:`TokenIndex` is built on.

    All training shards, not only a run's subset, so runs over successive subsets share one index.
    """
    tokens = token_rows(layout.paths, tokenizer)
    held = layout.shard_ids(holdout_shard)
    return np.concatenate([tokens[: held.start], tokens[held.stop :]])


class TrainingSet:
    """The eligible photos of the chosen shards: valid, in colour when ``skip_grayscale``, and not in ``exclude``
    (the run's validation photos).

    Nothing is loaded: :meth:`gather` reads the rows a batch needs from the shard files, and tokens stay
    memory-mapped. The shards' memory maps only describe the files (shape, where the rows start).
    """

    def __init__(
        self,
        layout: DatasetLayout,
        shards: Sequence[int],
        skip_grayscale: bool,
        tokenizer: str = "o200k",
        exclude: Sequence[int] = (),
    ) -> None:
        columns = ["image_id", "shard", "row", "valid", "is_grayscale"]
        table = read_images_table(layout.paths, columns, shards)
        keep = table["valid"].to_numpy(bool, copy=True) & ~table["image_id"].isin(list(exclude)).to_numpy()
        if skip_grayscale:
            keep &= ~table["is_grayscale"].to_numpy(bool)
        self.shard = table["shard"].to_numpy(np.int64)[keep]
        self.row = table["row"].to_numpy(np.int64)[keep]
        self.shards = {int(s): open_shard(layout.paths, int(s)) for s in shards}
        self.tokens = token_rows(layout.paths, tokenizer)
        self.global_index = self.shard * layout.shard_size + self.row
        shapes = {array.shape[1:] for array in self.shards.values()}
        if len(shapes) != 1:
            raise DataError(f"shards {list(shards)} hold photos of different sizes {sorted(shapes)}")
        self.image_shape: tuple[int, int, int] = shapes.pop()
        for s, array in self.shards.items():
            rows = self.row[self.shard == s]
            if rows.size and rows.max() >= len(array):
                raise DataError(
                    f"{layout.paths.shard_rows(s)} names row {rows.max()} of shard {s}, which has {len(array)};"
                    f" {layout.paths.shard_remedy(s)}"
                )
        if self.global_index.size and self.global_index.max() >= len(self.tokens):
            raise DataError(
                f"{layout.paths.tokens} holds {len(self.tokens):,} rows, fewer than the shards' images;"
                f" {layout.paths.remedy('tag_tokens')}"
            )
        self._row_bytes = int(np.prod(self.image_shape))
        self._rows_start = {s: int(array.offset) for s, array in self.shards.items()}
        self.paths = layout.paths
        self._files = {s: os.open(layout.paths.shard(s), os.O_RDONLY) for s in self.shards}
        weakref.finalize(self, _close_files, tuple(self._files.values()))
        if hasattr(os, "posix_fadvise"):  # not on macOS
            for fd in self._files.values():
                # Rows come in random order: read-ahead would only fetch neighbours (up to the disk's
                # read_ahead_kb, megabytes on some) that the epoch wants much later, if at all.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)

    def __len__(self) -> int:
        return len(self.row)

    def gather(self, items: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Read the photos ``items`` (indices into this set) into ``out`` (C-contiguous, ``(len(items), S, S, 3)``
        uint8); return their raw token rows.

        One ``pread`` a photo, straight into ``out``: one request for exactly the row's bytes, where a memory
        map's page faults each read around the faulting page as far as the read-ahead goes; and a call that
        releases the GIL, so that the loader's reader threads wait on the disk together.
        """
        for j, item in enumerate(items):
            shard, row = int(self.shard[item]), int(self.row[item])
            offset = self._rows_start[shard] + row * self._row_bytes
            if os.preadv(self._files[shard], [out[j]], offset) != self._row_bytes:
                raise DataError(
                    f"{self.paths.shard(shard)} ends before its row {row}: the file changed while training read it;"
                    f" {self.paths.shard_remedy(shard)}, then resume"
                )
        return np.asarray(self.tokens[self.global_index[items]])


def _close_files(files: tuple[int, ...]) -> None:
    for fd in files:
        os.close(fd)


@dataclass(frozen=True)
class Position:
    """Where the data stream stands: ``offset`` samples of epoch ``epoch``'s permutation are consumed."""

    epoch: int = 0
    offset: int = 0


class EpochPlan(NamedTuple):
    """One epoch's order and augmentation, per photo of the training set: a function of ``(seed, epoch)`` alone,
    so a resumed run sees the very same crops, flips and dropped tags."""

    order: np.ndarray
    flip: np.ndarray
    crop: np.ndarray
    """``(n, 3)`` floats in [0, 1): the crop's side as a share of ``[crop_min_scale, 1]``, then its left and top
    as shares of the room the crop leaves."""
    tag_draw: np.ndarray
    """``(n,)`` uniform draws: a photo's tags are dropped for the epoch where its draw is below ``tag_dropout``."""


def epoch_plan(n: int, seed: int, epoch: int) -> EpochPlan:
    """The permutation, flips, crops and tag draws of one epoch (drawn in that order: the permutation and flips
    are those of runs from before crops and tag dropout existed)."""
    rng = np.random.default_rng([seed, epoch])
    order, flip = rng.permutation(n), rng.random(n) < 0.5
    return EpochPlan(order, flip, rng.random((n, 3)), rng.random(n))


@dataclass(frozen=True)
class Augmentation:
    """What training does to its photos beyond the flips, each a candidate regulariser for small datasets.

    ``crop_min_scale`` < 1: random resized crops, a square of ``U(crop_min_scale, 1)`` of the photo's side at a
    random place, resized to the training size. ``tag_dropout``: the share of photos trained without their tags
    (all pads, the "no tags" vector), so that the no-tag path stays a real colorizer and the tags refine it.
    """

    crop_min_scale: float = 1.0
    tag_dropout: float = 0.0


@dataclass
class HostBatch:
    """A batch in host memory as read from disk: uint8 Lab, flips, dense tokens; ``position`` comes after it."""

    lab: torch.Tensor
    flip: torch.Tensor
    tokens: torch.Tensor
    position: Position
    crop: torch.Tensor | None = None
    """``(B, 3)``: each photo's crop as side, left and top shares of its size (:func:`crop_boxes`); None: whole."""


@dataclass
class Batch:
    """A batch on the device, scaled to [-1, 1]: ``lightness`` (B, 1, s, s), ``ab`` (B, 2, s, s), dense tokens
    (B, width): 20 o200k tokens or 8 words."""

    lightness: torch.Tensor
    ab: torch.Tensor
    tokens: torch.Tensor
    position: Position


def batches_per_epoch(n_images: int, batch_size: int, world_size: int = 1, of: str = "") -> int:
    """Global batches of ``batch_size · world_size`` samples in an epoch of ``n_images`` (the remainder is
    dropped); none is an error, naming ``of`` (what the images are) where given."""
    batches = n_images // (batch_size * world_size)
    if batches == 0:
        raise DataError(
            f"batch_size {batch_size} × {world_size} process(es) exceeds the {n_images} eligible images"
            + (f" of {of}" if of else "")
        )
    return batches


class BatchLoader:
    """An endless stream of batches from ``start`` on, read ``prefetch`` batches ahead by ``readers`` threads.

    Each thread reads whole batches, so up to ``min(readers, prefetch)`` of them wait on the disk at once, and
    batches come out in the order of the plan whichever thread finishes first: the stream is the same for any
    number of readers. With ``pin_device`` (a CUDA device) batches land in pinned memory, so the copy to that
    device can run asynchronously; the threads pin on that device, not on GPU 0, which every rank would
    otherwise crowd.

    Epoch ``e`` is ``epoch_plan(len(dataset), seed, e)`` cut into global batches of
    ``batch_size · world_size`` samples (the remainder is dropped); rank ``r`` takes the ``r``-th slice of
    each, so ranks never overlap and all see the same number of batches. ``augmentation`` adds the plan's crops
    and drops the tags of the plan's photos.
    """

    def __init__(
        self,
        dataset: TrainingSet,
        index: TokenIndex,
        batch_size: int,
        seed: int,
        start: Position = Position(),
        rank: int = 0,
        world_size: int = 1,
        pin_device: torch.device | None = None,
        prefetch: int = 4,
        readers: int = 4,
        augmentation: Augmentation = Augmentation(),
    ) -> None:
        self.dataset, self.index, self.seed, self.augmentation = dataset, index, seed, augmentation
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.pin_device = pin_device
        self.batches_per_epoch = batches_per_epoch(len(dataset), batch_size, world_size)
        self._pool = ThreadPoolExecutor(
            readers,
            thread_name_prefix="batch-reader",
            initializer=torch.cuda.set_device if pin_device is not None else None,
            initargs=(pin_device,) if pin_device is not None else (),
        )
        self._plan = self._batches(start)
        self._pending: deque[Future[HostBatch]] = deque()
        for _ in range(prefetch):
            self._submit()

    def _batches(self, start: Position) -> Iterator[tuple[int, int, EpochPlan]]:
        """``(epoch, batch, plan)`` for every batch from ``start`` on."""
        epoch, batch = start.epoch, start.offset // (self.batch_size * self.world_size)
        while True:
            plan = epoch_plan(len(self.dataset), self.seed, epoch)
            for index in range(batch, self.batches_per_epoch):
                yield epoch, index, plan
            epoch, batch = epoch + 1, 0

    def _submit(self) -> None:
        self._pending.append(self._pool.submit(self._read, *next(self._plan)))

    def _read(self, epoch: int, batch: int, plan: EpochPlan) -> HostBatch:
        span = self.batch_size * self.world_size
        first = batch * span + self.rank * self.batch_size
        taken = slice(first, first + self.batch_size)
        items = plan.order[taken]
        pin = self.pin_device is not None
        lab = torch.empty((self.batch_size, *self.dataset.image_shape), dtype=torch.uint8, pin_memory=pin)
        dense = self.index.dense(self.dataset.gather(items, lab.numpy()))
        dense[plan.tag_draw[taken] < self.augmentation.tag_dropout] = 0  # the pad: "no tags"
        tokens = torch.from_numpy(dense)
        flip = torch.from_numpy(plan.flip[taken].copy())
        crop = None
        if self.augmentation.crop_min_scale < 1:
            crop = torch.from_numpy(crop_boxes(plan.crop[taken], self.augmentation.crop_min_scale))
        after = Position(epoch, (batch + 1) * span)
        if batch + 1 == self.batches_per_epoch:
            after = Position(epoch + 1, 0)
        if pin:
            flip, tokens = flip.pin_memory(), tokens.pin_memory()
        return HostBatch(lab=lab, flip=flip, tokens=tokens, position=after, crop=crop)

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> HostBatch:
        future = self._pending.popleft()
        self._submit()
        try:
            return future.result()
        except Exception as error:
            raise DataError(f"the batch loader failed: {error}") from error

    def close(self) -> None:
        """Stop the threads once their current batch is read; batches already prepared are dropped."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def crop_boxes(draws: np.ndarray, min_scale: float) -> np.ndarray:
    """The plan's crop draws ``(B, 3)`` as boxes: side ``U(min_scale, 1)`` of the photo's, left and top as shares
    of the photo's side (float32)."""
    side = min_scale + (1 - min_scale) * draws[:, 0]
    return np.stack([side, draws[:, 1] * (1 - side), draws[:, 2] * (1 - side)], axis=1).astype(np.float32)


def resized_crops(lab: torch.Tensor, boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """Each photo of ``lab`` ``(B, C, S, S)`` cut to its box (side, left, top as shares of ``S``) and resized
    to ``image_size`` with antialiasing (one call a photo: the boxes differ in size)."""
    side = lab.shape[-1]
    out = []
    for image, (scale, left, top) in zip(lab, boxes.tolist(), strict=True):
        size = max(1, round(scale * side))
        x, y = min(round(left * side), side - size), min(round(top * side), side - size)
        crop = image[None, :, y : y + size, x : x + size]
        out.append(F.interpolate(crop, size=(image_size, image_size), mode="bilinear", antialias=True))
    return torch.cat(out)


def lab_to_unit(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded Lab ``(B, 3, H, W)`` as floats → lightness and ``ab`` in [-1, 1], the scaling of
    :mod:`pipeline.core.color`."""
    return lab[:, :1] / L_HALF_RANGE - 1.0, (lab[:, 1:] - NEUTRAL_AB) / AB_HALF_RANGE


def to_device(host: HostBatch, device: torch.device, image_size: int, channels_last: bool = False) -> Batch:
    """One non-blocking uint8 copy to ``device``, then flip, crop (where the batch has boxes), scale and resize
    to ``image_size`` there."""
    lab = host.lab.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    flip = host.flip.to(device, non_blocking=True).view(-1, 1, 1, 1)
    lab = torch.where(flip, lab.flip(-1), lab)
    if host.crop is not None:
        lab = resized_crops(lab, host.crop, image_size)
    elif lab.shape[-1] != image_size or lab.shape[-2] != image_size:
        lab = F.interpolate(lab, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    if channels_last:
        lab = lab.contiguous(memory_format=torch.channels_last)
    lightness, ab = lab_to_unit(lab)
    return Batch(lightness=lightness, ab=ab, tokens=host.tokens.to(device, non_blocking=True), position=host.position)
