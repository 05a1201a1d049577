"""The Dagster webserver loads the code location with every asset, check and schedule."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from pipeline.datasets import load_dataset_specs
from tests.conftest import REPO_ROOT

QUERY = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } }
        schedules { name cronSchedule }
      }
    }
  }
}
"""

DATASETS = tuple(load_dataset_specs())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query_when_ready(url: str, server: subprocess.Popen, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"dagster-webserver exited with {server.returncode}"
        try:
            response = requests.post(f"{url}/graphql", json={"query": QUERY}, timeout=10)
            if response.ok:
                data = response.json()["data"]
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"] is not None:
                    return data
        except requests.ConnectionError:
            pass
        time.sleep(1.0)
    raise AssertionError("dagster-webserver did not answer in time")


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
