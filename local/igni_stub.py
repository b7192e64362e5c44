"""A stand-alone stub of Igni's OAuth2 token endpoint, with a control API for tests.

It answers ``POST .../api/v1/oauth2/token`` the way the Igni API document describes (a Laravel
Passport style server): form-encoded client-credentials grant in, ``{"token_type": "Bearer",
"expires_in": L, "access_token": <JWT>}`` out, 401 ``invalid_client`` for unknown credentials.

Run it as a process (what the test fixtures and ``make local`` do)::

    python -m local.igni_stub --host 127.0.0.1 --port 0 --clients id1:secret1,id2:secret2

It prints exactly one line ``READY <port>`` on stdout once it listens. Or use it in-process with
:class:`IgniStub`. Tests steer it through a small JSON control API under ``/_stub/``:

``GET /_stub/calls``
    ``{"count": n, "calls": [{"client_id", "scope", "status", "at", "fingerprint", "audience",
    "form_fields", "auth_scheme"}], "faults_pending": k}``. A call records neither the client
    secret nor the token: only a fingerprint, the first 12 hex digits of the token's SHA-256.
    ``status`` is ``null`` for a request whose connection the stub closed without answering;
    ``fingerprint`` is ``null`` when no token was issued. ``form_fields`` is the sorted list of
    the form's field names (never their values), ``auth_scheme`` the scheme of the Authorization
    header (``"Basic"``) or ``null`` without one (never the credentials); ``client_id`` is taken
    from the Basic header when the form has none.
``POST /_stub/reset``
    Forget the calls and pending faults, and go back to the configuration given at start-up.
``POST /_stub/config``
    Any of ``{"clients": {"id": "secret"}, "lifetime": int, "latency_ms": int, "exp_offset": int,
    "expires_in_style": str, "token_format": str, "auth_methods": [str], "faults": [...]}``.
    ``expires_in_style`` is how ``expires_in`` is sent: ``"int"`` (the default), ``"string"``
    (``"172800"``), ``"float"`` (``172800.5``) or ``"omit"`` (no ``expires_in``; the JWT's ``exp``
    still says the lifetime). ``token_format`` ``"opaque"`` issues a random string instead of a
    JWT (no ``exp`` to read). ``auth_methods`` lists the client authentications accepted, of
    ``client_secret_post`` (id and secret in the form) and ``client_secret_basic`` (HTTP Basic,
    RFC 6749 2.3.1); both by default. A request authenticated otherwise gets 401
    ``invalid_client`` with ``WWW-Authenticate: Basic realm="igni"`` when Basic is accepted.
    ``clients`` and ``faults`` replace what was there. ``faults`` is a FIFO
    queue; each token request consumes one, whatever the request holds. A fault is one of
    ``{"status": 500}``, ``{"status": 429, "retry_after": 1}`` (sends ``Retry-After``),
    ``{"garbage": true}`` (200 with a body that is not JSON), ``{"body": {...}, "status": 200}``
    (that exact JSON body), ``{"close": true}`` (close the socket without answering) or
    ``{"delay_ms": 5000}`` (sleep, then answer normally; it combines with the others).
``GET /_stub/config``
    The current configuration, client ids only.
``GET /_stub/health``
    ``{"ok": true}``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import json
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, cast

import urllib3

TOKEN_PATH_SUFFIX = "/api/v1/oauth2/token"
DEFAULT_LIFETIME = 172800  # 48 h, what Igni's documentation shows in its example answer.
MAX_BODY_BYTES = 64 * 1024
CONTROL_PREFIX = "/_stub/"

JsonObject = dict[str, Any]

# Issue 13: how the stub sends expires_in, what token it issues and which client
# authentications it accepts (``POST /_stub/config`` keys, validated in oauth_config_update).
CLIENT_SECRET_POST = "client_secret_post"  # nosec B105 - a method name
CLIENT_SECRET_BASIC = "client_secret_basic"  # nosec B105 - a method name
AUTH_METHODS = (CLIENT_SECRET_POST, CLIENT_SECRET_BASIC)
EXPIRES_IN_STYLES = ("int", "string", "float", "omit")
TOKEN_FORMATS = ("jwt", "opaque")
OAUTH_CONFIG_KEYS = {"expires_in_style", "token_format", "auth_methods"}


def parse_clients(spec: str) -> dict[str, str]:
    """Parse ``id1:secret1,id2:secret2`` into ``{"id1": "secret1", "id2": "secret2"}``."""
    clients: dict[str, str] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        client_id, sep, client_secret = item.partition(":")
        if not sep or not client_id:
            raise ValueError(f"client must be id:secret, got {item!r}")
        clients[client_id] = client_secret
    return clients


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_json(obj: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def token_fingerprint(token: str) -> str:
    """First 12 hex digits of the token's SHA-256: enough to tell tokens apart, useless to steal."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def make_jwt(client_id: str, scopes: Sequence[str], lifetime: int, exp_offset: int) -> str:
    """An unsigned-in-spirit JWT shaped like Passport's: RS256 header, random 256-byte signature.

    ``exp_offset`` lets a test make the token's ``exp`` claim disagree with ``expires_in``.
    """
    # Passport puts the 80-hex-digit token id in both the header and the payload.
    jti = secrets.token_hex(40)
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "jti": jti}
    payload = {
        "aud": client_id,
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime + exp_offset,
        "sub": "",
        "scopes": list(scopes),
    }
    signature = _b64url(secrets.token_bytes(256))
    return f"{_b64url_json(header)}.{_b64url_json(payload)}.{signature}"


