"""API Gateway (REST API, AWS_IAM, Lambda proxy) on loopback, in its order: framing (JSON errors
of the server itself), routing (an undeclared path or method is 403 Missing Authentication
Token, signed or not), SigV4 and the local IAM policy, then the proxy event, the handler
in-process, and its answer translated back. Served by werkzeug (docs/local.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from werkzeug.datastructures import Headers, MultiDict
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Response

from local.cfn_template import Route, api_routes, load_template
from local.gateway.auth import LocalSigV4Verifier, strip_stage
from local.gateway.sigv4 import LOCAL_ACCOUNT_ID, MISSING_TOKEN, AuthError
from local.lambda_context import FakeLambdaContext

DEFAULT_STAGE = "v1"
DEFAULT_API_ID = "local0api1"
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[dict[str, Any], Any], Any]
Match = tuple[str, dict[str, str] | None]  # a declared resource and the request's pathParameters


# werkzeug's server (the Igni stub's too), answering its own errors in JSON and handing the
# application the headers as sent (names as written, repeats, in order), which SigV4 and
# multi-value headers need and WSGI's HTTP_* keys lose.
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
        # An unparsable request line leaves http.server at HTTP/0.9: no status line, no headers.
        self.request_version = "HTTP/1.1"
        self.send_response(code)
        for name, value in ("Content-Type", "application/json"), ("Connection", "close"):
            self.send_header(name, value)  # Connection: close also makes http.server close it
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s" %s', self.requestline, code)  # werkzeug's would add colours

    def log(self, type: str, message: str, *args: Any) -> None:
        # The request line and status only: no header (Authorization) and no body is logged.
        if not self.quiet:
            sys.stderr.write(f"{self.log_name}: {self.address_string()} {message % args}\n")


def json_response(
    status: int, body: object, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(json.dumps(body), status, headers, content_type="application/json")


def server(host: str, port: int, app: Any, *, name: str, quiet: bool) -> BaseWSGIServer:
    """A threaded server for ``app`` on host:port (0: a free port, see ``server.port``)."""
    handler = type(f"{name}Handler", (JsonErrorHandler,), {"log_name": name, "quiet": quiet})
    return make_server(host, port, app, threaded=True, request_handler=handler)


@dataclass(frozen=True)
class HttpRequest:
    """One request as received: raw path and query, headers in order with repeats kept."""

    method: str
    raw_path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client_ip: str
    server_port: int


def match_route(routes: Sequence[Route], method: str, path: str) -> Match | None:
    """(resource, pathParameters) of the declared route for ``method`` and ``path``, else None:
    as in API Gateway the resource is found first, a literal segment before a path variable
    before a greedy ``{proxy+}``; then the method must be declared on it (or ANY)."""
    for resource in sorted({r for _, r in routes}, key=lambda r: (r.count("+}"), r.count("{"))):
        pattern = re.sub(r"\\\{(\w+)\\\+\\\}", r"(?P<\1>.+)", re.escape(resource))
        match = re.fullmatch(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern), path)
        if match:
            if not {method, "ANY"} & {m for m, r in routes if r == resource}:
                return None
            return resource, (match.groupdict() or None)
    return None


class MalformedProxyResponse(ValueError):
    """The handler's answer is not a valid Lambda proxy response (API Gateway answers 502)."""


