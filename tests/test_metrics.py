"""Metrics on hand-made images whose answers are known, and SSIM against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from model.metrics import NO_HUE_ERROR, ImageMetrics, ab_error, dominant_ab, hue_error, image_metrics, psnr, ssim
from pipeline.core.color import colorfulness, lab_u8_to_rgb, rgb_to_lab_u8


def random_rgb(seed: int, shape: tuple[int, ...] = (3, 24, 20, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_psnr_of_identical_images_is_inf_and_summary_counts_them() -> None:
    image = random_rgb(0)
    assert np.all(np.isinf(psnr(image, image)))
    lab = rgb_to_lab_u8(image)
    metrics = image_metrics(lab, lab)
    summary = metrics.summary()
    assert summary["psnr"] == math.inf
    assert summary["psnr_identical"] == 3
    assert summary["ssim"] == pytest.approx(1.0)
    assert summary["ab_error"] == 0.0
    assert summary["colorfulness_gap"] == pytest.approx(0.0)


def test_psnr_of_a_known_mse() -> None:
    original = np.full((2, 8, 8, 3), 100, dtype=np.uint8)
    generated = original.copy()
    generated[0] += 5
    generated[1, :, :4] += 10
    expected = [10 * math.log10(255**2 / 25), 10 * math.log10(255**2 / 50)]
    np.testing.assert_allclose(psnr(generated, original), expected)


def test_summary_averages_finite_psnr_only() -> None:
    values = np.array([20.0, np.inf, 30.0])
    zeros = np.zeros(3)
    summary = ImageMetrics(values, zeros + 1, zeros, zeros, zeros, zeros).summary()
    assert summary["psnr"] == 25.0
    assert summary["psnr_identical"] == 1
    assert summary["n_images"] == 3


def test_summary_of_concatenated_batches_equals_summary_of_one_batch() -> None:
    generated, original = rgb_to_lab_u8(random_rgb(1, (4, 16, 16, 3))), rgb_to_lab_u8(random_rgb(2, (4, 16, 16, 3)))
    whole = image_metrics(generated, original)
    parts = ImageMetrics.concat(
        [image_metrics(generated[:1], original[:1]), image_metrics(generated[1:], original[1:])]
    )
    assert len(parts) == 4
    assert parts.summary() == pytest.approx(whole.summary())


def test_ssim_matches_scikit_image() -> None:
    original = random_rgb(3, (2, 40, 33, 3))
    noise = np.random.default_rng(4).integers(-40, 41, original.shape)
    generated = np.clip(original.astype(int) + noise, 0, 255).astype(np.uint8)
    generated[1] = original[1] // 2 + 60
    ours = ssim(generated, original)
    reference = [
        structural_similarity(
            g,
            o,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        for g, o in zip(generated, original, strict=True)
    ]
    np.testing.assert_allclose(ours, reference, atol=1e-3)
    assert np.all(ours < 0.99)


def test_ssim_of_identical_images_is_one_and_needs_the_window() -> None:
    image = random_rgb(5, (2, 11, 11, 3))
    np.testing.assert_allclose(ssim(image, image), 1.0)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(image[:, :10], image[:, :10])


def test_ab_error_is_in_lab_units() -> None:
    original = np.full((2, 4, 4, 2), 128, dtype=np.uint8)
    generated = original.copy()
    generated[0, ..., 0] = 138
    generated[1] = 120
    np.testing.assert_allclose(ab_error(generated, original), [5.0, 8.0])
    with pytest.raises(ValueError, match="one shape"):
        ab_error(generated[..., :1], original[..., :1])


def test_colourfulness_of_half_red_half_green_is_255() -> None:
    """rg = R − G is ±255 with mean 0 (σ = 255), yb = (R + G)/2 − B is 127.5 everywhere (σ = 0):
    √(255² + 0) + 0.3·√(0 + 127.5²) = 255 + 38.25."""
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, :3] = (255, 0, 0)
    image[:, 3:] = (0, 255, 0)
    assert colorfulness(image) == pytest.approx(255 + 0.3 * 127.5)
    assert colorfulness(np.full((4, 6, 3), 77, dtype=np.uint8)) == 0.0


def test_grey_prediction_has_no_colourfulness_and_the_known_gap() -> None:
    original = rgb_to_lab_u8(random_rgb(6, (2, 16, 16, 3)))
    grey = original.copy()
    grey[..., 1:] = 128
    metrics = image_metrics(grey, original)
    assert np.all(metrics.colorfulness_generated < 0.5), "grey up to OpenCV's 8-bit rounding of Lab → RGB"
    expected_generated = colorfulness(lab_u8_to_rgb(grey))
    expected_original = colorfulness(lab_u8_to_rgb(original))
    np.testing.assert_allclose(metrics.colorfulness_original, expected_original)
    summary = metrics.summary()
    assert summary["colorfulness_gap"] == pytest.approx(float(np.mean(expected_generated - expected_original)))
    assert summary["colorfulness_original"] > 50
    expected_ab = np.abs(original[..., 1:].astype(int) - 128).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.ab_error, expected_ab)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        psnr(random_rgb(7), random_rgb(7)[:, :-1])


def test_delta_cf_of_a_hand_computed_case() -> None:
    # (200, 100, 50) everywhere: rg = 100, yb = 150 − 50 = 100, no spread: CF = 0.3·√(100² + 100²) = 42.43.
    # Half of it, half grey (100, 100, 100): σ_rg = σ_yb = 50 and μ_rg = μ_yb = 50: CF = √5000 + 0.3·√5000.
    uniform = np.broadcast_to(np.array([200, 100, 50], dtype=np.uint8), (1, 8, 8, 3)).copy()
    half = np.full((1, 8, 8, 3), 100, dtype=np.uint8)
    half[:, :, :4] = (200, 100, 50)
    grey = np.full((2, 8, 8, 3), 100, dtype=np.uint8)
    generated = np.concatenate([uniform, half])
    assert colorfulness(uniform[0]) == pytest.approx(0.3 * math.sqrt(2) * 100, rel=1e-6)
    assert colorfulness(half[0]) == pytest.approx(1.3 * math.sqrt(5000), rel=1e-6)
    zeros = np.zeros(2)
    cf_generated = np.asarray(colorfulness(generated), dtype=np.float64)
    summary = ImageMetrics(zeros, zeros, zeros, zeros, cf_generated, np.asarray(colorfulness(grey))).summary()
    expected = (0.3 * math.sqrt(2) * 100 + 1.3 * math.sqrt(5000)) / 2  # the set's mean CF minus grey's 0
    assert summary["colorfulness_gap"] == pytest.approx(expected, rel=1e-6)
    assert summary["delta_cf"] == pytest.approx(expected, rel=1e-6)
    dull = ImageMetrics(zeros, zeros, zeros, zeros, np.asarray(colorfulness(grey)), cf_generated).summary()
    assert dull["colorfulness_gap"] == pytest.approx(-expected, rel=1e-6) and dull["delta_cf"] == summary["delta_cf"]


def test_hue_error_compares_the_dominant_colours() -> None:
    def ab_image(a: float, b: float, coverage: float = 1.0) -> np.ndarray:
        image = np.full((1, 10, 10, 2), 128, dtype=np.uint8)
        image[:, : int(10 * coverage)] = (128 + a, 128 + b)
        return image

    red, yellow, blue = ab_image(40, 0), ab_image(0, 40), ab_image(-40, 0)
    assert hue_error(yellow, red)[0] == pytest.approx(90.0)
    assert hue_error(blue, red)[0] == pytest.approx(180.0)
    assert hue_error(ab_image(40, 0, coverage=0.3), red)[0] == pytest.approx(0.0)  # a grey ground does not count
    assert hue_error(np.full_like(red, 128), red)[0] == NO_HUE_ERROR  # no colour predicted at all
    assert np.isnan(hue_error(red, np.full_like(red, 128))[0])  # nothing to compare against
    np.testing.assert_allclose(dominant_ab(ab_image(30, -20, coverage=0.5)), [[30.0, -20.0]])
