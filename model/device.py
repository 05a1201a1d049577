"""Which torch device a setting names: the one resolver of training, evaluation and colouring."""

from __future__ import annotations

import torch

from pipeline.core.config import ConfigError


def resolve_device(setting: str, local_rank: int = 0) -> torch.device:
    """``auto`` (this process's GPU when torch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    A bare ``cuda`` is the GPU of ``local_rank``, so every process of a torchrun launch takes its own. A GPU that
    this torch cannot use is refused with what to do, naming the setting.
    """
    if setting == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"device: {setting!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {setting!r} is not a device (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {setting} requested but this torch sees no GPU"
            " (install a CUDA build of torch, or use auto or cpu)"
        )
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device
