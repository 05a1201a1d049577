"""Archive download against a local HTTP server that drops connections, fails and lies on request."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline.sources import download
from pipeline.sources.download import (
    ArchiveVerificationError,
    DownloadError,
    DownloadProgress,
    DownloadResult,
    UnsupportedURLError,
    archive_url,
    fetch_archive,
    verify_archive,
)

CHUNK = 16 << 10


def make_zip(seed: int, members: int = 3, member_bytes: int = 100_000, stored: bool = False) -> bytes:
    """A zip of incompressible random members, so its size is what the tests say it is."""
    rng = random.Random(seed)
    buffer = io.BytesIO()
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for index in range(members):
            archive.writestr(f"images/0/{index}.jpg", rng.randbytes(member_bytes))
    return buffer.getvalue()


ARCHIVE = make_zip(0)


@dataclass
class ServerState:
    """What the server serves, the faults it injects (consumed one per request) and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    replacements: list[bytes | None] = field(default_factory=list)
    honor_range: bool = True
    extra_length: int = 0
    ranges: list[str | None] = field(default_factory=list)
    bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""


class FaultyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.ranges.append(self.headers.get("Range"))
            status = state.statuses.pop(0) if state.statuses else None
            drop = state.drops.pop(0) if state.drops else None
            stall = state.stalls.pop(0) if state.stalls else 0.0
            replacement = state.replacements.pop(0) if state.replacements else None
            if replacement is not None:
                state.files[self.path] = replacement
        time.sleep(stall)
        data = state.files.get(self.path)
        if status is not None or data is None:
            self.send_error(status or 404)
            return
        total = len(data) + state.extra_length
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if wanted and state.honor_range:
            start = int(wanted[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(total - start))
        self.end_headers()
        body = data[start:] if drop is None else data[start : start + drop]
        if len(body) < total - start:
            self.close_connection = True
        self.wfile.write(body)
        with state.lock:
            state.bytes_sent += len(body)


@pytest.fixture
def server() -> Iterator[ServerState]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FaultyHandler)
    state = ServerState(files={"/images0.zip": ARCHIVE}, base_url=f"http://127.0.0.1:{httpd.server_port}/")
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as client:
        client.trust_env = False
        yield client


def fetch(url: str, dest: Path, session: requests.Session, **options: Any) -> DownloadResult:
    settings: dict[str, Any] = {"backoff_s": 0.001, "timeout_s": 5.0, "chunk_bytes": CHUNK, "session": session}
    return fetch_archive(url, dest, **(settings | options))


def url_of(server: ServerState) -> str:
    return archive_url(server.base_url, "images0.zip")


def resumed_at(range_header: str | None) -> int:
    """The offset of a ``bytes=N-`` request (a dropped chunk is re-fetched, so N may trail the drop)."""
    assert range_header is not None
    match = re.fullmatch(r"bytes=(\d+)-", range_header)
    assert match is not None
    return int(match[1])


def test_archive_url_joins_with_one_slash() -> None:
    assert archive_url("https://host/dir/", "images3.zip") == "https://host/dir/images3.zip"
    assert archive_url("https://host/dir", "images3.zip") == "https://host/dir/images3.zip"


def test_dropped_connection_resumes_with_range(server: ServerState, session: requests.Session, tmp_path: Path) -> None:
    half = len(ARCHIVE) // 2
    server.drops = [half]
    dest = tmp_path / "raw" / "images0.zip"
    result = fetch(url_of(server), dest, session)
    assert dest.read_bytes() == ARCHIVE
    assert server.ranges[0] is None and len(server.ranges) == 2
    assert 0 < resumed_at(server.ranges[1]) <= half
    assert server.bytes_sent < 1.2 * len(ARCHIVE)
    assert (result.fetched, result.attempts, result.bytes_fetched) == (True, 2, len(ARCHIVE))
    assert result.md5 == hashlib.md5(ARCHIVE).hexdigest() and result.size_bytes == len(ARCHIVE)
    assert not (tmp_path / "raw" / "images0.zip.part").exists()
    sidecar = json.loads((tmp_path / "raw" / "images0.zip.verified.json").read_text())
    assert sidecar == {"size": len(ARCHIVE), "mtime_ns": dest.stat().st_mtime_ns, "md5": result.md5}


