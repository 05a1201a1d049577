"""The Fréchet distance against its closed form, and the weights cache: fetched once, kept only when verified."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.fid import FID_INCEPTION, OFFLINE_ENV, GaussianMoments, MetricUnavailable, ensure_weights, frechet_distance


def samples_with(mean: np.ndarray, covariance: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` rows whose sample mean and (unbiased) sample covariance are exactly ``mean`` and ``covariance``."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    whitening = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = z @ np.linalg.inv(whitening).T  # sample covariance now exactly the identity
    return z @ np.linalg.cholesky(covariance).T + mean


def moments(rows: np.ndarray, batches: int = 3) -> GaussianMoments:
    accumulated = GaussianMoments(rows.shape[1])
    for part in np.array_split(rows, batches):
        accumulated.add(part)
    return accumulated


def test_frechet_distance_of_two_gaussians_matches_the_closed_form() -> None:
    # Σ₁ = R·D₁·Rᵀ and Σ₂ = R·D₂·Rᵀ share their eigenvectors, so tr (Σ₁Σ₂)^½ = Σ √(d₁·d₂):
    # FD = ‖μ₁ − μ₂‖² + Σ (d₁ + d₂ − 2 √(d₁·d₂)) = ‖μ₁ − μ₂‖² + Σ (√d₁ − √d₂)².
    rotation, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((4, 4)))
    d1, d2 = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.5])
    first = moments(samples_with(mu1, rotation @ np.diag(d1) @ rotation.T, 400, 0))
    second = moments(samples_with(mu2, rotation @ np.diag(d2) @ rotation.T, 300, 1))
    expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2))
    assert expected == pytest.approx(5.25 + 1.0 + 1.0 + 0.0 + 0.25)  # by hand
    assert frechet_distance(first, second) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(second, first) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(first, first) == pytest.approx(0.0, abs=1e-9)


def test_moments_refuse_too_few_or_misshapen_features() -> None:
    accumulated = GaussianMoments(3)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        accumulated.add(np.zeros((2, 4)))
    accumulated.add(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = accumulated.covariance


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A local HTTP server publishing one weights file; yields its URL and bytes."""
    payload = b"pretend weights " * 1000
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "weights.pth").write_bytes(payload)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path / "site"), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/weights.pth", payload
    finally:
        server.shutdown()
        thread.join()


def test_weights_are_downloaded_once_and_kept_only_when_verified(
    tmp_path: Path, served: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, payload = served
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    good = replace(FID_INCEPTION, url=url, sha256=hashlib.sha256(payload).hexdigest(), filename="good.pth")
    cache = tmp_path / "cache"
    path = ensure_weights(good, cache)
    assert path == cache / "good.pth" and path.read_bytes() == payload
    (tmp_path / "site" / "weights.pth").unlink()  # a second call needs no server: the file is cached
    assert ensure_weights(good, cache) == path

    bad = replace(good, url=url, sha256="0" * 64, filename="bad.pth")
    with pytest.raises(MetricUnavailable, match="could not be downloaded"):
        ensure_weights(bad, cache)  # the file is gone from the server now
    (tmp_path / "site" / "weights.pth").write_bytes(payload)
    with pytest.raises(MetricUnavailable, match="SHA-256 mismatch"):
        ensure_weights(bad, cache)
    assert sorted(p.name for p in cache.iterdir()) == ["good.pth"]  # nothing half-written or unverified left


def test_a_cached_file_with_the_wrong_hash_is_refused_and_offline_never_downloads(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(MetricUnavailable, match=f"{OFFLINE_ENV} forbids") as refused:
        ensure_weights(FID_INCEPTION, cache, environ={OFFLINE_ENV: "1"})
    assert FID_INCEPTION.url in str(refused.value) and str(cache / FID_INCEPTION.filename) in str(refused.value)
    cache.mkdir()
    (cache / FID_INCEPTION.filename).write_bytes(b"not the inception weights")
    with pytest.raises(MetricUnavailable, match="delete it"):
        ensure_weights(FID_INCEPTION, cache, environ={OFFLINE_ENV: "1"})
