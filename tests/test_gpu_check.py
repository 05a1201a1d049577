"""`make gpu-check` on a machine without a usable GPU says so and what to do, and does not fail."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_the_gpu_check_without_a_gpu_says_what_to_do_and_exits_0() -> None:
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # no GPU for this process, whatever the machine has
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("gpu check: no CUDA GPU visible to torch"), done.stdout
    assert "install a CUDA build of torch" in done.stdout and "make gpu-check" in done.stdout
    assert "--device cpu" in done.stdout, "it names the CPU run that checks the script itself"
