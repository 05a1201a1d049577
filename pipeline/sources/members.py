"""Archive member names that must never be extracted or read: shared by the photo and the tag readers."""

from __future__ import annotations

import zipfile
from pathlib import PurePosixPath, PureWindowsPath


def is_unsafe_member(name: str) -> bool:
    """Whether extracting the member ``name`` could write outside the target: absolute, drive or ``..`` path."""
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or bool(PureWindowsPath(name).drive)


def count_unsafe_members(archive: zipfile.ZipFile) -> int:
    """How many members of ``archive`` are unsafe; they are only counted (for the run's metadata), never read."""
    return sum(map(is_unsafe_member, archive.namelist()))
