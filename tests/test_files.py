"""Atomic writes: nothing half-written under a final name, and what a killed writer left is swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.files import STALE_AFTER_S, atomic_path, atomic_write_text, sweep_stale_temporaries
from tests.helpers import REPO_ROOT

KILLED_WRITER = """
import sys, time
from pipeline.core.files import atomic_path
with atomic_path(sys.argv[1], suffix=".npy") as tmp:
    tmp.write_bytes(b"half a shard")
    print(tmp, flush=True)
    time.sleep(60)
"""


def age(path: Path, seconds: float = 10 * STALE_AFTER_S) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def killed_writer(final: Path) -> Path:
    """The temporary a writer of ``final`` left when it was killed mid-write (SIGKILL: no cleanup ran)."""
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(final)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    tmp = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    writer.stdout.close()
    assert tmp.is_file() and not final.exists()
    return tmp


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    final = tmp_path / "shards" / "lab_001.npy"
    left = killed_writer(final)
    age(left)
    other = tmp_path / "shards" / f".lab_002.npy.{left.name.split('.')[3]}.tmp.npy"
    other.write_bytes(b"another shard's temporary")
    age(other)
    part = tmp_path / "shards" / "lab_001.npy.part"
    part.write_bytes(b"a download kept for resuming")
    age(part)
    with atomic_path(final, suffix=".npy") as tmp:
        tmp.write_bytes(b"the whole shard")
    assert final.read_bytes() == b"the whole shard"
    assert not left.exists(), "the stale temporary of the same target is gone"
    assert other.exists() and part.exists(), "other targets' temporaries and .part files are kept"


def test_a_live_writers_temporary_is_never_swept(tmp_path: Path) -> None:
    final = tmp_path / "tokens.npy"
    with atomic_path(final, suffix=".npy") as live:
        live.write_bytes(b"in progress")
        age(live)
        assert sweep_stale_temporaries(final) == [], "its writer still holds the lock"
        atomic_write_text(tmp_path / "tokens.npy.verified.json", "{}")
        assert live.exists()
    assert final.read_bytes() == b"in progress"


def test_a_fresh_unlocked_temporary_is_kept(tmp_path: Path) -> None:
    """Between creating its temporary and locking it a writer holds no lock: its file is new, so it stays."""
    final = tmp_path / "metrics.json"
    young = tmp_path / ".metrics.json.abcd1234.tmp"
    young.write_bytes(b"")
    assert sweep_stale_temporaries(final) == []
    age(young)
    assert sweep_stale_temporaries(final) == [young]


def test_a_failed_block_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "report.md"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
