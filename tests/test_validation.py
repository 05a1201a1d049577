"""Validation and model selection: photos set aside from training (never the test shard), scored while a run
trains, the best step kept as best.pt, early stopping, and what evaluation and colorize make of it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from model.checkpoint import load_checkpoint
from model.colorize import main as colorize
from model.config import validate_train_config
from model.data import TrainingSet
from model.evaluation import evaluate_run, grey_problems
from model.train import train
from pipeline.core.layout import DatasetLayout, DatasetPaths, read_layout
from tests.helpers import Killed, jpeg, picture, sample_dataset, tensors, tiny_config


@pytest.fixture(scope="module")
def sample(vocabulary_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shards of 24 of the sample's scenes at 32²: training shards 0 and 1, held-out (test) shard 2."""
    return sample_dataset(tmp_path_factory.mktemp("sample"), vocabulary_dir, n_images=72, shard_size=24, size=32)


def validated(sample: Path, runs: Path, **changes: Any) -> Any:
    """The tiny config with validation on, every second step, at a learning rate that moves the figures."""
    values = {"val_size": 1000, "val_every": 2, "lr": 5e-3, "n_critic": 1}
    return tiny_config(sample, runs, **(values | changes))


def test_training_validation_and_test_never_share_a_photo(sample: Path, tmp_path: Path) -> None:
    config = validate_train_config(validated(sample, tmp_path))
    layout = read_layout(sample)
    test = set(layout.shard_ids(config.holdout_shard))
    training = TrainingSet(layout, config.shards, config.skip_grayscale, exclude=config.val_ids)
    trained = set(training.global_index.tolist())
    validation = set(config.val_ids)
    assert 0 < len(validation) <= 48 // 10, "at most a tenth of the two training shards' photos"
    assert not validation & trained and not validation & test and not trained & test
    assert validation <= set(layout.shard_ids(0)) | set(layout.shard_ids(1))
    again = validate_train_config(validated(sample, tmp_path, run_name="again"))
    assert again.val_ids == config.val_ids, "a seeded, fixed set"
    assert validate_train_config(validated(sample, tmp_path, seed=1)).val_ids != config.val_ids
    assert validate_train_config(validated(sample, tmp_path, val_size=0)).val_ids is None


def test_a_folders_duplicated_photos_are_never_validation_photos(tmp_path: Path) -> None:
    """90 of 100 training photos are copies in pairs (one SHA-1 twice): validating on one would score what the
    other trained; only the 10 unique ones may be drawn."""
    paths = DatasetPaths(tmp_path / "folder")
    paths.images_table.mkdir(parents=True)
    ids = np.arange(100)
    pd.DataFrame({"image_id": ids, "shard": 0, "row": ids, "valid": True, "is_grayscale": False}).to_parquet(
        paths.shard_rows(0)
    )
    sha1 = [f"pair{i // 2}" if i < 90 else f"unique{i}" for i in ids]
    paths.manifest.parent.mkdir(parents=True)
    pd.DataFrame({"image_id": ids, "path": [f"{i}.jpg" for i in ids], "sha1": sha1}).to_parquet(paths.manifest)
    layout = DatasetLayout(n_images=200, shard_size=100, paths=paths)
    for seed in range(20):
        (chosen,) = layout.validation_ids([0], size=1000, seed=seed)
        assert chosen >= 90, f"seed {seed}: photo {chosen} has a copy among the training photos"


def test_validation_is_logged_and_best_pt_is_the_best_step_for_evaluation_and_colorize(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = train(validated(sample, tmp_path, max_steps=8))
    rows = pd.read_parquet(result.run_dir / "metrics.parquet")
    scored = rows.dropna(subset=["val_ab_error"])
    assert scored["step"].tolist() == [2, 4, 6, 8]
    assert {"val_psnr", "val_hue_error", "val_delta_cf", "val_s"} <= set(rows.columns)
    assert rows[rows["step"] % 2 == 1]["val_ab_error"].isna().all()
    best_step = int(scored.loc[scored["val_ab_error"].idxmin(), "step"])
    best = load_checkpoint(result.run_dir / "best.pt")
    assert best["step"] == best_step == result.state.selection.best_step
    assert best["selection"]["best"] == pytest.approx(scored["val_ab_error"].min())
    assert load_checkpoint(result.run_dir / "latest.pt")["step"] == 8

    evaluation = evaluate_run(DatasetPaths(sample), result.run_dir, n_images=16, out_dir=tmp_path / "evaluation")
    scored_with = (evaluation.metrics["checkpoint"], evaluation.metrics["step"])
    assert scored_with == (str(result.run_dir / "best.pt"), best_step)
    assert f"best.pt (step {best_step})" in evaluation.metadata["preview"]
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(picture(3, 40, 30)))
    assert colorize([str(photo), "--checkpoint", str(result.run_dir), "--out", str(tmp_path / "out")]) == 0
    assert f"colouring with {result.run_dir / 'best.pt'} (step {best_step})" in capsys.readouterr().err


