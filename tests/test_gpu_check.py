"""`make gpu-check`: on a machine without a usable GPU it says so and what to do, and does not fail; on the CPU
(``--device cpu``) it runs its whole path at its smallest."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT


def test_the_gpu_check_without_a_gpu_says_what_to_do_and_exits_0() -> None:
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # no GPU for this process, whatever the machine has
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("gpu check: no CUDA GPU visible to torch"), done.stdout
    assert "install a CUDA build of torch" in done.stdout and "make gpu-check" in done.stdout
    assert "--device cpu" in done.stdout, "it names the CPU run that checks the script itself"


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu_at_its_smallest() -> None:
    smallest = ["--device", "cpu", "--steps", "1", "--warmup", "1", "--image-size", "32", "--batch-size", "2"]
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", *smallest],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in (
        r"gpu check on cpu: batch 2, 32², n_critic 5, bf16",
        r"compile off: [\d.]+ steps/s, [\d.]+ images/s",
        r"compile on : [\d.]+ steps/s, [\d.]+ images/s",
        r"critic +[\d.]+ ms +[\d.]+%",
        r"gradient penalty +[\d.]+ ms",
        r"model FLOPs [\d.]+ TFLOP/step",
    ):
        assert re.search(line, done.stdout), f"{line!r} not in\n{done.stdout}"
