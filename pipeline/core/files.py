"""Atomic file writes: a reader never sees a half-written file under its final name, and a writer that was
killed leaves temporaries that the next writer of the same file removes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

STALE_AFTER_S = 5.0
"""A temporary whose lock is free is stale once this old: its writer took the lock right after creating it."""


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
"""No space left on the device, or the user's disk quota used up: either way the write cannot go on."""


class DiskFullError(OSError):
    """A write stopped because the disk (or the quota) is full; the message names the file and the space left."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def disk_text(count: int) -> str:
    """A byte count for a message, in the largest unit it fills (``150.5 GB``, ``36.9 kB``)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} B"


def free_space(path: Path) -> int:
    """Bytes free for this user on the disk that holds ``path`` (or its nearest existing parent)."""
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    return shutil.disk_usage(existing).free


def disk_full(error: BaseException, path: Path, writing: str = "") -> DiskFullError | None:
    """The :class:`DiskFullError` to raise for ``error`` while ``path`` was written, if a full disk caused it.

    The cause may sit down the chain: torch's zip writer reports a failed write as a ``RuntimeError`` whose
    context is Python's ``OSError(ENOSPC)``.
    """
    cause: BaseException | None = error
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in DISK_FULL):
        cause = cause.__cause__ or cause.__context__
    if cause is None or isinstance(error, DiskFullError):
        return None
    what = f" ({writing})" if writing else ""
    return DiskFullError(
        f"{path}{what}: the disk is full ({disk_text(free_space(path))} free now); free some space, or move the"
        " data directory (TAGCOLOR_DATA_DIR) to a larger disk"
    )


@contextlib.contextmanager
def reports_disk_full(path: Path, writing: str = "") -> Iterator[None]:
    """A write in the block that fails on a full disk ends in a :class:`DiskFullError` naming ``path``.

    :func:`atomic_path` does this for its own file; a block writing several files at once (the shard and its
    rows, the token matrix and the tags table) wraps each file's writes, so the error names the file whose write
    failed, not the innermost one being written.
    """
    try:
        yield
    except BaseException as error:
        full = disk_full(error, path, writing)
        if full is None:
            raise
        raise full from error


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes, read in blocks (``sha1`` names a folder's photos, ``sha256`` a scored
    checkpoint)."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, algorithm).hexdigest()


def _temporary_name(final: Path) -> re.Pattern[str]:
    """Names :func:`atomic_path` gives the temporaries of ``final``: ``.<name>.<8 random>.tmp[<suffix>]``."""
    return re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}\.tmp(\.\w+)?")


def _is_stale(path: Path) -> bool:
    """No live process holds ``path``'s lock, and it is older than the moment between creation and locking."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return time.time() - os.fstat(fd).st_mtime > STALE_AFTER_S
    finally:
        os.close(fd)


def sweep_stale_temporaries(final: Path | str) -> list[Path]:
    """Remove the temporaries of ``final`` that a killed writer left (only those no live process holds)."""
    final = Path(final)
    pattern = _temporary_name(final)
    if not final.parent.is_dir():
        return []
    stale = [path for path in final.parent.iterdir() if pattern.fullmatch(path.name) and _is_stale(path)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_path(final: Path | str, suffix: str = "", writing: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only if the block succeeds.

    The temporary name keeps ``suffix`` (e.g. ``.npy``) so libraries that append extensions do not
    rename it behind our back; the final file is world-readable like any ordinarily created one. The writer
    holds an exclusive lock on the temporary until it is in place, so a sweep (see
    :func:`sweep_stale_temporaries`, done here first) never takes a live writer's file. A disk that fills up
    meanwhile ends the block in a :class:`DiskFullError` naming ``final`` (and ``writing``, what it holds), with
    the temporary removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
        if tmp.exists():
            tmp.chmod(0o644)
            _fsync(tmp)
        os.replace(tmp, final)
        _fsync(final.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        full = disk_full(error, final, writing)
        if full is not None:
            raise full from error
        raise
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a directory entry list) to disk, so a rename never outlives its data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(final: Path | str, data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: Path | str, text: str) -> None:
    """Write UTF-8 ``text`` to ``final`` atomically."""
    atomic_write_bytes(final, text.encode("utf-8"))
