"""Server child processes (the moto server, the Igni stub): ``python -m MODULE``, ready once it
prints ``READY <port>``, its log in a file (or the terminal), and gone when its parent dies."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 10.0


def die_with_parent() -> None:
    """``preexec_fn``: on Linux, SIGTERM the child when its parent dies (a SIGKILLed pytest or
    `make local` cannot clean up). Linux ties it to the spawning *thread*, so spawn children from
    a long-lived one (the main one)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def announce(port: int) -> None:
    """The child's side: say ``READY <port>``, then send stdout to stderr (the log), so that a
    pipe nobody reads any more can never fill up and stall the server."""
    print(f"READY {port}", flush=True)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


class ServerProcess:
    """``python -m module *args`` from the repository root, started and waited for."""

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        *,
        log_path: Path | None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        """``log_path`` None: the child's log goes to this process's stderr."""
        self.log_path = log_path
        self._log = log_path.open("ab") if log_path else None
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads are touched before exec)
        )
        stdout = self._proc.stdout
        ready = stdout is not None and select.select([stdout], [], [], start_timeout)[0]
        line = stdout.readline().decode().strip() if stdout and ready else ""
        if not (line.startswith("READY ") and line[6:].isdigit()):
            self.stop()
            raise RuntimeError(
                f"{module} did not print READY <port> within {start_timeout:.0f} s (got "
                f"{line!r}, exit {self._proc.returncode}); its log {log_path}:\n{self.log_tail()}"
            )
        self.port = int(line[6:])

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            self._proc.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT: a stopped process cannot exit), then SIGKILL if need be."""
        self.signal(signal.SIGCONT)
        if self.running:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=STOP_TIMEOUT_S)
        for stream in (self._proc.stdout, self._log):
            if stream is not None:
                stream.close()

    def log_tail(self, max_bytes: int = 4000) -> str:
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError), self.log_path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - max_bytes))
            return fh.read().decode("utf-8", "replace")
        return ""
