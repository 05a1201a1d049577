"""Kinds whose photos and tag files are members of zip archives, read in place by the kind's member names.

Only the member names of the layout are ever looked up, so a stray ``../x.jpg`` is never opened; such
members are only counted, for the run's metadata.
"""

from __future__ import annotations

import re
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from pipeline.core.config import ConfigError
from pipeline.core.contract import BAD_MEMBER, MISSING, TOO_LARGE
from pipeline.core.layout import DatasetPaths
from pipeline.sources import base, download
from pipeline.sources.base import DatasetSpec, PhotoUnavailable, Progress, SourceResult, TagFileUnreadable

UNREADABLE_MEMBER_ERRORS = (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError, zlib.error)
"""What reading a damaged, encrypted or oddly compressed zip member raises."""

MD5_HEX = re.compile(r"[0-9a-f]{32}")


def is_unsafe_member(name: str) -> bool:
    """Whether extracting the member ``name`` could write outside the target: absolute, drive or ``..`` path."""
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or bool(PureWindowsPath(name).drive)


def count_unsafe_members(archive: zipfile.ZipFile) -> int:
    """How many members of ``archive`` are unsafe; they are only counted, never read."""
    return sum(map(is_unsafe_member, archive.namelist()))


def open_archive(path: Path, asset: str) -> zipfile.ZipFile:
    """The zip at ``path``, or an error naming the asset that makes it (``<dataset>/archives``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: materialize {asset} first")
    return zipfile.ZipFile(path)


@dataclass(frozen=True, kw_only=True)
class ZipLayoutSpec(DatasetSpec):
    """A dataset of zip archives: a kind says which member holds each photo and each tag file."""

    def image_member(self, image_id: int) -> str:
        """Zip member name of the photo ``image_id``."""
        raise NotImplementedError

    def tag_member(self, image_id: int) -> str:
        """Zip member name of the tag file of ``image_id``."""
        raise NotImplementedError

    def open_photos(self, paths: DatasetPaths) -> ZipPhotos:
        return ZipPhotos(self, paths)

    def open_tags(self, paths: DatasetPaths) -> ZipTags:
        return ZipTags(open_archive(paths.archive(self.tags_archive), f"{self.name}/tags_archive"), self)


@dataclass(frozen=True, kw_only=True)
class PublishedZipSpec(ZipLayoutSpec):
    """Zip archives downloaded from ``base_url`` (``TAGCOLOR_<NAME>_URL`` overrides it), checked against
    their published MD5 where ``md5`` lists one."""

    base_url: str = ""
    md5: dict[str, str] = field(default_factory=dict)

    def check(self, source: str) -> None:
        super().check(source)
        if not self.base_url:
            raise ConfigError(f"{source}: 'base_url' is required for a downloaded dataset")
        try:
            download.check_url(self.base_url)
        except download.UnsupportedURLError as error:
            raise ConfigError(f"{source}: 'base_url': {error}") from error
        archives = {*self.archives(), self.tags_archive}
        for archive, digest in self.md5.items():
            if archive not in archives:
                known = sorted(archives)
                raise ConfigError(f"{source}: md5: {archive!r} is not an archive of {self.name}; archives: {known}")
            if not MD5_HEX.fullmatch(digest.lower()):
                raise ConfigError(f"{source}: md5: {archive!r} must be 32 hex digits, got {digest!r}")

    @property
    def default_url(self) -> str:
        return self.base_url

    def obtain(self, archive: str, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """Download ``archive`` from the mirror (resumed, verified); a verified copy already there is kept."""
        url = download.archive_url(base_url or self.base_url, paths.archive(archive).name)
        md5 = self.md5.get(archive, "").lower() or None
        result = download.fetch_archive(url, paths.archive(archive), md5=md5, progress=progress)
        return SourceResult(
            path=result.path,
            figures={
                "url": url,
                "size_bytes": result.size_bytes,
                "md5": result.md5,
                "md5_published": md5 or "",
                "duration_s": result.duration_s,
                "bytes_fetched": result.bytes_fetched,
                "fetched": result.fetched,
            },
        )


def check_tags_inside(spec: ZipLayoutSpec, paths: DatasetPaths) -> SourceResult:
    """For kinds whose tags ship inside the image archive: count the tag files it holds (none is an error)."""
    started = time.perf_counter()
    path = paths.archive(spec.tags_archive)
    with open_archive(path, f"{spec.name}/archives") as archive:
        names = set(archive.namelist())
    found = sum(spec.tag_member(i) in names for i in range(spec.n_images))
    if not found:
        raise ConfigError(f"{path} holds none of the {spec.n_images:,} tag files of the layout")
    return SourceResult(
        path=path,
        figures={"tag_files": found, "images": spec.n_images, "duration_s": time.perf_counter() - started},
    )


class ZipPhotos:
    """The dataset's image archives, each opened on first use and closed with the reader."""

    def __init__(self, spec: ZipLayoutSpec, paths: DatasetPaths) -> None:
        self._spec = spec
        self._paths = paths
        self._open: dict[str, zipfile.ZipFile] = {}

    def _archive(self, name: str) -> zipfile.ZipFile:
        if name not in self._open:
            self._open[name] = open_archive(self._paths.archive(name), f"{self._spec.name}/archives")
        return self._open[name]

    def read(self, image_id: int) -> bytes:
        archive = self._archive(self._spec.archive_of(image_id))
        try:
            info = archive.getinfo(self._spec.image_member(image_id))
        except KeyError as error:
            raise PhotoUnavailable(MISSING) from error
        if info.file_size > base.MAX_PHOTO_BYTES:  # declared size: refused before it is inflated
            raise PhotoUnavailable(TOO_LARGE)
        try:
            return archive.read(info)
        except UNREADABLE_MEMBER_ERRORS as error:
            raise PhotoUnavailable(BAD_MEMBER) from error

    def unsafe_entries(self, ids: range) -> int:
        """Unsafe members of the archives whose first photo ``ids`` holds, so that converting every shard
        counts each archive exactly once."""
        archive_of = self._spec.archive_of
        owned = dict.fromkeys(archive_of(i) for i in ids if i == 0 or archive_of(i - 1) != archive_of(i))
        return sum(count_unsafe_members(self._archive(name)) for name in owned)

    def __enter__(self) -> ZipPhotos:
        return self

    def __exit__(self, *exc: object) -> None:
        for archive in self._open.values():
            archive.close()
        self._open.clear()


class ZipTags:
    """The tag archive, open for reading tag files by image id."""

    def __init__(self, archive: zipfile.ZipFile, spec: ZipLayoutSpec) -> None:
        self._archive = archive
        self._spec = spec

    def read(self, image_id: int) -> bytes | None:
        try:
            return self._archive.read(self._spec.tag_member(image_id))
        except KeyError:
            return None
        except UNREADABLE_MEMBER_ERRORS as error:
            raise TagFileUnreadable(str(error)) from error

    def unsafe_entries(self) -> int:
        return count_unsafe_members(self._archive)

    def __enter__(self) -> ZipTags:
        return self

    def __exit__(self, *exc: object) -> None:
        self._archive.close()
