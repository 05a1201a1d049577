"""The tag tokenizer: o200k_base plus ``<|pad|>`` = 200019, found offline, and the token rows of tag texts.

The vocabulary is found offline first: tiktoken's own cache directory, then the official URL, then the copy
shipped inside a pinned PyPI wheel, every candidate checked against the SHA-256 tiktoken itself expects.
Both sides use it: the pipeline tokenizes the dataset's tags, ``model.colorize`` a user's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import re
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import tiktoken

from pipeline.core.contract import PAD_ID, TOKENS_PER_IMAGE, VOCAB_SIZE_WITH_PAD, WORDS_PER_IMAGE
from pipeline.core.files import atomic_write_bytes

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


VISIBLE_SPACE = "␠"


def visible(text: str) -> str:
    """``text`` with its whitespace made visible: a space as ``␠``, other whitespace and control characters as
    ``repr``-style escapes (``\\n``), so a table cell never looks empty or breaks its line."""
    return "".join(
        VISIBLE_SPACE if char == " " else repr(char)[1:-1] if char.isspace() or not char.isprintable() else char
        for char in text
    )


def token_text(encoding: tiktoken.Encoding) -> Callable[[int], str]:
    """A token id's text as a person reads it in a table: whitespace visible (:func:`visible`), and bytes that
    are not UTF-8 on their own (a piece of a character) as ``\\x..`` escapes."""
    return lambda token: visible(encoding.decode_single_token_bytes(token).decode("utf-8", "backslashreplace"))


_CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u303f\u3040-\u309f\u30a0-\u30ff\u3130-\u318f\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f]"
)
"""Han, kana and Hangul (with their punctuation and compatibility forms): the scripts the word tokenizer drops."""


_NOT_ASCII_LETTER = re.compile("[^A-Za-z]+")


@functools.lru_cache(maxsize=1 << 20)
def tag_word(tag: str) -> str:
    """A tag as the word tokenizer keeps it: letters of alphabetic scripts only, in one piece.

    Digits, spaces, punctuation and CJK characters are removed (``New York!`` → ``NewYork``, ``東京`` → '').
    Cached: a million photos' tags repeat a few hundred thousand distinct ones.
    """
    if tag.isascii():
        return _NOT_ASCII_LETTER.sub("", tag)
    text = unicodedata.normalize("NFC", tag)
    return "".join(c for c in text if unicodedata.category(c).startswith("L") and not _CJK.match(c))


def kept_words(tags: Sequence[str]) -> list[str]:
    """The first :data:`WORDS_PER_IMAGE` non-empty words of ``tags`` (tags that become empty are dropped first)."""
    return [word for word in map(tag_word, tags) if word][:WORDS_PER_IMAGE]


def parse_tags(text: str) -> list[str]:
    """Tags typed by a user: separated by commas or newlines, stripped, empty ones dropped."""
    return [tag for part in text.replace("\n", ",").split(",") if (tag := part.strip())]
