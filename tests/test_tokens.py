"""Tests for pipeline.tokens: the offline vocabulary resolver, tag parsing and tokens.npy / tags.parquet."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import tiktoken

from pipeline.core.contract import PAD_ID, TOKENS_PER_IMAGE
from pipeline.core.layout import DatasetPaths
from pipeline.core.vocabulary import (
    LITELLM_MEMBER,
    O200K_CACHE_NAME,
    O200K_PAT_STR,
    O200K_SHA256,
    O200K_URL,
    VocabularyError,
    encode_tags,
    load_tag_encoding,
    read_wheel_member,
    resolve_o200k_file,
    tag_text,
    tiktoken_cache_dir,
    token_text,
    visible,
)
from pipeline.sources import mirflickr1m, mirflickr25k
from pipeline.sources.base import DatasetSpec
from pipeline.tokens import build_tag_tokens, build_tag_words, parse_tag_file, read_tags


@pytest.fixture(scope="module")
def real_bytes(vocabulary_dir: Path) -> bytes:
    return (vocabulary_dir / O200K_CACHE_NAME).read_bytes()


@pytest.fixture(scope="module")
def encoding(vocabulary_dir: Path) -> tiktoken.Encoding:
    return load_tag_encoding(vocabulary_dir)


@pytest.fixture(scope="module")
def reference(vocabulary_dir: Path) -> Iterator[tiktoken.Encoding]:
    """tiktoken's own o200k_base, read from the test run's cache (no network)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(vocabulary_dir))
        yield tiktoken.get_encoding("o200k_base")


def expected_row(reference: tiktoken.Encoding, text: str) -> list[int]:
    ids = reference.encode_ordinary(text)[:TOKENS_PER_IMAGE]
    return ids + [PAD_ID] * (TOKENS_PER_IMAGE - len(ids))


def never_official() -> bytes:
    pytest.fail("the official URL must not be fetched")


def never_wheel(dest: Path) -> Path:
    pytest.fail("the wheel must not be fetched")


def offline() -> bytes:
    raise requests.ConnectionError("no route to openaipublic.blob.core.windows.net")


def make_wheel(dest: Path, content: bytes, member: str = LITELLM_MEMBER) -> Path:
    wheel = dest / "litellm-1.110.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("litellm/__init__.py", "")
        archive.writestr(member, content)
    return wheel


# --- the vocabulary resolver -------------------------------------------------------------------------


def test_cache_name_is_tiktoken_sha1_of_url() -> None:
    assert O200K_CACHE_NAME == "fb374d419588a4632f3f557e76b4b70aebbca790"
    assert hashlib.sha1(O200K_URL.encode()).hexdigest() == O200K_CACHE_NAME


def test_tiktoken_cache_dir_precedence(tmp_path: Path) -> None:
    both = {"TIKTOKEN_CACHE_DIR": "/a", "DATA_GYM_CACHE_DIR": "/b"}
    assert tiktoken_cache_dir(both) == Path("/a")
    assert tiktoken_cache_dir({"DATA_GYM_CACHE_DIR": "/b"}) == Path("/b")
    assert tiktoken_cache_dir({"TIKTOKEN_CACHE_DIR": "", "DATA_GYM_CACHE_DIR": "/b"}) == Path("/b")
    assert tiktoken_cache_dir({}).name == "data-gym-cache"


def test_cache_hit_fetches_nothing(tmp_path: Path, real_bytes: bytes) -> None:
    (tmp_path / O200K_CACHE_NAME).write_bytes(real_bytes)
    path = resolve_o200k_file(tmp_path, fetch_official=never_official, fetch_wheel=never_wheel)
    assert path == tmp_path / O200K_CACHE_NAME
    assert path.read_bytes() == real_bytes


