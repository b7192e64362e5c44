"""werkzeug's threaded HTTP server for the local API and the Igni stub, with two changes.

An answer the server gives by itself (414 URI too long, 431 header fields too large, 400 bad
request line) is JSON ``{"message": ...}`` instead of http.server's HTML page; and the
application gets the headers exactly as sent (names as written, repeats kept, in order) under
``environ["local.headers"]``: WSGI's ``HTTP_*`` keys lose what a SigV4 check and API Gateway's
multi-value headers need.
"""

from __future__ import annotations

import json
import sys
from http import HTTPStatus
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Response

HEADERS_KEY = "local.headers"


class JsonErrorHandler(WSGIRequestHandler):
    log_name = "http"
    quiet = False
    timeout = 60  # An idle keep-alive connection (or a stalled client) frees its thread.

    def make_environ(self) -> Any:
        return {**super().make_environ(), HEADERS_KEY: tuple(self.headers.items())}

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The phrase only: http.server's message can quote the malformed request line.
        body = json.dumps({"message": HTTPStatus(code).phrase}).encode()
        self.close_connection = True
        # An unparsable request line leaves http.server at HTTP/0.9: no status line, no headers.
        self.request_version = "HTTP/1.1"
        self.send_response(code)
        for name, value in ("Content-Type", "application/json"), ("Connection", "close"):
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log(self, type: str, message: str, *args: Any) -> None:
        # The request line and status only: no header (Authorization) and no body is logged.
        if not self.quiet:
            sys.stderr.write(f"{self.log_name}: {self.address_string()} {message % args}\n")


def json_response(
    status: int, body: object, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(
        json.dumps(body), status, [("Content-Type", "application/json"), *(headers or [])]
    )


def server(host: str, port: int, app: Any, *, name: str, quiet: bool) -> BaseWSGIServer:
    """A threaded server for ``app`` on host:port (0: a free port, see ``server.port``)."""
    handler = type(f"{name}Handler", (JsonErrorHandler,), {"log_name": name, "quiet": quiet})
    return make_server(host, port, app, threaded=True, request_handler=handler)
