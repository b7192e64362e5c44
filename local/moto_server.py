"""A moto server process: the local KMS and Secrets Manager, reached over HTTP through
``AWS_ENDPOINT_URL`` as AWS would be (DynamoDB is DynamoDB Local's: local/dynamodb_local.py).
Its state lives in the process's memory: :meth:`MotoServer.restart` comes back on the same port
with no keys or secrets.

``python -m local.moto_server -H HOST -p PORT`` is the child (port 0: a free one; it prints
``READY <port>``): moto's own threaded server, but for one thing. moto makes an RSA key pair
for every KMS key (65 ms, most of the cost of a test's stack), though only asymmetric keys use
one: here a symmetric key's pair is made only if something asks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from local.process import ServerProcess, serve, temp_log

DEFAULT_HOST = "127.0.0.1"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now (another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(eq=False)
class MotoServer:
    """``python -m local.moto_server`` as a child on loopback."""

    host: str = DEFAULT_HOST
    port: int = 0
    _: dataclasses.KW_ONLY
    # moto logs every request, to a file that also tells what happened when a test fails; by
    # default a temporary one, removed when the server stops.
    log_path: Path | None = None
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
        env |= {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
        args = ["-H", self.host, "-p", str(self.port)]
        log, temporary = self.log_path or temp_log("moto-server"), self.log_path is None
        self._proc = ServerProcess(
            "local.moto_server", *args, log_path=log, env=env, temporary_log=temporary
        )
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


class LazyPrivateKey:
    """``make(spec)``, called when the key is first used."""

    def __init__(self, make: Callable[[str], Any], spec: str) -> None:
        self._make, self._spec = make, spec

    def __getattr__(self, name: str) -> Any:
        if "_key" not in self.__dict__:
            self._key = self._make(self._spec)
        return getattr(self._key, name)


def main(argv: Sequence[str] | None = None) -> None:
    from moto.kms import models as kms
    from moto.moto_server import werkzeug_app as moto
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(prog="python -m local.moto_server")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=0)
    args = parser.parse_args(argv)
    make = vars(kms)["generate_private_key"]
    vars(kms)["generate_private_key"] = lambda spec: (
        LazyPrivateKey(make, spec) if spec == "SYMMETRIC_DEFAULT" else make(spec)
    )
    app = moto.DomainDispatcherApplication(moto.create_backend_app)
    handler = moto.MotoRequestHandler
    server = make_server(args.host, args.port, app, threaded=True, request_handler=handler)
    # moto builds some ARNs and URLs from it, as `python -m moto.server` sets it.
    os.environ.setdefault("MOTO_PORT", str(server.port))
    serve(server)


if __name__ == "__main__":
    main()
