"""Training over several processes (torchrun: GPUs of one machine, or machines meeting through c10d): where this
process stands, and what the ranks exchange.

Gradients are averaged by hand, one flat all-reduce a step, not by ``DistributedDataParallel``: DDP's hooks
follow only gradients that land in ``.grad`` through an ordinary backward, not the double backward of the
gradient penalty (``autograd.grad`` with ``create_graph``), so stylegan2-ada averages by hand too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from model.checkpoint import TrainState, rng_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun launch; one process when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """torchrun's contract: ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in the environment."""
    if "RANK" not in os.environ:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every rank rank 0's weights (one flat broadcast, whatever the tensors' memory format)."""
    tensors = list(module.state_dict().values())
    flat = torch.cat([tensor.flatten() for tensor in tensors])
    dist.broadcast(flat, src=0)
    for tensor, value in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        tensor.copy_(value.view_as(tensor))


def all_reduce_gradients(module: torch.nn.Module, world_size: int) -> None:
    """Average gradients over ranks with one flat all-reduce.

    Done by hand as in stylegan2-ada: DDP's hooks only follow gradients that land in ``.grad``, not the
    double backward of the gradient penalty.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([param.grad.flatten() for param in params])
    dist.all_reduce(flat)
    flat /= world_size
    for param, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        param.grad.copy_(grad.view_as(param))


def check_ranks_agree(state: TrainState, ddp: Distributed) -> None:
    """Every rank must end with rank 0's weights: averaged gradients keep them equal, and a rank that drifted
    (a launcher mix-up, a non-deterministic kernel on one machine) would make the checkpoint one rank's alone."""
    agree = True
    for module in (state.generator, state.critic, state.ema):
        for tensor in module.state_dict().values():
            reference = tensor.detach().clone()
            dist.broadcast(reference, src=0)
            agree &= torch.equal(reference, tensor)
    flag = torch.tensor([1 if agree else 0], device=next(state.generator.parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if not flag.item():
        raise RuntimeError(f"rank {ddp.rank}: the weights of the {ddp.world_size} processes differ after training")
    logger.info("rank %d of %d: weights equal to rank 0's", ddp.rank, ddp.world_size)


def gather_rng_states(ddp: Distributed) -> list[dict[str, Any]]:
    """Every rank's RNG states, so each rank resumes its own random stream."""
    if not ddp.enabled:
        return [rng_state()]
    states: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(states, rng_state())
    return states


def rank0_flags(flags: Sequence[bool], ddp: Distributed, device: torch.device) -> list[bool]:
    """Rank 0's ``flags`` on every rank: decisions every rank must take alike (to stop, to checkpoint)."""
    if not ddp.enabled:
        return list(flags)
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.broadcast(values, src=0)
    return [bool(value) for value in values.tolist()]


def time_is_up(max_seconds: float | None, started: float, ddp: Distributed, device: torch.device) -> bool:
    """Whether the time budget is spent, as rank 0's clock says, so that every rank stops at the same step."""
    if max_seconds is None:
        return False
    return rank0_flags([time.perf_counter() - started >= max_seconds], ddp, device)[0]


def mean_over_ranks(stats: dict[str, torch.Tensor], ddp: Distributed) -> dict[str, float]:
    """Logged losses averaged over every rank's batch, so a multi-GPU run logs what it trains on."""
    values = torch.stack([value.detach().float() for value in stats.values()])
    if ddp.enabled:
        dist.all_reduce(values)
        values /= ddp.world_size
    return dict(zip(stats, values.tolist(), strict=True))
