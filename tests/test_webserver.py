"""The Dagster webserver loads the code location with every asset, check and schedule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.datasets import load_dataset_specs
from tests.helpers import REPO_ROOT, free_port, query_when_ready

DATASETS = tuple(load_dataset_specs())


def test_webserver_serves_the_whole_code_location(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"DAGSTER_HOME": str(tmp_path), "TAGCOLOR_DATA_DIR": str(tmp_path / "data")}
    command = [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    log = (tmp_path / "webserver.log").open("w")
    server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        data = query_when_ready(f"http://127.0.0.1:{port}", server)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    (entry,) = data["workspaceOrError"]["locationEntries"]
    assert entry["name"] == "tagcolor"
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    (repository,) = data["repositoriesOrError"]["nodes"]
    assets = {"/".join(node["assetKey"]["path"]): node for node in repository["assetNodes"]}
    for dataset in DATASETS:
        for name in ("archives", "tags_archive", "lab_shards", "tag_tokens", "data_stats", "colorizer", "evaluation"):
            assert f"{dataset}/{name}" in assets
        checks = {
            name: [c["name"] for c in assets[f"{dataset}/{name}"]["assetChecksOrError"]["checks"]]
            for name in ("lab_shards", "tag_tokens", "data_stats")
        }
        assert checks == {
            "lab_shards": ["shard_contract"],
            "tag_tokens": ["tokens_in_range"],
            "data_stats": ["tokens_align_with_images"],
        }
    schedules = {s["name"]: s["cronSchedule"] for s in repository["schedules"]}
    assert schedules["mirflickr1m_weekly_training"] == "0 3 * * 1"
    assert {f"{d}_stats_refresh" for d in DATASETS} <= set(schedules)
