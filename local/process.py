"""Server child processes (the moto server, the Igni stub): ``python -m MODULE``, ready once it
prints ``READY <port>``, its log in a file (or the terminal), and gone when its parent dies."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from werkzeug.serving import BaseWSGIServer

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S, STOP_TIMEOUT_S = 20.0, 10.0


class StartError(RuntimeError):
    """A local server did not start; the message is one line that says why."""


class PortInUse(StartError):
    """Something already listens on a port a local server was told to use."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is in use")
        self.host, self.port = host, port


def check_port_free(host: str, port: int) -> None:
    """PortInUse if ``port`` (not 0) cannot be bound on ``host`` right now."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind (werkzeug and Jetty set SO_REUSEADDR): a port whose last
        # connections linger in TIME_WAIT is free for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port) from None
            raise


def last_line(path: Path | None) -> str:
    """The last line of a log that names an error, else its last line ("" if none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace") if path else ""
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or [""])[-1][:300]


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
    ``with`` block stops it. ``log_path`` None: the child's log goes to this process's stderr;
    a ``temporary_log`` is removed when the process stops. StartError if it does not start."""

    def __init__(
        self,
        module: str,
        *args: str,
        log_path: Path | None,
        env: dict[str, str] | None = None,
        temporary_log: bool = False,
    ) -> None:
        self._log = log_path.open("ab") if log_path else None
        self._log_path, self._temporary_log = log_path, temporary_log
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
            temporary, self._temporary_log = self._temporary_log, False
            self.stop()
            reason = last_line(log_path) if log_path else "see the lines above"
            if temporary and log_path is not None:
                log_path.unlink(missing_ok=True)
            raise StartError(
                f"{module} did not start within {START_TIMEOUT_S:.0f} s (exit {self.returncode})"
                f": {reason or 'it printed nothing'}"
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
        if self._temporary_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.stop()
