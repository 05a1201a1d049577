"""Colorize with a trained run: the EMA generator of a checkpoint, on uint8 arrays in the data contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import CheckpointError, architecture, load_checkpoint, saved_index
from model.data import TokenIndex
from model.networks import Generator
from pipeline.core.color import l_to_unit, unit_to_ab


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


class Colorizer:
    """Predicts encoded a, b for encoded L and raw tag tokens, at any input size."""

    def __init__(
        self, generator: Generator, index: TokenIndex, image_size: int, device: torch.device, step: int | None = None
    ) -> None:
        self.generator = generator.eval().requires_grad_(False).to(device)
        self.index = index
        self.image_size = image_size
        self.device = device
        self.step = step
        """The training step of the checkpoint the weights come from, where they come from one."""

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "cpu") -> Colorizer:
        """The EMA generator, token index and training resolution of a checkpoint."""
        payload = load_checkpoint(Path(path))
        index = saved_index(payload)
        generator = Generator(index.size, **architecture(payload["config"]))
        try:
            generator.load_state_dict(payload["ema"])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: the EMA weights do not fit the saved config: {error}") from error
        return cls(generator, index, int(payload["config"]["image_size"]), torch.device(device), payload["step"])

    @torch.no_grad()
    def predict_ab(self, l_u8: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """L ``(B, H, W)`` uint8 and raw tag ids ``(B, width)`` (20 o200k tokens, or 8 words) → encoded a, b
        ``(B, H, W, 2)`` uint8.

        The net runs at its training size; other sizes are resized there and back.
        """
        if l_u8.ndim != 3 or l_u8.dtype != np.uint8:
            raise ValueError(f"l_u8 must be uint8 (B, H, W), got {l_u8.dtype} {l_u8.shape}")
        if tokens.shape != (len(l_u8), self.index.width):
            raise ValueError(f"tokens must have shape ({len(l_u8)}, {self.index.width}), got {tokens.shape}")
        height, width = l_u8.shape[1:]
        lightness = torch.from_numpy(l_to_unit(l_u8)).unsqueeze(1).to(self.device)
        dense = torch.from_numpy(self.index.dense(tokens)).to(self.device)
        ab = self.generator(_resize(lightness, self.image_size, self.image_size), dense)
        ab = _resize(ab, height, width).clamp(-1.0, 1.0)
        return unit_to_ab(ab.permute(0, 2, 3, 1).float().cpu().numpy())
