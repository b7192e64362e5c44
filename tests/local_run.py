"""Start `make local` (python -m local.run) as a process on free ports, for end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def start_local_run(
    *extra_args: str, env: Mapping[str, str], state_file: Path, timeout: float
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The running process and the state it wrote; fails the test if it does not come up."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.run",
            "--port",
            "0",
            "--moto-port",
            "0",
            "--stub-port",
            "0",
            "--ddb-port",
            "0",
            "--state-file",
            str(state_file),
            *extra_args,
        ],
        cwd=REPO_ROOT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not state_file.exists():
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"make local exited early:\n{output}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("make local did not write its state file")
        time.sleep(0.1)
    state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
    return proc, state