def proxy_response_to_http(result: object) -> Response:
    """The HTTP answer API Gateway makes of a proxy response; MalformedProxyResponse if none."""
    if not isinstance(result, dict):
        raise MalformedProxyResponse(f"expected an object, got {type(result).__name__}")
    status = result.get("statusCode")
    status = int(status) if isinstance(status, str) and status.isdigit() else status
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise MalformedProxyResponse(f"statusCode must be an HTTP status, got {status!r}")
    body = result.get("body")
    if body is not None and not isinstance(body, str):
        raise MalformedProxyResponse(f"body must be a string, got {type(body).__name__}")
    raw = (body or "").encode("utf-8")
    if result.get("isBase64Encoded") and body:
        try:
            raw = base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise MalformedProxyResponse("isBase64Encoded but body is not base64") from exc
    multi, single = result.get("multiValueHeaders") or {}, result.get("headers") or {}
    if not isinstance(multi, dict) or not isinstance(single, dict):
        raise MalformedProxyResponse("headers and multiValueHeaders must be objects")
    if any(not isinstance(values, list) for values in multi.values()):
        raise MalformedProxyResponse("multiValueHeaders values must be lists")
    # API Gateway merges the two, multiValueHeaders winning; the server frames the answer itself.
    framing = {"content-length", "transfer-encoding", "connection"}
    pairs = [(n, v) for n, values in multi.items() for v in values if n.lower() not in framing]
    taken = framing | {n.lower() for n in multi}
    pairs += [(n, v) for n, v in single.items() if n.lower() not in taken]
    headers = Headers()
    for name, value in pairs:
        if not isinstance(value, str | int | float):
            raise MalformedProxyResponse(f"header {name!r} has a non-scalar value {value!r}")
        headers.add(name, value if isinstance(value, str) else json.dumps(value))  # true, not True
    headers.setdefault("Content-Type", "application/json")
    return Response(raw, status, headers)


def _framing_error(method: str, encoding: str, length: str) -> tuple[int, str] | None:
    if method not in METHODS:
        return 501, f"Unsupported method {method!r}"
    if encoding == "chunked":
        return 411, "A chunked request body is not supported: send Content-Length"
    if encoding:
        return 501, f"Unsupported Transfer-Encoding {encoding!r}"
    if not length.isdigit():
        return 400, "Bad Content-Length"
    if int(length) > MAX_PAYLOAD_BYTES:
        return 413, "Request Too Long"
    return None


def _refusal(error: AuthError) -> Response:
    return json_response(error.status, error.body, list(error.headers.items()))


