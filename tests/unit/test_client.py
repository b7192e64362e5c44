"""igni_token_client: caching, single flight, refresh, the bearer auth hooks and the CLI.

The vendor is a small http.server stub on loopback that counts requests and checks no signature
(one test has it check them with local.gateway, to prove the client and the verifier agree).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import botocore.session
import pytest
import urllib3
from igni_token_client import Token, TokenClient, TokenVendorError
from igni_token_client.auth import IgniBearerAuth, request_with_token
from igni_token_client.cli import EXIT_CODES, main

ACCESS_KEY = "AKIACLIENTTESTKEY000"
SECRET_KEY = "client-test-secret-key-0123456789abcdef"

Reply = tuple[int, dict[str, str], object]
LOOPBACK = ["127.0.0.1"]  # the auth hooks' hosts for the loopback stubs


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    target: str = ""  # the request line's target as sent: absolute-form through a proxy


@dataclass
class Stub:
    """A loopback HTTP server whose answers come from ``respond``; it records every request."""

    respond: Callable[[Seen], Reply]
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self.lock:
            return sum(
                1
                for s in self.seen
                if (method is None or s.method == method) and (path is None or s.path == path)
            )

    def start(self) -> Stub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    dict(self.headers.items()),
                    self.rfile.read(length) if length else b"",
                    self.path,
                )
                with stub.lock:
                    stub.seen.append(seen)
                if stub.delay:
                    time.sleep(stub.delay)
                status, headers, body = stub.respond(seen)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def do_PUT(self) -> None:
                self._handle()

            def do_CONNECT(self) -> None:
                self._handle()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class Vendor:
    """The token vendor's contract, minimally: tokens tok-1, tok-2, ...; refresh replaces one."""

    def __init__(self, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.issued = 0
        self.current: str | None = None
        self.lock = threading.Lock()

    def _token(self, new: bool) -> Reply:
        with self.lock:
            if new or self.current is None:
                self.issued += 1
                self.current = f"tok-{self.issued}"
            body = {
                "access_token": self.current,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "expires_at": int(time.time()) + self.expires_in,
            }
        return 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}, body

    def __call__(self, seen: Seen) -> Reply:
        path = seen.path.removeprefix("/v1")
        if seen.method == "GET" and path.startswith("/token"):
            return self._token(new=False)
        if seen.method == "POST" and path.endswith("/refresh"):
            rejected = json.loads(seen.body)["rejected_token"]
            return self._token(new=rejected == self.current)
        return 404, {}, {"error": "not_found", "message": "no route"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Known credentials, no shared files, and never the instance metadata address."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("IGNI_TOKEN_ENDPOINT", raising=False)
    monkeypatch.delenv("IGNI_TOKEN_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for name in ("AWS_CA_BUNDLE", "AWS_DEFAULT_REGION", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def vendor() -> Iterator[tuple[Stub, Vendor]]:
    logic = Vendor()
    stub = Stub(logic).start()
    yield stub, logic
    stub.stop()


def make_client(url: str, **kw: Any) -> TokenClient:
    return TokenClient(url, **kw)


# ---------------------------------------------------------------------------- caching


def test_get_token_signs_and_caches(vendor: tuple[Stub, Vendor]) -> None:
    # Given a client for the vendor stub
    stub, _ = vendor
    client = make_client(stub.url)
    # When it is asked for a token three times
    tokens = [client.get_token() for _ in range(3)]
    # Then one signed request was made and the same token returned each time
    assert stub.count() == 1
    assert {t.access_token for t in tokens} == {"tok-1"}
    request = stub.seen[0]
    assert request.path == "/token"
    assert request.headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "/us-east-1/execute-api/aws4_request" in request.headers["Authorization"]
    assert "X-Amz-Date" in request.headers
    token = tokens[0]
    assert token.token_type == "Bearer"
    assert token.expires_in == 3600
    assert token.authorization == "Bearer tok-1"
    assert "tok-1" not in repr(token)


def test_profile_paths(vendor: tuple[Stub, Vendor]) -> None:
    # Given a client for the profile "analytics"
    stub, _ = vendor
    client = make_client(stub.url + "/v1", profile="analytics")
    # When it gets and then invalidates a token
    token = client.get_token()
    client.invalidate(token.access_token)
    # Then it used the profile's paths under the endpoint's stage
    assert [(s.method, s.path) for s in stub.seen] == [
        ("GET", "/v1/token/analytics"),
        ("POST", "/v1/token/analytics/refresh"),
    ]


def test_near_expiry_refetches(vendor: tuple[Stub, Vendor]) -> None:
    # Given tokens living 100 s (refreshed early from 50 s) and a clock under test control
    stub, logic = vendor
    logic.expires_in = 100
    clock = FakeClock()
    client = make_client(stub.url, clock=clock)
    client.get_token()
    # When 49 s pass, the token is still served from memory
    clock.now += 49
    client.get_token()
    assert stub.count() == 1
    # Then from half its lifetime it is fetched again, once
    clock.now += 1
    client.get_token()
    client.get_token()
    assert stub.count() == 2


def test_explicit_margin_larger_than_lifetime_still_caches(vendor: tuple[Stub, Vendor]) -> None:
    # Given 60 s tokens and a refresh margin of 600 s (capped at half the lifetime)
    stub, logic = vendor
    logic.expires_in = 60
    clock = FakeClock()
    client = make_client(stub.url, refresh_margin=600, clock=clock)
    client.get_token()
    # When 29 s pass / Then the token is still cached; at 31 s it is refetched
    clock.now += 29
    client.get_token()
    assert stub.count() == 1
    clock.now += 2
    client.get_token()
    assert stub.count() == 2


def test_short_lived_token_is_cached(vendor: tuple[Stub, Vendor]) -> None:
    # Given 10 s tokens
    stub, logic = vendor
    logic.expires_in = 10
    clock = FakeClock()
    client = make_client(stub.url, clock=clock)
    # When asked every second for 8 s / Then one fetch, and one early refresh at 5 s
    for _ in range(9):
        client.get_token()
        clock.now += 1
    assert stub.count() == 2


def test_min_ttl_beyond_the_cached_token_asks_the_vendor(vendor: tuple[Stub, Vendor]) -> None:
    # Given a cached token with 3600 s left
    stub, _ = vendor
    client = make_client(stub.url)
    client.get_token()
    # When a caller needs 60 s / Then the cache serves it
    client.get_token(min_ttl=60)
    assert stub.count() == 1
    # When a caller needs more than is left / Then the vendor is asked with min_ttl
    client.get_token(min_ttl=3601)
    assert stub.count() == 2
    assert stub.seen[1].query == {"min_ttl": ["3601"]}
    with pytest.raises(ValueError, match="min_ttl"):
        client.get_token(min_ttl=-1)


# ---------------------------------------------------------------------------- single flight


def _in_threads(count: int, work: Callable[[], object]) -> list[object]:
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_sixteen_threads_make_one_fetch(vendor: tuple[Stub, Vendor]) -> None:
    # Given a slow vendor (300 ms per answer) and a cold client
    stub, _ = vendor
    stub.delay = 0.3
    client = make_client(stub.url)
    # When 16 threads ask for a token at once
    results = _in_threads(16, client.get_token)
    # Then exactly one request reached the vendor and every thread got its token
    assert stub.count() == 1
    assert all(isinstance(r, Token) and r.access_token == "tok-1" for r in results), results


def test_sixteen_threads_share_one_failure() -> None:
    # Given a slow vendor answering 503 upstream_unavailable with Retry-After
    stub = Stub(
        lambda _: (
            503,
            {"Retry-After": "7", "Cache-Control": "no-store"},
            {"error": "upstream_unavailable", "message": "Igni is down"},
        ),
        delay=0.3,
    ).start()
    try:
        clock = FakeClock()
        client = make_client(stub.url, clock=clock)
        # When 16 threads ask at once
        results = _in_threads(16, client.get_token)
        # Then one request was made and every thread got its error
        assert stub.count() == 1
        for r in results:
            assert isinstance(r, TokenVendorError)
            assert (r.status, r.error, r.retry_after) == (503, "upstream_unavailable", 7)
        # And a call within the Retry-After gets the same error without a request
        clock.now += 6
        with pytest.raises(TokenVendorError) as caught:
            client.get_token()
        assert (caught.value.error, caught.value.retry_after) == ("upstream_unavailable", 1)
        assert stub.count() == 1
        # And a call after it tries again
        clock.now += 1
        with pytest.raises(TokenVendorError):
            client.get_token()
        assert stub.count() == 2
    finally:
        stub.stop()


# ---------------------------------------------------------------------------- invalidate


def test_invalidate_replaces_the_rejected_token_once(vendor: tuple[Stub, Vendor]) -> None:
    # Given a cached tok-1 and a slow vendor
    stub, _ = vendor
    client = make_client(stub.url)
    first = client.get_token()
    stub.delay = 0.3
    # When 16 threads report tok-1 as rejected at once
    results = _in_threads(16, lambda: client.invalidate(first.access_token))
    # Then one POST /token/refresh carried it, and all got tok-2, which is now cached
    assert stub.count("POST", "/token/refresh") == 1
    assert json.loads(stub.seen[-1].body) == {"rejected_token": "tok-1"}
    assert stub.seen[-1].headers["Content-Type"] == "application/json"
    assert all(isinstance(r, Token) and r.access_token == "tok-2" for r in results), results
    assert client.get_token().access_token == "tok-2"
    assert stub.count() == 2


def test_invalidate_of_an_old_token_needs_no_call(vendor: tuple[Stub, Vendor]) -> None:
    # Given a client already holding tok-2
    stub, _ = vendor
    client = make_client(stub.url)
    client.invalidate(client.get_token().access_token)
    calls = stub.count()
    # When someone reports the older tok-1
    token = client.invalidate("tok-1")
    # Then the cached tok-2 is returned without a call
    assert token.access_token == "tok-2"
    assert stub.count() == calls


def test_refresh_rate_limited_is_raised_with_retry_after() -> None:
    # Given a vendor refusing forced refreshes
    stub = Stub(
        lambda _: (
            429,
            {"Retry-After": "30"},
            {"error": "refresh_rate_limited", "message": "too soon"},
        )
    ).start()
    try:
        # When a token is reported / Then the error carries the code and Retry-After
        with pytest.raises(TokenVendorError) as caught:
            make_client(stub.url).invalidate("tok-x")
        assert (caught.value.status, caught.value.error) == (429, "refresh_rate_limited")
        assert caught.value.retry_after == 30
    finally:
        stub.stop()


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (403, {"message": "Missing Authentication Token"}, "gateway_forbidden"),
        (403, {"Message": "User: x is not authorized"}, "gateway_forbidden"),
        (403, {"error": "access_denied", "message": "no caller"}, "access_denied"),
        (429, {"message": "Too Many Requests"}, "gateway_throttled"),
        (502, {"message": "Internal server error"}, "gateway_error"),
        (500, b"<html>oops</html>", "gateway_error"),
        (200, {"access_token": "x"}, "bad_response"),
        (200, b"not json", "bad_response"),
    ],
)
def test_answers_map_to_errors(status: int, body: object, error: str) -> None:
    # Given a stub answering this
    stub = Stub(lambda _: (status, {}, body)).start()
    try:
        # When a token is asked for / Then the error is classified
        with pytest.raises(TokenVendorError) as caught:
            make_client(stub.url).get_token()
        assert caught.value.error == error
        assert caught.value.status == status
    finally:
        stub.stop()


