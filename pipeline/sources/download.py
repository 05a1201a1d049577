"""Fetching the published archives: resumable, retried, verified, never left half-written.

MIRFLICKR-1M's image archives are about 12 GB each and mirrors drop connections, so a transfer streams
into ``<dest>.part`` (kept across retries and runs), resumes with HTTP ``Range``, and is moved into place
only once its size, zip CRCs and (when published) MD5 check out. A sidecar ``<dest>.verified.json``
remembers a verified file, so later runs skip both the download and the minutes-long CRC pass.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from pipeline.core.files import atomic_write_text, reports_disk_full

ACCEPTED_SCHEMES = ("http", "https", "file")
MAX_BACKOFF_S = 60.0
_READ_BYTES = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class UnsupportedURLError(ValueError):
    """The URL names a scheme (or a file host) this module cannot fetch from."""


class ArchiveVerificationError(RuntimeError):
    """An archive's bytes are wrong: its size, a zip member's CRC or its MD5."""


class DownloadError(RuntimeError):
    """The server could not be read to the end: retries spent, or an HTTP status not worth retrying."""


class _TransientError(Exception):
    """A failure worth another attempt.

    ``restart`` asks to drop the partial file first; ``short_body`` marks a body that ended before the
    announced size, which, repeated without progress, means the size itself is wrong.
    """

    def __init__(self, message: str, *, restart: bool = False, short_body: bool = False) -> None:
        super().__init__(message)
        self.restart = restart
        self.short_body = short_body


@dataclass(frozen=True)
class DownloadProgress:
    """A snapshot of a transfer, for logging; the rate counts only bytes moved by this call."""

    bytes_done: int
    total_bytes: int | None
    rate_bytes_per_s: float
    eta_s: float | None


@dataclass(frozen=True)
class DownloadResult:
    """What ``fetch_archive`` left at ``path`` and what it cost; ``attempts`` is 0 when nothing was fetched."""

    path: Path
    size_bytes: int
    md5: str
    duration_s: float
    bytes_fetched: int
    fetched: bool
    attempts: int


@dataclass(frozen=True)
class _Body:
    """An opened source: where its bytes start in the file, the file's size if known, the bytes."""

    start: int
    total: int | None
    chunks: Iterator[bytes]


def archive_url(base_url: str, filename: str) -> str:
    """Join a mirror's base URL and an archive name, whether or not the base ends in a slash."""
    return f"{base_url.rstrip('/')}/{filename.lstrip('/')}"


def verify_archive(path: Path, md5: str | None) -> str:
    """Check every zip member's CRC and, when one is published, the MD5; return the file's MD5 hex."""
    path = Path(path)
    digest = hashlib.md5()
    for block in _blocks(path):
        digest.update(block)
    _check_archive(path, digest.hexdigest(), _normal_md5(md5))
    return digest.hexdigest()


def _blocks(path: Path) -> Iterator[bytes]:
    """The bytes of ``path`` in blocks of ``_READ_BYTES``."""
    with path.open("rb") as source:
        yield from iter(lambda: source.read(_READ_BYTES), b"")


def fetch_archive(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    max_retries: int = 8,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    chunk_bytes: int = 1 << 20,
    progress: Callable[[DownloadProgress], None] | None = None,
    progress_every_s: float = 5.0,
    session: requests.Session | None = None,
) -> DownloadResult:
    """Make ``dest`` a verified copy of ``url``, fetching only what is not already there.

    ``max_retries`` bounds the failed attempts in a row that brought no new bytes; an attempt that
    extended the ``.part`` file starts the count again, so a long download survives many drops.
    Raises ``UnsupportedURLError`` before any I/O; ``ArchiveVerificationError`` for wrong bytes or a
    body that keeps stopping short of its announced size (the ``.part`` is removed, ``dest`` untouched);
    ``DownloadError`` when the source stays unreachable (the ``.part`` is kept for the next run).
    """
    if max_retries < 0 or chunk_bytes <= 0:
        raise ValueError(f"max_retries must be ≥ 0 and chunk_bytes > 0, got {max_retries} and {chunk_bytes}")
    source_path = check_url(url)
    started = time.monotonic()
    dest = Path(dest)
    expected_md5 = _normal_md5(md5)
    present = _present_md5(dest, expected_md5)
    if present is not None:
        return DownloadResult(dest, dest.stat().st_size, present, time.monotonic() - started, 0, False, 0)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(dest.with_name(f"{dest.name}.part"))
    meter = _Meter(progress, progress_every_s)
    with contextlib.ExitStack() as stack:
        if source_path is not None:
            open_body = functools.partial(_file_body, source_path, chunk_bytes=chunk_bytes)
        else:
            http = session if session is not None else stack.enter_context(requests.Session())
            open_body = functools.partial(_http_body, http, url, timeout_s=timeout_s, chunk_bytes=chunk_bytes)
        try:
            attempts, fetched, total = _transfer(url, open_body, part, max_retries, backoff_s, meter)
            if total is not None and part.size != total:
                raise ArchiveVerificationError(f"{url}: got {part.size} bytes, the server announced {total}")
            _check_archive(part.path, part.md5(), expected_md5)
        except ArchiveVerificationError:
            part.path.unlink(missing_ok=True)
            raise
    _sidecar(dest).unlink(missing_ok=True)
    os.replace(part.path, dest)
    _record(dest, part.md5())
    return DownloadResult(dest, part.size, part.md5(), time.monotonic() - started, fetched, True, attempts)


