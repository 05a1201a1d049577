"""The networks: a tag encoder, a U-Net generator conditioned by FiLM, and a projection critic.

Everything sees [-1, 1]: L as one channel, a and b as two. Sizes come from ``base_channels`` and ``depth``;
any square input whose side is divisible by ``2**depth`` works (32, 64, 224, …).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_SLOPE = 0.2
MAX_WIDTH_MULTIPLIER = 8


def widths(base_channels: int, depth: int) -> list[int]:
    """Channels per resolution level, doubling as the resolution halves, capped at 8× the base."""
    return [base_channels * min(2**level, MAX_WIDTH_MULTIPLIER) for level in range(depth + 1)]


@torch.compiler.disable
def eager_lookup(embed: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """``embed(tokens)`` outside torch.compile: a compiled backward adds the rows of repeated tokens with atomic
    adds, in an order that changes from run to run; eager's order is fixed, so compiled runs resume bit-exactly."""
    return embed(tokens)


class TagEncoder(nn.Module):
    """Dense token ids ``(B, width)`` (20 o200k tokens or 8 words) → one condition vector ``(B, token_dim)``.

    Pads (id 0) are masked out of the pool, so their embedding never matters; a row of pads only (a photo
    without tags) gets a learned "no tags" vector instead. ``pool="attention"`` weighs tokens by a learned
    query, starting out as the mean.
    """

    def __init__(self, vocab_size: int, token_dim: int, pool: str = "attention") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, token_dim, padding_idx=0)
        self.no_tags = nn.Parameter(torch.randn(token_dim))
        self.pool = pool
        if pool == "attention":
            self.key = nn.Linear(token_dim, token_dim, bias=False)
            self.query = nn.Parameter(torch.zeros(token_dim))
        self.mlp = nn.Sequential(nn.Linear(token_dim, token_dim), nn.SiLU(), nn.Linear(token_dim, token_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != 0
        embedded = eager_lookup(self.embed, tokens).masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.pool == "attention":
            scores = self.key(embedded) @ self.query / math.sqrt(embedded.shape[-1])
            weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=1)
        else:
            weights = mask / mask.sum(dim=1, keepdim=True).clamp(min=1)
        pooled = (weights.unsqueeze(-1).to(embedded.dtype) * embedded).sum(dim=1)
        pooled = torch.where(mask.any(dim=1, keepdim=True), pooled, self.no_tags.to(pooled.dtype))
        return self.mlp(pooled)


class FiLM(nn.Module):
    """Per-channel scale and shift from the condition; zero-initialised, so it starts as the identity."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm rather than BatchNorm: no batch statistics, so several processes and eval behave like training."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class GeneratorBlock(nn.Module):
    """Two 3×3 convolutions with GroupNorm; FiLM modulates the second one when ``cond_dim`` is given."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.film = FiLM(cond_dim, out_channels) if cond_dim is not None else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(self.conv1(x)), NEGATIVE_SLOPE)
        x = self.norm2(self.conv2(x))
        if self.film is not None:
            x = self.film(x, cond)
        return F.leaky_relu(x, NEGATIVE_SLOPE)


class Generator(nn.Module):
    """U-Net from L ``(B, 1, H, W)`` and tags to ab ``(B, 2, H, W)`` in [-1, 1].

    The encoder sees only L; the tags enter at the bottleneck and in every decoder block, where colour is
    decided. The output layer starts at zero: an untrained generator predicts grey, not random colour.
    """

    def __init__(
        self, vocab_size: int, base_channels: int = 32, depth: int = 4, token_dim: int = 128, pool: str = "attention"
    ) -> None:
        super().__init__()
        width = widths(base_channels, depth)
        self.tags = TagEncoder(vocab_size, token_dim, pool)
        self.stem = GeneratorBlock(1, width[0])
        self.down = nn.ModuleList(GeneratorBlock(width[i], width[i + 1]) for i in range(depth))
        self.middle = GeneratorBlock(width[depth], width[depth], token_dim)
        self.up = nn.ModuleList(
            GeneratorBlock(width[i + 1] + width[i], width[i], token_dim) for i in reversed(range(depth))
        )
        self.out = nn.Conv2d(width[0], 2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, lightness: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        cond = self.tags(tokens)
        x = self.stem(lightness)
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(F.avg_pool2d(x, 2))
        x = self.middle(x, cond)
        for block in self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1), cond)
        return torch.tanh(self.out(x))


class CriticBlock(nn.Module):
    """Residual downsampling block without normalisation (BatchNorm would break the gradient penalty)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), NEGATIVE_SLOPE)
        h = F.avg_pool2d(F.leaky_relu(self.conv2(h), NEGATIVE_SLOPE), 2)
        return (h + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2)


class Critic(nn.Module):
    """Scores ab given L and tags, one number per sample; conditional by projection.

    ``score = linear(h) + <embed(tags), h>`` with ``h`` the pooled features: the tags decide which
    directions of ``h`` count as realistic, so colours that contradict the tags score low.
    """

    def __init__(
        self, vocab_size: int, base_channels: int = 32, depth: int = 4, token_dim: int = 128, pool: str = "attention"
    ) -> None:
        super().__init__()
        width = widths(base_channels, depth)
        self.tags = TagEncoder(vocab_size, token_dim, pool)
        self.stem = nn.Conv2d(3, width[0], 3, padding=1)
        self.blocks = nn.ModuleList(CriticBlock(width[i], width[i + 1]) for i in range(depth))
        self.linear = nn.Linear(width[depth], 1)
        self.embed = nn.Linear(token_dim, width[depth], bias=False)

    def forward(self, ab: torch.Tensor, lightness: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.stem(torch.cat([lightness, ab], dim=1)), NEGATIVE_SLOPE)
        for block in self.blocks:
            h = block(h)
        h = F.leaky_relu(h, NEGATIVE_SLOPE).mean(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(self.tags(tokens)) * h).sum(dim=1)
