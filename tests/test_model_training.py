"""Training on tiny datasets written by the tests: config checks, data order, checkpoints, resume, DDP,
the Pipes edge, and whether the tags carry colour information."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from dagster_pipes import encode_param
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import model.checkpoint as checkpoint_module
import model.losses as losses
import model.train as train_module
from model.checkpoint import CheckpointError, architecture, load_checkpoint
from model.config import (
    TrainConfig,
    TrainConfigError,
    config_from_dict,
    load_train_config,
    read_train_config,
    validate_train_config,
)
from model.data import (
    BatchLoader,
    HostBatch,
    Position,
    TokenIndex,
    TrainingSet,
    checkpoint_ids,
    lab_to_unit,
    tag_ids,
    to_device,
)
from model.evaluation import evaluate_run, grey_problems
from model.inference import Colorizer
from model.launch import torchrun_command
from model.train import train
from pipeline.core.color import colorfulness
from pipeline.core.contract import PAD_ID, SHARD_NAME
from pipeline.core.layout import DatasetPaths, Split, read_layout
from tests.helpers import (
    TRAIN_CONFIGS,
    Killed,
    contract_dataset,
    free_port,
    sample_dataset,
    tensors,
    tiny_config,
)

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = 24
N_IMAGES = 3 * SHARD_SIZE
SIZE = 32
INVALID = (3, 30)
GRAYSCALE = (5, 31)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shards of 24 random 32×32 photos whose L channel spells the image index."""
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3), dtype=np.uint8)
    lab[..., 0] = np.arange(N_IMAGES, dtype=np.uint8)[:, None, None]
    tokens = np.full((N_IMAGES, 20), PAD_ID, dtype=np.int32)
    for i in range(N_IMAGES):
        tokens[i, : i % 7] = rng.integers(0, 2000, i % 7)
    valid = np.ones(N_IMAGES, bool)
    valid[list(INVALID)] = False
    grayscale = np.zeros(N_IMAGES, bool)
    grayscale[list(GRAYSCALE)] = True
    return contract_dataset(tmp_path_factory.mktemp("data"), lab, tokens, SHARD_SIZE, valid, grayscale)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["batch_sise=4"], "batch_sise"),
        (["batch_size=0"], "batch_size"),
        (["lr=-0.001"], "lr"),
        (["lr=fast"], "lr"),
        (["betas=[0.5]"], "betas"),
        (["ema_decay=1.0"], "ema_decay"),
        (["pool=max"], "pool"),
        (["device=tpu"], "device"),
        (["image_size=36", "depth=3"], "image_size"),
        (["shards=[1]"], "shards"),
        (["shards=[7]"], "shards"),
        (["shards=[0, 2]"], "holdout_shard"),
        (["holdout_shard=9"], "holdout_shard"),
        (["init_from=nowhere.pt"], "init_from"),
        (["run_name=../escape"], "run_name"),
        (["data_root=/nonexistent"], "data_root"),
        (["no_equals_sign"], "no_equals_sign"),
        (["snapshot_every=-1"], "snapshot_every"),
        (["tensorboard=maybe"], "tensorboard"),
        (["plan={stages: 0}"], "plan.stages"),
        (["plan={epochs_per_stage: 0}"], "plan.epochs_per_stage"),
        (["plan={subsets: [[0, 2]]}"], "plan.subsets"),
        (["plan={subsets: [[0], [7]]}"], "plan.subsets"),
        (["plan={subsets: 3}"], "plan.subsets"),
        (["plan={subsets: [[0], []]}"], "plan.subsets"),
        (["plan={stagez: 2}"], "plan"),
        (["stage=1"], "stage"),
        (["nnodes=2"], "rdzv_endpoint"),
        (["nnodes=0"], "nnodes"),
        (["plan={stages: 2}", "stage=3"], "stage"),
    ],
)
def test_config_errors_name_the_key(dataset: Path, tmp_path: Path, overrides: list[str], key: str) -> None:
    partial = tmp_path / "partial"
    (partial / "shards").mkdir(parents=True)
    for name in ("tokens.npy", "images.parquet"):
        (partial / name).symlink_to(dataset / name)
    for shard in (0, 2):
        (partial / "shards" / SHARD_NAME.format(shard=shard)).symlink_to(
            dataset / "shards" / SHARD_NAME.format(shard=shard)
        )
    root = partial if overrides == ["shards=[1]"] else dataset
    with pytest.raises(TrainConfigError) as error:
        load_train_config(None, [f"data_root={root}", *overrides])
    assert str(error.value).startswith(f"{key}:")


