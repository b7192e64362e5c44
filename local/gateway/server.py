"""What API Gateway (REST API, AWS_IAM auth, Lambda proxy integration) does, on loopback.

A request goes through API Gateway's steps in its order:

1. framing: a method it does not know or a Transfer-Encoding is 501, a chunked body 411, a body
   over 10 MB 413, all JSON like every answer this server makes itself;
2. routing: a path or method the API in template.yaml does not declare is 403
   ``{"message": "Missing Authentication Token"}``, signed or not, before any signature check;
3. the SigV4 signature and the local IAM policy (:mod:`local.gateway.auth`): a refusal is
   API Gateway's 403 and never reaches the function;
4. the version 1.0 proxy event, the handler run in-process with a fresh Lambda context, one
   invocation at a time, and its proxy response translated back; a malformed one, an exception
   or a run longer than the function's timeout is a 502 ``{"message": "Internal server error"}``.
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
from typing import Any

from werkzeug.wrappers import Response

from local.cfn_template import Route, api_routes, load_template
from local.gateway.auth import LocalSigV4Verifier, strip_stage
from local.gateway.sigv4 import LOCAL_ACCOUNT_ID, MISSING_TOKEN, AuthError
from local.lambda_context import FakeLambdaContext
from local.serving import HEADERS_KEY, json_response, serve_in_thread, server

DEFAULT_STAGE = "v1"
DEFAULT_API_ID = "local0api1"
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request as received: raw target, headers in order with repeats, body bytes."""

    method: str
    target: str  # The request target exactly as sent: raw path and query.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client_ip: str
    server_port: int

    @property
    def raw_path(self) -> str:
        return urllib.parse.urlsplit(self.target).path or "/"

    @property
    def query(self) -> str:
        return urllib.parse.urlsplit(self.target).query

    def header(self, name: str) -> str | None:
        """The last value of a header, case-insensitively (API Gateway keeps the last one)."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


def error_response(status: int, message: str) -> Response:
    """An answer of the gateway itself; the connection closes (a body may be left unread)."""
    return json_response(status, {"message": message}, [("Connection", "close")])


def auth_response(error: AuthError) -> Response:
    return Response(error.body_json, error.status, list(error.headers.items()))


def internal_server_error() -> Response:
    """API Gateway's answer when the function fails or answers something malformed."""
    return json_response(502, {"message": "Internal server error"})


# --- routing ------------------------------------------------------------------------------------


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


def match_route(
    routes: Sequence[Route], method: str, path: str
) -> tuple[str, dict[str, str] | None] | None:
    """(resource, pathParameters) of the declared route for ``method`` and ``path``, else None.

    As in API Gateway, a literal segment beats a path variable, which beats a greedy
    ``{proxy+}``: /token/refresh is not /token/{profile} when /token/refresh is declared.
    """
    resources = sorted({r for _, r in routes}, key=lambda r: (r.count("+}"), r.count("{"), r))
    for resource in resources:
        match = _route_regex(resource).match(path)
        if match:
            # The resource is found first; without the method on it, API Gateway answers 403.
            methods = {m for m, r in routes if r == resource}
            if not {method.upper(), "ANY"} & methods:
                return None
            return resource, (match.groupdict() or None)
    return None


# --- request -> event ---------------------------------------------------------------------------