def _closed_port() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return port


def test_unreachable_endpoint() -> None:
    # Given nothing listening / When asked / Then endpoint_unreachable, status 0
    client = make_client(f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    assert (caught.value.status, caught.value.error) == (0, "endpoint_unreachable")


def test_no_credentials_for_a_deployed_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no AWS credentials anywhere and a deployed (non-loopback) endpoint
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_REGION")
    client = make_client("https://abc123.execute-api.eu-west-1.amazonaws.com/v1")
    # Then the region comes from the host name
    assert client.region == "eu-west-1"
    # When asked / Then no_credentials, before any network call
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    assert caught.value.error == "no_credentials"


def test_signature_is_accepted_by_the_local_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a stub that verifies SigV4 like make local, and a client with session credentials
    sigv4 = pytest.importorskip("local.gateway.sigv4")
    auth = pytest.importorskip("local.gateway.auth")
    verifier = auth.LocalSigV4Verifier(
        {"ASIACLIENTSESSION001": sigv4.LocalCredential("session-secret", session_token="tkn")},
        region="eu-central-1",
    )
    logic = Vendor()

    def verify_then_answer(seen: Seen) -> Reply:
        query = "&".join(f"{k}={v[0]}" for k, v in seen.query.items())
        result = verifier.check(seen.method, seen.path, query, seen.headers, seen.body)
        if isinstance(result, sigv4.AuthError):
            return result.status, {}, result.body
        return logic(seen)

    stub = Stub(verify_then_answer).start()
    session = botocore.session.Session()
    session.set_credentials("ASIACLIENTSESSION001", "session-secret", "tkn")
    try:
        client = make_client(stub.url + "/v1", region="eu-central-1", session=session)
        # When it gets a token with min_ttl, and refreshes it (a signed body)
        token = client.get_token(min_ttl=10)
        client.invalidate(token.access_token)
        # Then both were accepted
        assert stub.count() == 2
        # And a wrong secret is refused as API Gateway would refuse it
        wrong = botocore.session.Session()
        wrong.set_credentials("ASIACLIENTSESSION001", "not-it", "tkn")
        with pytest.raises(TokenVendorError) as caught:
            make_client(stub.url, region="eu-central-1", session=wrong).get_token()
        assert caught.value.error == "gateway_forbidden"
        assert caught.value.message.startswith("The request signature we calculated")
    finally:
        stub.stop()


def test_loopback_without_credentials_uses_the_local_test_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given no AWS credentials and a loopback endpoint that accepts the documented test keys
    sigv4 = pytest.importorskip("local.gateway.sigv4")
    auth = pytest.importorskip("local.gateway.auth")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    accepted, _ = auth.local_credentials({})
    verifier = auth.LocalSigV4Verifier(accepted)
    logic = Vendor()

    def verify_then_answer(seen: Seen) -> Reply:
        result = verifier.check(seen.method, seen.path, "", seen.headers, seen.body)
        if isinstance(result, sigv4.AuthError):
            return result.status, {}, result.body
        return logic(seen)

    stub = Stub(verify_then_answer).start()
    try:
        client = make_client(stub.url)
        # When a token is asked for / Then it is served, and the client says how it signed
        assert client.get_token().access_token == "tok-1"
        assert client.using_local_test_credentials
    finally:
        stub.stop()


# ---------------------------------------------------------------------------- auth hooks


class Target:
    """An Igni-like API that accepts only the vendor's current token."""

    def __init__(self, vendor: Vendor, always_401: bool = False) -> None:
        self.vendor = vendor
        self.always_401 = always_401
        self.bodies: list[bytes] = []

    def __call__(self, seen: Seen) -> Reply:
        self.bodies.append(seen.body)
        expected = f"Bearer {self.vendor.current}"
        if self.always_401 or seen.headers.get("Authorization") != expected:
            return 401, {}, {"error": "invalid_token"}
        return 200, {}, {"ok": True, "auth": seen.headers["Authorization"]}


@pytest.fixture
def igni(vendor: tuple[Stub, Vendor]) -> Iterator[tuple[Stub, Stub, Vendor, Target]]:
    stub, logic = vendor
    target = Target(logic)
    target_stub = Stub(target).start()
    yield stub, target_stub, logic, target
    target_stub.stop()


def test_requests_hook_retries_once_after_401(
    igni: tuple[Stub, Stub, Vendor, Target],
) -> None:
    requests = pytest.importorskip("requests")
    vendor_stub, target_stub, logic, target = igni
    # Given a client holding tok-1, which Igni no longer accepts (the vendor now has tok-2)
    client = make_client(vendor_stub.url)
    client.get_token()
    logic.current = "tok-2"
    logic.issued = 2
    # When a POST with a body goes through the auth hook
    with requests.Session() as session:
        response = session.post(
            target_stub.url + "/api/v1/things",
            data=b"payload",
            auth=IgniBearerAuth(client, hosts=LOOPBACK),
        )
    # Then the 401 was reported, the request resent once with the new token, and it succeeded
    assert response.status_code == 200
    assert response.json()["auth"] == "Bearer tok-2"
    assert [r.status_code for r in response.history] == [401]
    assert target_stub.count() == 2
    assert target.bodies == [b"payload", b"payload"]
    assert vendor_stub.count("POST", "/token/refresh") == 1


def test_requests_hook_gives_up_after_one_retry(igni: tuple[Stub, Stub, Vendor, Target]) -> None:
    requests = pytest.importorskip("requests")
    vendor_stub, target_stub, _, target = igni
    # Given a target that refuses every token
    target.always_401 = True
    client = make_client(vendor_stub.url)
    # When a GET goes through the hook
    response = requests.get(
        target_stub.url + "/api/v1/things", auth=IgniBearerAuth(client, hosts=LOOPBACK)
    )
    # Then the second 401 is returned: one retry, one refresh
    assert response.status_code == 401
    assert target_stub.count() == 2
    assert vendor_stub.count("POST", "/token/refresh") == 1


def test_requests_hook_leaves_other_answers_alone(igni: tuple[Stub, Stub, Vendor, Target]) -> None:
    requests = pytest.importorskip("requests")
    vendor_stub, target_stub, _, _ = igni
    # Given a client whose token the target accepts
    client = make_client(vendor_stub.url)
    # When a GET goes through the hook / Then one request, no refresh
    response = requests.get(target_stub.url + "/api", auth=IgniBearerAuth(client, hosts=LOOPBACK))
    assert response.status_code == 200
    assert response.history == []
    assert target_stub.count() == 1
    assert vendor_stub.count("POST") == 0


def test_urllib3_helper_retries_once_after_401(igni: tuple[Stub, Stub, Vendor, Target]) -> None:
    vendor_stub, target_stub, logic, target = igni
    # Given a client holding a token Igni no longer accepts
    client = make_client(vendor_stub.url)
    client.get_token()
    logic.current = "tok-2"
    logic.issued = 2
    # When a request goes through request_with_token
    with urllib3.PoolManager() as pool:
        response = request_with_token(
            pool, client, "PUT", target_stub.url + "/api/v1/things/1", body=b"{}", hosts=LOOPBACK
        )
    # Then it succeeded after one refresh and one resend
    assert response.status == 200
    assert json.loads(response.data)["auth"] == "Bearer tok-2"
    assert target_stub.count() == 2
    assert target.bodies == [b"{}", b"{}"]
    assert vendor_stub.count("POST", "/token/refresh") == 1


# ---------------------------------------------------------------------------- CLI


def test_cli_get_prints_the_token(
    vendor: tuple[Stub, Vendor], capsys: pytest.CaptureFixture[str]
) -> None:
    stub, _ = vendor
    # Given the vendor stub / When igni-token get / Then the bare token on stdout
    assert main(["get", "--endpoint", stub.url]) == 0
    assert capsys.readouterr().out == "tok-1\n"
    # When --header / Then the header line
    assert main(["get", "--endpoint", stub.url, "--header"]) == 0
    assert capsys.readouterr().out == "Authorization: Bearer tok-1\n"
    # When --json --min-ttl 60 --profile analytics / Then the whole answer, from the profile
    assert main(["get", "--endpoint", stub.url, "--json", "--min-ttl", "60", "--profile", "a"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"access_token", "token_type", "expires_in", "expires_at"}
    assert stub.seen[-1].path == "/token/a"
    assert stub.seen[-1].query == {"min_ttl": ["60"]}


def test_cli_endpoint_from_environment(
    vendor: tuple[Stub, Vendor],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub, _ = vendor
    # Given IGNI_TOKEN_ENDPOINT / When igni-token get / Then that endpoint is used
    monkeypatch.setenv("IGNI_TOKEN_ENDPOINT", stub.url)
    assert main(["get"]) == 0
    assert capsys.readouterr().out == "tok-1\n"


def test_cli_refresh_reads_the_rejected_token_from_stdin(
    vendor: tuple[Stub, Vendor],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub, _ = vendor
    assert main(["get", "--endpoint", stub.url]) == 0
    capsys.readouterr()
    # Given the refused token on stdin / When igni-token refresh --rejected -
    monkeypatch.setattr(sys, "stdin", io.StringIO("tok-1\n"))
    code = main(["refresh", "--endpoint", stub.url, "--rejected", "-", "--header"])
    # Then the replacement is printed
    assert code == 0
    assert capsys.readouterr().out == "Authorization: Bearer tok-2\n"
    assert json.loads(stub.seen[-1].body) == {"rejected_token": "tok-1"}


CONTRACT_ERRORS = [
    (400, "invalid_request"),
    (403, "access_denied"),
    (404, "not_found"),
    (404, "unknown_profile"),
    (405, "method_not_allowed"),
    (429, "refresh_rate_limited"),
    (500, "configuration_error"),
    (502, "upstream_auth_failed"),
    (502, "upstream_bad_response"),
    (503, "upstream_unavailable"),
]


@pytest.mark.parametrize(("status", "error"), CONTRACT_ERRORS)
def test_cli_exit_code_per_contract_error(
    status: int, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a vendor answering this error
    headers = {"Retry-After": "12"} if status in {429, 503} else {}
    stub = Stub(lambda _: (status, headers, {"error": error, "message": f"{error} here"})).start()
    try:
        # When igni-token get runs
        code = main(["get", "--endpoint", stub.url])
    finally:
        stub.stop()
    # Then its own exit code, and a clear message on stderr only
    assert code == EXIT_CODES[error]
    out, err = capsys.readouterr()
    assert out == ""
    assert f"HTTP {status} {error}: {error} here" in err
    if headers:
        assert "retry after 12 s" in err


def test_cli_exit_codes_are_distinct() -> None:
    codes = list(EXIT_CODES.values())
    assert len(codes) == len(set(codes))
    assert not {0, 1, 2} & set(codes)
    assert {error for _, error in CONTRACT_ERRORS} <= set(EXIT_CODES)


def test_cli_gateway_refusal_and_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    # Given API Gateway's unsigned-request answer / When get / Then gateway_forbidden's code
    stub = Stub(lambda _: (403, {}, {"message": "Missing Authentication Token"})).start()
    try:
        assert main(["get", "--endpoint", stub.url]) == EXIT_CODES["gateway_forbidden"]
    finally:
        stub.stop()
    assert "Missing Authentication Token" in capsys.readouterr().err
    # Given nothing listening / When get / Then endpoint_unreachable's code
    port = _closed_port()
    assert (
        main(["get", "--endpoint", f"http://127.0.0.1:{port}"])
        == EXIT_CODES["endpoint_unreachable"]
    )


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    # Given bad arguments / When run / Then exit 2
    with pytest.raises(SystemExit) as caught:
        main(["get", "--min-ttl", "-5"])
    assert caught.value.code == 2
    assert main(["get", "--endpoint", "ftp://x"]) == 2
    assert "endpoint must be an http(s) URL" in capsys.readouterr().err


def test_cli_runs_as_a_module_and_documents_exit_codes() -> None:
    # Given the package installed / When python -m igni_token_client.cli --help
    done = subprocess.run(
        [sys.executable, "-m", "igni_token_client.cli", "get", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # Then the help lists every exit code
    for error, code in EXIT_CODES.items():
        assert f"{code}  {error}:" in done.stdout
    assert "--min-ttl" in done.stdout


def test_importing_the_package_does_not_import_requests() -> None:
    # Given a fresh interpreter / When the package is imported / Then requests is not loaded
    code = "import sys, igni_token_client; print('requests' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


def test_docs_list_the_cli_exit_codes() -> None:
    # Given the exit-code table in the README
    docs = Path(__file__).resolve().parents[2] / "README.md"
    table = re.findall(r"^\| (\d+) \| ([a-z_]+)(?::| \()", docs.read_text(), re.MULTILINE)
    rows = {name: int(code) for code, name in table}
    # Then it agrees with the CLI
    assert rows == EXIT_CODES


def test_without_requests_the_urllib3_helper_still_imports() -> None:
    # Given an interpreter where requests cannot be imported
    code = (
        "import sys; sys.modules['requests'] = None; sys.modules['requests.auth'] = None\n"
        "from igni_token_client import request_with_token, IgniBearerAuth\n"
        "try:\n"
        "    IgniBearerAuth(object())\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    # When the auth module is used / Then the urllib3 helper loads and IgniBearerAuth says why not
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "ImportError: IgniBearerAuth needs requests" in done.stdout
