"""Tag files → ``tokens.npy`` and ``tags.parquet`` (DESIGN.md §2).

The vocabulary is tiktoken's ``o200k_base`` extended by ``<|pad|>`` = 200019. It is found offline first:
tiktoken's own cache directory, then the official URL, then the copy shipped inside a pinned PyPI wheel,
every candidate checked against the SHA-256 tiktoken itself expects.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import tiktoken

from model.contract import PAD_ID, TOKENS_PER_IMAGE, VOCAB_SIZE_WITH_PAD
from model.files import atomic_path, atomic_write_bytes
from pipeline.datasets import DatasetPaths, DatasetSpec
from pipeline.sources.layouts import ArchiveLayout
from pipeline.sources.members import count_unsafe_members

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_CACHE_NAME = hashlib.sha1(O200K_URL.encode()).hexdigest()
"""tiktoken names its cached copy by the SHA-1 of the URL (``fb374d41…``)."""

LITELLM_REQUIREMENT = "litellm==1.110.2"
LITELLM_MEMBER = f"litellm/litellm_core_utils/tokenizers/{O200K_CACHE_NAME}"
"""Where that wheel ships a byte-identical copy of the vocabulary file."""

O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
"""o200k_base's split pattern, as in ``tiktoken_ext.openai_public`` (whose constructor would download)."""

PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018, PAD_TOKEN: PAD_ID}
ENCODING_NAME = "o200k_base_pad"

OFFICIAL_TIMEOUT_S = (5.0, 60.0)
PIP_TIMEOUT_S = 600.0
CHUNK_SIZE = 50_000

TAGS_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("tags", pa.list_(pa.string())),
        ("n_tags", pa.int32()),
        ("n_tokens", pa.int32()),
    ]
)


class VocabularyError(RuntimeError):
    """The o200k_base vocabulary could not be found or verified; the message says how to provide it."""


def tiktoken_cache_dir(environ: Mapping[str, str]) -> Path:
    """The directory tiktoken itself caches into, so both share one verified copy.

    An empty variable (tiktoken's way to switch caching off) is treated as unset: we always need a file.
    """
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if environ.get(name):
            return Path(environ[name])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def fetch_official_o200k() -> bytes:
    """Download the vocabulary from OpenAI's public blob store (fails fast when offline)."""
    response = requests.get(O200K_URL, timeout=OFFICIAL_TIMEOUT_S)
    response.raise_for_status()
    return response.content


