"""A moto server process: the local AWS endpoint (DynamoDB, KMS, Secrets Manager), reached over
HTTP through ``AWS_ENDPOINT_URL`` as AWS would be. Its state lives in the process's memory:
:meth:`MotoServer.restart` comes back on the same port with no tables, keys or secrets.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def die_with_parent() -> None:
    """``preexec_fn`` for server children: on Linux, SIGTERM them when their parent dies (a
    SIGKILLed pytest or `make local` cannot clean up). Linux ties it to the spawning *thread*,
    so spawn them from a long-lived one (the main one)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now (another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def answers_http(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something at host:port answers an HTTP request with any status line."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        # The moto API dashboard path is cheap and has no side effects (unlike /moto-api/reset).
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class MotoServerError(RuntimeError):
    """The moto server did not come up (or went away); the message carries its log's tail."""


class MotoServer:
    """A ``python -m moto.server`` child process bound to loopback."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        log_path: Path | None = None,
        python: str = sys.executable,
        start_timeout: float = START_TIMEOUT_S,
        serialized: bool = True,
    ) -> None:
        # moto's threaded server can let two conditional writes on one item both succeed,
        # which DynamoDB never does; local.atomic_moto serializes requests so that it cannot.
        self.module = "local.atomic_moto" if serialized else "moto.server"
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.python = python
        self.start_timeout = start_timeout
        # moto logs every request; a pipe nobody reads would fill up and stall the server, so
        # its output goes to a file, which also tells what happened when a test fails.
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"moto-server-{os.getpid()}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise MotoServerError("moto server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the server and wait until it answers; returns its endpoint URL."""
        if self.running:
            return self.endpoint_url
        port = self.port or self.requested_port or free_port(self.host)
        if answers_http(self.host, port, timeout=0.5):
            raise MotoServerError(f"port {port} on {self.host} is already in use")
        self.port = port
        self._log = self.log_path.open("ab")
        env = dict(os.environ)
        # moto's server must not forward to a real AWS endpoint or read a user's AWS config.
        env.pop("AWS_ENDPOINT_URL", None)
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        self._proc = subprocess.Popen(
            [self.python, "-m", self.module, "-H", self.host, "-p", str(port)],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads are touched before exec)
        )
        self._wait_until_up()
        return self.endpoint_url

    def _wait_until_up(self) -> None:
        if self.port is None:
            raise MotoServerError("no port chosen")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise MotoServerError(
                    f"moto server exited with {self._proc.returncode} on start-up:\n"
                    + self.log_tail()
                )
            if answers_http(self.host, self.port, timeout=0.5):
                return
            time.sleep(0.1)
        self.stop()
        raise MotoServerError(
            f"moto server on {self.host}:{self.port} did not answer within "
            f"{self.start_timeout:.0f} s:\n{self.log_tail()}"
        )

    def freeze(self) -> None:
        """Stop the process (SIGSTOP) without closing its socket: connections are still
        accepted by the kernel and then never answered, as with a hanging AWS endpoint."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server run again (SIGCONT); a running one is left as it is."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the server and wait for it; the port is kept for :meth:`restart`."""
        self.thaw()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> str:
        """Stop and start again on the same port. moto's state (every resource) is lost."""
        self.stop()
        # Wait until the old listener is gone so the new process can bind the same port.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.port is not None and answers_http(self.host, self.port, timeout=0.2):
            if time.monotonic() > deadline:
                raise MotoServerError(f"port {self.port} still answers after stop")
            time.sleep(0.05)
        return self.start()

    def log_tail(self, max_bytes: int = 4000) -> str:
        with contextlib.suppress(OSError), self.log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", "replace")
        return ""

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
