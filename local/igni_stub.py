"""A stub of Igni's OAuth2 token endpoint, run as its own process, with a control API for tests.

It answers ``POST .../api/v1/oauth2/token`` as the Igni API document describes (a Passport-style
server): a form-encoded client-credentials grant in, ``{"token_type": "Bearer", "expires_in": L,
"access_token": <JWT>}`` out, 401 ``invalid_client`` for unknown credentials. The one way to run
it is :class:`StubProcess` (``python -m local.igni_stub``, which prints ``READY <port>``). The
control API under ``/_stub/`` (calls, config with a fault queue, reset, health) is described in
docs/local.md; its call log holds token fingerprints, never a secret or a token.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import jsonschema  # type: ignore[import-untyped]
import urllib3
from werkzeug.wrappers import Request, Response

from local.gateway.server import json_response, server
from local.process import ServerProcess, serve, temp_log

TOKEN_PATH_SUFFIX = "/api/v1/oauth2/token"
DEFAULT_LIFETIME = 172800  # 48 h, what Igni's documentation shows in its example answer.
MAX_BODY_BYTES = 64 * 1024
CONTROL_PREFIX = "/_stub/"
FORM = "application/x-www-form-urlencoded"
# How expires_in is sent, what token is issued, which client authentications are accepted.
CLIENT_SECRET_POST, CLIENT_SECRET_BASIC = "client_secret_post", "client_secret_basic"  # nosec
EXPIRES_IN: dict[str, Any] = {"int": int, "string": str, "float": lambda n: n + 0.5}
AUTH_METHODS = [CLIENT_SECRET_POST, CLIENT_SECRET_BASIC]

JsonObject = dict[str, Any]

# Igni's (Laravel's) error bodies; another status gets its HTTP phrase.
DEFAULT_ERROR_BODIES: dict[int, JsonObject] = {
    401: {"error": "invalid_client", "message": "Client authentication failed"},
    429: {"error": "too_many_requests", "message": "Too Many Attempts."},
    500: {"error": "server_error", "message": "Server Error"},
    503: {"error": "temporarily_unavailable", "message": "Service Unavailable"},
}


def parse_clients(spec: str) -> dict[str, str]:
    """Parse ``id1:secret1,id2:secret2`` into ``{"id1": "secret1", "id2": "secret2"}``."""
    clients: dict[str, str] = {}
    for item in filter(None, (raw.strip() for raw in spec.split(","))):
        client_id, sep, client_secret = item.partition(":")
        if not sep or not client_id:
            raise ValueError(f"client must be id:secret, got {item!r}")
        clients[client_id] = client_secret
    return clients


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token_fingerprint(token: str) -> str:
    """First 12 hex digits of the token's SHA-256: enough to tell tokens apart, useless to steal."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def make_jwt(client_id: str, scopes: Sequence[str], lifetime: int, exp_offset: int) -> str:
    """A JWT shaped like Passport's (RS256 header, random signature); ``exp`` off by exp_offset."""
    jti = secrets.token_hex(40)  # Passport's 80-hex-digit token id, in header and payload.
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "jti": jti}
    payload = {"aud": client_id, "jti": jti, "iat": now, "nbf": now, "sub": ""}
    payload |= {"exp": now + lifetime + exp_offset, "scopes": list(scopes)}
    parts = [json.dumps(p, separators=(",", ":")).encode() for p in (header, payload)]
    return ".".join([*map(_b64url, parts), _b64url(secrets.token_bytes(256))])


def decode_jwt_segment(token: str, index: int) -> JsonObject:
    """Decode segment ``index`` (0 header, 1 payload) of a JWT; for tests and debugging."""
    segment = token.split(".")[index]
    return cast(JsonObject, json.loads(base64.urlsafe_b64decode(segment + "==")))


# What POST /_stub/config accepts, so that a typo fails the test loudly. Draft 4, whose "integer"
# is never 1.0: a lifetime stays an int.
FAULT = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        **{key: {"type": "number", "minimum": 0} for key in ("retry_after", "delay_ms")},
        **{key: {} for key in ("garbage", "body", "close")},  # any value
    },
}
CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "clients": {"type": "object", "additionalProperties": {"type": "string"}},
        **{key: {"type": "integer"} for key in ("lifetime", "latency_ms", "exp_offset")},
        "expires_in_style": {"enum": [*EXPIRES_IN, "omit"]},
        "token_format": {"enum": ["jwt", "opaque"]},
        "auth_methods": {"type": "array", "minItems": 1, "items": {"enum": AUTH_METHODS}},
        "faults": {"type": "array", "items": FAULT},
    },
}
CONFIG = jsonschema.Draft4Validator(CONFIG_SCHEMA)


