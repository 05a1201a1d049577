"""The data contract shared by the pipeline (which writes it) and the model (which reads it).

Shards are uint8 Lab in the OpenCV 8-bit encoding, tokens are o200k_base ids padded with ``<|pad|>``
(docs/ARCHITECTURE.md, "Data contract").
"""

from __future__ import annotations

import numpy as np

TOKENS_PER_IMAGE = 20
"""Tag tokens kept per image; longer tag texts are truncated."""

O200K_VOCAB_SIZE = 200019
"""Ids 0 … 200018 of o200k_base (ordinary and special tokens)."""

O200K_ORDINARY_TOKENS = 199_998
"""Ids 0 … 199997: the tokens plain text can encode to. 199999 and 200018 are special, the rest unassigned."""

PAD_ID = O200K_VOCAB_SIZE
"""``<|pad|>``: the first id after o200k_base's own."""

VOCAB_SIZE_WITH_PAD = PAD_ID + 1

SHARD_NAME = "lab_{shard:03d}.npy"

WORDS_PER_IMAGE = 8
"""Whole-tag words kept per image by the word tokenizer (the seed's first one); 0 is the pad, the empty word."""


def token_problems(tokens: np.ndarray) -> str:
    """Contract violations of a token matrix ('' when none): dtype, width, id range, pads only trailing."""
    if tokens.dtype != np.int32 or tokens.ndim != 2 or tokens.shape[1] != TOKENS_PER_IMAGE:
        return f"dtype/shape {tokens.dtype} {tokens.shape}, expected int32 (N, {TOKENS_PER_IMAGE})"
    problems = []
    if tokens.size and (tokens.min() < 0 or tokens.max() > PAD_ID):
        problems.append(f"ids outside [0, {PAD_ID}]: min {tokens.min()}, max {tokens.max()}")
    is_pad = tokens == PAD_ID
    inner_pads = int((is_pad[:, :-1] & ~is_pad[:, 1:]).any(axis=1).sum())
    if inner_pads:
        problems.append(f"{inner_pads} rows have a token after a pad")
    return "; ".join(problems)


MISSING = "missing"
EMPTY = "empty"
TRUNCATED = "truncated"
UNDECODABLE = "undecodable"
TOO_LARGE = "too_large"
BAD_MEMBER = "bad_member"
UNSUPPORTED = "unsupported"
CHANGED = "changed"
DUPLICATE = "duplicate"
INVALID_REASONS = (MISSING, EMPTY, TRUNCATED, UNDECODABLE, TOO_LARGE, BAD_MEMBER, UNSUPPORTED, CHANGED, DUPLICATE)
"""Why a row of ``images.parquet`` is not valid (its ``reason``): no such photo, zero bytes, cut short, not an
image Pillow reads, over the size limits, an archive member that cannot be read (bad CRC, encrypted, unknown
compression), a format that needs a package not installed (HEIC without ``pillow-heif``), a photo file changed
since it got its id, or a held-out photo that duplicates a training photo."""
