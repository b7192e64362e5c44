"""What API Gateway (REST API, Lambda proxy integration, AWS_IAM auth) does, on loopback.

Each HTTP request becomes a version 1.0 proxy event, the handler runs in-process on it with a
fresh fake Lambda context, and its proxy response becomes the HTTP answer. The three steps are
separate functions so each can be tested alone and replaced:

* ``identity_resolver(request)`` decides who is calling. API Gateway does this with SigV4 under
  AWS_IAM; the default resolver here trusts every request and returns the configured local
  identity. A SigV4-verifying resolver slots in without other changes: it returns either the
  ``requestContext.identity`` dict for the verified caller or an :class:`HttpResponse` (a 403)
  that is sent without invoking the handler.
* :func:`request_to_event` builds the proxy event.
* :func:`proxy_response_to_http` checks and translates the handler's answer; a malformed one is a
  502 ``{"message": "Internal server error"}``, as API Gateway answers.

Differences from API Gateway, on purpose: requests to paths or methods the template does not
route are still passed to the handler (so its 404/405 answers can be tried) unless
``strict_routes`` is set, in which case they get API Gateway's 403 "Missing Authentication
Token". The 29 s integration timeout cannot pre-empt an in-process call; a call that outlives the
function's timeout is answered 502 afterwards, as Lambda's kill would be.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from local.lambda_context import FakeLambdaContext

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
DEFAULT_STAGE = "v1"
DEFAULT_API_ID = "local0api1"
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit.

Handler = Callable[[dict[str, Any], Any], Any]
Route = tuple[str, str]  # (METHOD or ANY, resource path such as /token or /items/{id})


@dataclass(frozen=True)
class LocalIdentity:
    """The IAM caller that API Gateway would have authenticated from the SigV4 signature."""

    account_id: str = "123456789012"
    user_arn: str = "arn:aws:iam::123456789012:user/local-developer"
    # What API Gateway puts in caller/user: the IAM user's unique id (AIDA...), or for an
    # assumed role "AROA...:session-name".
    user_id: str = "AIDAQLOCALDEVELOPER01"
    access_key: str = "AKIAQLOCALDEVELOPER1"

    def event_identity(self, source_ip: str, user_agent: str | None) -> dict[str, Any]:
        """``requestContext.identity`` as API Gateway fills it for an AWS_IAM-signed request."""
        return {
            "cognitoIdentityPoolId": None,
            "accountId": self.account_id,
            "cognitoIdentityId": None,
            "caller": self.user_id,
            "sourceIp": source_ip,
            "principalOrgId": None,
            "accessKey": self.access_key,
            "cognitoAuthenticationType": None,
            "cognitoAuthenticationProvider": None,
            "userArn": self.user_arn,
            "userAgent": user_agent,
            "user": self.user_id,
        }


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request as received, with what a SigV4 verifier needs kept raw."""

    method: str
    target: str  # The request target exactly as sent: raw path and query.
    headers: tuple[tuple[str, str], ...]  # In order, names as sent, duplicates kept.
    body: bytes
    client_ip: str
    server_port: int

    @property
    def raw_path(self) -> str:
        return urllib.parse.urlsplit(self.target).path or "/"

    @property
    def path(self) -> str:
        return urllib.parse.unquote(self.raw_path)

    @property
    def query(self) -> str:
        return urllib.parse.urlsplit(self.target).query

    def header(self, name: str) -> str | None:
        """The last value of a header, case-insensitively (API Gateway keeps the last one)."""
        found = None
        for key, value in self.headers:
            if key.lower() == name.lower():
                found = value
        return found


@dataclass
class HttpResponse:
    """An HTTP answer: status, headers in order (duplicates allowed), body bytes."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def json(
        cls, status: int, obj: object, headers: Sequence[tuple[str, str]] = ()
    ) -> HttpResponse:
        return cls(
            status, [("Content-Type", "application/json"), *headers], json.dumps(obj).encode()
        )

    def header(self, name: str) -> str | None:
        found = None
        for key, value in self.headers:
            if key.lower() == name.lower():
                found = value
        return found


IdentityResolver = Callable[[HttpRequest], dict[str, Any] | HttpResponse]


def static_identity_resolver(identity: LocalIdentity) -> IdentityResolver:
    """Trust every request and attribute it to ``identity`` (no signature is checked)."""

    def resolve(request: HttpRequest) -> dict[str, Any] | HttpResponse:
        return identity.event_identity(request.client_ip, request.header("User-Agent"))

    return resolve


def internal_server_error() -> HttpResponse:
    """API Gateway's answer when the function fails or answers something malformed."""
    return HttpResponse.json(502, {"message": "Internal server error"})


def missing_authentication_token() -> HttpResponse:
    """API Gateway's answer (under AWS_IAM) for a path or method it does not route."""
    return HttpResponse.json(403, {"message": "Missing Authentication Token"})


# --- routing ------------------------------------------------------------------------------------