def test_full_response_to_range_request_restarts_cleanly(
    server: ServerState, session: requests.Session, tmp_path: Path
) -> None:
    server.honor_range = False
    server.drops = [len(ARCHIVE) // 3]
    result = fetch(url_of(server), tmp_path / "images0.zip", session)
    assert (tmp_path / "images0.zip").read_bytes() == ARCHIVE
    assert result.attempts == 2 and 0 < resumed_at(server.ranges[1]) <= len(ARCHIVE) // 3
    assert server.bytes_sent == len(ARCHIVE) + len(ARCHIVE) // 3


def test_503_is_retried_and_counted(server: ServerState, session: requests.Session, tmp_path: Path) -> None:
    server.statuses = [503]
    result = fetch(url_of(server), tmp_path / "images0.zip", session)
    assert result.attempts == 2 and len(server.ranges) == 2
    assert (tmp_path / "images0.zip").read_bytes() == ARCHIVE


def test_retries_are_bounded_and_back_off(
    server: ServerState, session: requests.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.statuses = [503] * 10
    waits: list[float] = []
    sleep, caller = download.time.sleep, threading.current_thread()

    def record(seconds: float) -> None:
        """Only the downloader's waits are recorded (and skipped); the server's threads sleep as usual."""
        if threading.current_thread() is caller:
            waits.append(seconds)
        else:
            sleep(seconds)

    monkeypatch.setattr(download.time, "sleep", record)
    with pytest.raises(DownloadError, match="6 attempts"):
        fetch(url_of(server), tmp_path / "images0.zip", session, max_retries=5, backoff_s=20.0)
    assert len(server.ranges) == 6 and not (tmp_path / "images0.zip").exists()
    assert waits == [20.0, 40.0, 60.0, 60.0, 60.0], "doubling, capped at MAX_BACKOFF_S"


def test_stalled_response_times_out_and_is_retried(
    server: ServerState, session: requests.Session, tmp_path: Path
) -> None:
    server.stalls = [1.0]
    result = fetch(url_of(server), tmp_path / "images0.zip", session, timeout_s=0.2)
    assert result.attempts == 2 and (tmp_path / "images0.zip").read_bytes() == ARCHIVE


def test_refused_connection_is_retried_then_reported(session: requests.Session, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="2 attempts"):
        fetch(f"http://127.0.0.1:{port}/images0.zip", tmp_path / "images0.zip", session, max_retries=1)
    assert not (tmp_path / "images0.zip").exists()


def test_client_error_is_not_retried(server: ServerState, session: requests.Session, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        fetch(archive_url(server.base_url, "missing.zip"), tmp_path / "missing.zip", session)
    assert len(server.ranges) == 1


def write_old_archive(dest: Path) -> bytes:
    """A good archive of an earlier version, already in place; a failed download must leave it alone."""
    old = make_zip(1, members=1, member_bytes=1000)
    dest.write_bytes(old)
    return old


def broken_crc() -> bytes:
    data = bytearray(make_zip(2, stored=True))
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("served", [b"not a zip at all" * 1000, broken_crc()], ids=["not-zip", "bad-crc"])
def test_corrupt_archive_is_rejected(
    served: bytes, server: ServerState, session: requests.Session, tmp_path: Path
) -> None:
    server.files["/images0.zip"] = served
    dest = tmp_path / "images0.zip"
    old = write_old_archive(dest)
    with pytest.raises(ArchiveVerificationError, match=r"zip|CRC"):
        fetch(url_of(server), dest, session, md5=hashlib.md5(served).hexdigest())
    assert dest.read_bytes() == old
    assert not (tmp_path / "images0.zip.part").exists()


def test_wrong_size_is_rejected(server: ServerState, session: requests.Session, tmp_path: Path) -> None:
    server.extra_length = 1000
    dest = tmp_path / "images0.zip"
    old = write_old_archive(dest)
    with pytest.raises(ArchiveVerificationError, match=f"announces {len(ARCHIVE) + 1000} bytes"):
        fetch(url_of(server), dest, session, md5=hashlib.md5(ARCHIVE).hexdigest(), max_retries=2)
    assert dest.read_bytes() == old
    assert not (tmp_path / "images0.zip.part").exists()


def test_archive_changing_between_attempts_is_rejected(
    server: ServerState, session: requests.Session, tmp_path: Path
) -> None:
    server.drops = [4 * CHUNK]
    server.replacements = [None, make_zip(3, member_bytes=90_000)]
    with pytest.raises(ArchiveVerificationError, match="size changed"):
        fetch(url_of(server), tmp_path / "images0.zip", session)
    assert server.ranges == [None, f"bytes={4 * CHUNK}-"]
    assert not (tmp_path / "images0.zip.part").exists() and not (tmp_path / "images0.zip").exists()


def test_truncation_without_resume_is_rejected(server: ServerState, session: requests.Session, tmp_path: Path) -> None:
    server.honor_range = False
    server.drops = [len(ARCHIVE) // 2] * 10
    dest = tmp_path / "images0.zip"
    old = write_old_archive(dest)
    with pytest.raises(ArchiveVerificationError, match="stops at byte"):
        fetch(url_of(server), dest, session, md5=hashlib.md5(ARCHIVE).hexdigest(), max_retries=2)
    assert dest.read_bytes() == old
    assert len(server.ranges) == 3
    assert not (tmp_path / "images0.zip.part").exists()


def test_md5_mismatch_rejected_and_match_accepted(
    server: ServerState, session: requests.Session, tmp_path: Path
) -> None:
    dest = tmp_path / "images0.zip"
    with pytest.raises(ArchiveVerificationError, match="MD5"):
        fetch(url_of(server), dest, session, md5="0" * 32)
    assert not dest.exists() and not (tmp_path / "images0.zip.part").exists()
    result = fetch(url_of(server), dest, session, md5=hashlib.md5(ARCHIVE).hexdigest().upper())
    assert result.fetched and dest.read_bytes() == ARCHIVE


def test_verified_archive_is_not_fetched_again(
    server: ServerState, session: requests.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "images0.zip"
    first = fetch(url_of(server), dest, session)
    requests_made = len(server.ranges)
    verified: list[Path] = []

    def counting_verify(path: Path, md5: str | None) -> str:
        verified.append(path)
        return verify_archive(path, md5)

    monkeypatch.setattr(download, "verify_archive", counting_verify)
    again = fetch(url_of(server), dest, session, md5=first.md5)
    assert (again.fetched, again.bytes_fetched, again.attempts, again.md5) == (False, 0, 0, first.md5)
    assert verified == []
    sidecar = tmp_path / "images0.zip.verified.json"
    sidecar.unlink()
    unrecorded = fetch(url_of(server), dest, session)
    assert not unrecorded.fetched and sidecar.is_file() and verified == [dest]
    os.utime(dest, ns=(0, 0))
    touched = fetch(url_of(server), dest, session)
    assert not touched.fetched and verified == [dest, dest]
    assert json.loads(sidecar.read_text())["mtime_ns"] == 0
    assert len(server.ranges) == requests_made


def test_corrupt_present_file_is_replaced(server: ServerState, session: requests.Session, tmp_path: Path) -> None:
    dest = tmp_path / "images0.zip"
    dest.write_bytes(broken_crc())
    result = fetch(url_of(server), dest, session)
    assert result.fetched and dest.read_bytes() == ARCHIVE


def test_interrupted_part_from_earlier_run_is_resumed(
    server: ServerState, session: requests.Session, tmp_path: Path
) -> None:
    held = len(ARCHIVE) * 2 // 3
    (tmp_path / "images0.zip.part").write_bytes(ARCHIVE[:held])
    result = fetch(url_of(server), tmp_path / "images0.zip", session, md5=hashlib.md5(ARCHIVE).hexdigest())
    assert result.bytes_fetched == len(ARCHIVE) - held < len(ARCHIVE)
    assert server.ranges == [f"bytes={held}-"]
    assert (tmp_path / "images0.zip").read_bytes() == ARCHIVE


def test_complete_part_is_verified_without_fetching(
    server: ServerState, session: requests.Session, tmp_path: Path
) -> None:
    (tmp_path / "images0.zip.part").write_bytes(ARCHIVE)
    result = fetch(url_of(server), tmp_path / "images0.zip", session)
    assert (result.fetched, result.bytes_fetched) == (True, 0)
    assert server.ranges == [f"bytes={len(ARCHIVE)}-"] and server.bytes_sent == 0
    assert (tmp_path / "images0.zip").read_bytes() == ARCHIVE


def test_part_longer_than_the_archive_starts_over(
    server: ServerState, session: requests.Session, tmp_path: Path
) -> None:
    (tmp_path / "images0.zip.part").write_bytes(ARCHIVE + b"stale tail")
    result = fetch(url_of(server), tmp_path / "images0.zip", session)
    assert result.bytes_fetched == len(ARCHIVE) and (tmp_path / "images0.zip").read_bytes() == ARCHIVE


def test_progress_is_throttled_and_final(server: ServerState, session: requests.Session, tmp_path: Path) -> None:
    every: list[DownloadProgress] = []
    fetch(url_of(server), tmp_path / "a.zip", session, progress=every.append, progress_every_s=0.0)
    assert len(every) >= len(ARCHIVE) // CHUNK
    assert [p.bytes_done for p in every] == sorted(p.bytes_done for p in every)
    assert every[-1].bytes_done == every[-1].total_bytes == len(ARCHIVE) and every[-1].eta_s == 0.0
    assert all(p.rate_bytes_per_s >= 0 for p in every)
    final_only: list[DownloadProgress] = []
    fetch(url_of(server), tmp_path / "b.zip", session, progress=final_only.append, progress_every_s=1e9)
    assert [p.bytes_done for p in final_only] == [len(ARCHIVE)]


@pytest.mark.parametrize("url", ["ftp://mirror.example/images0.zip", "images0.zip", "file://other-host/x.zip"])
def test_unsupported_urls_are_refused_before_io(url: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedURLError, match=re.escape(url)):
        fetch_archive(url, tmp_path / "raw" / "images0.zip")
    assert list(tmp_path.iterdir()) == []


def test_ftp_error_names_accepted_schemes(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedURLError, match="http, https, file"):
        fetch_archive("ftp://mirror.example/images0.zip", tmp_path / "images0.zip")


def test_file_url_is_copied_and_verified(tmp_path: Path) -> None:
    source = tmp_path / "mirror dir" / "images0.zip"
    source.parent.mkdir()
    source.write_bytes(ARCHIVE)
    dest = tmp_path / "raw" / "images0.zip"
    result = fetch_archive(source.as_uri(), dest, chunk_bytes=CHUNK, md5=hashlib.md5(ARCHIVE).hexdigest())
    assert dest.read_bytes() == ARCHIVE and result.fetched and result.bytes_fetched == len(ARCHIVE)
    source.write_bytes(broken_crc())
    with pytest.raises(ArchiveVerificationError):
        fetch_archive(source.as_uri(), tmp_path / "raw" / "other.zip")
    assert not (tmp_path / "raw" / "other.zip").exists()


def test_verify_archive_returns_md5_and_rejects_bad_crc(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    good.write_bytes(ARCHIVE)
    bad.write_bytes(broken_crc())
    assert verify_archive(good, None) == hashlib.md5(ARCHIVE).hexdigest()
    with pytest.raises(ArchiveVerificationError, match="CRC"):
        verify_archive(bad, None)