def test_kill_and_resume_with_validation_and_early_stopping_is_bit_identical(sample: Path, tmp_path: Path) -> None:
    full = train(validated(sample, tmp_path, run_name="full", max_steps=40, patience=2))
    assert full.step < 40, "stopped early: two validations in a row did not beat the best"

    def kill_at_step_5(row: dict[str, Any]) -> None:
        if row["step"] == 5:
            raise Killed

    killed = validated(sample, tmp_path, run_name="killed", max_steps=40, patience=2, ckpt_every=4)
    with pytest.raises(Killed):
        train(killed, report=kill_at_step_5)
    resumed = train(dataclasses.replace(killed, resume=True))
    assert resumed.step == full.step and resumed.state.selection == full.state.selection
    assert train(dataclasses.replace(killed, resume=True)).step == full.step, "a run that stopped early stays stopped"
    keys = ("generator", "critic", "ema", "opt_g", "opt_d", "rng")
    for name in ("latest.pt", "best.pt"):
        expected = tensors(load_checkpoint(full.run_dir / name), keys)
        actual = tensors(load_checkpoint(resumed.run_dir / name), keys)
        assert expected.keys() == actual.keys()
        for key, tensor in expected.items():
            assert torch.equal(tensor, actual[key]), f"{name}: {key}"
    columns = ["step", "l1", "val_ab_error", "val_psnr"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(full.run_dir / "metrics.parquet")[columns],
        pd.read_parquet(resumed.run_dir / "metrics.parquet")[columns],
    )


def test_a_run_from_before_validation_resumes_exactly_without_it(sample: Path, tmp_path: Path) -> None:
    """A run whose config.yaml and checkpoint know nothing of validation resumes on all its training photos, as
    it started, though validation is on by default now."""
    full = train(tiny_config(sample, tmp_path, run_name="full", max_steps=4))
    old = train(tiny_config(sample, tmp_path, run_name="old", max_steps=2))
    new_keys = ("val_size", "val_every", "val_ids", "select_by", "patience")
    for checkpoint in old.run_dir.glob("*.pt"):
        payload = load_checkpoint(checkpoint)
        payload["config"] = {key: value for key, value in payload["config"].items() if key not in new_keys}
        del payload["selection"]
        torch.save(payload, checkpoint)
    saved = yaml.safe_load((old.run_dir / "config.yaml").read_text())
    (old.run_dir / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in saved.items() if k not in new_keys}))

    resumed = train(tiny_config(sample, tmp_path, run_name="old", max_steps=4, resume=True, val_size=1000))
    assert "val_ab_error" not in pd.read_parquet(resumed.run_dir / "metrics.parquet")
    assert not (resumed.run_dir / "best.pt").exists()
    expected = tensors(load_checkpoint(full.checkpoint), ("generator", "critic", "ema", "opt_g", "opt_d"))
    for name, tensor in tensors(load_checkpoint(resumed.checkpoint), ("generator", "critic", "ema")).items():
        assert torch.equal(tensor, expected[name]), name
    assert yaml.safe_load((resumed.run_dir / "config.yaml").read_text())["val_ids"] is None


def painting_one_colour(checkpoint: Path, out: Path) -> Path:
    """The checkpoint with its EMA generator painting every pixel one strong magenta (a ≈ +120, b ≈ −120)."""
    payload = load_checkpoint(checkpoint)
    payload["ema"]["out.weight"] = torch.zeros_like(payload["ema"]["out.weight"])
    payload["ema"]["out.bias"] = torch.tensor([2.0, -2.0])
    out.mkdir(parents=True)
    (out / "config.yaml").write_text((checkpoint.parent / "config.yaml").read_text())
    torch.save(payload, out / "latest.pt")
    return out


def test_beats_grey_fails_on_a_model_that_paints_one_colour_and_every_scoring_is_kept(
    sample: Path, tmp_path: Path
) -> None:
    run = train(tiny_config(sample, tmp_path, run_name="grey", max_steps=2)).run_dir
    magenta = painting_one_colour(run / "latest.pt", tmp_path / "magenta")
    first = evaluate_run(DatasetPaths(sample), magenta, n_images=16, out_dir=tmp_path / "e1")
    problems = grey_problems(first.figures)
    assert re.search(r"ab error [\d.]+ is above grey's [\d.]+", problems), problems
    assert first.beats_grey == problems and first.metadata["preview"].startswith("**Worse than leaving the photos")
    second = evaluate_run(DatasetPaths(sample), magenta, n_images=8, seed=1, out_dir=tmp_path / "e2")
    lines = (magenta / "evaluations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [record["n_images"] for record in records] == [16, 8], "appended, not overwritten"
    assert records[0]["checkpoint"] == str(magenta / "latest.pt") and len(records[0]["sha256"]) == 64
    assert records[1]["figures"]["ab_error/tags"] == second.figures["ab_error/tags"]
    assert len(second.history) == 2 and "Scorings of this run" in second.metadata["preview"]