def test_wrong_cache_file_is_replaced_from_official(tmp_path: Path, real_bytes: bytes) -> None:
    (tmp_path / O200K_CACHE_NAME).write_bytes(b"not the vocabulary\n")
    calls: list[str] = []

    def official() -> bytes:
        calls.append("official")
        return real_bytes

    path = resolve_o200k_file(tmp_path, fetch_official=official, fetch_wheel=never_wheel)
    assert calls == ["official"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == O200K_SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == [O200K_CACHE_NAME]


def test_wheel_fallback_populates_cache(tmp_path: Path, real_bytes: bytes) -> None:
    cache = tmp_path / "cache"
    scratch_dirs: list[Path] = []

    def wheel(dest: Path) -> Path:
        scratch_dirs.append(dest)
        assert dest.is_dir() and dest.parent == cache
        return make_wheel(dest, real_bytes)

    path = resolve_o200k_file(cache, fetch_official=offline, fetch_wheel=wheel)
    assert path == cache / O200K_CACHE_NAME
    assert path.read_bytes() == real_bytes
    assert len(scratch_dirs) == 1 and not scratch_dirs[0].exists()
    assert sorted(p.name for p in cache.iterdir()) == [O200K_CACHE_NAME]
    assert resolve_o200k_file(cache, fetch_official=never_official, fetch_wheel=never_wheel) == path


def test_official_with_bad_hash_falls_back_to_wheel(tmp_path: Path, real_bytes: bytes) -> None:
    path = resolve_o200k_file(
        tmp_path, fetch_official=lambda: b"tampered", fetch_wheel=lambda dest: make_wheel(dest, real_bytes)
    )
    assert path.read_bytes() == real_bytes


def test_bad_wheel_content_is_rejected_with_help(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError) as caught:
        resolve_o200k_file(tmp_path, fetch_official=offline, fetch_wheel=lambda dest: make_wheel(dest, b"bad\n"))
    message = str(caught.value)
    for needed in (
        O200K_CACHE_NAME,
        O200K_URL,
        O200K_SHA256,
        "TIKTOKEN_CACHE_DIR",
        "rejected",
        str(tmp_path),
    ):
        assert needed in message
    assert hashlib.sha256(b"bad\n").hexdigest() in message
    assert not (tmp_path / O200K_CACHE_NAME).exists()
    assert list(tmp_path.iterdir()) == []


def test_every_source_failing_raises(tmp_path: Path) -> None:
    (tmp_path / O200K_CACHE_NAME).write_bytes(b"stale")

    def pip_fails(dest: Path) -> Path:
        raise VocabularyError("pip download litellm==1.110.2 failed: no network")

    with pytest.raises(VocabularyError) as caught:
        resolve_o200k_file(tmp_path, fetch_official=offline, fetch_wheel=pip_fails)
    message = str(caught.value)
    assert "ConnectionError" in message and "pip download" in message and "removed" in message
    assert not (tmp_path / O200K_CACHE_NAME).exists()


def test_read_wheel_member(tmp_path: Path, real_bytes: bytes) -> None:
    assert read_wheel_member(make_wheel(tmp_path, real_bytes)) == real_bytes
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(VocabularyError, match="has no member"):
        read_wheel_member(make_wheel(other, real_bytes, member="litellm/elsewhere"))
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(VocabularyError, match="not a valid wheel"):
        read_wheel_member(broken)


# --- the encoding ------------------------------------------------------------------------------------


def test_encoding_has_pad_after_o200k(encoding: tiktoken.Encoding, reference: tiktoken.Encoding) -> None:
    assert encoding.n_vocab == 200020
    assert encoding.encode_single_token("<|pad|>") == PAD_ID == 200019
    assert encoding.encode_single_token("<|endoftext|>") == 199999
    assert encoding.encode_single_token("<|endofprompt|>") == 200018
    assert reference._pat_str == O200K_PAT_STR
    assert encoding.decode(encoding.encode_ordinary("sunset beach")) == "sunset beach"


TEXTS = [
    "",
    "sunset",
    "sunset beach nikon d80 2007 canoneos400d",
    "東京 タワー 夜景",
    "café naïve Ærø",
    "it's o'clock I'M 🌅🌊",
    "<|endoftext|> <|pad|>",
    " ".join(f"tag{i}" for i in range(60)),
]


def test_encode_tags_matches_tiktoken(encoding: tiktoken.Encoding, reference: tiktoken.Encoding) -> None:
    tokens, n_tokens = encode_tags(TEXTS, encoding)
    assert tokens.dtype == np.int32 and tokens.shape == (len(TEXTS), TOKENS_PER_IMAGE)
    assert n_tokens.dtype == np.int32 and n_tokens.shape == (len(TEXTS),)
    for row, count, text in zip(tokens, n_tokens, TEXTS, strict=True):
        assert row.tolist() == expected_row(reference, text)
        assert count == len(reference.encode_ordinary(text))
    assert n_tokens[0] == 0 and (tokens[0] == PAD_ID).all()
    assert n_tokens[-1] > TOKENS_PER_IMAGE and (tokens[-1] != PAD_ID).all()


def test_special_token_text_is_plain(encoding: tiktoken.Encoding) -> None:
    tokens, n_tokens = encode_tags(["<|endoftext|>", "<|pad|>"], encoding)
    assert n_tokens.min() > 1
    assert 199999 not in tokens[0] and PAD_ID not in tokens[:, : n_tokens.min()]
    assert encoding.decode(tokens[0, : n_tokens[0]].tolist()) == "<|endoftext|>"


def test_token_text_shows_spaces_and_pieces_of_characters(encoding: tiktoken.Encoding) -> None:
    text = token_text(encoding)
    (space_word,) = encoding.encode_ordinary(" sunset")
    assert text(space_word) == "␠sunset"
    newline = encoding.encode_ordinary("\n")[0]
    assert text(newline) == "\\n"
    pieces = [text(token) for token in encoding.encode_ordinary("𠀋")]  # a rare character, cut into bytes
    assert len(pieces) > 1 and all(piece.startswith("\\x") for piece in pieces)
    assert visible("a\tb c") == "a\\tb␠c"


def test_pad_only_trails(encoding: tiktoken.Encoding) -> None:
    texts = [" ".join(["sky"] * k) for k in range(25)]
    tokens, n_tokens = encode_tags(texts, encoding)
    is_pad = tokens == PAD_ID
    assert (np.diff(is_pad.astype(np.int8), axis=1) >= 0).all()
    assert ((~is_pad).sum(axis=1) == np.minimum(n_tokens, TOKENS_PER_IMAGE)).all()
    assert n_tokens.tolist() == list(range(25))


def test_threads_do_not_change_order(encoding: tiktoken.Encoding) -> None:
    texts = [f"photo {i} of {i % 7} cats" for i in range(301)]
    one, n_one = encode_tags(texts, encoding, num_threads=1)
    three, n_three = encode_tags(texts, encoding, num_threads=3)
    assert np.array_equal(one, three) and np.array_equal(n_one, n_three)
    empty, n_empty = encode_tags([], encoding)
    assert empty.shape == (0, TOKENS_PER_IMAGE) and n_empty.shape == (0,)


# --- tag files ---------------------------------------------------------------------------------------


def test_parse_tag_file_strips_and_drops_blank_lines() -> None:
    assert parse_tag_file(b"sunset\n  beach \r\n\n\t\nnikon d80\n") == (
        ["sunset", "beach", "nikon d80"],
        False,
    )
    assert parse_tag_file("\ufeffbom\n".encode()) == (["bom"], False)
    assert parse_tag_file(b"") == ([], False)
    assert parse_tag_file(b"\n \r\n") == ([], False)
    assert tag_text(["sunset", "nikon d80"]) == "sunset nikon d80"


def test_parse_tag_file_invalid_utf8_falls_back_per_line() -> None:
    raw = "café\n".encode("latin-1") + "東京\n".encode() + b"ok\xff\n"
    assert parse_tag_file(raw) == (["café", "東京", "ok\u00ff"], True)


def test_parse_tag_file_keeps_500_tags() -> None:
    tags = [f"tag{i}" for i in range(500)]
    assert parse_tag_file("\n".join(tags).encode()) == (tags, False)


# --- building tokens.npy and tags.parquet ------------------------------------------------------------

TAGS_1M: dict[int, bytes | None] = {
    0: b"sunset\nbeach\n",
    1: "東京\nnight\n".encode(),
    2: b"<|endoftext|>\ndog\n",
    3: None,
    4: b"\n \n",
    5: "café\nnaïve\n".encode("latin-1"),
    6: "\n".join(f"t{i}" for i in range(500)).encode(),
    7: b"  canon  \r\n\r\n",
    8: b"sky",
    9: b"a b\nc",
}
EXPECTED_1M = {
    0: ["sunset", "beach"],
    1: ["東京", "night"],
    2: ["<|endoftext|>", "dog"],
    3: [],
    4: [],
    5: ["café", "naïve"],
    6: [f"t{i}" for i in range(500)],
    7: ["canon"],
    8: ["sky"],
    9: ["a b", "c"],
}


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def sample_spec(n_images: int, kind: str = "mirflickr1m") -> DatasetSpec:
    spec = {"mirflickr1m": mirflickr1m.Spec, "mirflickr25k": mirflickr25k.Spec}[kind]
    return spec(name="sample", n_images=n_images, shard_size=5, base_url="http://mirror/")


@pytest.fixture
def tags_1m(tmp_path: Path) -> DatasetPaths:
    paths = DatasetPaths(tmp_path / "data" / "sample")
    layout = sample_spec(10)
    members = {layout.tag_member(i): raw for i, raw in TAGS_1M.items() if raw is not None}
    members["../evil.txt"] = b"evil"
    members["/etc/evil.txt"] = b"evil"
    members["tags/0/3.txt.bak"] = b"not the member of id 3"
    write_zip(paths.archive("tags"), members)
    return paths


def test_read_tags_counts_missing_and_invalid(tags_1m: DatasetPaths) -> None:
    with sample_spec(10).open_tags(tags_1m) as files:
        batch = read_tags(files, range(10))
    assert batch.tags == [EXPECTED_1M[i] for i in range(10)]
    assert (batch.missing, batch.invalid_utf8) == (1, 1)


def test_build_tag_tokens_1m_layout(
    tags_1m: DatasetPaths, encoding: tiktoken.Encoding, reference: tiktoken.Encoding
) -> None:
    calls: list[tuple[int, int]] = []
    spec = sample_spec(10)
    result = build_tag_tokens(spec, tags_1m, encoding, progress=lambda *call: calls.append(call), chunk_size=4)
    assert calls == [(4, 10), (8, 10), (10, 10)]

    texts = [" ".join(EXPECTED_1M[i]) for i in range(10)]
    expected = np.array([expected_row(reference, text) for text in texts], dtype=np.int32)
    tokens = np.load(tags_1m.tokens)
    assert tokens.dtype == np.int32 and np.array_equal(tokens, expected)

    table = pq.read_table(tags_1m.tags_table)
    contract = [("image_id", pa.int64()), ("tags", pa.list_(pa.string())), ("n_tags", pa.int32())]
    assert table.schema.equals(pa.schema([*contract, ("n_tokens", pa.int32())]))
    n_full = [len(reference.encode_ordinary(text)) for text in texts]
    assert table.to_pylist() == [
        {"image_id": i, "tags": EXPECTED_1M[i], "n_tags": len(EXPECTED_1M[i]), "n_tokens": n_full[i]} for i in range(10)
    ]

    assert (result.n_images, result.missing, result.invalid_utf8, result.empty) == (10, 1, 1, 2)
    assert result.unsafe_members == 2, "../evil.txt and /etc/evil.txt; tags/0/3.txt.bak is a safe name"
    assert result.truncated == sum(n > TOKENS_PER_IMAGE for n in n_full) == 1
    assert result.distinct_tokens == len(set(expected.ravel().tolist()) - {PAD_ID})
    assert result.seconds > 0
    assert (result.tokens_path, result.tags_path) == (tags_1m.tokens, tags_1m.tags_table)
    assert sorted(p.name for p in tags_1m.root.iterdir()) == [
        "raw",
        "tag_words.npy",
        "tags.parquet",
        "tokens.npy",
        "words.json",
    ]
    assert sorted(p.name for p in tags_1m.raw.iterdir()) == ["tags.zip"]
    assert not (tags_1m.root / "evil.txt").exists() and not (tags_1m.root.parent / "evil.txt").exists()

    before = tags_1m.tokens.read_bytes()
    build_tag_tokens(spec, tags_1m, encoding)
    assert tags_1m.tokens.read_bytes() == before


def test_interrupted_build_leaves_no_files(tags_1m: DatasetPaths, encoding: tiktoken.Encoding) -> None:
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_tag_tokens(sample_spec(10), tags_1m, encoding, progress=stop, chunk_size=4)
    assert sorted(p.name for p in tags_1m.root.iterdir()) == ["raw"]


def test_build_tag_tokens_25k_layout(tmp_path: Path, encoding: tiktoken.Encoding, reference: tiktoken.Encoding) -> None:
    paths = DatasetPaths(tmp_path / "mirflickr25k")
    write_zip(
        paths.archive("mirflickr25k"),
        {
            "mirflickr/im1.jpg": b"\xff\xd8",
            "mirflickr/meta/tags/tags1.txt": b"explore\nflower\n",
            "mirflickr/meta/tags/tags3.txt": b"bw\n",
            "../evil.jpg": b"\xff\xd8",
        },
    )
    result = build_tag_tokens(sample_spec(3, "mirflickr25k"), paths, encoding)
    expected = [expected_row(reference, text) for text in ("explore flower", "", "bw")]
    assert np.load(paths.tokens).tolist() == expected
    assert pq.read_table(paths.tags_table).column("tags").to_pylist() == [["explore", "flower"], [], ["bw"]]
    assert (result.missing, result.empty, result.invalid_utf8, result.truncated) == (1, 1, 0, 0)
    assert result.unsafe_members == 1, "the photos' ../evil.jpg: 25k keeps photos and tags in one archive"


def test_damaged_tag_member_counts_as_unreadable(tmp_path: Path, encoding: tiktoken.Encoding) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    layout = sample_spec(2)
    write_zip(paths.archive("tags"), {layout.tag_member(0): b"sky\n", layout.tag_member(1): b"damagedtag\n"})
    data = paths.archive("tags").read_bytes()
    paths.archive("tags").write_bytes(data.replace(b"damagedtag", b"damagedtaX"))
    result = build_tag_tokens(sample_spec(2), paths, encoding)
    assert (result.unreadable, result.missing, result.empty) == (1, 0, 1)
    tokens = np.load(paths.tokens)
    assert tokens[0, 0] == encoding.encode_ordinary("sky")[0] and (tokens[1] == PAD_ID).all()


def test_missing_tag_archive_is_named(tmp_path: Path, encoding: tiktoken.Encoding) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    with pytest.raises(FileNotFoundError, match=r"tags\.zip"):
        build_tag_tokens(sample_spec(2), paths, encoding)
    assert not paths.root.exists() or list(paths.root.iterdir()) == []


def test_the_seed_word_tokenizer_against_a_hand_made_vocabulary(tmp_path: Path) -> None:
    paths = DatasetPaths(tmp_path / "words")
    paths.root.mkdir(parents=True)
    tags = [
        ["New York", "2007", "東京", "sky"],
        ["café", "sky!", "ねこ", "Москва", "서울"],
        [],
        ["2008", "東京"],
        [f"t{chr(97 + k)}" for k in range(10)],
    ]
    pq.write_table(pa.table({"image_id": list(range(5)), "tags": tags}), paths.tags_table)
    assert build_tag_words(paths, chunk_size=2) == 12
    vocabulary = ["", "NewYork", "café", "sky", "ta", "tb", "tc", "td", "te", "tf", "tg", "th", "Москва"]
    assert json.loads(paths.words.read_text()) == vocabulary, "'' = 0, then sorted; digits and CJK gone"
    words = np.load(paths.tag_words)
    assert words.dtype == np.int32 and words.shape == (5, 8)
    assert words.tolist() == [
        [1, 3, 0, 0, 0, 0, 0, 0],
        [2, 3, 12, 0, 0, 0, 0, 0],
        [0] * 8,
        [0] * 8,
        [4, 5, 6, 7, 8, 9, 10, 11],
    ], "tags that become empty are dropped before the first 8 are kept"