def check_url(url: str) -> Path | None:
    """The local path of a ``file://`` URL, None for HTTP(S); refuses every other URL."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ACCEPTED_SCHEMES:
        raise UnsupportedURLError(
            f"cannot fetch {url!r}: scheme {scheme or '(none)'!r} is not one of {', '.join(ACCEPTED_SCHEMES)}"
        )
    if scheme != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise UnsupportedURLError(f"cannot fetch {url!r}: file URLs must name a local path, not host {parts.netloc!r}")
    return Path(urllib.request.url2pathname(parts.path))


def _normal_md5(md5: str | None) -> str | None:
    return md5.strip().lower() if md5 else None


def _check_archive(path: Path, actual_md5: str, md5: str | None) -> None:
    """Raise ``ArchiveVerificationError`` unless the MD5 matches (when given) and every CRC holds."""
    if md5 is not None and actual_md5 != md5:
        raise ArchiveVerificationError(f"{path}: MD5 {actual_md5} does not match the published {md5}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as error:
        raise ArchiveVerificationError(f"{path} is not a readable zip archive: {error}") from error
    if bad_member is not None:
        raise ArchiveVerificationError(f"{path}: member {bad_member!r} fails its CRC check")


def _sidecar(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}.verified.json")


def _record(dest: Path, md5: str) -> None:
    """Remember that ``dest``, as it is now, passed verification."""
    stat = dest.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": md5}
    atomic_write_text(_sidecar(dest), json.dumps(record, indent=2) + "\n")


def _recorded_md5(dest: Path, md5: str | None) -> str | None:
    """The MD5 the sidecar vouches for, if it still describes ``dest`` and agrees with ``md5``."""
    try:
        record = json.loads(_sidecar(dest).read_text())
        stat = dest.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("md5"), str):
        return None
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return record["md5"] if md5 in (None, record["md5"]) else None


def _present_md5(dest: Path, md5: str | None) -> str | None:
    """The MD5 of ``dest`` if it already holds a verified archive (re-verifying without a valid sidecar)."""
    if not dest.is_file():
        return None
    recorded = _recorded_md5(dest, md5)
    if recorded is not None:
        return recorded
    try:
        digest = verify_archive(dest, md5)
    except ArchiveVerificationError:
        return None
    _record(dest, digest)
    return digest


class _PartFile:
    """The growing ``.part`` file and the running MD5 of the bytes it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest = hashlib.md5()
        self.size = 0
        if path.is_file():
            for block in _blocks(path):
                self.count(block)

    def md5(self) -> str:
        return self._digest.hexdigest()

    def count(self, chunk: bytes) -> None:
        """Account for ``chunk`` now that it is in the file."""
        self._digest.update(chunk)
        self.size += len(chunk)

    def truncate(self) -> None:
        self.path.open("wb").close()
        self._digest = hashlib.md5()
        self.size = 0


