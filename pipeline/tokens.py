"""Tag files → ``tokens.npy`` and ``tags.parquet`` (docs/ARCHITECTURE.md, "Data contract").

Tags are the tag file's non-empty stripped lines; their text is tokenized by :mod:`pipeline.core.vocabulary`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tiktoken

from pipeline.core.contract import PAD_ID, TOKENS_PER_IMAGE, VOCAB_SIZE_WITH_PAD, WORDS_PER_IMAGE
from pipeline.core.files import atomic_path, atomic_write_text, reports_disk_full
from pipeline.core.layout import DatasetPaths, write_npy_header
from pipeline.core.vocabulary import encode_tags, kept_words, tag_text
from pipeline.sources.base import DatasetSpec, TagFileUnreadable, TagSource

CHUNK_SIZE = 50_000

TAGS_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("tags", pa.list_(pa.string())),
        ("n_tags", pa.int32()),
        ("n_tokens", pa.int32()),
    ]
)


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8-sig")
    except UnicodeDecodeError:
        return line.decode("latin-1")


def parse_tag_file(raw: bytes) -> tuple[list[str], bool]:
    """Tags of one file (non-empty stripped lines) and whether it was not valid UTF-8.

    A file that is not UTF-8 is decoded line by line: valid UTF-8 lines stay exact, the others are read as
    Latin-1, which never fails, keeps every byte, and is right for the legacy 8-bit text that usually
    causes such files (``errors="replace"`` would turn ``café`` into ``caf�``). A leading BOM is dropped.
    """
    try:
        lines = raw.decode("utf-8-sig").replace("\r", "\n").split("\n")
        invalid = False
    except UnicodeDecodeError:
        lines = [_decode_line(line) for line in raw.replace(b"\r", b"\n").split(b"\n")]
        invalid = True
    return [tag for line in lines if (tag := line.strip())], invalid


@dataclass(frozen=True)
class TagBatch:
    """Tags of consecutive images, with counts of what was wrong with their files."""

    tags: list[list[str]]
    missing: int
    invalid_utf8: int
    unreadable: int = 0


def read_tags(files: TagSource, ids: Sequence[int]) -> TagBatch:
    """Read the tag file of each id; a missing or unreadable file gives no tags (and is counted)."""
    tags: list[list[str]] = []
    missing = invalid = unreadable = 0
    for image_id in ids:
        try:
            raw = files.read(image_id)
        except TagFileUnreadable:
            raw = b""
            unreadable += 1
        if raw is None:
            raw = b""
            missing += 1
        parsed, bad = parse_tag_file(raw)
        tags.append(parsed)
        invalid += bad
    return TagBatch(tags=tags, missing=missing, invalid_utf8=invalid, unreadable=unreadable)


def tag_counts(files: TagSource, ids: Sequence[int], encoding: tiktoken.Encoding) -> tuple[np.ndarray, np.ndarray]:
    """``n_tags`` and ``n_tokens`` (before truncation to 20) of images ``ids``, int32 each."""
    batch = read_tags(files, ids)
    _, n_tokens = encode_tags([tag_text(tags) for tags in batch.tags], encoding, num_threads=1)
    return np.fromiter(map(len, batch.tags), dtype=np.int32, count=len(batch.tags)), n_tokens


@dataclass(frozen=True)
class TagTokensResult:
    """What ``build_tag_tokens`` wrote and counted. ``empty`` counts images without tags, missing included;
    ``unsafe_members`` counts the tag archive's members named outside the extraction directory (never read).
    For MIRFLICKR-25k the photos share that archive, so ``lab_shards`` reports the same members again."""

    n_images: int
    missing: int
    invalid_utf8: int
    unreadable: int
    empty: int
    truncated: int
    unsafe_members: int
    distinct_tokens: int
    seconds: float
    tokens_path: Path
    tags_path: Path
    words: int = 0
    """Distinct words of the word tokenizer (``tag_words.npy``), the pad not counted."""

    @property
    def metadata(self) -> dict[str, object]:
        return {
            "path": self.tokens_path,
            "images": self.n_images,
            "missing_tag_files": self.missing,
            "invalid_utf8": self.invalid_utf8,
            "unreadable_tag_files": self.unreadable,
            "without_tags": self.empty,
            "truncated": self.truncated,
            "unsafe_members": self.unsafe_members,
            "distinct_tokens": self.distinct_tokens,
            "distinct_words": self.words,
            "seconds": self.seconds,
        }


def build_tag_tokens(
    spec: DatasetSpec,
    paths: DatasetPaths,
    encoding: tiktoken.Encoding,
    *,
    progress: Callable[[int, int], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
    num_threads: int = 2,
) -> TagTokensResult:
    """Tokenize the tags of images ``0 … n_images − 1`` into ``tokens.npy`` and ``tags.parquet``, then into
    the word tokenizer's ``tag_words.npy`` and ``words.json`` (:func:`build_tag_words`).

    Works chunk by chunk so memory stays bounded at 1M images; each file appears only when complete.
    ``progress(done, total)`` is called after each chunk.
    """
    started = time.perf_counter()
    n = spec.n_images
    missing = invalid = unreadable = empty = truncated = 0
    seen = np.zeros(VOCAB_SIZE_WITH_PAD, dtype=bool)
    with (
        spec.open_tags(paths) as files,
        atomic_path(paths.tags_table, suffix=".parquet") as table_tmp,
        atomic_path(paths.tokens, suffix=".npy") as tokens_tmp,
        tokens_tmp.open("wb") as out,
    ):
        unsafe = files.unsafe_entries()
        write_npy_header(out, (n, TOKENS_PER_IMAGE), np.int32)
        # Both files grow chunk by chunk: a full disk names the one whose write failed.
        with reports_disk_full(paths.tags_table), pq.ParquetWriter(table_tmp, TAGS_SCHEMA) as writer:
            for start in range(0, n, chunk_size):
                ids = range(start, min(start + chunk_size, n))
                batch = read_tags(files, ids)
                tokens, n_tokens = encode_tags(
                    [tag_text(tags) for tags in batch.tags], encoding, num_threads=num_threads
                )
                with reports_disk_full(paths.tokens):
                    out.write(np.ascontiguousarray(tokens, dtype=np.int32).data)  # the chunk's rows, in order
                n_tags = np.fromiter(map(len, batch.tags), dtype=np.int32, count=len(ids))
                writer.write_table(
                    pa.table(
                        [
                            pa.array(np.arange(ids.start, ids.stop, dtype=np.int64)),
                            pa.array(batch.tags, type=pa.list_(pa.string())),
                            pa.array(n_tags),
                            pa.array(n_tokens),
                        ],
                        schema=TAGS_SCHEMA,
                    )
                )
                seen[tokens.ravel()] = True
                missing += batch.missing
                invalid += batch.invalid_utf8
                unreadable += batch.unreadable
                empty += int((n_tags == 0).sum())
                truncated += int((n_tokens > TOKENS_PER_IMAGE).sum())
                if progress is not None:
                    progress(ids.stop, n)
    words = build_tag_words(paths, chunk_size)
    return TagTokensResult(
        n_images=n,
        missing=missing,
        invalid_utf8=invalid,
        unreadable=unreadable,
        empty=empty,
        truncated=truncated,
        unsafe_members=unsafe,
        distinct_tokens=int(seen[:PAD_ID].sum()),
        seconds=time.perf_counter() - started,
        tokens_path=paths.tokens,
        tags_path=paths.tags_table,
        words=words,
    )


def build_tag_words(paths: DatasetPaths, chunk_size: int = CHUNK_SIZE) -> int:
    """The seed's word tokenizer over ``tags.parquet``: ``tag_words.npy`` int32 ``(N, 8)`` and ``words.json``.

    Each tag becomes one word (:func:`pipeline.core.vocabulary.tag_word`); the first 8 non-empty words of an
    image are kept. The vocabulary is every kept word of the dataset, sorted, after ``''`` = 0, the pad, so no
    word of the dataset is unknown. Two passes over the table (vocabulary, then ids) keep memory to the
    vocabulary itself. Returns the number of distinct words.
    """
    table = pq.ParquetFile(paths.tags_table)

    def kept() -> Iterator[list[list[str]]]:
        for batch in table.iter_batches(batch_size=chunk_size, columns=["tags"]):
            yield [kept_words(tags) for tags in batch.column("tags").to_pylist()]

    vocabulary = sorted({word for chunk in kept() for words in chunk for word in words})
    index = {word: i for i, word in enumerate(["", *vocabulary])}
    with atomic_path(paths.tag_words, suffix=".npy") as tmp, tmp.open("wb") as out:
        write_npy_header(out, (table.metadata.num_rows, WORDS_PER_IMAGE), np.int32)
        for chunk in kept():
            ids = np.zeros((len(chunk), WORDS_PER_IMAGE), dtype=np.int32)
            for row, words in enumerate(chunk):
                ids[row, : len(words)] = [index[word] for word in words]
            out.write(ids.data)
    atomic_write_text(paths.words, json.dumps(["", *vocabulary], ensure_ascii=False) + "\n")
    return len(vocabulary)