def decode_jwt_segment(token: str, index: int) -> JsonObject:
    """Decode segment ``index`` (0 header, 1 payload) of a JWT; for tests and debugging."""
    segment = token.split(".")[index]
    padded = segment + "=" * (-len(segment) % 4)
    return cast(JsonObject, json.loads(base64.urlsafe_b64decode(padded)))


@dataclass
class StubConfig:
    """What the stub answers with; :meth:`StubState.reset` restores the start-up copy."""

    clients: dict[str, str]
    lifetime: int = DEFAULT_LIFETIME
    latency_ms: int = 0
    exp_offset: int = 0
    # Issue 13 (tolerant upstream parsing, client_secret_basic): see OAUTH_CONFIG_KEYS.
    expires_in_style: str = "int"
    token_format: str = "jwt"
    auth_methods: tuple[str, ...] = AUTH_METHODS

    def copy(self) -> StubConfig:
        return StubConfig(
            dict(self.clients),
            self.lifetime,
            self.latency_ms,
            self.exp_offset,
            self.expires_in_style,
            self.token_format,
            self.auth_methods,
        )


@dataclass
class StubState:
    """Configuration, fault queue and call log, shared by the server's request threads."""

    initial: StubConfig
    config: StubConfig = field(init=False)
    faults: collections.deque[JsonObject] = field(default_factory=collections.deque)
    calls: list[JsonObject] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Bumped by reset(): a slow request that began before a reset must not count after it.
    generation: int = 0

    def __post_init__(self) -> None:
        self.config = self.initial.copy()

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.config = self.initial.copy()
            self.faults.clear()
            self.calls.clear()

    def configure(self, update: Mapping[str, Any]) -> None:
        """Apply a ``/_stub/config`` body; raise ValueError, changing nothing, if it is invalid."""
        known = {"clients", "lifetime", "latency_ms", "exp_offset", "faults", *OAUTH_CONFIG_KEYS}
        unknown = set(update) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        clients = update.get("clients")
        if clients is not None and not (
            isinstance(clients, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in clients.items())
        ):
            raise ValueError("clients must be an object of id -> secret strings")
        ints = {}
        for key in ("lifetime", "latency_ms", "exp_offset"):
            if key in update:
                value = update[key]
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"{key} must be an integer")
                ints[key] = value
        oauth = oauth_config_update(update)
        faults = update.get("faults")
        if faults is not None:
            if not isinstance(faults, list):
                raise ValueError("faults must be a list")
            for fault in faults:
                validate_fault(fault)
        with self.lock:
            if clients is not None:
                self.config.clients = dict(clients)
            for key, value in {**ints, **oauth}.items():
                setattr(self.config, key, value)
            if faults is not None:
                self.faults = collections.deque(faults)

    def next_fault(self) -> JsonObject | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def record(
        self,
        client_id: str | None,
        scope: str | None,
        status: int | None,
        token: str | None,
        generation: int | None = None,
        *,
        request: Mapping[str, Any] | None = None,
    ) -> None:
        entry = {
            "client_id": client_id,
            "scope": scope,
            "status": status,
            "at": time.time(),
            "fingerprint": token_fingerprint(token) if token else None,
            # Issue 13: what the request carried (see request_facts); names, never values.
            "audience": None,
            "form_fields": [],
            "auth_scheme": None,
            **(request or {}),
        }
        with self.lock:
            if generation is not None and generation != self.generation:
                return
            self.calls.append(entry)

    def snapshot(self) -> JsonObject:
        with self.lock:
            return {
                "count": len(self.calls),
                "calls": [dict(c) for c in self.calls],
                "faults_pending": len(self.faults),
            }

    def public_config(self) -> JsonObject:
        with self.lock:
            return {
                "clients": sorted(self.config.clients),
                "lifetime": self.config.lifetime,
                "latency_ms": self.config.latency_ms,
                "exp_offset": self.config.exp_offset,
                "expires_in_style": self.config.expires_in_style,
                "token_format": self.config.token_format,
                "auth_methods": list(self.config.auth_methods),
                "faults_pending": len(self.faults),
            }


