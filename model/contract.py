"""The data contract shared by the pipeline (which writes it) and the model (which reads it).

See DESIGN.md §2: shards are uint8 Lab in the OpenCV 8-bit encoding, tokens are o200k_base ids padded
with ``<|pad|>``.
"""

TOKENS_PER_IMAGE = 20
"""Tag tokens kept per image; longer tag texts are truncated."""

O200K_VOCAB_SIZE = 200019
"""Ids 0 … 200018 of o200k_base (ordinary and special tokens)."""

O200K_ORDINARY_TOKENS = 199_998
"""Ids 0 … 199997: the tokens plain text can encode to. 199999 and 200018 are special, the rest unassigned."""

PAD_ID = O200K_VOCAB_SIZE
"""``<|pad|>``: the first id after o200k_base's own."""

VOCAB_SIZE_WITH_PAD = PAD_ID + 1

DEFAULT_IMAGE_SIZE = 224
SHARD_NAME = "lab_{shard:03d}.npy"