def test_config_from_yaml_with_overrides_fills_in_the_split(dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"data_root": "elsewhere", "batch_size": 8, "lr": 1, "max_steps": 3}))
    overrides = [f"data_root={dataset}", "run_name=2024", "betas=[0.5, 0.99]", "lr=2e-4", "max_steps=null"]
    config = load_train_config(path, overrides)
    assert (config.batch_size, config.lr, config.betas, config.run_name) == (8, 2e-4, [0.5, 0.99], "2024")
    assert config.max_steps is None
    assert (config.holdout_shard, config.shards) == (2, [0, 1])
    assert config.run_dir == dataset / "runs" / "2024"
    path.write_text("drift: 1e-3\nbetas: [0, 9e-1]\n")
    plain = load_train_config(path, [f"data_root={dataset}"])
    assert (plain.drift, plain.betas) == (1e-3, [0.0, 0.9]), "floats YAML reads as text without a dot"


@pytest.mark.parametrize("path", sorted(TRAIN_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_train_configs_are_valid(path: Path, dataset: Path) -> None:
    values = yaml.safe_load(path.read_text())
    config = config_from_dict(values)
    assert config.image_size % 2**config.depth == 0
    if config.device == "cpu":
        assert load_train_config(path, [f"data_root={dataset}"]).shards == [0, 1]


SHARING_WEIGHTS = (
    "mirflickr1m_1gpu", "mirflickr1m_8gpu", "mirflickr1m_seed_plan", "mirflickr25k_1gpu", "folder_finetune"
)  # fmt: skip
"""The GPU presets whose runs start from each other's weights (``init_from``), as their comments say."""


def test_presets_that_share_weights_share_their_architecture() -> None:
    configs = {name: read_train_config(TRAIN_CONFIGS / f"{name}.yaml") for name in SHARING_WEIGHTS}
    shapes = {name: architecture(c.to_dict()) | {"tokenizer": c.tokenizer} for name, c in configs.items()}
    assert len({tuple(sorted(shape.items())) for shape in shapes.values()}) == 1, shapes


def test_a_recorded_split_chooses_the_held_out_shard(dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "grown"
    shutil.copytree(dataset, root)
    Split(shard_size=SHARD_SIZE, holdout_shard=0).write(DatasetPaths(root))
    config = validate_train_config(tiny_config(root, tmp_path))
    assert (config.holdout_shard, config.shards) == (0, [1, 2]), "not the last shard: the one the dataset fixed"
    assert validate_train_config(tiny_config(root, tmp_path, holdout_shard=2)).shards == [0, 1], "a setting wins"
    DatasetPaths(root).split.write_text("{not json")
    with pytest.raises(TrainConfigError, match=r"data_root: .*split\.json: not a split record"):
        validate_train_config(tiny_config(root, tmp_path))


def test_loader_skips_invalid_grayscale_and_holdout_and_splits_ranks(dataset: Path, tmp_path: Path) -> None:
    layout = read_layout(dataset)
    train_set = TrainingSet(layout, [0, 1], skip_grayscale=True)
    eligible = set(range(2 * SHARD_SIZE)) - set(INVALID) - set(GRAYSCALE)
    assert len(train_set) == len(eligible)
    index = TokenIndex(np.arange(2000))
    seen: dict[int, list[set[int]]] = {0: [], 1: []}
    for rank in (0, 1):
        with BatchLoader(train_set, index, batch_size=4, seed=3, rank=rank, world_size=2) as loader:
            assert loader.batches_per_epoch == len(eligible) // 8
            for epoch in range(2):
                ids: set[int] = set()
                for _ in range(loader.batches_per_epoch):
                    batch = next(loader)
                    ids |= set(batch.lab[:, 0, 0, 0].tolist())
                seen[rank].append(ids)
                assert batch.position == Position(epoch + 1, 0)
    for epoch in range(2):
        assert not seen[0][epoch] & seen[1][epoch]
        assert seen[0][epoch] | seen[1][epoch] <= eligible
        assert len(seen[0][epoch] | seen[1][epoch]) == 8 * (len(eligible) // 8)
    assert seen[0][0] != seen[0][1]


def test_loader_resumes_exactly_from_a_position(dataset: Path) -> None:
    train_set = TrainingSet(read_layout(dataset), [0, 1], skip_grayscale=False)
    index = TokenIndex.build(np.load(dataset / "tokens.npy"))
    with BatchLoader(train_set, index, batch_size=4, seed=1) as loader:
        stream = [next(loader) for _ in range(25)]
    with BatchLoader(train_set, index, batch_size=4, seed=1, start=stream[13].position) as loader:
        resumed = [next(loader) for _ in range(11)]
    for expected, actual in zip(stream[14:], resumed, strict=True):
        assert torch.equal(expected.lab, actual.lab)
        assert torch.equal(expected.flip, actual.flip)
        assert torch.equal(expected.tokens, actual.tokens)
        assert expected.position == actual.position
    tokens = np.load(dataset / "tokens.npy")
    first = stream[0]
    rows = first.lab[:, 0, 0, 0].numpy()
    assert np.array_equal(first.tokens.numpy(), index.dense(tokens[rows]))


def test_to_device_flips_scales_and_resizes() -> None:
    lab = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    lab[:, :, 0, 0] = 255
    lab[..., 1] = 128
    lab[..., 2] = 255
    host = HostBatch(
        lab=lab, flip=torch.tensor([False, True]), tokens=torch.zeros(2, 20, dtype=torch.long), position=Position()
    )
    batch = to_device(host, torch.device("cpu"), image_size=4)
    assert batch.lightness[0, 0, :, 0].tolist() == [1.0] * 4
    assert batch.lightness[1, 0, :, 3].tolist() == [1.0] * 4
    assert batch.lightness[1, 0, :, 0].tolist() == [-1.0] * 4
    torch.testing.assert_close(batch.ab[:, 0], torch.zeros(2, 4, 4))
    torch.testing.assert_close(batch.ab[:, 1], torch.full((2, 4, 4), 127 / 127.0))
    small = to_device(host, torch.device("cpu"), image_size=2)
    assert small.lightness.shape == (2, 1, 2, 2)
    assert small.ab.shape == (2, 2, 2, 2)


def test_to_device_cuts_each_photo_to_its_box() -> None:
    lab = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3)
    boxes = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])  # the top-right quadrant; the whole photo
    host = HostBatch(
        lab=lab, flip=torch.tensor([False, False]), tokens=torch.zeros(2, 20, dtype=torch.long), position=Position()
    )
    cropped = replace(host, crop=boxes)
    whole = to_device(host, torch.device("cpu"), image_size=2)
    batch = to_device(cropped, torch.device("cpu"), image_size=2)
    quadrant = lab_to_unit(lab[:1].permute(0, 3, 1, 2).float())[0][0, 0, :2, 2:]  # 2×2 to 2×2: no resampling
    torch.testing.assert_close(batch.lightness[0, 0], quadrant)
    torch.testing.assert_close(batch.lightness[1], whole.lightness[1])
    assert not torch.equal(batch.lightness[0], whole.lightness[0])


@pytest.fixture(scope="module")
def trained_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step run; its ``latest.pt``."""
    result = train(tiny_config(dataset, tmp_path_factory.mktemp("runs"), max_steps=2))
    return result.checkpoint


def test_checkpoint_refuses_corrupt_and_foreign_files(trained_run: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(trained_run)
    assert payload["step"] == 2
    data = trained_run.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(3)}, foreign)
    wrong_version = tmp_path / "version.pt"
    torch.save(payload | {"version": 99}, wrong_version)
    missing_key = tmp_path / "missing.pt"
    torch.save({key: value for key, value in payload.items() if key != "opt_d"}, missing_key)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    bad_rng = tmp_path / "rng.pt"
    torch.save(payload | {"rng": [{"torch": payload["rng"][0]["torch"]}]}, bad_rng)
    for path, message in [
        (truncated, "not a readable checkpoint"),
        (foreign, "not a tagcolor-cwgan-gp checkpoint"),
        (wrong_version, "version 99"),
        (missing_key, "'opt_d'"),
        (garbage, "not a readable checkpoint"),
        (bad_rng, "'rng' must hold one state per rank"),
        (tmp_path / "absent.pt", "no such checkpoint"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)
    mismatched = tmp_path / "mismatched.pt"
    torch.save(payload | {"config": payload["config"] | {"base_channels": 16}}, mismatched)
    with pytest.raises(CheckpointError, match="EMA weights do not fit"):
        Colorizer.from_checkpoint(mismatched)


def test_colorizer_predicts_encoded_ab_at_any_size(trained_run: Path) -> None:
    colorizer = Colorizer.from_checkpoint(trained_run)
    assert colorizer.image_size == SIZE
    rng = np.random.default_rng(0)
    tokens = np.full((3, 20), PAD_ID, dtype=np.int32)
    tokens[0, :3] = [5, 999_999, 17]
    for height, width in [(SIZE, SIZE), (40, 56)]:
        l_u8 = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
        ab = colorizer.predict_ab(l_u8, tokens)
        assert ab.shape == (3, height, width, 2)
        assert ab.dtype == np.uint8
    with pytest.raises(ValueError, match="tokens"):
        colorizer.predict_ab(l_u8, tokens[:2])


@pytest.mark.parametrize(
    "schedule",
    [{}, {"l1_warmup_steps": 2, "gp_every": 2}, {"tag_dropout": 0.5, "crop_min_scale": 0.5}],
    ids=["every-update-penalised", "l1-warm-up-then-lazy-penalty", "crops-and-tag-dropout"],
)
def test_kill_and_resume_is_bit_identical(dataset: Path, tmp_path: Path, schedule: dict[str, int]) -> None:
    schedule = schedule | {"snapshot_every": 2, "tensorboard": True}
    full = train(tiny_config(dataset, tmp_path, run_name="full", max_steps=5, **schedule))

    def kill_at_step_3(row: dict[str, Any]) -> None:
        if row["step"] == 3:
            raise Killed

    killed = tiny_config(dataset, tmp_path, run_name="killed", max_steps=5, **schedule)
    with pytest.raises(Killed):
        train(killed, report=kill_at_step_3)
    assert load_checkpoint(tmp_path / "killed" / "latest.pt")["step"] == 2
    with pytest.raises(TrainConfigError, match=r"^resume:"):
        train(killed)
    resumed = train(replace(killed, resume=True))

    assert resumed.step == full.step == 5
    expected, actual = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    keys = ("generator", "critic", "ema", "opt_g", "opt_d", "rng", "token_index")
    expected_tensors, actual_tensors = tensors(expected, keys), tensors(actual, keys)
    assert expected_tensors.keys() == actual_tensors.keys()
    for name, tensor in expected_tensors.items():
        assert torch.equal(tensor, actual_tensors[name]), name
    assert (expected["epoch"], expected["offset"]) == (actual["epoch"], actual["offset"])
    assert sorted(p.name for p in resumed.run_dir.glob("ckpt_*.pt")) == ["ckpt_00000004.pt", "ckpt_00000005.pt"]
    losses = ["step", "epoch", "critic_loss", "wasserstein", "gp", "generator_loss", "adversarial", "l1"]
    full_metrics = pd.read_parquet(full.run_dir / "metrics.parquet")[losses]
    resumed_metrics = pd.read_parquet(resumed.run_dir / "metrics.parquet")[losses]
    pd.testing.assert_frame_equal(full_metrics, resumed_metrics)
    assert full_metrics["step"].tolist() == [1, 2, 3, 4, 5]
    assert yaml.safe_load((resumed.run_dir / "config.yaml").read_text())["resume"] is True
    snapshots = sorted(p.name for p in (resumed.run_dir / "snapshots").iterdir())
    assert snapshots == ["step_000002.png", "step_000004.png", "step_000005.png"]
    for name in snapshots:
        assert (full.run_dir / "snapshots" / name).read_bytes() == (resumed.run_dir / "snapshots" / name).read_bytes()
    events = {}
    for run in (full, resumed):
        accumulator = EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"scalars": 0})
        events[run.run_dir.name] = [(s.step, s.value) for s in accumulator.Reload().Scalars("l1")]
    assert len(list((resumed.run_dir / "tensorboard").iterdir())) == 2, "an event file per process"
    assert [step for step, _ in events["killed"]] == [1, 2, 3, 4, 5], "the killed process's step 3 purged"
    assert events["killed"] == events["full"]


def test_warm_up_trains_the_generator_alone_and_the_penalty_is_lazy(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    penalties = []
    penalty = losses.gradient_penalty

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        value = penalty(*args, **kwargs)
        penalties.append(float(value.detach()))
        return value

    monkeypatch.setattr(losses, "gradient_penalty", counted)
    warm = train(tiny_config(dataset, tmp_path, run_name="warm", max_steps=2, l1_warmup_steps=2))
    assert penalties == []
    payload = load_checkpoint(warm.checkpoint)
    assert payload["opt_d"]["state"] == {}  # the critic was never updated
    fresh = load_checkpoint(
        train(tiny_config(dataset, tmp_path, run_name="fresh", max_steps=1, l1_warmup_steps=1)).checkpoint
    )
    for name, tensor in fresh["critic"].items():
        assert torch.equal(tensor, payload["critic"][name]), name
    rows = pd.read_parquet(warm.run_dir / "metrics.parquet")
    assert rows["l1"].notna().all() and "critic_loss" not in rows
    # Steps 2 and 3 are adversarial with two critic updates each: updates 0 … 3, penalised every third.
    lazy = tiny_config(dataset, tmp_path, run_name="lazy", max_steps=3, l1_warmup_steps=1, n_critic=2, gp_every=3)
    rows = pd.read_parquet(train(lazy).run_dir / "metrics.parquet")
    assert len(penalties) == 2  # updates 0 and 3
    assert rows["gp"].iloc[1:].tolist() == pytest.approx([penalties[0], penalties[1]])


def test_a_time_budget_stops_training_and_keeps_a_checkpoint(dataset: Path, tmp_path: Path) -> None:
    result = train(tiny_config(dataset, tmp_path, run_name="short", max_steps=50, max_seconds=1e-6))
    assert result.step == 1 and load_checkpoint(result.checkpoint)["step"] == 1
    with pytest.raises(TrainConfigError, match=r"^max_seconds"):
        train(tiny_config(dataset, tmp_path, run_name="never", max_seconds=0))


def test_resume_refuses_other_data_and_init_from_starts_a_new_run(dataset: Path, tmp_path: Path) -> None:
    first = train(tiny_config(dataset, tmp_path, run_name="a", max_steps=2, shards=[0]))
    with pytest.raises(TrainConfigError, match=r"^shards: resuming .* trained with \[0\], not \[1\]"):
        train(tiny_config(dataset, tmp_path, run_name="a", max_steps=4, shards=[1], resume=True))
    with pytest.raises(TrainConfigError, match=r"^batch_size: resuming"):
        train(tiny_config(dataset, tmp_path, run_name="a", max_steps=4, shards=[0], batch_size=2, resume=True))
    follow = tiny_config(dataset, tmp_path, run_name="b", max_steps=1, shards=[1], init_from=str(first.checkpoint))
    started = load_checkpoint(train(follow).checkpoint)
    assert started["step"] == 1 and started["config"]["shards"] == [1]
    assert {int(state["step"]) for state in started["opt_g"]["state"].values()} == {1}, "fresh optimizers"
    weights = tensors(load_checkpoint(first.checkpoint), ("generator",))
    for name, tensor in tensors(started, ("generator",)).items():
        assert (tensor - weights[name]).abs().max() <= 2 * follow.lr, f"{name}: one Adam step from the old weights"


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(dataset, tmp_path, max_steps=2)
    train(config)
    latest = tmp_path / "run" / "latest.pt"
    before = latest.read_bytes()

    def dies_halfway(payload: dict[str, Any], file: BinaryIO) -> None:
        file.write(b"half a checkpoint")
        raise Killed

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_halfway)
    with pytest.raises(Killed):
        train(replace(config, max_steps=4, resume=True))
    monkeypatch.undo()
    assert latest.read_bytes() == before and load_checkpoint(latest)["step"] == 2
    assert sorted(p.name for p in latest.parent.iterdir() if p.name.startswith(".")) == [], "no temporary file left"
    assert train(replace(config, max_steps=4, resume=True)).step == 4


def test_out_of_memory_names_the_settings_to_lower(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_module, "_train", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match=r"batch_size=4"):
        train(tiny_config(dataset, tmp_path, max_steps=1))


def _ddp_worker(rank: int, world_size: int, port: int, config: TrainConfig, out: Path) -> None:
    """One torchrun-like rank: the launcher's environment, then an ordinary ``train`` call."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    state = train(config).state
    modules = {"generator": state.generator, "critic": state.critic, "ema": state.ema}
    torch.save({name: module.state_dict() for name, module in modules.items()}, out / f"rank{rank}.pt")


def test_two_process_ddp_keeps_ranks_identical(dataset: Path, tmp_path: Path) -> None:
    config = tiny_config(dataset, tmp_path, max_steps=3, n_critic=2)
    mp.spawn(_ddp_worker, args=(2, free_port(), config, tmp_path), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for module in ("generator", "critic", "ema"):
        for name, tensor in rank0[module].items():
            assert torch.equal(tensor, rank1[module][name]), f"{module}.{name}"
    saved = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert saved["step"] == 3
    assert len(saved["rng"]) == 2
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    for name, tensor in rank0["generator"].items():
        assert torch.equal(tensor, saved["generator"][name])


@pytest.mark.parametrize("gpus", [1, 2])
def test_cli_reports_through_dagster_pipes(dataset: Path, tmp_path: Path, gpus: int) -> None:
    """As the colorizer asset runs it; with ``gpus=2`` the command starts torchrun itself, and rank 0 reports."""
    context = tmp_path / "context.json"
    messages = tmp_path / "messages.jsonl"
    context.write_text(
        json.dumps(
            {
                "asset_keys": ["sample/colorizer"],
                "code_version_by_asset_key": {"sample/colorizer": None},
                "provenance_by_asset_key": {"sample/colorizer": None},
                "partition_key": None,
                "partition_key_range": None,
                "partition_time_window": None,
                "run_id": "test-run",
                "job_name": None,
                "retry_number": 0,
                "extras": {},
            }
        )
    )
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {
        "DAGSTER_PIPES_CONTEXT": encode_param({"path": str(context)}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages)}),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "model.train",
        "--config",
        str(TRAIN_CONFIGS / "ci.yaml"),
        f"data_root={dataset}",
        f"runs_dir={tmp_path / 'runs'}",
        "run_name=pipes",
        "max_steps=2",
        "log_every=1",
        f"gpus={gpus}",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    sent = [json.loads(line) for line in messages.read_text().splitlines()]
    methods = [message["method"] for message in sent]
    assert methods[0] == "opened"
    assert methods[-1] == "closed"
    assert methods.count("log") >= 3
    (materialization,) = [m["params"] for m in sent if m["method"] == "report_asset_materialization"]
    metadata = materialization["metadata"]
    assert metadata["steps"]["raw_value"] == 2
    assert metadata["checkpoint"]["raw_value"] == str(tmp_path / "runs" / "pipes" / "latest.pt")
    saved = load_checkpoint(Path(metadata["checkpoint"]["raw_value"]))
    assert (saved["step"], len(saved["rng"])) == (2, gpus), "one RNG state per rank"
    assert metadata["curves"]["type"] == metadata["metrics_parquet"]["type"] == "path"
    with Image.open(metadata["curves"]["raw_value"]) as curves:
        assert curves.format == "PNG" and curves.size == (1600, 600)
    assert metadata["preview"]["type"] == "md" and "](data:image/jpeg;base64," in metadata["preview"]["raw_value"]
    run_dir = tmp_path / "runs" / "pipes"
    assert metadata["snapshot"] == {"raw_value": str(run_dir / "snapshot_latest.png"), "type": "path"}
    assert (run_dir / "snapshots" / "step_000002.png").is_file(), "the last step's, written by rank 0 alone"
    assert metadata["preview"]["raw_value"].count("](data:image/jpeg;base64,") == 2, "curves and snapshot"


def test_a_launch_that_disagrees_with_gpus_is_refused(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(TrainConfigError, match=r"^gpus: .*torchrun started 2"):
        train(tiny_config(dataset, tmp_path, max_steps=1))
    assert torchrun_command(TrainConfig(gpus=4), ["--config", "x.yaml"])[2:] == [
        "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "model.train", "--config", "x.yaml"
    ]  # fmt: skip
    nodes = TrainConfig(gpus=8, nnodes=4, rdzv_endpoint="node0:29400", run_name="big")
    assert torchrun_command(nodes, [])[2:] == [
        "torch.distributed.run", "--nproc-per-node=8", "--nnodes=4", "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0:29400", "--rdzv-id=big", "-m", "model.train",
    ]  # fmt: skip


@pytest.mark.slow
def test_tags_carry_the_colour(vocabulary_dir: Path, tmp_path: Path) -> None:
    """Trained briefly on scenes whose colour only the tags name, true tags beat shuffled ones on held-out photos.

    Measured on two shared CPU cores: ratio 0.39 after 400 steps (40 s unloaded); with mean pooling instead
    of attention 0.65; a model that ignores the tags gives 1. The learning rate is high for a GAN, to learn
    this much in so few steps.
    """
    root = sample_dataset(tmp_path / "sample", vocabulary_dir, n_images=768, shard_size=256, size=SIZE)
    config = tiny_config(
        root, run_name="tags", batch_size=16, max_steps=400, n_critic=1, lr=2e-3, depth=3, token_dim=32,
        log_every=100, ckpt_every=1000,
    )  # fmt: skip
    result = train(config)
    assert result.metrics["step"] == 400
    colorizer = Colorizer.from_checkpoint(result.checkpoint)
    lab = np.load(root / "shards" / SHARD_NAME.format(shard=2))
    tokens = np.load(root / "tokens.npy")[2 * 256 :]
    colour = np.asarray(colorfulness(cv2.cvtColor(lab.reshape(-1, SIZE, 3), cv2.COLOR_LAB2RGB).reshape(lab.shape))) >= 2
    lab, tokens = lab[colour], tokens[colour]
    shuffled = tokens[np.random.default_rng(0).permutation(len(tokens))]
    truth = lab[..., 1:].astype(np.float64)
    error_true = np.abs(colorizer.predict_ab(lab[..., 0], tokens) - truth).mean()
    error_shuffled = np.abs(colorizer.predict_ab(lab[..., 0], shuffled) - truth).mean()
    ratio = error_true / error_shuffled
    print(f"ab error with true tags {error_true:.2f}, shuffled {error_shuffled:.2f}, ratio {ratio:.3f}")
    assert ratio < 0.7
    scored = evaluate_run(DatasetPaths(root), result.run_dir, n_images=64, out_dir=tmp_path / "evaluation")
    assert grey_problems(scored.figures) == "" and scored.beats_grey == "", "a model that learnt the tags beats grey"


def test_the_word_tokenizer_trains_and_its_checkpoint_carries_the_vocabulary(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "worded"
    shutil.copytree(dataset, root)
    words = ["", "red", "blue", "sky"]
    rows = np.zeros((N_IMAGES, 8), np.int32)
    rows[:, 0] = 1 + np.arange(N_IMAGES) % 3
    np.save(root / "tag_words.npy", rows)
    (root / "words.json").write_text(json.dumps(words))
    result = train(tiny_config(root, tmp_path, max_steps=2, tokenizer="words"))
    saved = load_checkpoint(result.checkpoint)
    assert (saved["tokenizer"], saved["words"]) == ("words", words)
    assert saved["token_index"].tolist() == [1, 2, 3], "the words that occur, pad left out"
    colorizer = Colorizer.from_checkpoint(result.checkpoint)
    assert (colorizer.index.width, colorizer.index.pad) == (8, 0)
    assert colorizer.predict_ab(np.full((1, SIZE, SIZE), 128, np.uint8), rows[:1]).shape == (1, SIZE, SIZE, 2)
    with pytest.raises(ValueError, match=r"shape \(1, 8\)"):
        colorizer.predict_ab(np.full((1, SIZE, SIZE), 128, np.uint8), np.zeros((1, 20), np.int32))
    assert tag_ids(["sky!", "東京", "sunset", "red"], colorizer.index).tolist() == [3, 1, 0, 0, 0, 0, 0, 0]
    assert "never saw, skipped: sunset" in caplog.text
    other = DatasetPaths(tmp_path / "other")
    other.root.mkdir()
    other.words.write_text(json.dumps(["", "sky", "sea", "red"]))
    assert checkpoint_ids(np.array([[1, 2, 3, 0]]), other, colorizer.index).tolist() == [[3, 4, 1, 0]], (
        "another dataset's word ids, mapped through the words: sky → 3, sea unseen (raw 4: unknown), red → 1"
    )
    with pytest.raises(TrainConfigError, match=r"tokenizer: .* was trained with 'words', not 'o200k'"):
        train(tiny_config(root, tmp_path, max_steps=3, resume=True))
    with pytest.raises(TrainConfigError, match="tokenizer: must be one of"):
        train(tiny_config(root, tmp_path, tokenizer="bpe"))


PLAN = {"subsets": 2, "stages": 3, "epochs_per_stage": 3}
"""Three stages over the two training shards (one subset each): stages 1 and 3 train on shard 0, stage 2 on
shard 1; with 22 eligible photos a shard, 5 batches of 4 an epoch, 3 epochs are 3 steps of 5 critic batches."""


def test_a_staged_plan_on_the_sample_killed_inside_stage_2_resumes_to_the_uninterrupted_weights(
    vocabulary_dir: Path, tmp_path: Path
) -> None:
    sample = sample_dataset(tmp_path / "sample", vocabulary_dir, n_images=72, shard_size=24, size=SIZE)
    plan = {"subsets": 2, "stages": 3, "epochs_per_stage": 4}
    full = train(tiny_config(sample, tmp_path, run_name="full", plan=plan, ckpt_every=1))
    progress = json.loads((full.run_dir / "plan.json").read_text())
    stages = progress["plan"]
    assert (progress["stage"], progress["stages"], progress["done"]) == (3, 3, True)
    assert [stage["shards"] for stage in stages] == [[0], [1], [0]]
    assert [stage["first_epoch"] for stage in stages] == [0, 4, 8]
    assert full.step == stages[-1]["end_step"] and full.plan_progress == "stage 3 of 3 (subset 1), done"
    metrics = pd.read_parquet(full.run_dir / "metrics.parquet")
    expected_stage = [next(s["number"] for s in stages if step <= s["end_step"]) for step in metrics["step"]]
    assert metrics["stage"].tolist() == expected_stage
    assert metrics["subset"].tolist() == [(stage - 1) % 2 + 1 for stage in expected_stage]
    assert yaml.safe_load((full.run_dir / "config.yaml").read_text())["plan"]["subsets"] == [[0], [1]]

    second = stages[1]
    assert second["end_step"] - second["first_step"] >= 3
    kill_step = second["first_step"] + 2

    def kill_inside_stage_2(row: dict[str, Any]) -> None:
        if row["step"] == kill_step:
            raise Killed

    killed = tiny_config(sample, tmp_path, run_name="killed", plan=plan, ckpt_every=1, resume=True)
    with pytest.raises(Killed):
        train(killed, report=kill_inside_stage_2)
    assert load_checkpoint(tmp_path / "killed" / "latest.pt")["step"] == kill_step - 1, "inside stage 2"
    assert json.loads((tmp_path / "killed" / "plan.json").read_text())["stage"] == 2
    resumed = train(killed)
    expected, actual = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    keys = ("generator", "critic", "ema", "opt_g", "opt_d", "rng", "token_index")
    expected_tensors, actual_tensors = tensors(expected, keys), tensors(actual, keys)
    assert expected_tensors.keys() == actual_tensors.keys()
    for name, tensor in expected_tensors.items():
        assert torch.equal(tensor, actual_tensors[name]), name
    columns = ["step", "stage", "subset", "epoch", "critic_loss", "generator_loss", "l1"]
    pd.testing.assert_frame_equal(metrics[columns], pd.read_parquet(resumed.run_dir / "metrics.parquet")[columns])


def test_stage_by_stage_is_the_whole_plan_and_a_stage_never_skips_ahead(dataset: Path, tmp_path: Path) -> None:
    whole = train(tiny_config(dataset, tmp_path, run_name="whole", plan=PLAN))
    staged = tiny_config(dataset, tmp_path, run_name="staged", plan=PLAN, resume=True)
    with pytest.raises(TrainConfigError, match=r"^stage: stage 2 starts at step 3"):
        train(replace(staged, stage=2))
    assert not (tmp_path / "staged" / "latest.pt").exists(), "refused before any work"
    first = train(replace(staged, stage=1))
    assert (first.step, first.plan_progress) == (3, "stage 1 of 3 (subset 1), done")
    with pytest.raises(TrainConfigError, match=r"^stage: stage 3 starts at step 6"):
        train(replace(staged, stage=3))
    assert train(replace(staged, stage=2)).step == 6
    assert train(replace(staged, stage=2)).step == 6, "a stage already trained is not trained again"
    last = train(staged)
    assert last.step == 9
    expected, actual = load_checkpoint(whole.checkpoint), load_checkpoint(last.checkpoint)
    for name, tensor in tensors(expected, ("generator", "critic", "ema", "opt_g", "opt_d")).items():
        assert torch.equal(tensor, tensors(actual, ("generator", "critic", "ema", "opt_g", "opt_d"))[name]), name
    with pytest.raises(TrainConfigError, match=r"^plan: resuming"):
        train(replace(staged, plan=PLAN | {"stages": 4}))


def test_two_machines_meet_through_c10d_and_end_with_equal_weights(dataset: Path, tmp_path: Path) -> None:
    """Two "machines" on 127.0.0.1, each one `python -m model.train` with nnodes=2: torchrun's c10d rendezvous
    joins them into one gloo job of two processes, which trains and checks that both hold rank 0's weights."""
    config = tiny_config(dataset, tmp_path, max_steps=3, n_critic=2, snapshot_every=0, tensorboard=False)
    preset = tmp_path / "two_nodes.yaml"
    preset.write_text(yaml.safe_dump(config.to_dict()))
    overrides = ["nnodes=2", f"rdzv_endpoint=127.0.0.1:{free_port()}", "rdzv_id=two-nodes"]
    command = [sys.executable, "-m", "model.train", "--config", str(preset), *overrides]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    machines = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [machine.communicate(timeout=300)[0] for machine in machines]
    for machine, output in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, output[-4000:]
    joined = "\n".join(outputs)
    assert "rank 0 of 2: weights equal to rank 0's" in joined and "rank 1 of 2: weights equal to rank 0's" in joined
    saved = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert saved["step"] == 3 and len(saved["rng"]) == 2, "one RNG state per process of the two machines"
