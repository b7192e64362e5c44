"""A moto server process: the local AWS endpoint (DynamoDB, KMS, Secrets Manager), reached over
HTTP through ``AWS_ENDPOINT_URL`` as AWS would be. Its state lives in the process's memory:
:meth:`MotoServer.restart` comes back on the same port with no tables, keys or secrets.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from pathlib import Path

from local.process import ServerProcess, temp_log

DEFAULT_HOST = "127.0.0.1"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now (another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(eq=False)
class MotoServer:
    """``python -m local.atomic_moto`` (moto's server, serialized) as a child on loopback."""

    host: str = DEFAULT_HOST
    port: int = 0
    _: dataclasses.KW_ONLY
    # moto logs every request, to a file that also tells what happened when a test fails.
    log_path: Path = dataclasses.field(default_factory=lambda: temp_log("moto-server"))
    # moto's threaded server can let two conditional writes on one item both succeed,
    # which DynamoDB never does; local.atomic_moto serializes requests so that it cannot.
    serialized: bool = True
    _proc: ServerProcess | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("moto server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the server (on the port it had, if it ran before); returns its endpoint URL."""
        if self.running:
            return self.endpoint_url
        # moto's server must not forward to a real AWS endpoint or read a user's AWS config.
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        env |= {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
        args = ["-H", self.host, "-p", str(self.port), *([] if self.serialized else ["--as-is"])]
        self._proc = ServerProcess("local.atomic_moto", *args, log_path=self.log_path, env=env)
        self.port = self._proc.port
        return self.endpoint_url

    def freeze(self) -> None:
        """Stop the process (SIGSTOP) without closing its socket: connections are still
        accepted by the kernel and then never answered, as with a hanging AWS endpoint."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server run again (SIGCONT); a running one is left as it is."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the server and wait for it; the port is kept for :meth:`restart`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop()

    def restart(self) -> str:
        """Stop and start again on the same port. moto's state (every resource) is lost."""
        self.stop()
        return self.start()
