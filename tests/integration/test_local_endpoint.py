"""End to end through the local endpoint: SigV4 and IAM as API Gateway applies them, the real
handler on the test's stack, the real client and CLI, and every answer checked against
openapi.yaml so that the document cannot drift from the code.

The endpoint is ``local.run.make_api`` (what ``make local`` serves) on a free loopback port in a
thread of the test process; the handler runs in that thread against the ``stack`` fixture's moto
resources and the Igni stub.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import botocore.session
import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from igni_token_client import TokenClient, TokenVendorError, request_with_token
from igni_token_client.auth import IgniBearerAuth

from local.gateway.auth import POLICY_JSON_VAR, LocalAuth, local_auth
from local.gateway.server import ApiServer, Handler, proxy_response_to_http
from local.gateway.sigv4 import (
    INVALID_TOKEN,
    LOCAL_TEST_ACCESS_KEY_ID,
    LOCAL_TEST_SECRET_ACCESS_KEY,
    MISSING_TOKEN,
    SIGNATURE_MISMATCH,
)
from local.igni_stub import StubProcess, token_fingerprint
from local.run import make_api
from local.stack import LocalStack
from tests.conftest import LoadEvent
from tests.local_run import start_local_run
from tests.openapi_check import assert_matches_openapi
from token_vendor.functions import api as vendor
from token_vendor.functions.runtime import reset_runtime

REPO_ROOT = Path(__file__).resolve().parents[2]
HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=30.0), retries=False)
CLI_TIMEOUT_S = 60.0

TEST_KEYS = Credentials(LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY)
ANALYTICS_KEY = "AKIALOCALANALYTICS01"
ANALYTICS_SECRET = "analytics-local-secret-not-an-aws-secret"
ANALYTICS_ARN = "arn:aws:iam::123456789012:user/analytics-reader"
ANALYTICS_KEYS = Credentials(ANALYTICS_KEY, ANALYTICS_SECRET)


# ---------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Answer:
    """An HTTP answer of the endpoint, already checked against openapi.yaml."""

    status: int
    headers: dict[str, str]
    body: Any


def check(method: str, template: str, status: int, headers: Any, raw: bytes) -> Answer:
    """Parse a JSON answer and assert it is what openapi.yaml documents for it."""
    body = json.loads(raw)
    pairs = [(str(k), str(v)) for k, v in headers.items()]
    assert_matches_openapi(method, template, status, pairs, body)
    return Answer(status, {k.lower(): v for k, v in pairs}, body)


def call(
    api: ApiServer,
    method: str,
    path: str,
    template: str,
    *,
    credentials: Credentials | None = TEST_KEYS,
    body: bytes | None = None,
    signed_at: datetime | None = None,
    region: str = "us-east-1",
) -> Answer:
    """A request to the endpoint, signed with botocore's own SigV4Auth unless ``credentials`` is
    None; ``signed_at`` signs it (correctly) with another clock."""
    url = api.base_url + path
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
    if credentials is not None:
        signer = SigV4Auth(credentials, "execute-api", region)
        if signed_at is None:
            signer.add_auth(request)
        else:
            clock = signed_at.astimezone(UTC).replace(tzinfo=None)
            with mock.patch("botocore.auth.get_current_datetime", return_value=clock):
                signer.add_auth(request)
    response = HTTP.request(method, url, body=body, headers=dict(request.headers.items()))
    return check(method, template, response.status, response.headers, response.data)


def session_with(credentials: Credentials) -> botocore.session.Session:
    session = botocore.session.Session()
    session.set_credentials(credentials.access_key, credentials.secret_key)
    return session


def client_for(api: ApiServer, credentials: Credentials = TEST_KEYS, **kw: Any) -> TokenClient:
    """The real client for the endpoint, signing with ``credentials``."""
    return TokenClient(api.base_url, session=session_with(credentials), **kw)


def fingerprints(stub: StubProcess) -> list[str]:
    """The tokens the stub issued, oldest first (fingerprints only)."""
    return [c["fingerprint"] for c in stub.calls() if c["fingerprint"]]


Serve = Callable[..., ApiServer]


@pytest.fixture
def serve(stack: LocalStack) -> Iterator[Serve]:
    """Start `make local`'s API for the test's stack; every server is stopped afterwards."""
    servers: list[ApiServer] = []

    def start(auth: LocalAuth | None = None, handler: Handler = vendor.lambda_handler) -> ApiServer:
        api = make_api(handler, stack, auth or local_auth({}), port=0, quiet=True)
        api.start()
        servers.append(api)
        return api

    yield start
    for api in servers:
        api.stop()


@pytest.fixture
def api(serve: Serve, igni_stub: StubProcess) -> ApiServer:
    """The endpoint as `make local` serves it on a machine without AWS credentials."""
    return serve()


@pytest.fixture
def analytics(stack: LocalStack, igni_stub: StubProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    """A second profile, `analytics`, holding the stub's other client; returns that client id."""
    client_id, client_secret = next(
        (k, v) for k, v in igni_stub.clients.items() if k != igni_stub.client_id
    )
    secret = stack.secretsmanager().create_secret(
        Name=f"{stack.name}/analytics",
        SecretString=json.dumps({"client_id": client_id, "client_secret": client_secret}),
    )
    monkeypatch.setenv(
        "IGNI_PROFILES",
        json.dumps({"analytics": {"secret_id": secret["ARN"], "token_url": igni_stub.token_url}}),
    )
    reset_runtime()
    return client_id