def oauth_config_update(update: Mapping[str, Any]) -> dict[str, Any]:
    """The issue-13 keys of a ``/_stub/config`` body, checked; ValueError if one is invalid."""
    checked: dict[str, Any] = {}
    style = update.get("expires_in_style")
    if style is not None:
        if style not in EXPIRES_IN_STYLES:
            raise ValueError(f"expires_in_style must be one of {list(EXPIRES_IN_STYLES)}")
        checked["expires_in_style"] = style
    token_format = update.get("token_format")
    if token_format is not None:
        if token_format not in TOKEN_FORMATS:
            raise ValueError(f"token_format must be one of {list(TOKEN_FORMATS)}")
        checked["token_format"] = token_format
    methods = update.get("auth_methods")
    if methods is not None:
        if (
            not isinstance(methods, list)
            or not methods
            or any(method not in AUTH_METHODS for method in methods)
        ):
            raise ValueError(f"auth_methods must be a non-empty list of {list(AUTH_METHODS)}")
        checked["auth_methods"] = tuple(methods)
    return checked


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(client_id, client_secret) from ``Authorization: Basic ...`` (RFC 6749 2.3.1: each
    form-urlencoded, then joined by ':' and base64-encoded); None if it is not that."""
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    if not sep:
        return None
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(client_secret)


def request_facts(form: Mapping[str, list[str]], authorization: str | None) -> JsonObject:
    """What a call record says about a token request: the audience asked for, the form's field
    names and the Authorization scheme; never a credential."""
    scheme = (authorization or "").strip().partition(" ")[0]
    return {
        "audience": form.get("audience", [None])[0],
        "form_fields": sorted(form),
        # A scheme is a token (RFC 9110); anything else is recorded as "invalid", not repeated.
        "auth_scheme": (scheme if scheme.isalnum() and len(scheme) <= 32 else "invalid")
        if authorization is not None
        else None,
    }


def expires_in_value(lifetime: int, style: str) -> object:
    """``expires_in`` as the configured style sends it (None: leave it out)."""
    if style == "string":
        return str(lifetime)
    if style == "float":
        return lifetime + 0.5
    if style == "omit":
        return None
    return lifetime


FAULT_KEYS = {"status", "retry_after", "garbage", "body", "close", "delay_ms"}


def validate_fault(fault: object) -> None:
    """Reject a fault the stub would not know how to play, so a typo fails the test loudly."""
    if not isinstance(fault, dict) or not fault:
        raise ValueError(f"a fault must be a non-empty object, got {fault!r}")
    unknown = set(fault) - FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault keys {sorted(unknown)} in {fault!r}")
    status = fault.get("status")
    if status is not None and not (isinstance(status, int) and 100 <= status <= 599):
        raise ValueError(f"fault status must be an HTTP status, got {status!r}")
    for key in ("retry_after", "delay_ms"):
        value = fault.get(key)
        if value is not None and (not isinstance(value, int | float) or value < 0):
            raise ValueError(f"fault {key} must be a non-negative number, got {value!r}")


DEFAULT_ERROR_BODIES: dict[int, JsonObject] = {
    400: {"error": "invalid_request", "message": "The request is invalid"},
    401: {"error": "invalid_client", "message": "Client authentication failed"},
    429: {"error": "too_many_requests", "message": "Too Many Attempts."},
    500: {"error": "server_error", "message": "Server Error"},
    502: {"error": "bad_gateway", "message": "Bad Gateway"},
    503: {"error": "temporarily_unavailable", "message": "Service Unavailable"},
    504: {"error": "gateway_timeout", "message": "Gateway Timeout"},
}


def _media_types(header: str | None) -> list[str]:
    if not header:
        return []
    return [part.split(";", 1)[0].strip().lower() for part in header.split(",")]


class StubServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the shared state; request threads die with the process."""

    daemon_threads = True
    # Fixtures restart the stub on the same port; don't wait out TIME_WAIT.
    allow_reuse_address = True
    # A fleet connects at once; socketserver's default backlog of 5 resets the rest.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: StubState, *, quiet: bool = False) -> None:
        self.state = state
        self.quiet = quiet
        super().__init__(address, StubRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its read timeout, during a delay fault) is what timeout tests
        # are about, not an error in the stub: no traceback for it.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class StubRequestHandler(BaseHTTPRequestHandler):
    """One HTTP request to the stub: a token request or a control call."""

    # HTTP/1.1 so clients with connection pools (urllib3) keep connections alive, as with Igni.
    protocol_version = "HTTP/1.1"
    server_version = "IgniStub/1.0"
    # Socket timeout: an idle keep-alive connection (or a stalled client) frees its thread.
    timeout = 60
    server: StubServer
    _generation: int | None = None
    _request: JsonObject | None = None
    _basic: tuple[str, str] | None = None

    # --- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds no secret (the credentials travel in the body).
        if not self.server.quiet:
            sys.stderr.write(f"igni-stub: {self.address_string()} {format % args}\n")

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._send_json(400, {"error": "invalid_request", "message": "Bad Content-Length"})
            return None
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: object, extra: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _drop_connection(self) -> None:
        # Simulates a load balancer that resets the connection: no status line at all.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- routing ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        state = self.server.state
        if path == CONTROL_PREFIX + "calls":
            self._send_json(200, state.snapshot())
        elif path == CONTROL_PREFIX + "config":
            self._send_json(200, state.public_config())
        elif path == CONTROL_PREFIX + "health":
            self._send_json(200, {"ok": True})
        elif path.endswith(TOKEN_PATH_SUFFIX):
            self._send_json(
                405, {"error": "method_not_allowed", "message": "Use POST"}, {"Allow": "POST"}
            )
        else:
            self._send_json(404, {"error": "not_found", "message": f"No route for GET {path}"})

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        body = self._read_body()
        if body is None:
            return
        if path.endswith(TOKEN_PATH_SUFFIX):
            self._token(body)
        elif path == CONTROL_PREFIX + "reset":
            self.server.state.reset()
            self._send_json(200, {"ok": True})
        elif path == CONTROL_PREFIX + "config":
            self._control_config(body)
        else:
            self._send_json(404, {"error": "not_found", "message": f"No route for POST {path}"})

    def _control_config(self, body: bytes) -> None:
        try:
            update = json.loads(body or b"{}")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            self._send_json(400, {"error": "invalid_config", "message": str(exc)})
            return
        if not isinstance(update, dict):
            self._send_json(400, {"error": "invalid_config", "message": "expected an object"})
            return
        try:
            self.server.state.configure(update)
        except ValueError as exc:
            self._send_json(400, {"error": "invalid_config", "message": str(exc)})
            return
        self._send_json(200, self.server.state.public_config())

    # --- the token endpoint -------------------------------------------------------------------

    def _token(self, body: bytes) -> None:
        state = self.server.state
        # The fault is taken first so that "the next request fails" holds whatever the request is.
        fault = state.next_fault()
        with state.lock:
            config = state.config.copy()
            self._generation = state.generation

        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        client_id = form.get("client_id", [None])[0]
        scope = form.get("scope", [None])[0]
        # Issue 13: the call record's facts about the request, and the Basic client id.
        self._request = request_facts(form, self.headers.get("Authorization"))
        self._basic = basic_credentials(self.headers.get("Authorization"))
        if client_id is None and self._basic is not None:
            client_id = self._basic[0]

        delay_ms = (fault or {}).get("delay_ms", 0) + config.latency_ms
        if delay_ms:
            time.sleep(delay_ms / 1000)

        if fault is not None and self._play_fault(fault, client_id, scope):
            return

        status, answer, token = self._exchange(form, config)
        state.record(client_id, scope, status, token, self._generation, request=self._request)
        extra = {}
        if (
            status == 401
            and CLIENT_SECRET_BASIC in config.auth_methods
            and (self._basic is not None or CLIENT_SECRET_POST not in config.auth_methods)
        ):
            # RFC 6749 5.2: a client that tried Basic is challenged with it; a Basic-only
            # server challenges any other client too (a Passport-like one never does).
            extra["WWW-Authenticate"] = 'Basic realm="igni"'
        self._send_json(status, answer, extra)

    def _play_fault(self, fault: JsonObject, client_id: str | None, scope: str | None) -> bool:
        """Answer with ``fault``; False when it was only a delay and the normal answer follows."""
        state = self.server.state
        if fault.get("close"):
            state.record(client_id, scope, None, None, self._generation, request=self._request)
            self._drop_connection()
            return True
        status = int(fault.get("status", 200))
        extra = {}
        if "retry_after" in fault:
            extra["Retry-After"] = str(fault["retry_after"])
        if fault.get("garbage"):
            state.record(client_id, scope, status, None, self._generation, request=self._request)
            self._send(status, b"<html><body>502 Bad Gateway</body></html>", "text/html", extra)
            return True
        if "body" in fault:
            body = fault["body"]
            token = body.get("access_token") if isinstance(body, dict) else None
            state.record(
                client_id,
                scope,
                status,
                token if isinstance(token, str) else None,
                self._generation,
                request=self._request,
            )
            self._send_json(status, body, extra)
            return True
        if "status" in fault and status != 200:
            state.record(client_id, scope, status, None, self._generation, request=self._request)
            default = {"error": "error", "message": HTTPStatus(status).phrase}
            self._send_json(status, DEFAULT_ERROR_BODIES.get(status, default), extra)
            return True
        return False

    def _exchange(
        self, form: Mapping[str, list[str]], config: StubConfig
    ) -> tuple[int, JsonObject, str | None]:
        """Validate a token request as Igni does; returns (status, JSON answer, issued token)."""
        if "application/json" not in _media_types(self.headers.get("Accept")):
            return 400, _invalid_request("The Accept header must be application/json"), None
        if _media_types(self.headers.get("Content-Type")) != ["application/x-www-form-urlencoded"]:
            return (
                400,
                _invalid_request("The Content-Type must be application/x-www-form-urlencoded"),
                None,
            )
        if form.get("grant_type", [None])[0] != "client_credentials":
            return (
                400,
                {
                    "error": "unsupported_grant_type",
                    "message": "The authorization grant type is not supported by the "
                    "authorization server.",
                },
                None,
            )
        client_id = form.get("client_id", [None])[0]
        client_secret = form.get("client_secret", [None])[0]
        # Issue 13: HTTP Basic client authentication, and servers that accept only one method.
        basic = self._basic
        if basic is not None:
            if client_secret is not None:
                # RFC 6749 2.3: a client MUST NOT use more than one authentication method.
                return 400, _invalid_request("Use one client authentication method."), None
            if CLIENT_SECRET_BASIC not in config.auth_methods:
                return 401, dict(DEFAULT_ERROR_BODIES[401]), None
            client_id, client_secret = basic
        elif CLIENT_SECRET_POST not in config.auth_methods:
            return 401, dict(DEFAULT_ERROR_BODIES[401]), None
        if not client_id:
            # league/oauth2-server (under Passport) treats a missing client_id as a bad request.
            return 400, _invalid_request('Check the "client_id" parameter.'), None
        expected = config.clients.get(client_id)
        if (
            expected is None
            or client_secret is None
            or not secrets.compare_digest(expected.encode(), client_secret.encode())
        ):
            return 401, dict(DEFAULT_ERROR_BODIES[401]), None
        scope = form.get("scope", [""])[0]
        token = make_jwt(client_id, scope.split(), config.lifetime, config.exp_offset)
        if config.token_format == "opaque":
            token = secrets.token_urlsafe(40)
        answer: JsonObject = {"token_type": "Bearer", "access_token": token}
        expires_in = expires_in_value(config.lifetime, config.expires_in_style)
        if expires_in is not None:
            answer["expires_in"] = expires_in
        return 200, answer, token


