"""FID and LPIPS, the field's learned metrics, with their pretrained weights fetched once and verified.

FID compares the Gaussians of Inception-v3 pool features (2,048 values per photo) of generated and original
photos. FIDs from different Inception weights do not compare, so there is exactly one network here: the
TensorFlow FID Inception (graph of 2015-12-05) as torch-fidelity ports it, ``weights-inception-2015-12-05-
6726825d.pth`` — the same file as pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (equal SHA-256), so
figures compare with papers that used either. torch-fidelity also resizes to 299² the way TensorFlow did.

The Gaussian statistics are streamed here (:class:`GaussianMoments`), so the originals' features are computed
once and shared by every generated set (three tag conditions and two baselines), and the Fréchet distance is
the eigenvalue form torchmetrics uses. LPIPS is torchmetrics' (AlexNet backbone, the authors' linear
layers v0.1).

Weights are looked up in ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``), where torch
itself caches them; missing there, they are downloaded once and kept only if their SHA-256 matches.
``TAGCOLOR_OFFLINE=1`` forbids the download. Whatever is missing (weights offline, torch-fidelity or
torchvision not installed), the metric is reported as unavailable with the reason and what to do; no other
network is ever put in its place.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.files import atomic_path

OFFLINE_ENV = "TAGCOLOR_OFFLINE"
DOWNLOAD_TIMEOUT_S = 30
CHUNK = 1 << 20


@dataclass(frozen=True)
class PretrainedWeights:
    """A weights file by name, where it is published and the SHA-256 it must have (a prefix, where only the
    prefix is published, as in torchvision's file names)."""

    description: str
    filename: str
    url: str
    sha256: str


FID_INCEPTION = PretrainedWeights(
    description="FID Inception-v3 (TensorFlow graph 2015-12-05, torch-fidelity port)",
    filename="weights-inception-2015-12-05-6726825d.pth",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
)
LPIPS_ALEXNET = PretrainedWeights(
    description="AlexNet ImageNet weights (torchvision IMAGENET1K_V1), the LPIPS backbone",
    filename="alexnet-owt-7be5be79.pth",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    sha256="7be5be79",
)


class MetricUnavailable(RuntimeError):
    """A learned metric cannot be computed here; the message says why and what to do."""


def weights_dir() -> Path:
    """torch's own cache of downloaded weights, so a file torch or torchvision fetched before is found."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _how_to_provide(weights: PretrainedWeights, target: Path) -> str:
    return f"download {weights.url} on a machine with internet and copy it to {target}"


def ensure_weights(
    weights: PretrainedWeights, directory: Path | None = None, environ: Mapping[str, str] = os.environ
) -> Path:
    """The verified weights file in ``directory`` (default :func:`weights_dir`), downloading it once if needed.

    A cached file with the wrong hash is never used; a download is written to a temporary file and kept only
    when its hash matches. Raises :class:`MetricUnavailable` naming the file, the URL and the place to put it.
    """
    target = (directory or weights_dir()) / weights.filename
    if target.is_file():
        if sha256_of(target).startswith(weights.sha256):
            return target
        raise MetricUnavailable(
            f"{target} is not {weights.description} (its SHA-256 is not {weights.sha256}); delete it, then "
            + _how_to_provide(weights, target)
        )
    if environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise MetricUnavailable(
            f"{weights.description} is not in the cache and {OFFLINE_ENV} forbids downloading it: "
            + _how_to_provide(weights, target)
        )
    try:
        with (
            atomic_path(target, suffix=".part") as tmp,
            urllib.request.urlopen(weights.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            with tmp.open("wb") as file:
                while chunk := response.read(CHUNK):
                    file.write(chunk)
            if not sha256_of(tmp).startswith(weights.sha256):
                raise MetricUnavailable(f"{weights.url} did not deliver {weights.description}: SHA-256 mismatch")
    except (urllib.error.URLError, OSError) as error:
        raise MetricUnavailable(
            f"{weights.description} could not be downloaded ({error}): " + _how_to_provide(weights, target)
        ) from error
    return target


FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
"""uint8 RGB ``(B, 3, H, W)`` of any size → features ``(B, D)``."""


def inception_features(device: str = "cpu") -> FeatureExtractor:
    """The FID Inception's 2,048 pool features of uint8 RGB photos; :class:`MetricUnavailable` when it cannot
    be built here."""
    path = ensure_weights(FID_INCEPTION)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as error:  # torch-fidelity imports torchvision, which fails beside a mismatched torch
        raise MetricUnavailable(
            f"torch-fidelity cannot be imported ({type(error).__name__}: {error}): "
            "pip install -e '.[metrics]' with a torchvision that matches your torch"
        ) from error
    network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    network = network.eval().requires_grad_(False).to(device)

    def extract(rgb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            (features,) = network(rgb.to(device))
        return features.double().cpu()

    return extract


LpipsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Two uint8 RGB batches ``(B, 3, H, W)`` → LPIPS per image ``(B,)``."""


def lpips_distance(device: str = "cpu") -> LpipsModel:
    """LPIPS (AlexNet, v0.1 linear layers) per image; :class:`MetricUnavailable` when it cannot be built."""
    ensure_weights(LPIPS_ALEXNET)  # torchvision then finds it in its cache instead of downloading it
    try:
        from torchmetrics.functional.image.lpips import _NoTrainLpips
    except Exception as error:
        raise MetricUnavailable(
            f"torchmetrics' LPIPS cannot be imported ({type(error).__name__}: {error}): "
            "pip install -e '.[metrics]' with a torchvision that matches your torch"
        ) from error
    network = _NoTrainLpips(net="alex").eval().requires_grad_(False).to(device)

    def distance(generated: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        scale = 2.0 / 255.0  # LPIPS expects [-1, 1]
        with torch.no_grad():
            value = network(generated.to(device).float() * scale - 1.0, original.to(device).float() * scale - 1.0)
        return value.flatten().double().cpu()

    return distance


class GaussianMoments:
    """Running mean and covariance of feature rows, in float64, from sums; batches may come in any order."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def add(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.total):
            raise ValueError(f"expected features (B, {len(self.total)}), got {features.shape}")
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """The unbiased sample covariance (as torchmetrics and pytorch-fid compute it)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.count}")
        mean = self.mean
        return (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)


def frechet_distance(first: GaussianMoments, second: GaussianMoments) -> float:
    """``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½`` of two feature Gaussians.

    ``tr (Σ₁Σ₂)^½`` is the sum of the square roots of the eigenvalues of ``Σ₁Σ₂``, which are real and
    non-negative in exact arithmetic; tiny negative or imaginary parts from rounding are dropped.
    """
    sigma1, sigma2 = first.covariance, second.covariance
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    root_trace = float(np.sqrt(np.clip(eigenvalues.real, 0.0, None)).sum())
    difference = first.mean - second.mean
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2.0 * root_trace)