def claims(token: str) -> dict[str, Any]:
    """The payload of a stub-issued JWT (its `aud` is the client it was minted for)."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


# ---------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_a_botocore_signed_request_gets_a_token(
    api: ApiServer, igni_stub: StubProcess, prefix: str
) -> None:
    # Given the endpoint accepting the documented test credentials
    # When a request signed by botocore's SigV4Auth asks for a token, with or without the stage
    answer = call(api, "GET", f"{prefix}/token?min_ttl=60", "/token")

    # Then it is a token of the contract, minted by the stub for the stack's client
    assert answer.status == 200
    assert answer.body["token_type"] == "Bearer"
    assert answer.headers["cache-control"] == "no-store"
    assert claims(answer.body["access_token"])["aud"] == igni_stub.client_id


def test_the_function_sees_the_identity_api_gateway_fills(
    serve: Serve, stack: LocalStack, igni_stub: StubProcess
) -> None:
    # Given an endpoint whose function records its events
    events: list[dict[str, Any]] = []

    def recording(event: dict[str, Any], context: Any) -> Any:
        events.append(event)
        return vendor.lambda_handler(event, context)

    api = serve(handler=recording)

    # When a signed caller gets a token
    assert call(api, "GET", "/v1/token", "/token").status == 200

    # Then the function got requestContext.identity as API Gateway fills it for AWS_IAM
    identity = events[0]["requestContext"]["identity"]
    assert identity["accessKey"] == LOCAL_TEST_ACCESS_KEY_ID
    assert identity["userArn"] == "arn:aws:iam::123456789012:user/local-caller"
    assert identity["accountId"] == "123456789012"
    assert identity["caller"] == identity["user"]
    assert identity["caller"].startswith("AIDA")
    assert identity["sourceIp"] == "127.0.0.1"
    assert identity["userAgent"]
    assert events[0]["requestContext"]["accountId"] == stack.account_id


def test_unsigned_wrong_unknown_and_stale_requests_never_reach_the_function(
    serve: Serve, igni_stub: StubProcess
) -> None:
    # Given an endpoint whose function counts its invocations
    invoked: list[dict[str, Any]] = []

    def counting(event: dict[str, Any], context: Any) -> Any:
        invoked.append(event)
        return vendor.lambda_handler(event, context)

    api = serve(handler=counting)
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)

    # When requests come unsigned, signed with a wrong secret or an unknown key, or signed
    # correctly but ten minutes ago
    unsigned = call(api, "GET", "/token", "/token", credentials=None)
    wrong = call(
        api,
        "GET",
        "/token",
        "/token",
        credentials=Credentials(LOCAL_TEST_ACCESS_KEY_ID, "not-the-secret"),
    )
    unknown = call(
        api, "GET", "/token", "/token", credentials=Credentials("AKIANOTKNOWNLOCALLY1", "x")
    )
    stale = call(api, "GET", "/token", "/token", signed_at=ten_minutes_ago)
    refresh = call(
        api,
        "POST",
        "/token/refresh",
        "/token/refresh",
        credentials=None,
        body=b'{"rejected_token": "x"}',
    )

    # Then each is API Gateway's 403, and the function never ran
    assert unsigned.status == 403
    assert unsigned.body == {"message": MISSING_TOKEN}
    assert unsigned.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert refresh.body == {"message": MISSING_TOKEN}
    assert wrong.status == 403
    assert wrong.body["message"].startswith(SIGNATURE_MISMATCH)
    assert wrong.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert unknown.body == {"message": INVALID_TOKEN}
    assert stale.status == 403
    assert stale.body["message"].startswith("Signature expired: ")
    assert invoked == []
    assert igni_stub.calls() == []


def test_a_signature_for_another_region_is_refused(api: ApiServer) -> None:
    # When a request is signed for eu-west-1 while the stack is in us-east-1
    answer = call(api, "GET", "/token", "/token", region="eu-west-1")
    # Then API Gateway's scope error
    assert answer.status == 403
    assert "region" in answer.body["message"]


# ---------------------------------------------------------------------------- the client


def test_the_client_gets_caches_and_refreshes_a_token(
    api: ApiServer, igni_stub: StubProcess
) -> None:
    with client_for(api) as client:
        # When the real client asks twice
        first = client.get_token()
        again = client.get_token(min_ttl=60)
        # Then one token, minted once, from cache the second time
        assert first == again
        assert first.access_token
        assert len(igni_stub.calls()) == 1
        # And reporting it gets its replacement from POST /token/refresh
        fresh = client.invalidate(first.access_token)
        assert fresh.access_token != first.access_token
        assert client.get_token() == fresh
        assert len(igni_stub.calls()) == 2


def test_the_client_under_16_threads_makes_one_request(
    serve: Serve, igni_stub: StubProcess
) -> None:
    # Given an endpoint that counts the requests reaching it, and an Igni that takes 300 ms
    reached: list[str] = []

    def counting(event: dict[str, Any], context: Any) -> Any:
        reached.append(event["path"])
        return vendor.lambda_handler(event, context)

    api = serve(handler=counting)
    igni_stub.configure(latency_ms=300)
    barrier = threading.Barrier(16)
    tokens: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    with client_for(api) as client:

        def worker() -> None:
            try:
                barrier.wait(timeout=10)
                token = client.get_token().access_token
            except BaseException as exc:  # pragma: no cover - reported below
                with lock:
                    errors.append(exc)
                return
            with lock:
                tokens.append(token)

        # When 16 threads ask for a token at once
        threads = [threading.Thread(target=worker) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        # Then all got the same token, from one request to the endpoint and one exchange
        assert errors == []
        assert len(tokens) == 16
        assert len(set(tokens)) == 1
        assert reached == ["/token"]
        assert len(igni_stub.calls()) == 1
        # And later calls are served from the client's cache
        assert client.get_token().access_token == tokens[0]
        assert reached == ["/token"]


def test_the_client_reports_gateway_refusals(api: ApiServer) -> None:
    # Given a client signing with a secret the endpoint does not accept
    with client_for(api, Credentials(LOCAL_TEST_ACCESS_KEY_ID, "wrong")) as client:
        # When it asks / Then the 403 is the client's gateway_forbidden with the gateway's words
        with pytest.raises(TokenVendorError) as caught:
            client.get_token()
        assert caught.value.status == 403
        assert caught.value.error == "gateway_forbidden"
        assert caught.value.message.startswith(SIGNATURE_MISMATCH)


# ---------------------------------------------------------------------------- the CLI


def cli_env(**overrides: str) -> dict[str, str]:
    """A shell without AWS credentials (a fresh machine), plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_PROFILE",
            "IGNI_TOKEN_ENDPOINT",
            "IGNI_TOKEN_PROFILE",
        }
    }
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=os.pathsep.join(str(REPO_ROOT / p) for p in ("client", "src", ".")),
    )
    env.update(overrides)
    return env


