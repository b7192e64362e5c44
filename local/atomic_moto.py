"""moto's server handling one request at a time, so that its conditional writes are atomic.

moto's threaded server applies a DynamoDB conditional update without a lock: two environments
racing for the refresh lease on an empty item can both win, which DynamoDB never allows for one
item (the loser's exchange would be an upstream call AWS would not see). ``MotoServer`` runs
``python -m local.atomic_moto -H HOST -p PORT`` (port 0: a free one; it prints ``READY <port>``);
``--as-is`` (``MotoServer(serialized=False)``, ``bench.run --moto-as-is``) keeps moto's own
behaviour. moto holds the GIL for nearly all of a request anyway, so throughput is about the same.
moto also makes an RSA key pair for every KMS key (65 ms, most of the cost of a test's stack),
though only asymmetric keys use one: a symmetric key's pair is made only if something asks.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from moto.kms import models as kms
from moto.moto_server import werkzeug_app as moto
from werkzeug.serving import make_server
from werkzeug.test import run_wsgi_app

from local.process import serve


class Serialized:
    """A WSGI middleware: one request inside the application at a time."""

    def __init__(self, app: WSGIApplication) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # Buffered: the body too is made inside the lock, as a lazy iterable may read the state.
        with self._lock:
            body, status, headers = run_wsgi_app(self._app, environ, buffered=True)
        start_response(status, headers.to_wsgi_list())
        return body


class LazyPrivateKey:
    """``make(spec)``, called when the key is first used."""

    def __init__(self, make: Callable[[str], Any], spec: str) -> None:
        self._make, self._spec = make, spec

    def __getattr__(self, name: str) -> Any:
        if "_key" not in self.__dict__:
            self._key = self._make(self._spec)
        return getattr(self._key, name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local.atomic_moto")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=0)
    parser.add_argument("--as-is", action="store_true", help="moto's own, unserialized server")
    args = parser.parse_args(argv)
    make = vars(kms)["generate_private_key"]
    vars(kms)["generate_private_key"] = lambda spec: (
        LazyPrivateKey(make, spec) if spec == "SYMMETRIC_DEFAULT" else make(spec)
    )
    app: WSGIApplication = moto.DomainDispatcherApplication(moto.create_backend_app)
    if not args.as_is:
        app = Serialized(app)
    handler = moto.MotoRequestHandler
    server = make_server(args.host, args.port, app, threaded=True, request_handler=handler)
    # moto builds some ARNs and URLs from it, as `python -m moto.server` sets it.
    os.environ.setdefault("MOTO_PORT", str(server.port))
    serve(server)


if __name__ == "__main__":
    main()