def download_litellm_wheel(dest: Path) -> Path:
    """Download (never install) the pinned litellm wheel into ``dest`` with pip; return the wheel's path.

    ``--no-cache-dir`` keeps pip from writing anywhere but ``dest``.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--quiet",
        LITELLM_REQUIREMENT,
        "-d",
        str(dest),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise VocabularyError(f"pip download {LITELLM_REQUIREMENT} failed: {done.stderr.strip()[-500:]}")
    wheels = sorted(dest.glob("litellm-*.whl"))
    if len(wheels) != 1:
        raise VocabularyError(f"pip download {LITELLM_REQUIREMENT} left {len(wheels)} wheels in {dest}")
    return wheels[0]


def read_wheel_member(wheel: Path, member: str = LITELLM_MEMBER) -> bytes:
    """The bytes of ``member`` inside the wheel (a zip); a clear error when it is not there."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except KeyError as error:
        raise VocabularyError(f"{wheel.name} has no member {member}") from error
    except zipfile.BadZipFile as error:
        raise VocabularyError(f"{wheel.name} is not a valid wheel: {error}") from error


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_wheel(cache_dir: Path, fetch_wheel: Callable[[Path], Path]) -> bytes:
    """Fetch the wheel into a scratch folder inside ``cache_dir`` (removed afterwards); extract the file."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".o200k-wheel-", dir=cache_dir) as scratch:
        return read_wheel_member(fetch_wheel(Path(scratch)))


_FETCH_ERRORS = (OSError, ValueError, subprocess.SubprocessError, VocabularyError)
"""What a failing source raises (``requests`` errors are ``OSError``s); anything else is a bug."""


def resolve_o200k_file(
    cache_dir: Path,
    *,
    fetch_official: Callable[[], bytes] = fetch_official_o200k,
    fetch_wheel: Callable[[Path], Path] = download_litellm_wheel,
) -> Path:
    """Return the verified vocabulary file in ``cache_dir``, fetching it there only when needed.

    A cached file with the wrong hash is removed, never used. Fetched bytes are verified before they are
    written (atomically), so the cache only ever holds the right file.
    """
    target = cache_dir / O200K_CACHE_NAME
    failures: list[str] = []
    if target.is_file():
        digest = _sha256(target.read_bytes())
        if digest == O200K_SHA256:
            return target
        target.unlink()
        failures.append(f"cached {target} had SHA-256 {digest}; removed")
    sources: list[tuple[str, Callable[[], bytes]]] = [
        (O200K_URL, fetch_official),
        (f"{LITELLM_REQUIREMENT} wheel", functools.partial(_from_wheel, cache_dir, fetch_wheel)),
    ]
    for source, fetch in sources:
        try:
            data = fetch()
        except _FETCH_ERRORS as error:
            failures.append(f"{source}: {type(error).__name__}: {error}")
            continue
        digest = _sha256(data)
        if digest == O200K_SHA256:
            atomic_write_bytes(target, data)
            return target
        failures.append(f"{source}: content has SHA-256 {digest}; rejected")
    raise VocabularyError(
        "o200k_base vocabulary unavailable:\n  - "
        + "\n  - ".join(failures)
        + f"\nProvide it offline: download {O200K_URL} and put it, named {O200K_CACHE_NAME}, into "
        f"TIKTOKEN_CACHE_DIR (here {cache_dir}); its SHA-256 must be {O200K_SHA256}."
    )


def _parse_tiktoken_bpe(data: bytes) -> dict[bytes, int]:
    """Parse ``<base64 token> <rank>`` lines; done here because ``tiktoken.load`` would copy a local file
    into the environment's cache directory."""
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=4)
def _encoding_from_file(path: Path) -> tiktoken.Encoding:
    """Build the padded encoding once per process and file."""
    data = path.read_bytes()
    if _sha256(data) != O200K_SHA256:
        raise VocabularyError(f"{path} changed after it was verified; remove it and retry")
    encoding = tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=O200K_PAT_STR,
        mergeable_ranks=_parse_tiktoken_bpe(data),
        special_tokens=SPECIAL_TOKENS,
    )
    if encoding.n_vocab != VOCAB_SIZE_WITH_PAD:
        raise VocabularyError(f"{path}: built {encoding.n_vocab} ids, expected {VOCAB_SIZE_WITH_PAD}")
    return encoding


def load_tag_encoding(cache_dir: Path) -> tiktoken.Encoding:
    """o200k_base plus ``<|pad|>`` = 200019, from the verified file in ``cache_dir``."""
    return _encoding_from_file(resolve_o200k_file(cache_dir).resolve())


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


def tag_text(tags: Sequence[str]) -> str:
    """The text that is tokenized: tags joined by one space."""
    return " ".join(tags)


