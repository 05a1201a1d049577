"""Kind ``mirflickr1m``: MIRFLICKR-1M v3b, ``images0.zip`` … ``images9.zip`` and ``tags.zip``.

``images{k}.zip`` holds ``images/<id // 10000>/<id>.jpg`` for ids ``100000·k … 100000·k + 99999``;
``tags.zip`` holds ``tags/<id // 10000>/<id>.txt``, one tag per line. Image ids are 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.sources.zips import PublishedZipSpec

IMAGES_PER_ARCHIVE = 100_000
FILES_PER_FOLDER = 10_000


class Mirflickr1mLayout:
    """Where MIRFLICKR-1M keeps each photo and tag file (shared with the synthetic sample, which imitates it)."""

    n_images: int
    tags_archive = "tags"

    def archive_of(self, image_id: int) -> str:
        return f"images{image_id // IMAGES_PER_ARCHIVE}"

    def archives(self) -> list[str]:
        return [f"images{k}" for k in range(-(-self.n_images // IMAGES_PER_ARCHIVE))]

    def archive_ids(self, archive: str) -> range:
        """Image ids held by the image archive ``archive`` (``images{k}``: ids 100,000·k onwards)."""
        start = int(archive.removeprefix("images")) * IMAGES_PER_ARCHIVE
        return range(start, min(start + IMAGES_PER_ARCHIVE, self.n_images))

    def image_member(self, image_id: int) -> str:
        return f"images/{image_id // FILES_PER_FOLDER}/{image_id}.jpg"

    def tag_member(self, image_id: int) -> str:
        return f"tags/{image_id // FILES_PER_FOLDER}/{image_id}.txt"


@dataclass(frozen=True, kw_only=True)
class Spec(Mirflickr1mLayout, PublishedZipSpec):
    """MIRFLICKR-1M, or any subset of it (``n_images``) served from a mirror in the same layout."""

    kind = "mirflickr1m"