class StubApp:
    """The stub as a WSGI application: configuration, fault queue and call log, under one lock."""

    def __init__(self, clients: Mapping[str, str], lifetime: int, latency_ms: int) -> None:
        self.initial = {"clients": dict(clients), "lifetime": lifetime, "latency_ms": latency_ms}
        self.initial |= {"exp_offset": 0, "expires_in_style": "int", "token_format": "jwt"}
        self.initial["auth_methods"] = list(AUTH_METHODS)
        self.config: JsonObject = dict(self.initial)
        self.faults: collections.deque[JsonObject] = collections.deque()
        self.calls: list[JsonObject] = []
        self.lock = threading.Lock()
        # Bumped by reset: a slow request that began before a reset must not count after it.
        self.generation = 0

    def configure(self, update: Any) -> None:
        """Apply a ``/_stub/config`` body; raise ValueError, changing nothing, if it is invalid."""
        error = jsonschema.exceptions.best_match(CONFIG.iter_errors(update))
        if error is not None:
            raise ValueError(f"{error.json_path}: {error.message}")
        with self.lock:
            self.config.update({k: v for k, v in update.items() if k != "faults"})
            if "faults" in update:
                self.faults = collections.deque(update["faults"])

    def record(self, gen: int, facts: JsonObject, status: int | None, answer: Any = None) -> None:
        token = answer.get("access_token") if isinstance(answer, dict) else None
        fingerprint = token_fingerprint(token) if isinstance(token, str) and token else None
        entry = {**facts, "status": status, "at": time.time(), "fingerprint": fingerprint}
        with self.lock:
            if gen == self.generation:
                self.calls.append(entry)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        response = self.route(Request(environ))
        response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)

    def route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return json_response(400, _invalid_request("Bad Content-Length"))
        if path.endswith(TOKEN_PATH_SUFFIX):
            if method == "POST":
                return self.token(request)
            body = {"error": "method_not_allowed", "message": "Use POST"}
            return json_response(405, body, [("Allow", "POST")])
        control = (method, path.removeprefix(CONTROL_PREFIX))
        if control == ("POST", "config"):
            try:
                self.configure(json.loads(request.get_data() or b"{}"))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                return json_response(400, {"error": "invalid_config", "message": str(exc)})
        with self.lock:
            if control == ("POST", "reset"):
                self.generation += 1
                self.config, self.faults, self.calls = dict(self.initial), collections.deque(), []
            pending = {"faults_pending": len(self.faults)}
            config = {**self.config, "clients": sorted(self.config["clients"]), **pending}
            calls = {"count": len(self.calls), "calls": list(self.calls), **pending}
        answers = {("GET", "calls"): calls, ("GET", "config"): config, ("POST", "config"): config}
        answers |= {("GET", "health"): {"ok": True}, ("POST", "reset"): {"ok": True}}
        if control not in answers:  # a path outside CONTROL_PREFIX keeps its leading /
            message = f"No route for {method} {path}"
            return json_response(404, {"error": "not_found", "message": message})
        return json_response(200, answers[control])

    def token(self, request: Request) -> Response:
        # The fault is taken first so that "the next request fails" holds whatever the request is.
        with self.lock:
            fault = self.faults.popleft() if self.faults else {}
            config, gen = dict(self.config), self.generation
        body = request.get_data().decode("utf-8", "replace")
        fields = urllib.parse.parse_qs(body, True)
        form = {name: values[0] for name, values in fields.items()}
        authorization = request.headers.get("Authorization")
        basic = basic_credentials(authorization)
        # What the call record says of the request: field names and the scheme, never a value
        # (a scheme is a token, RFC 9110: anything else is not repeated).
        scheme = (authorization or "").strip().partition(" ")[0]
        if authorization is not None and not (scheme.isalnum() and len(scheme) <= 32):
            scheme = "invalid"
        facts = {
            "client_id": form.get("client_id", basic[0] if basic else None),
            "scope": form.get("scope"),
            "audience": form.get("audience"),
            # RFC 8707: each resource indicator is a field of its own.
            "resource": fields.get("resource", []),
            "form_fields": sorted(form),
            "auth_scheme": None if authorization is None else scheme,
        }
        time.sleep((fault.get("delay_ms", 0) + config["latency_ms"]) / 1000)

        if fault.get("close"):
            self.record(gen, facts, None)
            # A load balancer resetting the connection: no status line at all.
            with contextlib.suppress(OSError):
                request.environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            return Response(b"", 200, [("Connection", "close")])
        status = int(fault.get("status", 200))
        extra = [("Retry-After", str(fault["retry_after"]))] if "retry_after" in fault else []
        if fault.get("garbage"):
            self.record(gen, facts, status)
            page = b"<html><body>502 Bad Gateway</body></html>"
            return Response(page, status, extra, content_type="text/html")
        if "body" in fault:
            answer = fault["body"]
        elif status != 200:
            default = {"error": "error", "message": HTTPStatus(status).phrase}
            answer = DEFAULT_ERROR_BODIES.get(status, default)
        else:
            status, answer = exchange(request, form, basic, config)
            # RFC 6749 5.2: a client that tried Basic is challenged with it; a Basic-only server
            # challenges any other client too (a Passport-like one never does).
            methods = config["auth_methods"]
            basic_only = CLIENT_SECRET_POST not in methods
            if status == 401 and CLIENT_SECRET_BASIC in methods and (basic or basic_only):
                extra.append(("WWW-Authenticate", 'Basic realm="igni"'))
        self.record(gen, facts, status, answer)
        return json_response(status, answer, extra)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(client_id, client_secret) from ``Authorization: Basic ...`` (RFC 6749 2.3.1: each
    form-urlencoded, joined by ':', base64-encoded); None if it is not that."""
    scheme, _, encoded = (header or "").strip().partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    if scheme.lower() != "basic" or not sep:
        return None
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(client_secret)


def exchange(
    request: Request, form: Mapping[str, str], basic: tuple[str, str] | None, config: Any
) -> tuple[int, JsonObject]:
    """Validate a token request as Igni does: (status, JSON answer)."""
    if "application/json" not in _media_types(request.headers.get("Accept")):
        return 400, _invalid_request("The Accept header must be application/json")
    if _media_types(request.headers.get("Content-Type")) != [FORM]:
        return 400, _invalid_request(f"The Content-Type must be {FORM}")
    if form.get("grant_type") != "client_credentials":
        message = "The authorization grant type is not supported by the authorization server."
        return 400, {"error": "unsupported_grant_type", "message": message}
    if basic is not None and "client_secret" in form:
        # RFC 6749 2.3: a client MUST NOT use more than one authentication method.
        return 400, _invalid_request("Use one client authentication method.")
    method = CLIENT_SECRET_POST if basic is None else CLIENT_SECRET_BASIC
    if method not in config["auth_methods"]:
        return 401, DEFAULT_ERROR_BODIES[401]
    client_id, secret = basic or (form.get("client_id"), form.get("client_secret"))
    if not client_id:
        # league/oauth2-server (under Passport) treats a missing client_id as a bad request.
        return 400, _invalid_request('Check the "client_id" parameter.')
    known = config["clients"].get(client_id)  # the secret it should have sent
    if known is None or secret is None or not hmac.compare_digest(known.encode(), secret.encode()):
        return 401, DEFAULT_ERROR_BODIES[401]
    lifetime, scope = config["lifetime"], form.get("scope", "")
    token = make_jwt(client_id, scope.split(), lifetime, config["exp_offset"])
    if config["token_format"] == "opaque":
        token = secrets.token_urlsafe(40)
    answer: JsonObject = {"token_type": "Bearer", "access_token": token}
    # Only the chosen style is computed: lifetime + 0.5 overflows for the 400-digit lifetimes
    # the bound tests send as integers.
    if config["expires_in_style"] in EXPIRES_IN:
        answer["expires_in"] = EXPIRES_IN[config["expires_in_style"]](lifetime)
    return 200, answer


def _media_types(header: str | None) -> list[str]:
    return [part.split(";", 1)[0].strip().lower() for part in (header or "").split(",") if part]


def _invalid_request(message: str) -> JsonObject:
    return {"error": "invalid_request", "message": message}


class StubControl:
    """The control API of a stub running elsewhere (``make local``'s: its ``stub_base_url``)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_url = self.base_url + TOKEN_PATH_SUFFIX
        # No retries: the stub is local, and a retried POST /_stub/config could double-queue faults.
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)

    def _call(self, method: str, path: str, body: object = None) -> JsonObject:
        response = self._http.request(method, self.base_url + CONTROL_PREFIX + path, json=body)
        if response.status != 200:
            raise RuntimeError(f"igni stub {path}: {response.status} {response.data[:300]!r}")
        return cast(JsonObject, response.json())

    def configure(self, **update: Any) -> JsonObject:
        """POST /_stub/config; returns the configuration now in force (client ids only)."""
        return self._call("POST", "config", update)

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def calls(self) -> list[JsonObject]:
        return cast(list[JsonObject], self._call("GET", "calls")["calls"])