def request_to_event(
    request: HttpRequest,
    identity: Mapping[str, Any],
    *,
    resource: str,
    path_parameters: Mapping[str, str] | None = None,
    stage: str = DEFAULT_STAGE,
    account_id: str = LOCAL_ACCOUNT_ID,
    api_id: str = DEFAULT_API_ID,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The REST API (payload version 1.0) Lambda proxy event for ``request``."""
    now = datetime.now(UTC)
    path = strip_stage(urllib.parse.unquote(request.raw_path), stage)
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        multi_headers.setdefault(name, []).append(value)

    def add(name: str, value: str) -> None:  # Headers API Gateway adds on the way.
        existing = next((n for n in multi_headers if n.lower() == name.lower()), None)
        if existing is None:
            multi_headers[name] = [value]
        elif name.lower() == "x-forwarded-for":
            multi_headers[existing] = [f"{multi_headers[existing][-1]}, {value}"]

    add("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}")
    add("X-Forwarded-For", request.client_ip)
    add("X-Forwarded-Port", str(request.server_port))
    add("X-Forwarded-Proto", "http")

    multi_query: dict[str, list[str]] = {}
    for key, value in urllib.parse.parse_qsl(request.query, keep_blank_values=True):
        multi_query.setdefault(key, []).append(value)

    body: str | None = None
    is_base64 = False
    if request.body:
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
        "headers": {n: v[-1] for n, v in multi_headers.items()},
        "multiValueHeaders": multi_headers,
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


def proxy_response_to_http(result: object) -> Response:
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

    multi = result.get("multiValueHeaders") or {}
    single = result.get("headers") or {}
    if not isinstance(multi, dict) or not isinstance(single, dict):
        raise MalformedProxyResponse("headers and multiValueHeaders must be objects")
    headers: list[tuple[str, str]] = []
    for name, values in multi.items():
        if not isinstance(values, list):
            raise MalformedProxyResponse(f"multiValueHeaders[{name!r}] must be a list")
        headers.extend((str(name), _header_value(name, v)) for v in values)
    # API Gateway merges the two; a name in both takes multiValueHeaders' values.
    multi_names = {str(n).lower() for n in multi}
    headers.extend(
        (str(n), _header_value(n, v))
        for n, v in single.items()
        if str(n).lower() not in multi_names
    )
    # The server frames the answer itself; the function cannot.
    framing = {"content-length", "transfer-encoding", "connection"}
    headers = [(n, v) for n, v in headers if n.lower() not in framing]
    if not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return Response(raw, status, headers)


# --- the server ---------------------------------------------------------------------------------


class ApiServer:
    """Serve ``handler`` the way API Gateway invokes a proxy-integrated Lambda function."""

    def __init__(
        self,
        handler: Handler,
        verifier: LocalSigV4Verifier,
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        stage: str = DEFAULT_STAGE,
        api_id: str = DEFAULT_API_ID,
        account_id: str = LOCAL_ACCOUNT_ID,
        routes: Sequence[Route] | None = None,
        context_factory: Callable[[], FakeLambdaContext] = FakeLambdaContext,
        quiet: bool = False,
    ) -> None:
        self.handler = handler
        self.verifier = verifier
        self.host = host
        self.requested_port = port
        self.stage = stage
        self.api_id = api_id
        self.account_id = account_id
        self.routes = list(api_routes(load_template()) if routes is None else routes)
        self.context_factory = context_factory
        self.quiet = quiet
        # One Lambda execution environment handles one invocation at a time.
        self._invoke_lock = threading.Lock()
        self._http: Any = None
        self._thread: threading.Thread | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        """The WSGI application."""
        request_id = str(uuid.uuid4())
        response = self.handle(environ, request_id)
        response.headers["x-amzn-RequestId"] = request_id
        return response(environ, start_response)

    def handle(self, environ: dict[str, Any], request_id: str) -> Response:
        method = environ["REQUEST_METHOD"]
        if method not in METHODS:
            return error_response(501, f"Unsupported method {method!r}")
        encoding = environ.get("HTTP_TRANSFER_ENCODING", "").strip().lower()
        if encoding == "chunked":
            return error_response(
                411, "A chunked request body is not supported: send Content-Length"
            )
        if encoding:
            return error_response(501, f"Unsupported Transfer-Encoding {encoding!r}")
        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit():
            return error_response(400, "Bad Content-Length")
        if int(length) > MAX_PAYLOAD_BYTES:
            return error_response(413, "Request Too Long")

        request = HttpRequest(
            method,
            environ["REQUEST_URI"],
            environ[HEADERS_KEY],
            environ["wsgi.input"].read(int(length)) if int(length) else b"",
            environ["REMOTE_ADDR"],
            int(environ["SERVER_PORT"]),
        )
        resource_path = strip_stage(urllib.parse.unquote(request.raw_path), self.stage)
        matched = match_route(self.routes, method, resource_path)
        if matched is None:
            return auth_response(AuthError(MISSING_TOKEN, "MissingAuthenticationTokenException"))
        resource, path_parameters = matched
        identity = self.verifier.check(
            method,
            request.raw_path,
            request.query,
            request.headers,
            request.body,
            source_ip=request.client_ip,
        )
        if isinstance(identity, AuthError):
            return auth_response(identity)
        event = request_to_event(
            request,
            identity.as_request_context_identity(),
            resource=resource,
            path_parameters=path_parameters,
            stage=self.stage,
            account_id=self.account_id,
            api_id=self.api_id,
            request_id=request_id,
        )
        return self.invoke(event)

    def invoke(self, event: dict[str, Any]) -> Response:
        """Run the handler on a proxy event as Lambda would and translate its answer."""
        with self._invoke_lock:
            context = self.context_factory()
            started = time.monotonic()
            try:
                # Lambda hands the function JSON and serialises its answer to JSON: round-trip
                # both so that anything the real service would choke on fails here too.
                result = json.loads(
                    json.dumps(self.handler(json.loads(json.dumps(event)), context))
                )
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

    def start(self) -> int:
        """Listen, and serve in a daemon thread; returns the port."""
        self._http = server(self.host, self.requested_port, self, name="api", quiet=self.quiet)
        self._thread = serve_in_thread(self._http, "api")
        return self.port

    def stop(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        return int(self._http.port)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
