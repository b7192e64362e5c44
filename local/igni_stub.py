"""A stub of Igni's OAuth2 token endpoint, run as its own process, with a control API for tests.

It answers ``POST .../api/v1/oauth2/token`` as the Igni API document describes (a Laravel
Passport style server): a form-encoded client-credentials grant in, ``{"token_type": "Bearer",
"expires_in": L, "access_token": <JWT>}`` out, 401 ``invalid_client`` for unknown credentials.

One way to run it: :class:`StubProcess` starts ``python -m local.igni_stub --port 0 --clients
id:secret,...``, which prints one line ``READY <port>`` once it listens. Tests steer it through
a JSON control API under ``/_stub/``:

``GET /_stub/calls``
    ``{"count": n, "calls": [{"client_id", "scope", "status", "at", "fingerprint"}],
    "faults_pending": k}``: never the secret or the token, only a fingerprint (the first 12 hex
    digits of the token's SHA-256). ``status`` is null when the stub closed the connection.
``POST /_stub/reset``
    Forget calls and pending faults; back to the start-up configuration.
``POST /_stub/config``
    Any of ``{"clients": {"id": "secret"}, "lifetime": int, "latency_ms": int, "exp_offset": int,
    "faults": [...]}``. ``faults`` is a FIFO queue, one consumed per token request: ``{"status":
    500}``, ``{"status": 429, "retry_after": 1}``, ``{"garbage": true}`` (200, not JSON),
    ``{"body": {...}, "status": 200}``, ``{"close": true}`` (no answer at all) or ``{"delay_ms":
    5000}`` (then the normal answer; it combines with the others).
``GET /_stub/config`` (client ids only), ``GET /_stub/health``.
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
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Any, cast

import urllib3
from werkzeug.wrappers import Request, Response

from local.moto_server import die_with_parent
from local.serving import json_response, server

TOKEN_PATH_SUFFIX = "/api/v1/oauth2/token"
DEFAULT_LIFETIME = 172800  # 48 h, what Igni's documentation shows in its example answer.
MAX_BODY_BYTES = 64 * 1024
CONTROL_PREFIX = "/_stub/"
FAULT_KEYS = {"status", "retry_after", "garbage", "body", "close", "delay_ms"}
FORM = "application/x-www-form-urlencoded"

JsonObject = dict[str, Any]

DEFAULT_ERROR_BODIES: dict[int, JsonObject] = {
    400: {"error": "invalid_request", "message": "The request is invalid"},
    401: {"error": "invalid_client", "message": "Client authentication failed"},
    429: {"error": "too_many_requests", "message": "Too Many Attempts."},
    500: {"error": "server_error", "message": "Server Error"},
    502: {"error": "bad_gateway", "message": "Bad Gateway"},
    503: {"error": "temporarily_unavailable", "message": "Service Unavailable"},
    504: {"error": "gateway_timeout", "message": "Gateway Timeout"},
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
    payload = {
        "aud": client_id,
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime + exp_offset,
        "sub": "",
        "scopes": list(scopes),
    }
    parts = [json.dumps(p, separators=(",", ":")).encode() for p in (header, payload)]
    return ".".join([*map(_b64url, parts), _b64url(secrets.token_bytes(256))])


def decode_jwt_segment(token: str, index: int) -> JsonObject:
    """Decode segment ``index`` (0 header, 1 payload) of a JWT; for tests and debugging."""
    segment = token.split(".")[index]
    return cast(
        JsonObject, json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    )


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


@dataclass(frozen=True)
class StubConfig:
    clients: dict[str, str]
    lifetime: int = DEFAULT_LIFETIME
    latency_ms: int = 0
    exp_offset: int = 0


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
        self.config = self.initial

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.config = self.initial
            self.faults.clear()
            self.calls.clear()

    def configure(self, update: object) -> None:
        """Apply a ``/_stub/config`` body; raise ValueError, changing nothing, if it is invalid."""
        if not isinstance(update, dict):
            raise ValueError("expected an object")  # noqa: TRY004 - the control API's 400
        unknown = set(update) - {"clients", "lifetime", "latency_ms", "exp_offset", "faults"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        clients = update.get("clients")
        if clients is not None and not (
            isinstance(clients, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in clients.items())
        ):
            raise ValueError("clients must be an object of id -> secret strings")
        changes: dict[str, Any] = {} if clients is None else {"clients": dict(clients)}
        for key in ("lifetime", "latency_ms", "exp_offset"):
            if key in update:
                if not isinstance(update[key], int) or isinstance(update[key], bool):
                    raise ValueError(f"{key} must be an integer")
                changes[key] = update[key]
        faults = update.get("faults")
        if faults is not None:
            if not isinstance(faults, list):
                raise ValueError("faults must be a list")
            for fault in faults:
                validate_fault(fault)
        with self.lock:
            self.config = replace(self.config, **changes)
            if faults is not None:
                self.faults = collections.deque(faults)

    def record(
        self,
        client_id: str | None,
        scope: str | None,
        status: int | None,
        token: str | None,
        gen: int,
    ) -> None:
        fingerprint = token_fingerprint(token) if token else None
        entry = {"client_id": client_id, "scope": scope, "status": status, "at": time.time()}
        with self.lock:
            if gen == self.generation:
                self.calls.append({**entry, "fingerprint": fingerprint})

    def snapshot(self) -> JsonObject:
        with self.lock:
            calls = [dict(c) for c in self.calls]
            return {"count": len(calls), "calls": calls, "faults_pending": len(self.faults)}

    def public_config(self) -> JsonObject:
        with self.lock:
            config = self.config
            return {
                "clients": sorted(config.clients),
                "lifetime": config.lifetime,
                "latency_ms": config.latency_ms,
                "exp_offset": config.exp_offset,
                "faults_pending": len(self.faults),
            }


def _media_types(header: str | None) -> list[str]:
    return [part.split(";", 1)[0].strip().lower() for part in (header or "").split(",") if part]


class StubApp:
    """The stub as a WSGI application: token requests and control calls."""

    def __init__(self, state: StubState) -> None:
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self.route(request)
        response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)

    def route(self, request: Request) -> Response:
        path, method, state = request.path, request.method, self.state
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return json_response(400, {"error": "invalid_request", "message": "Bad Content-Length"})
        if path.endswith(TOKEN_PATH_SUFFIX):
            if method == "POST":
                return self.token(request)
            headers = [("Allow", "POST")]
            return json_response(
                405, {"error": "method_not_allowed", "message": "Use POST"}, headers
            )
        if (method, path) == ("GET", CONTROL_PREFIX + "calls"):
            return json_response(200, state.snapshot())
        if (method, path) == ("GET", CONTROL_PREFIX + "config"):
            return json_response(200, state.public_config())
        if (method, path) == ("GET", CONTROL_PREFIX + "health"):
            return json_response(200, {"ok": True})
        if (method, path) == ("POST", CONTROL_PREFIX + "reset"):
            state.reset()
            return json_response(200, {"ok": True})
        if (method, path) == ("POST", CONTROL_PREFIX + "config"):
            try:
                state.configure(json.loads(request.get_data() or b"{}"))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                return json_response(400, {"error": "invalid_config", "message": str(exc)})
            return json_response(200, state.public_config())
        return json_response(
            404, {"error": "not_found", "message": f"No route for {method} {path}"}
        )

    def token(self, request: Request) -> Response:
        state = self.state
        # The fault is taken first so that "the next request fails" holds whatever the request is.
        with state.lock:
            fault = state.faults.popleft() if state.faults else None
            config, gen = state.config, state.generation
        form = urllib.parse.parse_qs(request.get_data().decode("utf-8", "replace"), True)
        client_id = form.get("client_id", [None])[0]
        scope = form.get("scope", [None])[0]
        fault = fault or {}
        delay_ms = fault.get("delay_ms", 0) + config.latency_ms
        if delay_ms:
            time.sleep(delay_ms / 1000)

        status = int(fault.get("status", 200))
        extra = [("Retry-After", str(fault["retry_after"]))] if "retry_after" in fault else []
        if fault.get("close"):
            state.record(client_id, scope, None, None, gen)
            # A load balancer resetting the connection: no status line at all.
            with contextlib.suppress(OSError):
                request.environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            return Response(b"", 200, [("Connection", "close")])
        if fault.get("garbage"):
            state.record(client_id, scope, status, None, gen)
            return Response(
                b"<html><body>502 Bad Gateway</body></html>", status, extra, "text/html"
            )
        if "body" in fault:
            token = fault["body"].get("access_token") if isinstance(fault["body"], dict) else None
            state.record(client_id, scope, status, token if isinstance(token, str) else None, gen)
            return json_response(status, fault["body"], extra)
        if status != 200:
            state.record(client_id, scope, status, None, gen)
            default = {"error": "error", "message": HTTPStatus(status).phrase}
            return json_response(status, DEFAULT_ERROR_BODIES.get(status, default), extra)

        status, answer, token = self.exchange(request, form, config)
        state.record(client_id, scope, status, token, gen)
        return json_response(status, answer)

    @staticmethod
    def exchange(
        request: Request, form: Mapping[str, list[str]], config: StubConfig
    ) -> tuple[int, JsonObject, str | None]:
        """Validate a token request as Igni does; (status, JSON answer, issued token)."""
        if "application/json" not in _media_types(request.headers.get("Accept")):
            return 400, _invalid_request("The Accept header must be application/json"), None
        if _media_types(request.headers.get("Content-Type")) != [FORM]:
            return 400, _invalid_request(f"The Content-Type must be {FORM}"), None
        if form.get("grant_type", [None])[0] != "client_credentials":
            message = "The authorization grant type is not supported by the authorization server."
            return 400, {"error": "unsupported_grant_type", "message": message}, None
        client_id = form.get("client_id", [None])[0]
        if not client_id:
            # league/oauth2-server (under Passport) treats a missing client_id as a bad request.
            return 400, _invalid_request('Check the "client_id" parameter.'), None
        secret = form.get("client_secret", [None])[0]
        expected = config.clients.get(client_id)
        if (
            expected is None
            or secret is None
            or not secrets.compare_digest(expected.encode(), secret.encode())
        ):
            return 401, dict(DEFAULT_ERROR_BODIES[401]), None
        scope = form.get("scope", [""])[0]
        token = make_jwt(client_id, scope.split(), config.lifetime, config.exp_offset)
        return (
            200,
            {"token_type": "Bearer", "expires_in": config.lifetime, "access_token": token},
            token,
        )


def _invalid_request(message: str) -> JsonObject:
    return {"error": "invalid_request", "message": message}


class StubProcess:
    """The stub as a child process, steered through its control API.

    The function under test and the stub then share nothing but sockets, as with the real Igni.
    The first client is ``client_id`` / ``client_secret``; all of them are in ``clients``.
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
        quiet: bool = True,
        start_timeout: float = 15.0,
    ) -> None:
        if not clients:
            raise ValueError("at least one client")
        self.clients = dict(clients)
        self.client_id, self.client_secret = next(iter(self.clients.items()))
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"igni-stub-{os.getpid()}.log"
        spec = ",".join(f"{cid}:{secret}" for cid, secret in self.clients.items())
        args = ["--host", host, "--port", str(port), "--clients", spec]
        args += ["--lifetime", str(lifetime), "--latency-ms", str(latency_ms)]
        # The request log goes to a file (a pipe nobody reads would block the stub) or, for
        # `make local`, to the terminal.
        self._log = self.log_path.open("ab") if quiet else None
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "local.igni_stub", *args],
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
        self.token_url = self.base_url + TOKEN_PATH_SUFFIX
        # No retries: the stub is local, and a retried POST /_stub/config could double-queue faults.
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)

    def _read_ready_port(self, timeout: float) -> int:
        """Wait for the single ``READY <port>`` line; fail clearly if it does not come."""
        stdout = cast(Any, self._proc.stdout)
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
        log = self.log_path.read_text(errors="replace")[-2000:] if self._log else ""
        raise RuntimeError(
            f"igni stub did not start within {timeout:.0f} s (exit {self._proc.poll()}); "
            f"log {self.log_path}: {log}"
        )

    def _call(self, method: str, path: str, body: object = None) -> JsonObject:
        response = self._http.request(
            method,
            self.base_url + CONTROL_PREFIX + path,
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
        return self._call("POST", "config", update)

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def calls(self) -> list[JsonObject]:
        return cast(list[JsonObject], self._call("GET", "calls")["calls"])

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
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> StubProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.igni_stub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see READY line)")
    parser.add_argument("--clients", default="local-client:local-secret", help="id:secret,...")
    parser.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME, help="expires_in (s)")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every token answer")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = parser.parse_args(argv)
    state = StubState(StubConfig(parse_clients(args.clients), args.lifetime, args.latency_ms))
    http = server(args.host, args.port, StubApp(state), name="igni-stub", quiet=args.quiet)

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # serve_forever stops; werkzeug's finally closes the socket.

    signal.signal(signal.SIGTERM, _terminate)
    print(f"READY {http.port}", flush=True)
    http.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
