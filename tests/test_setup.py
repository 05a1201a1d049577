"""`make setup` brings the Debian packages the project needs, or stops at once naming the command to run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.helpers import REPO_ROOT


def test_without_root_or_sudo_setup_stops_at_once_naming_the_command(tmp_path: Path) -> None:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "sudo").write_text("#!/bin/sh\nexit 1\n")  # a sudo that asks for a password: `sudo -n` fails
    (stubs / "sudo").chmod(0o755)
    tmp_path.chmod(0o755)
    venv = tmp_path / "venv"
    command = ["make", "setup", "DEBIAN_PACKAGES=tagcolor-no-such-package", f"VENV={venv}"]
    if os.geteuid() == 0:  # as an unprivileged user, as on a workstation
        command = [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = os.environ | {"PATH": f"{stubs}:{os.environ['PATH']}"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "sudo apt-get install -y tagcolor-no-such-package" in done.stderr, done.stderr
    assert not venv.exists(), "stopped before any long work (the virtualenv)"