def _encode_ordinary_many(texts: list[str], encoding: tiktoken.Encoding, num_threads: int) -> list[list[int]]:
    """``encode_ordinary`` over contiguous slices, one per thread (tiktoken releases the GIL).

    ``Encoding.encode_ordinary_batch`` submits one future per text, which costs more than the encoding of
    a short tag text; a loop per slice is about ten times faster.
    """

    def encode_all(part: list[str]) -> list[list[int]]:
        return [encoding.encode_ordinary(text) for text in part]

    if num_threads <= 1 or len(texts) < 2 * num_threads:
        return encode_all(texts)
    step = -(-len(texts) // num_threads)
    with ThreadPoolExecutor(num_threads) as pool:
        parts = pool.map(encode_all, [texts[i : i + step] for i in range(0, len(texts), step)])
        return [ids for part in parts for ids in part]


def encode_tags(
    texts: Sequence[str], encoding: tiktoken.Encoding, *, num_threads: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Token rows ``int32 (N, 20)`` (first 20 ids, then ``<|pad|>``) and full counts ``int32 (N,)``.

    Text is encoded as plain text: ``<|endoftext|>`` inside a tag is never the special token.
    """
    encoded = _encode_ordinary_many(list(texts), encoding, num_threads)
    n_tokens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    kept = np.minimum(n_tokens, TOKENS_PER_IMAGE)
    flat = np.fromiter(
        itertools.chain.from_iterable(ids[:TOKENS_PER_IMAGE] for ids in encoded),
        dtype=np.int32,
        count=int(kept.sum()),
    )
    tokens = np.full((len(encoded), TOKENS_PER_IMAGE), PAD_ID, dtype=np.int32)
    tokens[np.arange(TOKENS_PER_IMAGE) < kept[:, None]] = flat
    return tokens, n_tokens.astype(np.int32)


@dataclass(frozen=True)
class TagBatch:
    """Tags of consecutive images, with counts of what was wrong with their files."""

    tags: list[list[str]]
    missing: int
    invalid_utf8: int
    unreadable: int = 0


UNREADABLE_MEMBER_ERRORS = (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError, zlib.error)
"""What reading a damaged, encrypted or oddly compressed zip member raises."""


def read_tags(archive: zipfile.ZipFile, layout: ArchiveLayout, ids: Sequence[int]) -> TagBatch:
    """Read the tag file of each id by the layout's member name; a missing or unreadable member gives no tags.

    Only the layout's names are ever looked up, so stray members (``../evil.txt``) are never touched.
    """
    tags: list[list[str]] = []
    missing = invalid = unreadable = 0
    for image_id in ids:
        try:
            raw = archive.read(layout.tag_member(image_id))
        except KeyError:
            tags.append([])
            missing += 1
            continue
        except UNREADABLE_MEMBER_ERRORS:
            tags.append([])
            unreadable += 1
            continue
        parsed, bad = parse_tag_file(raw)
        tags.append(parsed)
        invalid += bad
    return TagBatch(tags=tags, missing=missing, invalid_utf8=invalid, unreadable=unreadable)


def tag_counts(
    archive: zipfile.ZipFile, layout: ArchiveLayout, ids: Sequence[int], encoding: tiktoken.Encoding
) -> tuple[np.ndarray, np.ndarray]:
    """``n_tags`` and ``n_tokens`` (before truncation to 20) of images ``ids``, int32 each."""
    batch = read_tags(archive, layout, ids)
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


def build_tag_tokens(
    spec: DatasetSpec,
    paths: DatasetPaths,
    encoding: tiktoken.Encoding,
    *,
    progress: Callable[[int, int], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
    num_threads: int = 2,
) -> TagTokensResult:
    """Tokenize the tags of images ``0 … n_images − 1`` into ``tokens.npy`` and ``tags.parquet``.

    Works chunk by chunk so memory stays bounded at 1M images; both files appear only when complete.
    ``progress(done, total)`` is called after each chunk.
    """
    started = time.perf_counter()
    archive_path = paths.archive(spec.layout.tags_archive)
    if not archive_path.is_file():
        raise FileNotFoundError(f"tag archive {archive_path} not found; materialize tags_archive first")
    n = spec.n_images
    missing = invalid = unreadable = empty = truncated = 0
    seen = np.zeros(VOCAB_SIZE_WITH_PAD, dtype=bool)
    with (
        zipfile.ZipFile(archive_path) as archive,
        atomic_path(paths.tags_table, suffix=".parquet") as table_tmp,
        atomic_path(paths.tokens, suffix=".npy") as tokens_tmp,
    ):
        unsafe = count_unsafe_members(archive)
        out = np.lib.format.open_memmap(tokens_tmp, mode="w+", dtype=np.int32, shape=(n, TOKENS_PER_IMAGE))
        with pq.ParquetWriter(table_tmp, TAGS_SCHEMA) as writer:
            for start in range(0, n, chunk_size):
                ids = range(start, min(start + chunk_size, n))
                batch = read_tags(archive, spec.layout, ids)
                tokens, n_tokens = encode_tags(
                    [tag_text(tags) for tags in batch.tags], encoding, num_threads=num_threads
                )
                out[ids.start : ids.stop] = tokens
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
        out.flush()
        del out
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
    )
