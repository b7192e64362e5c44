"""Server child processes (the moto server, the Igni stub): ``python -m MODULE``, ready once it
prints ``READY <port>``, its log in a file (or the terminal), and gone when its parent dies."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from werkzeug.serving import BaseWSGIServer

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S, STOP_TIMEOUT_S = 20.0, 10.0


def die_with_parent() -> None:
    """``preexec_fn``: on Linux, SIGTERM the child when its parent dies (a SIGKILLed pytest or
    `make local` cannot clean up). Linux ties it to the spawning *thread*, so spawn children from
    a long-lived one (the main one)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def temp_log(name: str) -> Path:
    """A child server's default log file: in the temporary directory, named after this process."""
    return Path(tempfile.gettempdir()) / f"{name}-{os.getpid()}.log"


def serve(server: BaseWSGIServer) -> None:
    """The child's side: say ``READY <port>``, then send stdout to stderr (the log), so that a
    pipe nobody reads any more can never fill up and stall the server; serve until signalled."""
    # SystemExit stops serve_forever, whose finally closes the socket.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: sys.exit(0))
    print(f"READY {server.port}", flush=True)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    server.serve_forever(poll_interval=0.2)


class ServerProcess(subprocess.Popen[bytes]):
    """``python -m module *args`` from the repository root, started and waited for; leaving a
    ``with`` block stops it. ``log_path`` None: the child's log goes to this process's stderr."""

    def __init__(
        self, module: str, *args: str, log_path: Path | None, env: dict[str, str] | None = None
    ) -> None:
        self._log = log_path.open("ab") if log_path else None
        super().__init__(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=die_with_parent,  # safe: no threads are touched before exec
        )
        ready = self.stdout and select.select([self.stdout], [], [], START_TIMEOUT_S)[0]
        line = self.stdout.readline().decode().strip() if self.stdout and ready else ""
        if not (line.startswith("READY ") and line[6:].isdigit()):
            self.stop()
            tail = log_path.read_bytes()[-4000:].decode("utf-8", "replace") if log_path else ""
            raise RuntimeError(
                f"{module} did not print READY <port> within {START_TIMEOUT_S:.0f} s (got "
                f"{line!r}, exit {self.returncode}); its log {log_path}:\n{tail}"
            )
        self.port = int(line[6:])

    def stop(self) -> None:
        """SIGTERM (after SIGCONT: a stopped process cannot exit), then SIGKILL if need be."""
        self.send_signal(signal.SIGCONT)  # a no-op once it has exited, as terminate and kill
        self.terminate()
        try:
            self.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait(timeout=STOP_TIMEOUT_S)
        for stream in (self.stdout, self._log):
            if stream is not None:
                stream.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
