"""An AWS endpoint in front of the moto server that can be told to refuse every call.

Point a service's endpoint variable at it (``AWS_ENDPOINT_URL_SECRETS_MANAGER``). While
``code`` is None it passes each request through to its target (the moto server) unchanged;
once ``code`` is set, botocore gets exactly what the real service answers when it refuses: a
400 with ``{"__type": code}`` (AccessDeniedException, ResourceNotFoundException,
ThrottlingException, DecryptionFailure...). Every refused request is counted.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import urllib3
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class AwsErrorEndpoint:
    """A werkzeug server in a thread of this process, passing through or refusing."""

    def __init__(self, target: str, status: int = 400) -> None:
        self.target = target.rstrip("/")
        self.code: str | None = None
        self.status = status
        self.refused = 0
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(5.0))
        self._lock = threading.Lock()
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=_Quiet
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> AwsErrorEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        data = request.get_data()
        with self._lock:
            code = self.code
            if code is not None:
                self.refused += 1
        if code is None:
            upstream = self._http.request(
                request.method,
                self.target + request.full_path.rstrip("?"),
                body=data,
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            )
            headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP]
            return Response(upstream.data, status=upstream.status, headers=headers)(
                environ, start_response
            )
        body = json.dumps({"__type": code, "message": f"refused by the test ({code})"})
        response = Response(body, status=self.status, content_type="application/x-amz-json-1.1")
        response.headers["x-amzn-ErrorType"] = code
        return response(environ, start_response)