def _invalid_request(message: str) -> JsonObject:
    return {"error": "invalid_request", "message": message}


class IgniStub:
    """The stub in-process: a background thread serving until :meth:`stop`."""

    def __init__(
        self,
        clients: Mapping[str, str],
        *,
        lifetime: int = DEFAULT_LIFETIME,
        latency_ms: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = True,
    ) -> None:
        self.state = StubState(StubConfig(dict(clients), lifetime, latency_ms))
        self.host = host
        self.requested_port = port
        self.quiet = quiet
        self._server: StubServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen and serve in a daemon thread; returns the port (useful with port 0)."""
        if self._server is not None:
            raise RuntimeError("stub already started")
        self._server = StubServer((self.host, self.requested_port), self.state, quiet=self.quiet)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="igni-stub",
            daemon=True,
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> IgniStub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("stub not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH_SUFFIX

    # In-process shortcuts with the same meaning as the control API.
    def configure(self, **update: Any) -> None:
        self.state.configure(update)

    def reset(self) -> None:
        self.state.reset()

    def calls(self) -> list[JsonObject]:
        return cast(list[JsonObject], self.state.snapshot()["calls"])


class StubControl:
    """Client of the control API of a stub running elsewhere (another process)."""

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_url = self.base_url + TOKEN_PATH_SUFFIX
        # No retries: the stub is local, and a retried POST /_stub/config could double-queue faults.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=2.0, read=timeout), retries=False
        )

    def _call(self, method: str, path: str, body: object = None) -> JsonObject:
        response = self._http.request(
            method,
            self.base_url + path,
            body=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        if response.status != 200:
            raise RuntimeError(
                f"igni stub {method} {path}: {response.status} {response.data[:300]!r}"
            )
        return cast(JsonObject, response.json())

    def configure(self, **update: Any) -> JsonObject:
        """POST /_stub/config; returns the configuration now in force (client ids only)."""
        return self._call("POST", CONTROL_PREFIX + "config", update)

    def reset(self) -> None:
        self._call("POST", CONTROL_PREFIX + "reset", {})

    def calls(self) -> list[JsonObject]:
        return cast(list[JsonObject], self._call("GET", CONTROL_PREFIX + "calls")["calls"])

    def health(self) -> bool:
        try:
            return bool(self._call("GET", CONTROL_PREFIX + "health").get("ok"))
        except (urllib3.exceptions.HTTPError, RuntimeError):
            return False


class StubProcess:
    """The stub as a child process (``python -m local.igni_stub``), steered through HTTP.

    What the test fixtures use: the function under test and the stub then share nothing but
    sockets, as with the real Igni. The first configured client is ``client_id`` /
    ``client_secret``; all of them are in ``clients``.
    """

    def __init__(
        self,
        clients: Mapping[str, str],
        *,
        lifetime: int = DEFAULT_LIFETIME,
        latency_ms: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        python: str = sys.executable,
        start_timeout: float = 15.0,
    ) -> None:
        from local.moto_server import die_with_parent

        if not clients:
            raise ValueError("at least one client")
        self.clients = dict(clients)
        self.client_id, self.client_secret = next(iter(self.clients.items()))
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"igni-stub-{os.getpid()}.log"
        # The request log goes to a file: a pipe nobody reads would block the stub when full.
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                python,
                "-m",
                "local.igni_stub",
                "--host",
                host,
                "--port",
                str(port),
                "--clients",
                ",".join(f"{cid}:{secret}" for cid, secret in self.clients.items()),
                "--lifetime",
                str(lifetime),
                "--latency-ms",
                str(latency_ms),
            ],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads are touched before exec)
        )
        try:
            self.port = self._read_ready_port(start_timeout)
        except BaseException:
            self.stop()
            raise
        self.base_url = f"http://{host}:{self.port}"
        self.control = StubControl(self.base_url)
        self.token_url = self.control.token_url

    def _read_ready_port(self, timeout: float) -> int:
        """Wait for the single ``READY <port>`` line; fail clearly if it does not come."""
        stdout = self._proc.stdout
        if stdout is None:  # pragma: no cover - Popen(stdout=PIPE) always sets it
            raise RuntimeError("no stdout pipe")
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and self._proc.poll() is None:
                if not selector.select(timeout=0.2):
                    continue
                line = stdout.readline().decode().strip()
                if line.startswith("READY ") and line[6:].isdigit():
                    return int(line[6:])
                if line:
                    raise RuntimeError(f"igni stub printed {line!r} instead of READY <port>")
        raise RuntimeError(
            f"igni stub did not start within {timeout:.0f} s (exit {self._proc.poll()}); "
            f"log {self.log_path}: {self.log_path.read_text(errors='replace')[-2000:]}"
        )

    def configure(self, **update: Any) -> JsonObject:
        return self.control.configure(**update)

    def reset(self) -> None:
        self.control.reset()

    def calls(self) -> list[JsonObject]:
        return self.control.calls()

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()

    def __enter__(self) -> StubProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.igni_stub", description="Igni OAuth2 token endpoint stub."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see READY line)")
    parser.add_argument("--clients", default="local-client:local-secret", help="id:secret,...")
    parser.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME, help="expires_in (s)")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every token answer")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = parser.parse_args(argv)

    state = StubState(StubConfig(parse_clients(args.clients), args.lifetime, args.latency_ms))
    server = StubServer((args.host, args.port), state, quiet=args.quiet)

    def _terminate(signum: int, frame: FrameType | None) -> None:
        # serve_forever is interrupted by the exception; finally closes the socket.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
