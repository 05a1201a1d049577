"""The code location: every dataset's graph, partitions, mappings, checks, jobs and schedules."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import warnings
import zipfile
from pathlib import Path

import dagster as dg
import pytest

from pipeline.core.config import ConfigError
from pipeline.datasets import CONFIG_DIR, load_dataset_spec, load_dataset_specs
from pipeline.defs.definitions import build_definitions
from pipeline.defs.factory import build_dataset_assets
from pipeline.defs.resources import storage_from_environ
from pipeline.defs.training import ColorizerConfig, train_config_path, training_command
from tests.helpers import sample_dataset

ASSETS = ("archives", "tags_archive", "lab_shards", "tag_tokens", "data_stats", "colorizer", "evaluation")

DATASETS = tuple(load_dataset_specs())


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return build_definitions()


def test_every_dataset_has_the_whole_graph_in_its_group(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {f"{dataset}/{asset}" for dataset in DATASETS for asset in ASSETS}
    for key in graph.get_all_asset_keys():
        assert graph.get(key).group_name == key.path[0]


def test_partitions_and_mappings(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    shards = graph.get(dg.AssetKey(["mirflickr1m", "lab_shards"]))
    assert shards.partitions_def.get_partition_keys()[:2] == ["000", "001"]
    assert len(shards.partitions_def.get_partition_keys()) == 100
    assert shards.backfill_policy == dg.BackfillPolicy.single_run()
    archives = graph.get(dg.AssetKey(["mirflickr1m", "archives"]))
    assert archives.partitions_def.get_partition_keys() == [f"images{k}" for k in range(10)]
    mapping = shards.partition_mappings[dg.AssetKey(["mirflickr1m", "archives"])]
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        shards.partitions_def.subset_with_partition_keys(["042"]),
        shards.partitions_def,
        archives.partitions_def,
    )
    assert list(upstream.partitions_subset.get_partition_keys()) == ["images4"]
    assert graph.get(dg.AssetKey(["mirflickr25k", "archives"])).partitions_def.get_partition_keys() == ["mirflickr25k"]
    assert graph.get(dg.AssetKey(["sample", "lab_shards"])).partitions_def.get_partition_keys() == ["000", "001"]


def test_checks_schedules_and_automation(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    check_names = {key.name for key in graph.asset_check_keys}
    assert check_names == {"shard_contract", "tokens_in_range", "tokens_align_with_images", "beats_grey"}
    schedules = {s.name: s for s in defs.schedules}
    assert set(schedules) == {f"{d}_{s}" for d in DATASETS for s in ("weekly_training", "stats_refresh")}
    assert schedules["sample_weekly_training"].cron_schedule == "0 3 * * 1"
    (sensor,) = defs.sensors
    assert (sensor.name, sensor.default_status) == ("tagcolor_automation", dg.DefaultSensorStatus.RUNNING)
    for name in ("colorizer", "evaluation"):
        assert defs.get_assets_def(dg.AssetKey(["sample", name])).node_def.pools == {"tagcolor-gpu"}


def test_evaluation_follows_the_colorizer_and_stats_follow_the_data(defs: dg.Definitions) -> None:
    instance = dg.DagsterInstance.ephemeral()
    evaluation, stats = dg.AssetKey(["sample", "evaluation"]), dg.AssetKey(["sample", "data_stats"])
    cursor = None

    def requested_after(*events: dg.AssetMaterialization) -> tuple[int, int]:
        nonlocal cursor
        for event in events:
            instance.report_runless_asset_event(event)
        selection = dg.AssetSelection.assets(evaluation, stats)
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=cursor
        )
        cursor = result.cursor
        return result.get_num_requested(evaluation), result.get_num_requested(stats)

    assert requested_after() == (0, 0), "nothing to follow yet"
    assert requested_after(dg.AssetMaterialization(["sample", "colorizer"])) == (1, 0)
    shards = [dg.AssetMaterialization(["sample", "lab_shards"], partition=key) for key in ("000", "001")]
    assert requested_after(*shards, dg.AssetMaterialization(["sample", "tag_tokens"])) == (0, 1), (
        "new data refreshes the stats but does not re-score an old checkpoint"
    )


def test_instance_settings_limit_gpu_work_to_one_at_a_time(tmp_path) -> None:
    shutil.copyfile(CONFIG_DIR / "dagster.yaml", tmp_path / "dagster.yaml")
    concurrency = dg.DagsterInstance.from_config(str(tmp_path)).get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.run_queue_config.tag_concurrency_limits == [{"key": "tagcolor/gpu", "value": "true", "limit": 1}]


def test_training_command_runs_the_dataset_preset_unless_told_otherwise(tmp_path) -> None:
    sample = load_dataset_spec("sample")
    default = training_command(sample, ColorizerConfig(), tmp_path)
    assert default[1:5] == ["-m", "model.train", "--config", str(CONFIG_DIR / "train" / "sample_demo.yaml")]
    assert default[5:] == [f"data_root={tmp_path}"], "the run is named after its preset, as a standalone run is"
    chosen = training_command(
        sample, ColorizerConfig(train_config="ci", run_name="run", overrides=["gpus=2"]), tmp_path
    )
    assert chosen[3:] == [
        "--config",
        str(CONFIG_DIR / "train" / "ci.yaml"),
        f"data_root={tmp_path}",
        "run_name=run",
        "gpus=2",
    ]
    bare = dataclasses.replace(sample, train_config="")
    assert training_command(bare, ColorizerConfig(), tmp_path)[3:] == [f"data_root={tmp_path}"], (
        "TrainConfig's defaults"
    )
    with pytest.raises(dg.Failure, match="available"):
        train_config_path("no_such_config")


def test_storage_reads_the_environment(tmp_path) -> None:
    storage = storage_from_environ(
        {"TAGCOLOR_DATA_DIR": str(tmp_path), "TAGCOLOR_MIRFLICKR1M_URL": "file:///mirror/", "TIKTOKEN_CACHE_DIR": "/v"}
    )
    assert storage.paths("sample").root == tmp_path.resolve() / "sample"
    assert storage.url_overrides == {"TAGCOLOR_MIRFLICKR1M_URL": "file:///mirror/"}
    assert str(storage.vocabulary_dir) == "/v"
    assert storage.base_url(load_dataset_spec("mirflickr1m")) == "file:///mirror/"
    assert storage.base_url(load_dataset_spec("mirflickr25k")).startswith("https://")
    assert storage.base_url(load_dataset_spec("sample")) is None, "the sample is drawn, not downloaded"
    with pytest.raises(ConfigError, match=r"TAGCOLOR_MIRFLICKR25K_URL: .*'ftp'"):
        storage_from_environ({"TAGCOLOR_MIRFLICKR25K_URL": "ftp://mirror/"})


def materialize(
    key: str,
    env: dict[str, str],
    partition: str | None = None,
    instance: dg.DagsterInstance | None = None,
    config: dict | None = None,
) -> dict:
    """Materialize one asset in process with the storage built from ``env`` (and ``config`` as the asset's
    run config); return its metadata values."""
    asset_key = dg.AssetKey.from_user_string(key)
    (asset,) = [a for a in build_dataset_assets(load_dataset_spec(asset_key.path[0])) if asset_key in a.keys]
    run_config = {"ops": {asset.op.name: {"config": config}}} if config is not None else None
    result = dg.materialize(
        [asset],
        partition_key=partition,
        resources={"storage": storage_from_environ(env)},
        instance=instance,
        run_config=run_config,
    )
    (event,) = result.get_asset_materialization_events()
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_archive_is_fetched_from_the_configured_mirror_into_the_data_root(tmp_path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "images0.zip", "w") as archive:
        archive.writestr("images/0/0.jpg", b"photo bytes")
    data = tmp_path / "data"
    env = {"TAGCOLOR_DATA_DIR": str(data), "TAGCOLOR_MIRFLICKR1M_URL": mirror.as_uri()}
    first = materialize("mirflickr1m/archives", env, "images0")
    dest = data / "mirflickr1m" / "raw" / "images0.zip"
    assert dest.read_bytes() == (mirror / "images0.zip").read_bytes()
    assert first["size_bytes"] == dest.stat().st_size and first["fetched"] is True
    assert first["md5"] == hashlib.md5(dest.read_bytes()).hexdigest() and first["timing/duration_s"] >= 0
    assert first["url"] == f"{mirror.as_uri()}/images0.zip"
    again = materialize("mirflickr1m/archives", env, "images0")
    assert again["fetched"] is False and again["bytes_fetched"] == 0, "a verified archive is not fetched again"
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"mirror", "data"}


def test_evaluation_scores_the_run_the_colorizer_last_trained(tmp_path) -> None:
    env = {"TAGCOLOR_DATA_DIR": str(tmp_path)}
    runs = tmp_path.resolve() / "sample" / "runs"
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(dg.Failure, match=f"no run under {runs}"):
        materialize("sample/evaluation", env, instance=instance)
    colorizer = dg.AssetMaterialization(["sample", "colorizer"], metadata={"run_dir": str(runs / "second")})
    instance.report_runless_asset_event(colorizer)
    with pytest.raises(dg.Failure, match=f"no checkpoint at {runs / 'second' / 'latest.pt'}"):
        materialize("sample/evaluation", env, instance=instance)
    escape = dg.AssetMaterialization(["sample", "colorizer"], metadata={"run_dir": str(tmp_path / "elsewhere")})
    instance.report_runless_asset_event(escape)
    with pytest.raises(dg.Failure, match="outside the data root"):
        materialize("sample/evaluation", env, instance=instance)
    other = tmp_path / "mirflickr25k" / "runs" / "theirs"
    with pytest.raises(dg.Failure, match=f"run 'mirflickr25k/theirs': no run directory {other}"):
        materialize("sample/evaluation", env, config={"run": "mirflickr25k/theirs"})
    (tmp_path.parent / "runs" / "x").mkdir(parents=True, exist_ok=True)
    with pytest.raises(dg.Failure, match="outside the data root"):
        materialize("sample/evaluation", env, config={"run": "../x"})


def test_a_bad_training_override_fails_the_step_with_its_reason(tmp_path) -> None:
    env = {"TAGCOLOR_DATA_DIR": str(tmp_path)}
    key = dg.AssetKey(["sample", "colorizer"])
    (asset,) = [a for a in build_dataset_assets(load_dataset_spec("sample")) if key in a.keys]
    run_config = {"ops": {asset.op.name: {"config": {"overrides": ["batch_size=0"]}}}}
    pipes = dg.PipesSubprocessClient()
    with pytest.raises(dg.Failure, match=r"^training config: batch_size: "):
        dg.materialize([asset], resources={"storage": storage_from_environ(env), "pipes": pipes}, run_config=run_config)
    assert not (tmp_path / "sample" / "runs").exists(), "refused before any process started"


def test_mirflickr25k_tags_need_the_archive_and_its_tag_files(tmp_path) -> None:
    env = {"TAGCOLOR_DATA_DIR": str(tmp_path)}
    with pytest.raises(dg.Failure, match=r"mirflickr25k\.zip not found: materialize mirflickr25k/archives"):
        materialize("mirflickr25k/tags_archive", env)
    raw = tmp_path / "mirflickr25k" / "raw"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "mirflickr25k.zip", "w") as archive:
        archive.writestr("mirflickr/im1.jpg", b"photo")
    with pytest.raises(dg.Failure, match="none of the 25,000 tag files"):
        materialize("mirflickr25k/tags_archive", env)
    with zipfile.ZipFile(raw / "mirflickr25k.zip", "a") as archive:
        archive.writestr("mirflickr/meta/tags/tags1.txt", b"sky\n")
        archive.writestr("mirflickr/meta/tags/tags2.txt", b"sea\n")
    assert materialize("mirflickr25k/tags_archive", env)["tag_files"] == 2


def test_a_fourth_dataset_is_one_yaml_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-archive MIRFLICKR-1M subset: one file in TAGCOLOR_DATASETS_DIR, served by a local mirror."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for k in (0, 1):
        with zipfile.ZipFile(mirror / f"images{k}.zip", "w") as archive:
            archive.writestr(f"images/{10 * k}/{100_000 * k}.jpg", b"photo bytes")
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "flickr-subset.yaml").write_text(
        "name: flickr-subset\nkind: mirflickr1m\nbase_url: https://mirror.invalid/\n"
        "n_images: 150000\nshard_size: 10000\ntrain_config: mirflickr1m_1gpu\n"
    )
    monkeypatch.setenv("TAGCOLOR_DATASETS_DIR", str(datasets))
    monkeypatch.setenv("TAGCOLOR_FLICKR_SUBSET_URL", mirror.as_uri())
    monkeypatch.setenv("TAGCOLOR_DATA_DIR", str(tmp_path / "data"))
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys() if key.path[0] == "flickr-subset"}
    assert keys == {f"flickr-subset/{asset}" for asset in ASSETS}
    archives = graph.get(dg.AssetKey(["flickr-subset", "archives"]))
    assert (archives.group_name, archives.partitions_def.get_partition_keys()) == (
        "flickr_subset",
        ["images0", "images1"],
    )
    assert len(graph.get(dg.AssetKey(["flickr-subset", "lab_shards"])).partitions_def.get_partition_keys()) == 15
    assert {s.name for s in defs.schedules} >= {"flickr_subset_weekly_training", "flickr_subset_stats_refresh"}

    result = dg.materialize(
        [defs.get_assets_def(dg.AssetKey(["flickr-subset", "archives"]))],
        partition_key="images1",
        resources={"storage": storage_from_environ()},
    )
    (event,) = result.get_asset_materialization_events()
    dest = tmp_path / "data" / "flickr-subset" / "raw" / "images1.zip"
    assert event.materialization.metadata["url"].value == f"{mirror.as_uri()}/images1.zip", "the name's override"
    assert dest.read_bytes() == (mirror / "images1.zip").read_bytes()


def test_loading_the_definitions_warns_of_nothing() -> None:
    """The one beta parameter used (``backfill_policy``) is silenced where it is used, and nothing else warns."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_definitions()
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


