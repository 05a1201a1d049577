"""The GPU presets' code path, rehearsed on the CPU: bf16 autocast, channels_last, fused Adam and torch.compile
train, resume exactly and evaluate without a GPU (``gpu_path_on_cpu``); the CPU's own path is unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import model.train as train_module
from model.checkpoint import load_checkpoint
from model.config import TrainConfig, load_train_config
from model.evaluation import evaluate_run
from model.train import train
from pipeline.core.layout import DatasetPaths
from tests.helpers import TRAIN_CONFIGS, Killed, sample_dataset, tensors

ONE_GPU = TRAIN_CONFIGS / "mirflickr1m_1gpu.yaml"
TINY = ["image_size=32", "batch_size=4", "base_channels=8", "depth=2", "token_dim=16", "min_token_count=1"]
"""The 1-GPU preset at a size a CPU trains in seconds; every other setting is the preset's."""


@pytest.fixture(scope="module")
def sample(vocabulary_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shards of 24 of the sample's scenes at 32²: training shards 0 and 1, held-out 2."""
    return sample_dataset(tmp_path_factory.mktemp("sample"), vocabulary_dir, n_images=72, shard_size=24, size=32)


def one_gpu_preset(sample: Path, runs: Path, *overrides: str) -> TrainConfig:
    """``mirflickr1m_1gpu`` on the CPU, taking the GPU's code path, with its compile switched as given."""
    common = [f"data_root={sample}", f"runs_dir={runs}", *TINY, "device=cpu", "gpu_path_on_cpu=true"]
    return load_train_config(ONE_GPU, [*common, "snapshot_every=0", "tensorboard=false", *overrides])


def forward_dtypes(module: torch.nn.Module) -> list[torch.dtype]:
    """Records the dtype of every convolution's output in ``module`` from now on."""
    seen: list[torch.dtype] = []
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(lambda _, __, out: seen.append(out.dtype))
    return seen


def test_the_gpu_path_on_the_cpu_is_bf16_channels_last_and_fused_and_off_by_default(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded: dict[str, Any] = {}
    new_state = train_module.new_state

    def watched(config: TrainConfig, index: Any, device: torch.device) -> Any:
        state = new_state(config, index, device)
        recorded[config.run_name] = (state, forward_dtypes(state.generator))
        return state

    monkeypatch.setattr(train_module, "new_state", watched)
    gpu = one_gpu_preset(sample, tmp_path, "run_name=gpu", "compile=false", "max_steps=2")
    assert (gpu.bf16, gpu.ema_decay, gpu.device) == (True, 0.999, "cpu")
    train(gpu)
    cpu = dataclasses.replace(gpu, run_name="cpu", gpu_path_on_cpu=False)
    train(cpu)
    for name, dtype, memory_format, fused in (
        ("gpu", torch.bfloat16, torch.channels_last, True),
        ("cpu", torch.float32, torch.contiguous_format, None),
    ):
        state, dtypes = recorded[name]
        assert dtypes and set(dtypes) == {dtype}, name
        convolutions = [layer.weight for layer in state.generator.modules() if isinstance(layer, torch.nn.Conv2d)]
        assert all(weight.is_contiguous(memory_format=memory_format) for weight in convolutions), name
        assert state.opt_g.defaults["fused"] is fused and state.opt_d.defaults["fused"] is fused, name


@pytest.mark.slow
# torch.compile's own start-up calls torch.jit.script_method, which torch itself deprecates; nothing of ours does.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_the_one_gpu_preset_compiled_trains_a_plan_resumes_exactly_and_evaluates_on_the_cpu(
    sample: Path, tmp_path: Path
) -> None:
    """compile, bf16, channels_last, fused Adam and the EMA of ``mirflickr1m_1gpu``, plus the lazy penalty and a
    two-stage plan: killed inside stage 2 and resumed, it ends with the uninterrupted run's weights."""
    plan = "plan={subsets: 2, stages: 2, epochs_per_stage: 2}"
    full = one_gpu_preset(sample, tmp_path, "run_name=full", plan, "gp_every=2", "log_every=1", "ckpt_every=1")
    assert (full.compile, full.gp_every, full.resume) == (True, 2, True)
    whole = train(full)
    stages = whole.plan_progress
    assert whole.step == 4 and stages == "stage 2 of 2 (subset 2), done"

    def kill_at_step_3(row: dict[str, Any]) -> None:
        if row["step"] == 3:
            raise Killed

    killed = dataclasses.replace(full, run_name="killed")
    with pytest.raises(Killed):
        train(killed, report=kill_at_step_3)
    assert load_checkpoint(tmp_path / "killed" / "latest.pt")["step"] == 2
    resumed = train(killed)
    keys = ("generator", "critic", "ema", "opt_g", "opt_d", "rng", "token_index")
    expected = tensors(load_checkpoint(whole.checkpoint), keys)
    actual = tensors(load_checkpoint(resumed.checkpoint), keys)
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name

    result = evaluate_run(DatasetPaths(sample), resumed.run_dir, n_images=16, out_dir=tmp_path / "evaluation")
    assert result.figures["ab_error/tags"] > 0 and result.collage_path.is_file()