class ApiServer:
    """Serve ``handler`` the way API Gateway invokes a proxy-integrated Lambda function."""

    def __init__(
        self,
        handler: Handler,
        verifier: LocalSigV4Verifier,
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        account_id: str = LOCAL_ACCOUNT_ID,
        context_factory: Callable[[], FakeLambdaContext] = FakeLambdaContext,
        quiet: bool = False,
    ) -> None:
        """The stage and API id are the verifier's; the routes template.yaml's."""
        self.handler, self.verifier, self.context_factory = handler, verifier, context_factory
        self.host, self.port, self.quiet, self.account_id = host, port, quiet, account_id
        self.stage, self.api_id = verifier.stage, verifier.api_id
        self.routes = api_routes(load_template())
        # One Lambda execution environment handles one invocation at a time.
        self._invoke_lock = threading.Lock()
        self._http: BaseWSGIServer | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        """The WSGI application."""
        request_id = str(uuid.uuid4())
        response = self.handle(environ, request_id)
        response.headers["x-amzn-RequestId"] = request_id
        return response(environ, start_response)

    def handle(self, environ: dict[str, Any], request_id: str) -> Response:
        method, length = environ["REQUEST_METHOD"], environ.get("CONTENT_LENGTH") or "0"
        encoding = environ.get("HTTP_TRANSFER_ENCODING", "").strip().lower()
        error = _framing_error(method, encoding, length)
        if error is not None:  # The connection closes: a body may be left unread.
            return json_response(error[0], {"message": error[1]}, [("Connection", "close")])
        raw_path, _, query = environ["REQUEST_URI"].partition("?")
        resource_path = strip_stage(urllib.parse.unquote(raw_path), self.stage)
        matched = match_route(self.routes, method, resource_path)
        if matched is None:
            return _refusal(AuthError(MISSING_TOKEN, "MissingAuthenticationTokenException"))
        body = environ["wsgi.input"].read(int(length)) if int(length) else b""
        client = (environ["REMOTE_ADDR"], int(environ["SERVER_PORT"]))
        request = HttpRequest(method, raw_path, query, environ[HEADERS_KEY], body, *client)
        caller = self.verifier.check(
            method, raw_path, query, request.headers, body, source_ip=request.client_ip
        )
        if isinstance(caller, AuthError):
            return _refusal(caller)
        identity = caller.as_request_context_identity()
        return self.invoke(self.request_to_event(request, identity, matched, request_id))

    def request_to_event(
        self, request: HttpRequest, identity: Mapping[str, Any], match: Match, request_id: str
    ) -> dict[str, Any]:
        """The REST API (payload version 1.0) Lambda proxy event this API hands its function."""
        resource, path_parameters = match
        now = datetime.now(UTC)
        path = strip_stage(urllib.parse.unquote(request.raw_path), self.stage)
        headers = MultiDict(request.headers).to_dict(flat=False)
        added = {
            "X-Amzn-Trace-Id": f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}",
            "X-Forwarded-For": request.client_ip,
            "X-Forwarded-Port": str(request.server_port),
            "X-Forwarded-Proto": "http",
        }
        for name, value in added.items():  # as API Gateway adds them on the way
            existing = next((n for n in headers if n.lower() == name.lower()), None)
            if existing is None:
                headers[name] = [value]
            elif name == "X-Forwarded-For":
                headers[existing] = [f"{headers[existing][-1]}, {value}"]
        query = urllib.parse.parse_qs(request.query, keep_blank_values=True)
        body, is_base64 = None, False
        if request.body:
            try:
                body = request.body.decode("utf-8")
            except UnicodeDecodeError:
                body, is_base64 = base64.b64encode(request.body).decode("ascii"), True
        host = next((v for n, v in request.headers if n.lower() == "host"), f"{self.api_id}.local")
        return {
            "resource": resource,
            "path": path,
            "httpMethod": request.method,
            "headers": {n: v[-1] for n, v in headers.items()},
            "multiValueHeaders": headers,
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": path_parameters,
            "stageVariables": None,
            "requestContext": {
                "resourceId": hashlib.sha256(resource.encode()).hexdigest()[:6],
                "resourcePath": resource,
                "httpMethod": request.method,
                "extendedRequestId": base64.b64encode(secrets.token_bytes(12)).decode()[:16],
                "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "path": f"/{self.stage}{path}",
                "accountId": self.account_id,
                "protocol": "HTTP/1.1",
                "stage": self.stage,
                "domainPrefix": host.split(".")[0].split(":")[0],
                "requestTimeEpoch": int(now.timestamp() * 1000),
                "requestId": request_id,
                "identity": dict(identity),
                "domainName": host,
                "deploymentId": "local0",
                "apiId": self.api_id,
            },
            "body": body,
            "isBase64Encoded": is_base64,
        }

    def invoke(self, event: dict[str, Any]) -> Response:
        """Run the handler on a proxy event as Lambda would and translate its answer."""
        with self._invoke_lock:
            context = self.context_factory()
            started = time.monotonic()
            try:
                # Lambda hands the function JSON and serialises its answer to JSON: round-trip
                # both so that anything the real service would choke on fails here too.
                result = self.handler(json.loads(json.dumps(event)), context)
                elapsed = time.monotonic() - started
                if elapsed > context.timeout_s:
                    raise TimeoutError(f"Task timed out after {elapsed:.2f} seconds")  # noqa: TRY301
                return proxy_response_to_http(json.loads(json.dumps(result)))
            except Exception:
                if not self.quiet:
                    sys.stderr.write(f"api: 502, the function failed:\n{traceback.format_exc()}")
                return json_response(502, {"message": "Internal server error"})

    def start(self) -> int:
        """Listen, and serve in a daemon thread; returns the port."""
        self._http = server(self.host, self.port, self, name="api", quiet=self.quiet)
        self.port = self._http.port
        threading.Thread(target=self._http.serve_forever, args=(0.1,), daemon=True).start()
        return self.port

    def stop(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()  # returns once serve_forever has
            http.server_close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