# Dagster's own Pipes session asks the context for the deprecated ``run_id``; nothing of ours calls it.
@pytest.mark.filterwarnings("ignore:AssetExecutionContext.run_id is deprecated:DeprecationWarning")
def test_a_staged_plan_through_dagster_logs_each_stage_and_reports_where_it_stands(
    tmp_path, vocabulary_dir: Path
) -> None:
    sample_dataset(tmp_path / "sample", vocabulary_dir, n_images=72, shard_size=24, size=32)
    key = dg.AssetKey(["sample", "colorizer"])
    (asset,) = [a for a in build_dataset_assets(load_dataset_spec("sample")) if key in a.keys]
    plan = "plan={subsets: 2, stages: 2, epochs_per_stage: 1}"
    overrides = [plan, "image_size=32", "max_steps=null", "snapshot_every=0", "tensorboard=false"]
    run_config = {"ops": {asset.op.name: {"config": {"train_config": "ci", "overrides": overrides}}}}
    env = {"TAGCOLOR_DATA_DIR": str(tmp_path)}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset],
            resources={"storage": storage_from_environ(env), "pipes": dg.PipesSubprocessClient()},
            run_config=run_config,
            instance=instance,
        )
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    boundaries = [message for message in messages if message.startswith("stage ")]
    assert [message.split(":")[0] for message in boundaries] == ["stage 1 of 2", "stage 2 of 2"]
    assert "subset 2 (shards [1])" in boundaries[1]
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["plan_progress"].value == "stage 2 of 2 (subset 2), done"
