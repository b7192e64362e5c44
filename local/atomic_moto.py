"""moto's server handling one request at a time, so that its conditional writes are atomic.

moto's threaded server evaluates a DynamoDB ``ConditionExpression`` and applies the update
without a lock: two environments that race for the refresh lease on an empty item can both be
told they won (two ``UpdateItem`` calls with ``attribute_not_exists(lease_until)`` both
succeed), which DynamoDB never does for one item. The vendor's fencing then refuses the loser's
commit, but its exchange has been made: an upstream call that AWS would not see. The benchmark
measures the service, not that race, so by default it runs moto through this module
(``python -m local.atomic_moto -H 127.0.0.1 -p PORT``, the options of ``python -m moto.server``);
``MotoServer(serialized=False)`` and ``python -m bench.run --moto-as-is`` keep moto's own server.

Connections are still accepted by many threads; only the application runs under one lock.
moto's Python code holds the GIL for nearly all of a request anyway, so throughput is about
the same.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Serialized:
    """A WSGI middleware: one request inside the application at a time."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        with self._lock:
            result = self._app(environ, start_response)
            try:
                # The body is produced inside the lock too: a lazy iterable could still be
                # reading the backend's state.
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if callable(close):
                    close()


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local.atomic_moto")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    # moto builds some ARNs and URLs from it, as `python -m moto.server` sets it.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGINT, _exit)
    signal.signal(signal.SIGTERM, _exit)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        Serialized(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