class StubProcess(ServerProcess, StubControl):
    """The stub as a child process, sharing nothing with the function but sockets, as Igni, and
    the control of it.

    The first client is ``client_id`` / ``client_secret``; all are in ``clients``. Its request
    log goes to ``log_path`` (a temporary file by default), or to the terminal if not ``quiet``."""

    def __init__(
        self,
        clients: Mapping[str, str],
        *,
        lifetime: int = DEFAULT_LIFETIME,
        latency_ms: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        quiet: bool = True,
    ) -> None:
        if not clients:
            raise ValueError("at least one client")
        self.clients = dict(clients)
        self.client_id, self.client_secret = next(iter(self.clients.items()))
        spec = ",".join(f"{cid}:{secret}" for cid, secret in self.clients.items())
        args = ["--host", host, "--port", str(port), "--clients", spec]
        args += ["--lifetime", str(lifetime), "--latency-ms", str(latency_ms)]
        temporary = quiet and log_path is None
        log_path = (log_path or temp_log("igni-stub")) if quiet else None
        ServerProcess.__init__(
            self, "local.igni_stub", *args, log_path=log_path, temporary_log=temporary
        )
        StubControl.__init__(self, f"http://{host}:{self.port}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.igni_stub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see READY line)")
    parser.add_argument("--clients", default="local-client:local-secret", help="id:secret,...")
    parser.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME, help="expires_in (s)")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every token answer")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = parser.parse_args(argv)
    app = StubApp(parse_clients(args.clients), args.lifetime, args.latency_ms)
    serve(server(args.host, args.port, app, name="igni-stub", quiet=args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