def strip_stage(path: str, stage: str) -> str:
    """'/v1/token' and '/token' both mean the resource path '/token'."""
    prefix = f"/{stage}"
    if path == prefix:
        return "/"
    if path.startswith(prefix + "/"):
        return path[len(prefix) :]
    return path


def _route_regex(resource: str) -> re.Pattern[str]:
    parts = []
    for segment in resource.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("+}"):
            parts.append(f"(?P<{segment[1:-2]}>.+)")
        elif segment.startswith("{") and segment.endswith("}"):
            parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("^/" + "/".join(parts) + "$")


def _specificity(route: Route) -> tuple[int, int]:
    resource = route[1]
    return resource.count("+}"), resource.count("{")


def match_route(
    routes: Sequence[Route], method: str | None, path: str
) -> tuple[str, dict[str, str] | None] | None:
    """(resource, pathParameters) of the route for ``path`` and ``method``, else None.

    As in API Gateway, a literal segment beats a path variable, which beats a greedy
    ``{proxy+}``: GET /token/refresh is not /token/{profile} when /token/refresh exists.
    ``method`` None matches any method.
    """
    for route_method, resource in sorted(routes, key=_specificity):
        if method is not None and route_method not in {method.upper(), "ANY"}:
            continue
        match = _route_regex(resource).match(path)
        if match:
            return resource, (match.groupdict() or None)
    return None


# --- request -> event ---------------------------------------------------------------------------


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"


