"""Kind ``mirflickr25k``: MIRFLICKR-25k v3b, one ``mirflickr25k.zip`` with photos and tags.

It holds ``mirflickr/im<n>.jpg`` and ``mirflickr/meta/tags/tags<n>.txt`` with 1-based file numbers
(image id = n − 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.layout import DatasetPaths
from pipeline.sources.base import Progress, SourceResult
from pipeline.sources.zips import PublishedZipSpec, check_tags_inside

ARCHIVE = "mirflickr25k"


@dataclass(frozen=True, kw_only=True)
class Spec(PublishedZipSpec):
    """MIRFLICKR-25k: photos and tags in one archive."""

    kind = "mirflickr25k"
    tags_in_image_archives = True
    tags_archive = ARCHIVE

    def archive_of(self, image_id: int) -> str:
        return ARCHIVE

    def archives(self) -> list[str]:
        return [ARCHIVE]

    def image_member(self, image_id: int) -> str:
        return f"mirflickr/im{image_id + 1}.jpg"

    def tag_member(self, image_id: int) -> str:
        return f"mirflickr/meta/tags/tags{image_id + 1}.txt"

    def obtain_tags(self, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """The tags come with the photos: check that the image archive holds them."""
        return check_tags_inside(self, paths)
