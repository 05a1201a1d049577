"""Colorization metrics on batches of uint8 images: PSNR and SSIM in RGB, ab error and dominant-hue error in
Lab, colourfulness.

Every function returns one value per image, so a caller can stream batches, concatenate, pick the best
images and aggregate once. PSNR of an exact copy is ``inf``; :meth:`ImageMetrics.summary` averages the
finite values and counts the copies separately, so one perfect image neither hides nor dominates the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import cv2
import numpy as np

from pipeline.core.color import colorfulness, lab_u8_to_rgb

MAX_VALUE = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
"""``int(3.5·σ + 0.5)``: the Gaussian window of Wang et al. (11×11), as scikit-image truncates it."""
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(generated: np.ndarray, original: np.ndarray) -> None:
    if generated.shape != original.shape or generated.ndim != 4 or generated.shape[-1] != 3:
        raise ValueError(f"expected two (B, H, W, 3) batches of one shape, got {generated.shape} and {original.shape}")


def psnr(generated: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 RGB batches ``(B, H, W, 3)`` (peak 255); ``inf`` for identical images."""
    _check_pair(generated, original)
    diff = generated.astype(np.float64) - original.astype(np.float64)
    mse = np.mean(diff * diff, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(MAX_VALUE**2 / mse)


def _gaussian(image: np.ndarray) -> np.ndarray:
    """Gaussian blur (σ 1.5, 11×11, mirrored border) of every channel of one float image ``(H, W, C)``."""
    size = 2 * SSIM_RADIUS + 1
    return cv2.GaussianBlur(np.ascontiguousarray(image), (size, size), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class SsimReference:
    """The windowed means and variances of the original photos, computed once for every set compared to them."""

    pixels: np.ndarray
    mean: np.ndarray
    variance: np.ndarray

    @classmethod
    def of(cls, original: np.ndarray) -> SsimReference:
        if min(original.shape[1:3]) < 2 * SSIM_RADIUS + 1:
            raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1} pixels a side, got {original.shape}")
        y = original.astype(np.float64)
        mean, variance = np.empty_like(y), np.empty_like(y)
        for image, image_mean, image_variance in zip(y, mean, variance, strict=True):
            image_mean[:] = _gaussian(image)
            image_variance[:] = _gaussian(image * image) - image_mean * image_mean
        return cls(pixels=y, mean=mean, variance=variance)


def ssim(generated: np.ndarray, original: np.ndarray | SsimReference) -> np.ndarray:
    """Per-image SSIM of uint8 RGB batches: Gaussian-window SSIM (Wang et al. 2004) per channel, averaged.

    Population (not sample) covariances and the mean over the map without its 5-pixel border, as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
    ``original`` may be given as its :class:`SsimReference`, so several sets share its statistics. One image
    at a time: its temporaries stay small, where whole-batch ones cost more in page faults than in arithmetic.
    """
    reference = original if isinstance(original, SsimReference) else SsimReference.of(original)
    _check_pair(generated, reference.pixels)
    c1 = (SSIM_K1 * MAX_VALUE) ** 2
    c2 = (SSIM_K2 * MAX_VALUE) ** 2
    inner = (slice(SSIM_RADIUS, -SSIM_RADIUS), slice(SSIM_RADIUS, -SSIM_RADIUS))
    out = np.empty(len(generated))
    for i, image in enumerate(generated):
        x, y = image.astype(np.float64), reference.pixels[i]
        mu_x, mu_y = _gaussian(x), reference.mean[i]
        var_x = _gaussian(x * x) - mu_x * mu_x
        cov = _gaussian(x * y) - mu_x * mu_y
        numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        ssim_map = numerator / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + reference.variance[i] + c2))
        out[i] = ssim_map[inner].mean()
    return out


def ab_error(generated_ab: np.ndarray, original_ab: np.ndarray) -> np.ndarray:
    """Per-image mean absolute error of encoded a, b ``(B, H, W, 2)``, in Lab units.

    The 8-bit encoding stores ``a + 128`` and ``b + 128``, so one encoded level is one Lab unit.
    """
    if generated_ab.shape != original_ab.shape or generated_ab.ndim != 4 or generated_ab.shape[-1] != 2:
        raise ValueError(
            f"expected two (B, H, W, 2) batches of one shape, got {generated_ab.shape} and {original_ab.shape}"
        )
    diff = np.abs(generated_ab.astype(np.int16) - original_ab.astype(np.int16))
    return diff.mean(axis=(1, 2, 3))


HUE_MIN_CHROMA = 5.0
"""Lab units of chroma the original's dominant colour needs for its hue to count (a grey photo has none)."""
NO_HUE_ERROR = 90.0
"""Degrees scored when the prediction has no colour at all: what a random hue scores on average."""