class _Meter:
    """Calls the progress callback at most every ``every_s`` seconds, and once at the end."""

    def __init__(self, callback: Callable[[DownloadProgress], None] | None, every_s: float) -> None:
        self.callback = callback
        self.every_s = every_s
        self.started = self.last = time.monotonic()

    def report(self, done: int, fetched: int, total: int | None, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.callback is None or (not final and now - self.last < self.every_s):
            return
        self.last = now
        elapsed = now - self.started
        rate = fetched / elapsed if elapsed > 0 else 0.0
        eta = max(total - done, 0) / rate if total is not None and rate > 0 else None
        self.callback(DownloadProgress(done, total, rate, eta))


def _transfer(
    url: str,
    open_body: Callable[[int], contextlib.AbstractContextManager[_Body]],
    part: _PartFile,
    max_retries: int,
    backoff_s: float,
    meter: _Meter,
) -> tuple[int, int, int | None]:
    """Fill ``part`` from the source, resuming after failures; return (attempts, bytes fetched, total)."""
    attempts = failures = fetched = 0
    total: int | None = None
    while True:
        attempts += 1
        held = part.size
        try:
            with open_body(part.size) as body:
                if body.total is not None:
                    if total not in (None, body.total):
                        raise ArchiveVerificationError(f"{url}: the size changed from {total} to {body.total} bytes")
                    total = body.total
                if body.start != part.size:
                    part.truncate()
                kept = "the download so far, kept for the next run to resume"
                with reports_disk_full(part.path, kept), part.path.open("ab") as out:
                    for chunk in body.chunks:
                        out.write(chunk)
                        part.count(chunk)
                        fetched += len(chunk)
                        meter.report(part.size, fetched, total)
            if total is None or part.size >= total:
                meter.report(part.size, fetched, total, final=True)
                return attempts, fetched, total
            raise _TransientError(f"{url}: the body ended at byte {part.size} of {total}", short_body=True)
        except _TransientError as error:
            if error.restart:
                part.truncate()
            failures = 1 if part.size > held else failures + 1
            if failures > max_retries and error.short_body:
                raise ArchiveVerificationError(
                    f"{url}: the server announces {total} bytes but the body stops at byte {part.size}, "
                    f"{failures} times in a row"
                ) from error
            if failures > max_retries:
                raise DownloadError(
                    f"{url}: giving up after {attempts} attempts, {failures} in a row without progress; "
                    f"{part.size} bytes kept in {part.path} for the next run: {error}"
                ) from error
            time.sleep(min(MAX_BACKOFF_S, backoff_s * 2 ** (failures - 1)))


@contextlib.contextmanager
def _file_body(path: Path, offset: int, *, chunk_bytes: int) -> Iterator[_Body]:
    """Read a local file from ``offset`` (from the start if the partial copy is longer than it)."""
    with path.open("rb") as source:
        total = os.fstat(source.fileno()).st_size
        start = offset if offset <= total else 0
        source.seek(start)
        yield _Body(start, total, iter(lambda: source.read(chunk_bytes), b""))


@contextlib.contextmanager
def _http_body(
    session: requests.Session, url: str, offset: int, *, timeout_s: float, chunk_bytes: int
) -> Iterator[_Body]:
    """GET ``url`` from ``offset``, mapping every retryable failure to ``_TransientError``."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout_s)
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _TransientError(f"{url}: {error}") from error
    with response:
        status = response.status_code
        if status >= 500 or status == 429:
            raise _TransientError(f"{url}: HTTP {status} {response.reason}")
        if status == 416 and offset:
            match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match[1]) != offset:
                raise _TransientError(f"{url}: the partial file does not fit the server's copy", restart=True)
            yield _Body(offset, offset, iter(()))
            return
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match[1]) != offset:
                raise _TransientError(f"{url}: unexpected Content-Range, starting over", restart=True)
            start, total = offset, None if match[3] == "*" else int(match[3])
        elif status == 200:
            length = response.headers.get("Content-Length", "")
            start, total = 0, int(length) if length.isdigit() else None
        else:
            raise DownloadError(f"{url}: HTTP {status} {response.reason}")
        yield _Body(start, total, _guarded(response.iter_content(chunk_bytes), url))


def _guarded(chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
    """Turn a body cut short, or a connection stalled mid-body, into a retryable failure."""
    try:
        yield from chunks
    except requests.exceptions.ChunkedEncodingError as error:
        raise _TransientError(f"{url}: the body broke off: {error}", short_body=True) from error
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _TransientError(f"{url}: connection lost: {error}") from error
