"""Photo pixels as a viewer shows them: turned upright by the EXIF orientation, in sRGB by the embedded ICC
profile. Both the conversion to shards and ``model.colorize`` read photos through here."""

from __future__ import annotations

import functools
import io
import re

import numpy as np
from PIL import Image, ImageCms

ORIENTATION_TAG = 0x0112
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation → the transposition that makes the stored pixels upright (1, or anything else: none)."""
QUARTER_TURNS = frozenset({5, 6, 7, 8})
"""Orientations that swap width and height."""

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 (upright) when absent or out of range."""
    value = image.getexif().get(ORIENTATION_TAG, 1)
    return value if value in TRANSPOSE else 1


def upright(image: Image.Image) -> Image.Image:
    """``image`` transposed as its EXIF orientation says (phone photos are often stored sideways)."""
    method = TRANSPOSE.get(orientation(image))
    return image if method is None else image.transpose(method)


@functools.lru_cache(maxsize=16)
def _srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A transform from the profile ``icc`` to sRGB for ``mode`` pixels; None when the profile is unusable
    (damaged, or of another colour space than the pixels): they are then taken as sRGB, as a browser does."""
    try:
        return ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)), _SRGB, mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def to_srgb(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bool]:
    """``image`` (RGB or CMYK) in sRGB RGB through its ICC profile ``icc``, and whether a profile was applied.

    Transforms are cached by profile: a camera's or an editor's profile repeats over a whole archive.
    """
    transform = _srgb_transform(icc, image.mode) if icc and image.mode in ("RGB", "CMYK") else None
    if transform is None:
        return image, False
    return ImageCms.applyTransform(image, transform), True


def center_square(pixels: np.ndarray) -> np.ndarray:
    """The largest centred square of a photo ``(H, W, …)``, a view: what conversion keeps and the grids show."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""A JPEG marker inside or after a scan: ``FF`` followed by anything but ``00`` (a stuffed ``FF`` byte), ``FF``
(fill before a marker) and ``D0``–``D7`` (restarts, part of the scan)."""


def jpeg_scans_complete(data: bytes) -> bool:
    """Whether each scan of the JPEG ``data`` runs into a marker that begins the next segment, and the segments
    reach the end-of-image marker: what a decoder that stops at damage (Pillow's) needs to read it whole.

    A decoder that only warns (OpenCV's) fills the rest of a scan broken by a stray marker with grey and returns
    it. The segments are walked by their lengths, past the EXIF segment and its thumbnail; each scan is searched
    for its end at C speed, about 2 % of the time of the decode.
    """
    size, at = len(data), 2  # after the start-of-image marker
    while at + 1 < size and data[at] == 0xFF:
        code = data[at + 1]
        if code == 0xD9:
            return True
        if code == 0xFF or 0xD0 <= code <= 0xD7 or code == 0x01:  # fill byte or a marker without a length
            at += 1 if code == 0xFF else 2
            continue
        if at + 4 > size:
            return False
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if code == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            following = _NEXT_MARKER.search(data, at)
            if following is None:
                return False
            at = following.start()
    return False


def flatten(image: Image.Image, keep_cmyk: bool) -> Image.Image:
    """An ``RGB`` or ``L`` image of the same pixels; transparency is composited over white, as a viewer shows it.

    ``L`` is kept so greyscale photos are resized on one channel instead of three. 16-bit greyscale (PNG,
    TIFF) is scaled to 8 bits, where Pillow's own conversion would clip it to white. CMYK is kept when its
    ICC profile will convert it (Pillow's own CMYK → RGB ignores the profile).
    """
    if image.mode.startswith("I"):
        return image.convert("I").point(lambda value: value / 257).convert("L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in ("RGB", "L") or (keep_cmyk and image.mode == "CMYK"):
        return image
    return image.convert("RGB")


def srgb_pixels(image: Image.Image) -> np.ndarray:
    """A whole photo as uint8 sRGB ``(H, W, 3)``: turned upright by its EXIF orientation, flattened, its ICC
    profile applied, as conversion reads it (for photos read whole, outside conversion)."""
    icc = image.info.get("icc_profile")
    rgb, _ = to_srgb(flatten(upright(image), keep_cmyk=bool(icc)), icc)
    return np.asarray(rgb if rgb.mode == "RGB" else rgb.convert("RGB"))  # convert() would copy an RGB photo
