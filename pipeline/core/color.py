"""Colour conversions in the contract's Lab encoding and the colourfulness measure.

Lab is stored as OpenCV's 8-bit encoding: ``L·255/100``, ``a+128``, ``b+128`` (D65, sRGB). Networks see
each channel scaled to [-1, 1]. NumPy and OpenCV only, so the pipeline and the model share one definition.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

NEUTRAL_AB = 128
"""Encoded a or b of a grey pixel."""
LAB_SCALE = {"L": 100 / 255, "a": 1.0, "b": 1.0}
LAB_OFFSET = {"L": 0.0, "a": -float(NEUTRAL_AB), "b": -float(NEUTRAL_AB)}
"""Encoded value ``v`` of each channel → CIE Lab units: ``v·scale + offset``."""
L_HALF_RANGE = 127.5
AB_HALF_RANGE = 127.0
"""Encoded L ↦ L / 127.5 − 1 and a, b ↦ (v − 128) / 127: [-1, 1] for the networks, 0 = grey for a, b."""


def rgb_to_lab_u8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., H, W, 3)`` → uint8 Lab in the OpenCV 8-bit encoding."""
    if rgb.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)
    return np.stack([rgb_to_lab_u8(image) for image in rgb])


def lab_u8_to_rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 Lab ``(..., H, W, 3)`` in the OpenCV 8-bit encoding → uint8 RGB."""
    if lab.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(lab), cv2.COLOR_LAB2RGB)
    return np.stack([lab_u8_to_rgb(image) for image in lab])


def l_to_unit(l_u8: np.ndarray) -> np.ndarray:
    """Encoded L (0 … 255) → float32 in [-1, 1]."""
    return l_u8.astype(np.float32) / L_HALF_RANGE - 1.0


def ab_to_unit(ab_u8: np.ndarray) -> np.ndarray:
    """Encoded a, b (128 = neutral) → float32 in about [-1, 1]; 0 is grey."""
    return (ab_u8.astype(np.float32) - NEUTRAL_AB) / AB_HALF_RANGE


def unit_to_ab(ab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ab_to_unit`, rounded and clipped to uint8."""
    return np.clip(np.rint(ab * AB_HALF_RANGE + NEUTRAL_AB), 0, 255).astype(np.uint8)


def colorfulness(rgb: np.ndarray) -> np.ndarray | float:
    """Hasler–Süsstrunk colourfulness of uint8 RGB ``(H, W, 3)``, or of a batch ``(N, H, W, 3)`` (float32).

    ``sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²)`` with ``rg = R − G`` and ``yb = (R + G)/2 − B``;
    0 for a grey image, about 100+ for very colourful ones. No opponent planes are formed: the means follow
    from the channel means, and ``rg² + yb² = ¾(R − G)² + ½(R − B)² + ½(G − B)²`` sums from OpenCV's exact
    norms of channel differences, in a quarter of the time of float planes (conversion pays it per photo).
    """
    if rgb.ndim != 3:
        return np.array([colorfulness(image) for image in rgb], dtype=np.float32)
    pixels = np.ascontiguousarray(rgb)
    r, g, b = cv2.split(pixels)
    mean_r, mean_g, mean_b, _ = cv2.mean(pixels)
    mean_rg, mean_yb = mean_r - mean_g, (mean_r + mean_g) / 2 - mean_b
    squares = 0.75 * cv2.norm(r, g, cv2.NORM_L2SQR) + 0.5 * (
        cv2.norm(r, b, cv2.NORM_L2SQR) + cv2.norm(g, b, cv2.NORM_L2SQR)
    )
    variance = max(squares / r.size - mean_rg**2 - mean_yb**2, 0.0)  # a flat image's can round to just below 0
    return math.sqrt(variance) + 0.3 * math.hypot(mean_rg, mean_yb)
