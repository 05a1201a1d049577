"""WGAN-GP losses for the conditional colorizer, plus an L1 term that makes the tags learnable quickly.

The critic estimates the Wasserstein distance between real and generated ab given L and tags; the gradient
penalty keeps it 1-Lipschitz, and a small drift term keeps its scores from wandering away from zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from model.data import Batch


@dataclass(frozen=True)
class LossWeights:
    gp_lambda: float = 10.0
    """The penalty's weight per update it is applied on (``gp_every`` × the configured λ when lazy)."""
    drift: float = 1e-3
    l1_weight: float = 100.0


def gradient_penalty(
    critic: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    cond: Sequence[torch.Tensor],
    weight: float = 10.0,
) -> torch.Tensor:
    """``weight · mean((‖∇ₓ critic(x, *cond)‖₂ − 1)²)`` at ``x = ε·real + (1 − ε)·fake``, ``ε ~ U(0, 1)``.

    One ``ε`` per sample, drawn as ``torch.rand(B, 1, …)``. Computed in fp32 with autocast off: squared
    gradient norms in bf16 lose the precision the penalty is about.
    """
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device)
    x = torch.lerp(fake.detach().float(), real.detach().float(), eps).requires_grad_(True)
    cond = [c.float() if c.is_floating_point() else c for c in cond]
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = critic(x, *cond)
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return weight * (grad.flatten(1).norm(dim=1) - 1).square().mean()


def critic_loss(
    critic: Callable[..., torch.Tensor],
    penalty_critic: Callable[..., torch.Tensor],
    fake_ab: torch.Tensor,
    batch: Batch,
    weights: LossWeights,
    penalise: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``D(fake) − D(real) + GP + drift · D(real)²`` and its parts for logging; without ``penalise`` (the
    updates a lazy penalty skips) no GP term and no ``gp`` entry.

    ``penalty_critic`` is the same network without ``torch.compile``, which cannot differentiate twice.
    """
    d_real = critic(batch.ab, batch.lightness, batch.tokens).float()
    d_fake = critic(fake_ab.detach(), batch.lightness, batch.tokens).float()
    wasserstein = d_real.mean() - d_fake.mean()
    loss = -wasserstein + weights.drift * d_real.square().mean()
    stats = {"wasserstein": wasserstein.detach()}
    if penalise:
        gp = gradient_penalty(penalty_critic, batch.ab, fake_ab, (batch.lightness, batch.tokens), weights.gp_lambda)
        loss = loss + gp
        stats["gp"] = gp.detach()
    return loss, {"critic_loss": loss.detach(), **stats}


def generator_loss(
    critic: Callable[..., torch.Tensor],
    fake_ab: torch.Tensor,
    batch: Batch,
    weights: LossWeights,
    with_critic: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``−D(fake) + l1_weight · |fake − real|`` and its parts for logging; the L1 term alone without
    ``with_critic`` (the L1 warm-up)."""
    l1 = (fake_ab.float() - batch.ab.float()).abs().mean()
    loss = weights.l1_weight * l1
    if not with_critic:
        return loss, {"generator_loss": loss.detach(), "l1": l1.detach()}
    adversarial = -critic(fake_ab, batch.lightness, batch.tokens).float().mean()
    loss = adversarial + loss
    return loss, {"generator_loss": loss.detach(), "adversarial": adversarial.detach(), "l1": l1.detach()}