def igni_token(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "igni_token_client.cli", *args],
        env=dict(env if env is not None else cli_env()),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        cwd=REPO_ROOT,
    )


def test_the_cli_gets_and_refreshes_tokens_without_aws_credentials(
    api: ApiServer, igni_stub: StubProcess
) -> None:
    # Given a shell without AWS credentials and IGNI_TOKEN_ENDPOINT set to the local endpoint
    env = cli_env(IGNI_TOKEN_ENDPOINT=api.base_url)

    # When it runs igni-token get, --header and --json
    plain = igni_token("get", env=env)
    header = igni_token("get", "--header", env=env)
    whole = igni_token("get", "--json", "--min-ttl", "60", env=env)

    # Then each prints the same token its own way, signed with the documented test credentials
    assert plain.returncode == 0, plain.stderr
    token = plain.stdout.strip()
    assert token
    assert "documented test credentials" in plain.stderr
    assert header.returncode == 0, header.stderr
    assert header.stdout == f"Authorization: Bearer {token}\n"
    assert whole.returncode == 0, whole.stderr
    answer = json.loads(whole.stdout)
    assert answer["access_token"] == token
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] > 60
    assert len(igni_stub.calls()) == 1

    # When the token is reported as refused (from stdin), then its replacement reported at once
    fresh = subprocess.run(
        [sys.executable, "-m", "igni_token_client.cli", "refresh", "--rejected", "-"],
        input=token + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    limited = igni_token("refresh", "--rejected", fresh.stdout.strip(), env=env)

    # Then the first prints a new token; the second is 429 refresh_rate_limited, exit 16
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip() not in ("", token)
    assert limited.returncode == 16, limited.stderr
    assert "refresh_rate_limited" in limited.stderr
    assert "retry after" in limited.stderr


def test_the_cli_exit_codes_for_403_and_404(api: ApiServer, igni_stub: StubProcess) -> None:
    # When the CLI signs with the wrong secret, asks for an unknown profile, or a path the API
    # does not declare
    wrong = igni_token(
        "get",
        "--endpoint",
        api.base_url,
        env=cli_env(AWS_ACCESS_KEY_ID=LOCAL_TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY="wrong"),
    )
    unknown_profile = igni_token("get", "--endpoint", api.base_url, "--profile", "nope")
    undeclared = igni_token("get", "--endpoint", api.base_url + "/elsewhere")

    # Then each has its own exit code and a one-line message naming the error
    assert wrong.returncode == 12, wrong.stderr
    assert "HTTP 403 gateway_forbidden: The request signature we calculated" in wrong.stderr
    assert wrong.stdout == ""
    assert unknown_profile.returncode == 14, unknown_profile.stderr
    assert "HTTP 404 unknown_profile" in unknown_profile.stderr
    assert undeclared.returncode == 12, undeclared.stderr
    assert "HTTP 403 gateway_forbidden: Missing Authentication Token" in undeclared.stderr
    assert igni_stub.calls() == []


# ---------------------------------------------------------------------------- IAM per profile


def test_a_caller_allowed_one_profile_is_refused_the_other(
    serve: Serve, igni_stub: StubProcess, analytics: str
) -> None:
    # Given a local IAM policy: the test key may call anything; the analytics caller only
    # GET /token/analytics
    policy = {
        "callers": {ANALYTICS_KEY: {"secret_key": ANALYTICS_SECRET, "user_arn": ANALYTICS_ARN}},
        "allow": {LOCAL_TEST_ACCESS_KEY_ID: ["*"], ANALYTICS_ARN: ["GET/token/analytics"]},
    }
    api = serve(auth=local_auth({POLICY_JSON_VAR: json.dumps(policy)}))

    # When the analytics caller asks for the default token, refreshes analytics, and asks for
    # the analytics token
    default = call(api, "GET", "/token", "/token", credentials=ANALYTICS_KEYS)
    refresh = call(
        api,
        "POST",
        "/v1/token/analytics/refresh",
        "/token/{profile}/refresh",
        credentials=ANALYTICS_KEYS,
        body=b'{"rejected_token": "x"}',
    )
    own = call(api, "GET", "/token/analytics", "/token/{profile}", credentials=ANALYTICS_KEYS)

    # Then the first two are IAM's denial, never reaching the function; the third is its token
    assert default.status == 403
    assert default.body == {
        "Message": f"User: {ANALYTICS_ARN} is not authorized to perform: execute-api:Invoke "
        "on resource: arn:aws:execute-api:us-east-1:********9012:local0api1/v1/GET/token"
    }
    assert default.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert refresh.status == 403
    assert "POST/token/analytics/refresh" in refresh.body["Message"]
    assert own.status == 200
    assert claims(own.body["access_token"])["aud"] == analytics

    # And the caller allowed everything gets both tokens, which never cross
    mine = call(api, "GET", "/token", "/token")
    theirs = call(api, "GET", "/token/analytics", "/token/{profile}")
    assert claims(mine.body["access_token"])["aud"] == igni_stub.client_id
    assert theirs.body["access_token"] == own.body["access_token"]
    assert len(igni_stub.calls()) == 2

    # And the real client sees the denial as gateway_forbidden
    with client_for(api, ANALYTICS_KEYS) as client:
        with pytest.raises(TokenVendorError) as caught:
            client.get_token()
        assert caught.value.error == "gateway_forbidden"
        assert "is not authorized" in caught.value.message
    with client_for(api, ANALYTICS_KEYS, profile="analytics") as client:
        assert client.get_token().access_token == own.body["access_token"]


# ---------------------------------------------------------------------------- the contract


def test_each_answer_of_the_contract_matches_openapi(
    api: ApiServer, stack: LocalStack, igni_stub: StubProcess, analytics: str
) -> None:
    # Given a token for each profile
    token = call(api, "GET", "/token", "/token").body["access_token"]
    profile_token = call(api, "GET", "/v1/token/analytics", "/token/{profile}").body

    # When the refresh routes replace them
    fresh = call(
        api,
        "POST",
        "/token/refresh",
        "/token/refresh",
        body=json.dumps({"rejected_token": token}).encode(),
    )
    call(
        api,
        "POST",
        "/token/analytics/refresh",
        "/token/{profile}/refresh",
        body=json.dumps({"rejected_token": profile_token["access_token"]}).encode(),
    )
    # Then 200s of the contract (checked by call), and a second forced refresh is 429
    limited = call(
        api,
        "POST",
        "/token/refresh",
        "/token/refresh",
        body=json.dumps({"rejected_token": fresh.body["access_token"]}).encode(),
    )
    assert limited.status == 429
    assert limited.body["error"] == "refresh_rate_limited"
    assert int(limited.headers["retry-after"]) >= 1

    # When requests are malformed or name an unknown profile
    # Then 400 and 404 of the contract
    assert call(api, "GET", "/token?min_ttl=soon", "/token").body["error"] == "invalid_request"
    bad_body = call(api, "POST", "/token/refresh", "/token/refresh", body=b"[]")
    assert bad_body.body["error"] == "invalid_request"
    assert call(api, "GET", "/token/nope", "/token/{profile}").body["error"] == "unknown_profile"
    nope_refresh = call(
        api,
        "POST",
        "/token/nope/refresh",
        "/token/{profile}/refresh",
        body=b'{"rejected_token":"x"}',
    )
    assert nope_refresh.body["error"] == "unknown_profile"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nothing-here"), ("DELETE", "/token")])
def test_undeclared_paths_and_methods_are_api_gateways_403(
    api: ApiServer, igni_stub: StubProcess, method: str, path: str
) -> None:
    # When a signed request names a path or method the API does not declare
    request = AWSRequest(method=method, url=api.base_url + path)
    SigV4Auth(TEST_KEYS, "execute-api", "us-east-1").add_auth(request)
    response = HTTP.request(method, api.base_url + path, headers=dict(request.headers.items()))
    # Then API Gateway answers it, as deployed: the function's 404/405 are never seen
    assert response.status == 403
    assert response.json() == {"message": MISSING_TOKEN}
    assert igni_stub.calls() == []


@pytest.mark.parametrize(
    ("event", "status", "code"),
    [("get_unknown_path", 404, "not_found"), ("delete_token", 405, "method_not_allowed")],
)
@pytest.mark.usefixtures("stack")
def test_the_functions_own_404_and_405_match_openapi(
    load_event: LoadEvent,
    lambda_context: Any,
    event: str,
    status: int,
    code: str,
) -> None:
    # Given an event API Gateway would not send (it answers 403 first), invoked directly
    loaded = load_event(event)
    response = proxy_response_to_http(vendor.lambda_handler(loaded, lambda_context))
    # Then the function's fallback answer is what openapi.yaml documents for it
    method, resource = loaded["httpMethod"], loaded["resource"]
    answer = check(method, resource, response.status_code, response.headers, response.get_data())
    assert answer.status == status
    assert answer.body["error"] == code


@pytest.mark.parametrize(
    ("stub_config", "status", "code"),
    [
        ({"faults": [{"status": 500}] * 3}, 503, "upstream_unavailable"),
        ({"clients": {"someone-else": "x"}}, 502, "upstream_auth_failed"),
        ({"faults": [{"garbage": True}]}, 502, "upstream_bad_response"),
    ],
)
def test_igni_failures_through_the_endpoint_match_openapi(
    api: ApiServer, igni_stub: StubProcess, stub_config: dict[str, Any], status: int, code: str
) -> None:
    # Given Igni failing every attempt, refusing the client, or answering garbage
    igni_stub.configure(**stub_config)
    # When a token is asked for / Then the documented error (503 with its Retry-After)
    answer = call(api, "GET", "/token", "/token")
    assert answer.status == status
    assert answer.body["error"] == code


def test_a_bad_secret_through_the_endpoint_is_500_of_the_contract(
    api: ApiServer, stack: LocalStack
) -> None:
    # Given the secret holds something unusable
    stack.put_secret_value("not json")
    # When a token is asked for / Then 500 configuration_error, as documented
    answer = call(api, "GET", "/token", "/token")
    assert answer.status == 500
    assert answer.body["error"] == "configuration_error"


def test_a_failing_function_is_api_gateways_502(serve: Serve) -> None:
    # Given a function that raises
    def boom(event: dict[str, Any], context: Any) -> Any:
        raise RuntimeError("boom")

    api = serve(handler=boom)
    # When it is called / Then API Gateway's own 502, as documented
    answer = call(api, "GET", "/token", "/token")
    assert answer.status == 502
    assert answer.body == {"message": "Internal server error"}


def test_the_functions_access_denied_matches_openapi(
    stack: LocalStack, load_event: LoadEvent, lambda_context: Any
) -> None:
    # Given an event without an IAM caller (API Gateway never sends one; the function checks)
    # When the handler runs on it
    result = vendor.lambda_handler(load_event("get_token_no_identity"), lambda_context)
    response = proxy_response_to_http(result)
    # Then its 403 access_denied is what openapi.yaml documents
    answer = check("GET", "/token", response.status_code, response.headers, response.get_data())
    assert answer.status == 403
    assert answer.body["error"] == "access_denied"


# ---------------------------------------------------------------------------- the 401 hook


class ResourceServer:
    """An Igni-like API that accepts only the token Igni (the stub) issued last."""

    def __init__(self, stub: StubProcess) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                value = self.headers.get("Authorization", "")
                token = value.removeprefix("Bearer ")
                outer.seen.append(token_fingerprint(token))
                current = fingerprints(stub)
                ok = value.startswith("Bearer ") and current and outer.seen[-1] == current[-1]
                body = b'{"ok": true}' if ok else b'{"error": "invalid_token"}'
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/things"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def resource_server(igni_stub: StubProcess) -> Iterator[ResourceServer]:
    server = ResourceServer(igni_stub)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("hook", ["urllib3", "requests"])
def test_the_auth_hook_retries_once_after_a_401(
    api: ApiServer, igni_stub: StubProcess, resource_server: ResourceServer, hook: str
) -> None:
    # Given a client holding a token that another caller has since had replaced
    with client_for(api) as client:
        old = client.get_token().access_token
        with client_for(api) as other:
            newer = other.invalidate(old).access_token
        assert fingerprints(igni_stub) == [token_fingerprint(old), token_fingerprint(newer)]

        # When a request goes through the auth hook to an API that accepts only the newer token
        if hook == "urllib3":
            status = request_with_token(
                HTTP, client, "GET", resource_server.url, hosts=["127.0.0.1"]
            ).status
        else:
            import requests

            with requests.Session() as session:
                auth = IgniBearerAuth(client, hosts=["127.0.0.1"])
                response = session.get(resource_server.url, auth=auth, timeout=30)
                status = response.status_code
                assert [r.status_code for r in response.history] == [401]

        # Then the first attempt was refused, the hook reported the old token and retried once
        # with the newer one, which the vendor already had: no new exchange at Igni
        assert status == 200
        assert resource_server.seen == [token_fingerprint(old), token_fingerprint(newer)]
        assert client.get_token().access_token == newer
        assert len(igni_stub.calls()) == 2


# ---------------------------------------------------------------------------- make local itself


@pytest.mark.slow
def test_make_local_with_a_profile_and_a_policy(tmp_path: Path) -> None:
    # Given `make local` (python -m local.run) on free ports, in a shell without AWS credentials
    # whose region is eu-central-1, with an extra profile and a policy allowing the analytics
    # caller only its profile
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "callers": {
                    ANALYTICS_KEY: {"secret_key": ANALYTICS_SECRET, "user_arn": ANALYTICS_ARN}
                },
                "allow": {
                    LOCAL_TEST_ACCESS_KEY_ID: ["*"],
                    ANALYTICS_KEY: ["GET/token/analytics", "POST/token/analytics/refresh"],
                },
            }
        ),
        encoding="utf-8",
    )
    state_file = tmp_path / "env.json"
    shell = cli_env(AWS_REGION="eu-central-1")
    env = {**shell, "LOCAL_IAM_POLICY": str(policy), "LOCAL_PROFILES": "analytics"}
    for var in ("IGNI_WORKSPACE", "IGNI_CLIENT_ID", "IGNI_CLIENT_SECRET", "AWS_ENDPOINT_URL"):
        env.pop(var, None)
    proc, state = start_local_run("--stack-name", "e2e", env=env, state_file=state_file, timeout=60)
    try:
        url = state["api_url"]

        # When the CLI asks for both profiles, and an unsigned request comes
        default = igni_token("get", "--endpoint", url, env=shell)
        profile = igni_token(
            "get", "--endpoint", url, "--profile", "analytics", "--json", env=shell
        )
        unsigned = HTTP.request("GET", url + "/token")
        analytics_env = {
            **shell,
            "AWS_ACCESS_KEY_ID": ANALYTICS_KEY,
            "AWS_SECRET_ACCESS_KEY": ANALYTICS_SECRET,
        }
        denied = igni_token("get", "--endpoint", url, env=analytics_env)
        allowed = igni_token("get", "--endpoint", url, "--profile", "analytics", env=analytics_env)

        # Then each profile has its own stub client's token; unsigned is 403; IAM applies
        assert default.returncode == 0, default.stderr
        assert claims(default.stdout.strip())["aud"] == "local-client"
        assert profile.returncode == 0, profile.stderr
        assert claims(json.loads(profile.stdout)["access_token"])["aud"] == "local-analytics"
        assert unsigned.status == 403
        assert unsigned.json() == {"message": MISSING_TOKEN}
        assert denied.returncode == 12, denied.stderr
        assert "is not authorized to perform: execute-api:Invoke" in denied.stderr
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.strip() == json.loads(profile.stdout)["access_token"]
        # and the stack is in the shell's region; the state file names the callers and the
        # policy, no secret key
        assert state["stack"]["region"] == "eu-central-1"
        assert state["profiles"] == ["default", "analytics"]
        assert state["auth"]["callers"][ANALYTICS_KEY] == ANALYTICS_ARN
        assert ANALYTICS_SECRET not in state_file.read_text(encoding="utf-8")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)

    # Then it printed what it accepts and exited cleanly
    assert proc.returncode == 0, output
    words = " ".join(output.split())
    assert "documented local test credentials" in words
    assert f"Also accepting {ANALYTICS_KEY}" in words
    assert "profile analytics" in words
    assert not state_file.exists()
