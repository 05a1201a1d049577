"""Where each photo and tag file lives inside the published archives (DESIGN.md §2).

Image ids are 0-based and define the global order. MIRFLICKR-1M keeps 100,000 photos per
``images{k}.zip`` under ``images/<id // 10000>/<id>.jpg`` and all tags in ``tags.zip``; MIRFLICKR-25k keeps
everything in ``mirflickr25k.zip`` with 1-based file numbers (``im<n>.jpg``, id = n − 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LayoutName = Literal["mirflickr1m", "mirflickr25k"]
IMAGES_PER_1M_ARCHIVE = 100_000


@dataclass(frozen=True)
class ArchiveLayout:
    """Maps image ids to archive names and member paths for one published layout."""

    name: LayoutName

    def archive_of(self, image_id: int) -> str:
        """Archive key (partition key, file stem) holding the photo ``image_id``."""
        if self.name == "mirflickr1m":
            return f"images{image_id // IMAGES_PER_1M_ARCHIVE}"
        return "mirflickr25k"

    def archives(self, n_images: int) -> list[str]:
        """Archive keys covering ids ``0 … n_images − 1`` in order."""
        if self.name == "mirflickr1m":
            count = -(-n_images // IMAGES_PER_1M_ARCHIVE)
            return [f"images{k}" for k in range(count)]
        return ["mirflickr25k"]

    @property
    def tags_archive(self) -> str:
        """Archive key holding the tag files (for 25k, the same archive as the photos)."""
        return "tags" if self.name == "mirflickr1m" else "mirflickr25k"

    @staticmethod
    def filename(archive: str) -> str:
        return f"{archive}.zip"

    def image_member(self, image_id: int) -> str:
        """Zip member name of the photo ``image_id``."""
        if self.name == "mirflickr1m":
            return f"images/{image_id // 10_000}/{image_id}.jpg"
        return f"mirflickr/im{image_id + 1}.jpg"

    def tag_member(self, image_id: int) -> str:
        """Zip member name of the tag file of ``image_id``."""
        if self.name == "mirflickr1m":
            return f"tags/{image_id // 10_000}/{image_id}.txt"
        return f"mirflickr/meta/tags/tags{image_id + 1}.txt"