def request_to_event(
    request: HttpRequest,
    identity: Mapping[str, Any],
    *,
    resource: str,
    path_parameters: Mapping[str, str] | None = None,
    stage: str = DEFAULT_STAGE,
    account_id: str = "123456789012",
    api_id: str = DEFAULT_API_ID,
    request_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The REST API (payload version 1.0) Lambda proxy event for ``request``."""
    now = now or datetime.now(UTC)
    path = strip_stage(request.path, stage)

    names: list[str] = []
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        if name not in multi_headers:
            names.append(name)
            multi_headers[name] = []
        multi_headers[name].append(value)

    # Headers API Gateway adds on its way to the integration.
    def add(name: str, value: str) -> None:
        existing = next((n for n in names if n.lower() == name.lower()), None)
        if existing is None:
            names.append(name)
            multi_headers[name] = [value]
        elif name.lower() == "x-forwarded-for":
            multi_headers[existing] = [f"{multi_headers[existing][-1]}, {value}"]

    add("X-Amzn-Trace-Id", _trace_id())
    add("X-Forwarded-For", request.client_ip)
    add("X-Forwarded-Port", str(request.server_port))
    add("X-Forwarded-Proto", "http")

    multi_query: dict[str, list[str]] = {}
    for key, value in urllib.parse.parse_qsl(request.query, keep_blank_values=True):
        multi_query.setdefault(key, []).append(value)

    body: str | None
    is_base64 = False
    if not request.body:
        body = None
    else:
        try:
            body = request.body.decode("utf-8")
        except UnicodeDecodeError:
            body, is_base64 = base64.b64encode(request.body).decode("ascii"), True

    request_id = request_id or str(uuid.uuid4())
    host = request.header("Host") or f"{api_id}.execute-api.us-east-1.amazonaws.com"
    return {
        "resource": resource,
        "path": path,
        "httpMethod": request.method,
        "headers": {n: multi_headers[n][-1] for n in names} or None,
        "multiValueHeaders": {n: multi_headers[n] for n in names} or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": dict(path_parameters) if path_parameters else None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": hashlib.sha256(resource.encode()).hexdigest()[:6],
            "resourcePath": resource,
            "httpMethod": request.method,
            "extendedRequestId": base64.b64encode(secrets.token_bytes(12)).decode()[:16],
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": f"/{stage}{path}",
            "accountId": account_id,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": host.split(".")[0].split(":")[0],
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "requestId": request_id,
            "identity": dict(identity),
            "domainName": host,
            "deploymentId": "local0",
            "apiId": api_id,
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


# --- proxy response -> HTTP ---------------------------------------------------------------------


class MalformedProxyResponse(ValueError):
    """The handler's answer is not a valid Lambda proxy response."""


def _header_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    raise MalformedProxyResponse(f"header {name!r} has a non-scalar value {value!r}")


def proxy_response_to_http(result: object) -> HttpResponse:
    """Translate a proxy response; MalformedProxyResponse where API Gateway would answer 502."""
    if not isinstance(result, dict):
        raise MalformedProxyResponse(f"expected an object, got {type(result).__name__}")
    status = result.get("statusCode")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
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

    headers: list[tuple[str, str]] = []
    multi = result.get("multiValueHeaders") or {}
    single = result.get("headers") or {}
    if not isinstance(multi, dict) or not isinstance(single, dict):
        raise MalformedProxyResponse("headers and multiValueHeaders must be objects")
    # API Gateway merges the two; a name present in both takes multiValueHeaders' values.
    multi_names = {str(n).lower() for n in multi}
    for name, values in multi.items():
        if not isinstance(values, list):
            raise MalformedProxyResponse(f"multiValueHeaders[{name!r}] must be a list")
        headers.extend((str(name), _header_value(name, v)) for v in values)
    headers.extend(
        (str(n), _header_value(n, v))
        for n, v in single.items()
        if str(n).lower() not in multi_names
    )
    # The server sets framing headers itself; the function cannot.
    headers = [
        (n, v)
        for n, v in headers
        if n.lower() not in {"content-length", "transfer-encoding", "connection"}
    ]
    if not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return HttpResponse(status, headers, raw)


# --- the server ---------------------------------------------------------------------------------


class ApiServer:
    """Serve ``handler`` the way API Gateway invokes a proxy-integrated Lambda function."""

    def __init__(
        self,
        handler: Handler,
        identity_resolver: IdentityResolver | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        stage: str = DEFAULT_STAGE,
        identity: LocalIdentity | None = None,
        routes: Sequence[Route] | None = None,
        strict_routes: bool = False,
        context_factory: Callable[[], FakeLambdaContext] | None = None,
        api_id: str = DEFAULT_API_ID,
        quiet: bool = False,
    ) -> None:
        self.handler = handler
        self.identity = identity or LocalIdentity()
        self.identity_resolver = identity_resolver or static_identity_resolver(self.identity)
        self.host = host
        self.requested_port = port
        self.stage = stage
        if routes is None:
            from local.cfn_template import api_routes, load_template

            routes = api_routes(load_template())
        self.routes = list(routes)
        self.strict_routes = strict_routes
        self.context_factory = context_factory or FakeLambdaContext
        self.api_id = api_id
        self.quiet = quiet
        # One Lambda execution environment handles one invocation at a time.
        self._invoke_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # The whole request -> response path, without sockets (tests call it directly).
    def handle(self, request: HttpRequest) -> HttpResponse:
        request_id = str(uuid.uuid4())
        response = self._handle(request, request_id)
        response.headers.append(("x-amzn-RequestId", request_id))
        return response

    def _handle(self, request: HttpRequest, request_id: str) -> HttpResponse:
        path = strip_stage(request.path, self.stage)
        matched = match_route(self.routes, request.method, path)
        if matched is None:
            if self.strict_routes:
                return missing_authentication_token()
            # Passed on as if the resource had an ANY method (or, unknown, were its own path).
            matched = match_route(self.routes, None, path) or (path, None)
        resource, path_parameters = matched

        identity = self.identity_resolver(request)
        if isinstance(identity, HttpResponse):
            return identity

        event = request_to_event(
            request,
            identity,
            resource=resource,
            path_parameters=path_parameters,
            stage=self.stage,
            account_id=self.identity.account_id,
            api_id=self.api_id,
            request_id=request_id,
        )
        return self.invoke(event)

    def invoke(self, event: dict[str, Any]) -> HttpResponse:
        """Run the handler on a proxy event as Lambda would and translate its answer."""
        with self._invoke_lock:
            context = self.context_factory()
            started = time.monotonic()
            try:
                # Lambda hands the function JSON and serialises its answer to JSON: round-trip
                # both so that anything the real service would choke on fails here too.
                result = self.handler(json.loads(json.dumps(event)), context)
                result = json.loads(json.dumps(result))
            except Exception:
                self._log("handler raised:\n" + traceback.format_exc())
                return internal_server_error()
            elapsed = time.monotonic() - started
        if elapsed > context.timeout_s:
            self._log(f"Task timed out after {elapsed:.2f} seconds")
            return internal_server_error()
        try:
            return proxy_response_to_http(result)
        except MalformedProxyResponse as exc:
            self._log(
                f"Execution failed due to configuration error: malformed proxy response: {exc}"
            )
            return internal_server_error()

    def _log(self, message: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"api: {message}\n")

    # --- lifecycle ----------------------------------------------------------------------------

    def _bind(self) -> _Server:
        if self._server is None:
            self._server = _Server((self.host, self.requested_port), self)
        return self._server

    def start(self) -> int:
        """Serve in a daemon thread; returns the port."""
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="api", daemon=True
        )
        self._thread.start()
        return self.port

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` is called from another one (or Ctrl-C)."""
        self._bind().serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        return int(self._bind().server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: ApiServer) -> None:
        self.api = api
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up before the answer is its business, not a server error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalApiGateway/1.0"
    # Socket timeout: an idle keep-alive connection (or a stalled client) frees its thread.
    timeout = 60
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # Only the request line and status: no header (Authorization) or body is logged.
        if not self.server.api.quiet:
            sys.stderr.write(f"api: {self.address_string()} {format % args}\n")

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._write(HttpResponse.json(400, {"message": "Bad Content-Length"}))
            return
        if length > MAX_PAYLOAD_BYTES:
            self.close_connection = True
            self._write(HttpResponse.json(413, {"message": "Request Too Long"}))
            return
        request = HttpRequest(
            method=self.command,
            target=self.path,
            headers=tuple(self.headers.items()),
            body=self.rfile.read(length) if length else b"",
            client_ip=self.client_address[0],
            server_port=self.server.server_address[1],
        )
        self._write(self.server.api.handle(request))

    def _write(self, response: HttpResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()