def dominant_ab(ab_u8: np.ndarray) -> np.ndarray:
    """Per image, the chroma-weighted mean of encoded a, b ``(B, H, W, 2)`` as Lab (a, b) ``(B, 2)``.

    Weighting by chroma lets the coloured parts decide: a red ball on a grey ground is red, not pinkish grey.
    """
    ab = ab_u8.astype(np.float32) - 128.0
    weight = np.hypot(ab[..., 0], ab[..., 1])
    total = weight.sum(axis=(1, 2), dtype=np.float64)
    weighted = (ab * weight[..., None]).sum(axis=(1, 2), dtype=np.float64)
    return np.divide(weighted, total[:, None], out=np.zeros_like(weighted), where=total[:, None] > 0)


def hue_error(generated_ab: np.ndarray, original_ab: np.ndarray) -> np.ndarray:
    """Per image, degrees (0 … 180) between the hue angles of the two dominant colours (:func:`dominant_ab`).

    NaN where the original has no colour to speak of (under :data:`HUE_MIN_CHROMA`); a prediction without
    colour scores :data:`NO_HUE_ERROR`. The figure shows the failure people complain about, the wrong colour,
    which a mean pixel error averages away.
    """
    generated, original = dominant_ab(generated_ab), dominant_ab(original_ab)
    angle = np.degrees(np.arctan2(generated[:, 1], generated[:, 0]) - np.arctan2(original[:, 1], original[:, 0]))
    error = np.abs((angle + 180.0) % 360.0 - 180.0)
    error = np.where(np.hypot(*generated.T) > 0, error, NO_HUE_ERROR)
    return np.where(np.hypot(*original.T) >= HUE_MIN_CHROMA, error, np.nan)


@dataclass(frozen=True)
class ImageMetrics:
    """Per-image metrics of generated against original photos; each field has one value per image."""

    psnr: np.ndarray
    ssim: np.ndarray
    ab_error: np.ndarray
    hue_error: np.ndarray
    colorfulness_generated: np.ndarray
    colorfulness_original: np.ndarray

    def __len__(self) -> int:
        return len(self.psnr)

    @classmethod
    def concat(cls, parts: Sequence[ImageMetrics]) -> ImageMetrics:
        """Join the metrics of consecutive batches."""
        return cls(**{f.name: np.concatenate([getattr(part, f.name) for part in parts]) for f in fields(cls)})

    def summary(self) -> dict[str, float | int]:
        """Means over the images; PSNR over finite values only, with ``psnr_identical`` counting exact copies.

        ``colorfulness_gap`` is generated minus original: negative when the colours come out too dull, the
        usual failure of a regression-trained colorizer. ``delta_cf`` is its magnitude, the ΔCF of DDColor
        (ICCV 2023): ``|mean CF(generated) − mean CF(original)|`` over the set. ``hue_error`` averages the
        photos with colour, ``hue_photos`` of them.
        """
        finite = np.isfinite(self.psnr)
        mean_psnr = float(self.psnr[finite].mean()) if finite.any() else math.inf
        generated = float(self.colorfulness_generated.mean())
        original = float(self.colorfulness_original.mean())
        coloured = np.isfinite(self.hue_error)
        return {
            "n_images": len(self),
            "psnr": mean_psnr,
            "psnr_identical": int((~finite).sum()),
            "ssim": float(self.ssim.mean()),
            "ab_error": float(self.ab_error.mean()),
            "hue_error": float(self.hue_error[coloured].mean()) if coloured.any() else math.nan,
            "hue_photos": int(coloured.sum()),
            "colorfulness_generated": generated,
            "colorfulness_original": original,
            "colorfulness_gap": generated - original,
            "delta_cf": abs(generated - original),
        }


@dataclass(frozen=True)
class Reference:
    """What every set compared with one batch of originals shares: their Lab, RGB, SSIM statistics,
    colourfulness and dominant colour, computed once."""

    lab: np.ndarray
    rgb: np.ndarray
    ssim: SsimReference
    colorfulness: np.ndarray

    @classmethod
    def of(cls, original_lab: np.ndarray) -> Reference:
        rgb = lab_u8_to_rgb(original_lab)
        cf = np.asarray(colorfulness(rgb), dtype=np.float64).reshape(-1)
        return cls(lab=original_lab, rgb=rgb, ssim=SsimReference.of(rgb), colorfulness=cf)


def image_metrics(generated_lab: np.ndarray, original: np.ndarray | Reference) -> ImageMetrics:
    """All metrics of uint8 Lab batches ``(B, H, W, 3)`` in the contract's encoding; RGB ones via sRGB.

    ``original`` is the originals' Lab or their :class:`Reference` (to score several sets against one batch).
    """
    reference = original if isinstance(original, Reference) else Reference.of(original)
    _check_pair(generated_lab, reference.lab)
    generated_rgb = lab_u8_to_rgb(generated_lab)
    return ImageMetrics(
        psnr=psnr(generated_rgb, reference.rgb),
        ssim=ssim(generated_rgb, reference.ssim),
        ab_error=ab_error(generated_lab[..., 1:], reference.lab[..., 1:]),
        hue_error=hue_error(generated_lab[..., 1:], reference.lab[..., 1:]),
        colorfulness_generated=np.asarray(colorfulness(generated_rgb), dtype=np.float64).reshape(-1),
        colorfulness_original=reference.colorfulness,
    )
