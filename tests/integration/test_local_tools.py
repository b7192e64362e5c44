"""The local tools themselves, for real: Igni stub, moto server, stack, API emulation, invoke.

Everything runs as it does for ``make local`` and the other integration tests: the stub and moto
as processes over HTTP, the API server on a loopback socket. The handlers here are trivial fakes
(tests/integration/fake_handlers.py) so these tests do not depend on the real function.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.api_server import (
    ApiServer,
    HttpRequest,
    HttpResponse,
    LocalIdentity,
    MalformedProxyResponse,
    proxy_response_to_http,
    request_to_event,
)
from local.cfn_template import (
    api_routes,
    load_template,
    parameter_defaults,
    resolve,
    resource_properties,
)
from local.events import EVENTS_DIR, PLACEHOLDER_SECRET_ARN, PLACEHOLDER_SECRET_NAME
from local.igni_stub import StubProcess, decode_jwt_segment, parse_clients, token_fingerprint
from local.invoke import handler_for, invoke_event
from local.lambda_context import FakeLambdaContext
from local.moto_server import MotoServer
from local.run import LocalEnvironment, RealIgni
from local.sigv4 import LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY
from local.stack import LocalStack
from tests.integration import fake_handlers
from tests.local_run import start_local_run

REPO_ROOT = Path(__file__).resolve().parents[2]
LoadEvent = Callable[..., dict[str, Any]]

HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=False)
FORM = "application/x-www-form-urlencoded"


def token_request(
    stub: StubProcess,
    client_id: str | None = None,
    client_secret: str | None = None,
    *,
    scope: str | None = None,
    grant_type: str = "client_credentials",
    headers: dict[str, str] | None = None,
) -> urllib3.BaseHTTPResponse:
    fields = {
        "grant_type": grant_type,
        "client_id": client_id if client_id is not None else stub.client_id,
        "client_secret": client_secret if client_secret is not None else stub.client_secret,
    }
    if scope is not None:
        fields["scope"] = scope
    return HTTP.request(
        "POST",
        stub.token_url,
        body=urllib.parse.urlencode(fields),
        headers=headers
        if headers is not None
        else {"Accept": "application/json", "Content-Type": FORM},
    )


# --- Igni stub -------------------------------------------------------------------------------


def test_stub_issues_a_passport_style_jwt_and_records_the_call(igni_stub: StubProcess) -> None:
    # Given the stub with its start-up client
    before = int(time.time())

    # When the client asks for a token with a scope, twice
    first = token_request(igni_stub, scope="read write")
    second = token_request(igni_stub)

    # Then both answers are 200 Bearer tokens living the configured 48 h
    assert first.status == 200
    assert first.headers["Content-Type"] == "application/json"
    answer = first.json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 172800
    token = answer["access_token"]
    # and each is a three-segment JWT shaped like Passport's
    assert token.count(".") == 2
    header = decode_jwt_segment(token, 0)
    claims = decode_jwt_segment(token, 1)
    assert header["typ"] == "JWT"
    assert header["alg"] == "RS256"
    assert header["jti"] == claims["jti"]
    assert len(claims["jti"]) == 80
    assert claims["aud"] == igni_stub.client_id
    assert claims["sub"] == ""
    assert claims["scopes"] == ["read", "write"]
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 172800
    # and no two tokens are alike
    assert second.json()["access_token"] != token

    # And the call log has the client, scope, status and a fingerprint, never the secret or token
    calls = igni_stub.calls()
    assert [(c["client_id"], c["scope"], c["status"]) for c in calls] == [
        (igni_stub.client_id, "read write", 200),
        (igni_stub.client_id, None, 200),
    ]
    assert calls[0]["fingerprint"] == token_fingerprint(token)
    assert calls[0]["fingerprint"] == hashlib.sha256(token.encode()).hexdigest()[:12]
    raw_log = json.dumps(calls)
    assert igni_stub.client_secret not in raw_log
    assert token not in raw_log


def test_stub_answers_401_for_bad_credentials(igni_stub: StubProcess) -> None:
    # Given a wrong secret, an unknown client and a missing secret
    attempts = [
        token_request(igni_stub, client_secret="wrong"),
        token_request(igni_stub, client_id="nobody", client_secret="x"),
        token_request(igni_stub, client_secret=""),
    ]

    # Then each gets exactly the 401 the Igni document shows
    for response in attempts:
        assert response.status == 401
        assert response.json() == {
            "error": "invalid_client",
            "message": "Client authentication failed",
        }
    assert [c["status"] for c in igni_stub.calls()] == [401, 401, 401]


def test_stub_accepts_the_second_configured_client(igni_stub: StubProcess) -> None:
    # When the other start-up client authenticates
    response = token_request(igni_stub, "other-client", igni_stub.clients["other-client"])

    # Then its token's audience is that client
    assert response.status == 200
    assert decode_jwt_segment(response.json()["access_token"], 1)["aud"] == "other-client"


@pytest.mark.parametrize(
    ("headers", "grant_type", "error"),
    [
        ({"Content-Type": FORM}, "client_credentials", "invalid_request"),
        ({"Accept": "text/html", "Content-Type": FORM}, "client_credentials", "invalid_request"),
        (
            {"Accept": "application/json", "Content-Type": "application/json"},
            "client_credentials",
            "invalid_request",
        ),
        (
            {"Accept": "application/json", "Content-Type": FORM},
            "password",
            "unsupported_grant_type",
        ),
        (
            {"Accept": "application/json", "Content-Type": f"{FORM}; charset=utf-8"},
            "authorization_code",
            "unsupported_grant_type",
        ),
    ],
)
def test_stub_answers_400_for_malformed_requests(
    igni_stub: StubProcess, headers: dict[str, str], grant_type: str, error: str
) -> None:
    # When the request misses a required header or uses another grant
    response = token_request(igni_stub, grant_type=grant_type, headers=headers)

    # Then it is a 400 with an OAuth error code and a message for a human
    assert response.status == 400
    body = response.json()
    assert body["error"] == error
    assert body["message"]


def test_stub_plays_its_fault_queue_in_order_then_recovers(igni_stub: StubProcess) -> None:
    # Given a queue with one of each fault
    igni_stub.configure(
        faults=[
            {"status": 500},
            {"status": 429, "retry_after": 1},
            {"status": 503, "retry_after": 2},
            {"garbage": True},
            {"body": {"token_type": "Bearer", "expires_in": 0}, "status": 200},
            {"close": True},
            {"delay_ms": 300},
        ]
    )

    # When token requests come in one by one
    r500 = token_request(igni_stub)
    r429 = token_request(igni_stub)
    r503 = token_request(igni_stub)
    garbage = token_request(igni_stub)
    exact = token_request(igni_stub)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        token_request(igni_stub)
    started = time.monotonic()
    delayed = token_request(igni_stub)
    delay = time.monotonic() - started
    after = token_request(igni_stub)

    # Then each fault was played once, in order
    assert r500.status == 500
    assert r429.status == 429
    assert r429.headers["Retry-After"] == "1"
    assert r503.status == 503
    assert r503.headers["Retry-After"] == "2"
    assert garbage.status == 200
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(garbage.data)
    assert exact.status == 200
    assert exact.json() == {"token_type": "Bearer", "expires_in": 0}
    # and a delay fault answers normally, late
    assert delayed.status == 200
    assert delay >= 0.3
    assert "access_token" in delayed.json()
    # and once the queue is empty the stub is healthy again
    assert after.status == 200
    statuses = [c["status"] for c in igni_stub.calls()]
    assert statuses == [500, 429, 503, 200, 200, None, 200, 200]


def test_stub_config_changes_lifetime_exp_and_clients_and_reset_restores(
    igni_stub: StubProcess,
) -> None:
    # Given a short lifetime, an exp claim off by -60 s and a replaced client list
    igni_stub.configure(lifetime=120, exp_offset=-60, clients={"new": "s3cret"})

    # When the new client asks, and the start-up client too
    fresh = token_request(igni_stub, "new", "s3cret")
    old = token_request(igni_stub)

    # Then the answer uses the new lifetime and the claim disagrees by the offset
    assert fresh.status == 200
    assert fresh.json()["expires_in"] == 120
    claims = decode_jwt_segment(fresh.json()["access_token"], 1)
    assert claims["exp"] == claims["iat"] + 60
    # and the start-up client is no longer known
    assert old.status == 401

    # When the stub is reset
    igni_stub.reset()

    # Then calls, faults and configuration are back to the start
    assert igni_stub.calls() == []
    assert token_request(igni_stub).json()["expires_in"] == 172800
    assert token_request(igni_stub, "new", "s3cret").status == 401


def test_stub_rejects_an_unknown_fault(igni_stub: StubProcess) -> None:
    # When a test queues a fault with a typo
    # Then the control API refuses it instead of silently answering normally
    with pytest.raises(RuntimeError, match="400"):
        igni_stub.configure(faults=[{"stauts": 500}])


def test_stub_serves_concurrent_requests_with_unique_tokens(igni_stub: StubProcess) -> None:
    # Given enough latency that 16 requests served one by one would take 4.8 s
    igni_stub.configure(latency_ms=300)
    tokens: list[str] = []
    lock = threading.Lock()

    def ask() -> None:
        token = token_request(igni_stub).json()["access_token"]
        with lock:
            tokens.append(token)

    # When 16 clients ask at once
    threads = [threading.Thread(target=ask) for _ in range(16)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    # Then all are answered with distinct tokens, and all are counted, and in parallel: in
    # well under the serial time (a wide margin: this checks concurrency, not speed)
    assert len(set(tokens)) == 16
    assert time.monotonic() - started < 16 * 0.3 / 2
    assert len(igni_stub.calls()) == 16


def test_parse_clients() -> None:
    assert parse_clients("a:1, b:two:parts,") == {"a": "1", "b": "two:parts"}
    with pytest.raises(ValueError, match="id:secret"):
        parse_clients("nosecret")


# --- template and stack ----------------------------------------------------------------------


def test_template_loader_understands_short_form_intrinsics(tmp_path: Path) -> None:
    # Given a template using the short forms
    path = tmp_path / "t.yaml"
    path.write_text(
        """
Parameters:
  Env: {Type: String, Default: prod}
Conditions:
  IsProd: !Equals [!Ref Env, prod]
  NotProd: !Not [!Condition IsProd]
Resources:
  Thing:
    Type: AWS::X::Y
    Properties:
      Name: !Sub "${AWS::StackName}-${Env}-${Other.Arn}"
      Literal: !Sub "${!NotAVariable}"
      Arn: !GetAtt Other.Arn
      Pick: !If [IsProd, big, small]
      Second: !Select [1, !Split [",", "a,b,c"]]
      Joined: !Join ["-", [x, !Ref Env]]
      Encoded: !Base64 hello
      Cidrs: !GetAZs ""
""",
        encoding="utf-8",
    )

    # When it is loaded and resolved
    template = load_template(path)
    props = resource_properties(template, "Thing")
    refs = {**parameter_defaults(template), "AWS::StackName": "s", "Other.Arn": "arn:o"}
    resolved = resolve(template, props, refs)

    # Then the tags became CloudFormation's long forms
    assert props["Arn"] == {"Fn::GetAtt": ["Other", "Arn"]}
    assert props["Encoded"] == {"Fn::Base64": "hello"}
    assert template["Conditions"]["NotProd"] == {"Fn::Not": [{"Condition": "IsProd"}]}
    # and the supported intrinsics resolve
    assert resolved["Name"] == "s-prod-arn:o"
    assert resolved["Literal"] == "${NotAVariable}"
    assert resolved["Pick"] == "big"
    assert resolved["Second"] == "b"
    assert resolved["Joined"] == "x-prod"


def test_project_template_routes_match_the_sample_events() -> None:
    # Given the routes template.yaml gives the API
    routes = api_routes(load_template())

    # Then GET /token and POST /token/refresh are among them, as the events assume
    assert ("GET", "/token") in routes
    assert ("POST", "/token/refresh") in routes


def test_stack_is_created_from_template_yaml(stack: LocalStack, moto_server: str) -> None:
    # Given the template's table definition
    table_def = resource_properties(load_template(), "TokenTable")

    # When the stack fixture has created the resources on the moto server
    ddb = stack.dynamodb()
    table = ddb.describe_table(TableName=stack.table_name)["Table"]
    ttl = ddb.describe_time_to_live(TableName=stack.table_name)["TimeToLiveDescription"]

    # Then the table has the template's keys and billing mode, and TTL on its attribute
    assert table["KeySchema"] == table_def["KeySchema"]
    assert table["AttributeDefinitions"] == table_def["AttributeDefinitions"]
    assert table["BillingModeSummary"]["BillingMode"] == table_def["BillingMode"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    assert table_def["TimeToLiveSpecification"]["AttributeName"] == "expires_at"
    # and the secret is named as the template names it, holding the stub's client
    assert stack.secret_name == f"igni-token-vendor/{stack.name}/default"
    secret = stack.secretsmanager().get_secret_value(SecretId=stack.secret_arn)
    assert json.loads(secret["SecretString"])["client_id"] == "test-client"
    # and it carries the template's resource policy, resolved for this stack (moto stores it
    # without enforcing it): GetSecretValue denied to all but the stack's three function roles
    policy = json.loads(
        stack.secretsmanager().get_resource_policy(SecretId=stack.secret_arn)["ResourcePolicy"]
    )
    (deny,) = policy["Statement"]
    assert (deny["Effect"], deny["Action"]) == ("Deny", "secretsmanager:GetSecretValue")
    role = f"arn:aws:iam::{stack.account_id}:role/{stack.name}"
    assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == [
        f"{role}-token-fn",
        f"{role}-maintenance-fn",
        f"{role}-rotation-fn",
    ]
    # and the KMS key encrypts and decrypts
    kms = stack.kms()
    blob = kms.encrypt(KeyId=stack.kms_key_id, Plaintext=b"tok")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"tok"


def test_stack_function_env_is_the_templates_environment(
    stack: LocalStack, moto_server: str, igni_stub: StubProcess
) -> None:
    # When the stack fixture applied the function environment
    env = stack.function_env()

    # Then it names this stack's resources as the template's Refs would
    assert env["IGNI_SECRET_ID"] == stack.secret_arn
    assert env["TOKEN_TABLE_NAME"] == stack.table_name
    assert env["TOKEN_KMS_KEY_ID"] == stack.kms_key_arn
    assert env["IGNI_TOKEN_URL"] == igni_stub.token_url
    assert env["AWS_ENDPOINT_URL"] == moto_server
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["POWERTOOLS_SERVICE_NAME"] == "igni-token-vendor"
    # and the template's empty defaults are left unset unless asked for
    assert "IGNI_WORKSPACE" not in env
    assert stack.function_env(keep_empty=True)["IGNI_WORKSPACE"] == ""
    # and it is what the test process now runs with
    for key in ("IGNI_SECRET_ID", "TOKEN_TABLE_NAME", "IGNI_TOKEN_URL"):
        assert os.environ[key] == env[key]


def test_two_stacks_do_not_share_names(make_stack: Any) -> None:
    # When two stacks are made in one test
    first = make_stack(apply_env=False)
    second = make_stack(apply_env=False, secret_value={"client_id": "x"})

    # Then every name differs and each secret holds its own value
    assert first.table_name != second.table_name
    assert first.secret_arn != second.secret_arn
    value = second.secretsmanager().get_secret_value(SecretId=second.secret_arn)
    assert json.loads(value["SecretString"]) == {"client_id": "x"}


def test_moto_restart_keeps_the_port_and_loses_the_state(tmp_path: Path) -> None:
    # Given a separate moto server (the session one must keep its state) with a table
    server = MotoServer(log_path=tmp_path / "moto.log")
    endpoint = server.start()
    try:
        import boto3
        from botocore.config import Config

        ddb = boto3.client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )
        ddb.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )

        # When it is restarted
        again = server.restart()

        # Then it answers on the same endpoint, empty
        assert again == endpoint
        assert ddb.list_tables()["TableNames"] == []
    finally:
        server.stop()
    assert not server.running


# --- API Gateway emulation ---------------------------------------------------------------------


@pytest.fixture
def echo_api() -> Iterator[ApiServer]:
    api = ApiServer(fake_handlers.echo, port=0, quiet=True)
    api.start()
    try:
        yield api
    finally:
        api.stop()


def echoed(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    assert response.status == 200, response.data
    return json.loads(response.data)  # type: ignore[no-any-return]


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_api_turns_a_get_into_a_rest_proxy_event(echo_api: ApiServer, prefix: str) -> None:
    # When a client GETs /token with a repeated query parameter, with or without the stage
    response = HTTP.request(
        "GET",
        f"{echo_api.base_url}{prefix}/token?min_ttl=60&x=1&x=2",
        headers={"User-Agent": "pytest-agent", "X-Custom": "yes"},
    )

    # Then the handler got a version 1.0 REST proxy event for the /token resource
    event = echoed(response)["event"]
    assert event["resource"] == "/token"
    assert event["path"] == "/token"
    assert event["httpMethod"] == "GET"
    assert event["queryStringParameters"] == {"min_ttl": "60", "x": "2"}
    assert event["multiValueQueryStringParameters"] == {"min_ttl": ["60"], "x": ["1", "2"]}
    assert event["headers"]["X-Custom"] == "yes"
    assert event["multiValueHeaders"]["X-Custom"] == ["yes"]
    assert event["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert event["headers"]["X-Amzn-Trace-Id"].startswith("Root=1-")
    assert event["pathParameters"] is None
    assert event["stageVariables"] is None
    assert event["body"] is None
    assert event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["stage"] == "v1"
    assert ctx["path"] == "/v1/token"
    assert ctx["resourcePath"] == "/token"
    assert ctx["httpMethod"] == "GET"
    assert ctx["accountId"] == "123456789012"
    assert ctx["apiId"]
    assert ctx["requestId"] == response.headers["x-amzn-RequestId"]
    # and the caller identity is filled as API Gateway does under AWS_IAM
    identity = ctx["identity"]
    assert identity["userArn"] == "arn:aws:iam::123456789012:user/local-developer"
    assert identity["accountId"] == "123456789012"
    assert identity["caller"] == identity["user"]
    assert identity["accessKey"].startswith("AKIA")
    assert identity["sourceIp"] == "127.0.0.1"
    assert identity["userAgent"] == "pytest-agent"
    assert identity["cognitoIdentityId"] is None
    assert identity["cognitoAuthenticationType"] is None
    # and it ran with a fresh context counting down from 25 s
    context = echoed(response)["context"]
    assert 20_000 < context["remaining_ms"] <= 25_000


def test_api_passes_bodies_and_translates_responses_back(echo_api: ApiServer) -> None:
    # When a client POSTs a JSON body to /token/refresh
    response = HTTP.request(
        "POST",
        f"{echo_api.base_url}/v1/token/refresh",
        body=b'{"rejected_token": "eyJ"}',
        headers={"Content-Type": "application/json"},
    )

    # Then the event carries it as text under the refresh resource
    event = echoed(response)["event"]
    assert event["resource"] == "/token/refresh"
    assert event["body"] == '{"rejected_token": "eyJ"}'
    assert event["isBase64Encoded"] is False
    # and the proxy response's headers and multi-value headers both reach the client
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert response.headers["Content-Type"] == "application/json"


def test_api_base64_encodes_binary_request_bodies() -> None:
    # Given a request whose body is not UTF-8
    request = HttpRequest("POST", "/token/refresh", (("Host", "h"),), b"\xff\xfe", "1.2.3.4", 3000)

    # When it becomes an event
    event = request_to_event(request, {"userArn": "arn"}, resource="/token/refresh")

    # Then the body is base64 and flagged so
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\xfe"


def test_api_decodes_base64_response_bodies() -> None:
    # Given an API whose handler answers bytes, base64-encoded
    with ApiServer(fake_handlers.binary, port=0, quiet=True) as api:
        # When a client calls it
        response = HTTP.request("GET", f"{api.base_url}/token")

    # Then the client gets the raw bytes and the handler's status
    assert response.status == 201
    assert response.data == b"\x00\x01\xfe\xff"
    assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "result",
    [
        None,
        {"body": "no status"},
        {"statusCode": 200, "body": {"not": "a string"}},
        {"statusCode": 200, "headers": {"X": ["list"]}},
        {"statusCode": 200, "body": "!!", "isBase64Encoded": True},
    ],
)
def test_malformed_proxy_responses_are_rejected(result: object) -> None:
    with pytest.raises(MalformedProxyResponse):
        proxy_response_to_http(result)


def test_proxy_response_defaults_like_api_gateway() -> None:
    # When a handler answers only a status
    response = proxy_response_to_http({"statusCode": 204})

    # Then the body is empty and the content type defaults to JSON
    assert response.status == 204
    assert response.body == b""
    assert response.header("Content-Type") == "application/json"


def test_api_answers_502_when_the_handler_fails() -> None:
    # Given handlers that raise or answer something that is not a proxy response
    for handler in (fake_handlers.boom, lambda event, context: {"body": "no status"}):
        with ApiServer(handler, port=0, quiet=True) as api:
            # When a client calls
            response = HTTP.request("GET", f"{api.base_url}/token")

        # Then it gets API Gateway's 502
        assert response.status == 502
        assert response.json() == {"message": "Internal server error"}


def test_identity_resolver_can_refuse_before_the_handler_runs() -> None:
    # Given a resolver that refuses unsigned requests, as a SigV4 check will
    invoked: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        invoked.append(event)
        return {"statusCode": 200, "body": "{}"}

    def resolver(request: HttpRequest) -> dict[str, Any] | HttpResponse:
        if request.header("Authorization") is None:
            return HttpResponse.json(403, {"message": "Missing Authentication Token"})
        return LocalIdentity(user_arn="arn:aws:iam::123456789012:user/signed").event_identity(
            request.client_ip, request.header("User-Agent")
        )

    with ApiServer(handler, resolver, port=0, quiet=True) as api:
        # When one request is unsigned and one "signed"
        refused = HTTP.request("GET", f"{api.base_url}/token")
        allowed = HTTP.request(
            "GET", f"{api.base_url}/token", headers={"Authorization": "AWS4-HMAC-SHA256 x"}
        )

    # Then the unsigned one never reached the handler and the other carries the resolved caller
    assert refused.status == 403
    assert allowed.status == 200
    assert len(invoked) == 1
    assert invoked[0]["requestContext"]["identity"]["userArn"].endswith("user/signed")


def test_api_serialises_invocations_like_one_execution_environment() -> None:
    # Given a slow handler that counts how many invocations overlap
    state = {"active": 0, "max": 0}
    lock = threading.Lock()

    def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
        with lock:
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
        time.sleep(0.05)
        with lock:
            state["active"] -= 1
        return {"statusCode": 200, "body": "{}"}

    with ApiServer(slow, port=0, quiet=True) as api:
        # When four clients call at once
        threads = [
            threading.Thread(target=HTTP.request, args=("GET", f"{api.base_url}/token"))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

    # Then the handler ran one invocation at a time
    assert state["max"] == 1


def test_unrouted_paths_reach_the_handler_unless_strict(echo_api: ApiServer) -> None:
    # When a client calls a path the template does not route
    loose = HTTP.request("DELETE", f"{echo_api.base_url}/v1/nope")

    # Then by default the handler sees it (so its 404/405 can be tried locally)
    event = echoed(loose)["event"]
    assert event["resource"] == "/nope"
    assert event["httpMethod"] == "DELETE"

    # But with strict routes it gets API Gateway's own 403
    with ApiServer(fake_handlers.echo, port=0, quiet=True, strict_routes=True) as strict:
        refused = HTTP.request("DELETE", f"{strict.base_url}/v1/nope")
        routed = HTTP.request("GET", f"{strict.base_url}/v1/token")
    assert refused.status == 403
    assert refused.json() == {"message": "Missing Authentication Token"}
    assert routed.status == 200


def test_api_routes_path_parameters_with_literal_segments_first(echo_api: ApiServer) -> None:
    # Given the template's routes, where /token/{profile} sits beside /token/refresh
    routes = api_routes(load_template())
    if ("GET", "/token/{profile}") not in routes:
        pytest.skip("template has no /token/{profile} route")

    # When clients call a profile's token, and POST the literal refresh path
    profile = echoed(HTTP.request("GET", f"{echo_api.base_url}/v1/token/reporting"))["event"]
    refresh = echoed(HTTP.request("POST", f"{echo_api.base_url}/v1/token/refresh"))["event"]

    # Then the variable is a path parameter, and the literal resource wins over the variable
    assert profile["resource"] == "/token/{profile}"
    assert profile["pathParameters"] == {"profile": "reporting"}
    assert profile["requestContext"]["resourcePath"] == "/token/{profile}"
    assert refresh["resource"] == "/token/refresh"
    assert refresh["pathParameters"] is None


def test_fake_context_counts_down() -> None:
    # Given a context with a 1 s timeout
    context = FakeLambdaContext(timeout_s=1.0, function_name="fn")

    # When time passes
    first = context.get_remaining_time_in_millis()
    time.sleep(0.05)
    second = context.get_remaining_time_in_millis()

    # Then the remaining time shrinks and the attributes look like Lambda's
    assert 900 < first <= 1000
    assert second < first
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:fn"
    assert context.log_group_name == "/aws/lambda/fn"
    assert FakeLambdaContext().aws_request_id != context.aws_request_id


# --- events and make invoke --------------------------------------------------------------------


API_EVENTS = sorted(
    p.stem for p in EVENTS_DIR.glob("*.json") if "httpMethod" in p.read_text(encoding="utf-8")
)


def test_events_directory_has_the_expected_events() -> None:
    names = {p.stem for p in EVENTS_DIR.glob("*.json")}
    assert {
        "get_token",
        "get_token_min_ttl",
        "get_token_invalid_min_ttl",
        "get_token_no_identity",
        "get_unknown_path",
        "delete_token",
        "post_refresh",
        "post_refresh_bad_body",
        "prewarm",
        "secret_label_updated",
    } <= names


@pytest.mark.parametrize("name", API_EVENTS)
def test_api_events_look_like_api_gateway_iam_events(name: str, load_event: LoadEvent) -> None:
    event = load_event(name)
    identity = event["requestContext"]["identity"]
    assert event["requestContext"]["stage"] == "v1"
    assert event["requestContext"]["path"] == "/v1" + event["path"]
    assert event["requestContext"]["resourcePath"] == event["resource"]
    assert event["httpMethod"] == event["requestContext"]["httpMethod"]
    assert set(event["headers"]) == set(event["multiValueHeaders"])
    assert {"userArn", "caller", "accessKey", "accountId", "sourceIp", "user"} <= set(identity)
    if name == "get_token_no_identity":
        assert identity["userArn"] is None
        assert identity["caller"] is None
        assert identity["accessKey"] is None
    else:
        assert identity["userArn"].startswith("arn:aws:iam::")


def test_scheduled_and_rotation_events_match_the_template(load_event: LoadEvent) -> None:
    # Given the template's schedule input and rotation rule pattern
    function = resource_properties(load_template(), "MaintenanceFunction")
    events = function["Events"]
    schedule_input = json.loads(events["Prewarm"]["Properties"]["Input"])
    pattern = events["SecretRotated"]["Properties"]["Pattern"]

    # Then prewarm.json is exactly the schedule's input
    assert load_event("prewarm") == schedule_input
    # and secret_label_updated.json matches the rule, for the secret it is substituted with
    rotated = load_event(
        "secret_label_updated", secret_arn="arn:aws:secretsmanager:x:1:secret:n-AbCdEf"
    )
    assert rotated["source"] in pattern["source"]
    assert rotated["detail-type"] in pattern["detail-type"]
    assert rotated["detail"]["labelUpdated"] in pattern["detail"]["labelUpdated"]
    assert rotated["resources"] == ["arn:aws:secretsmanager:x:1:secret:n-AbCdEf"]
    assert rotated["detail"]["name"] == "n"


def test_load_event_overrides(load_event: LoadEvent) -> None:
    # When a test overrides a nested field and the query string
    event = load_event(
        "get_token",
        requestContext__identity__userArn=None,
        queryStringParameters={"min_ttl": "5"},
    )

    # Then the nested value changed and both query maps agree
    assert event["requestContext"]["identity"]["userArn"] is None
    assert event["queryStringParameters"] == {"min_ttl": "5"}
    assert event["multiValueQueryStringParameters"] == {"min_ttl": ["5"]}


def test_load_event_substitutes_the_stack_secret(stack: LocalStack, load_event: LoadEvent) -> None:
    # When a test that has a stack loads the rotation event
    event = load_event("secret_label_updated")

    # Then it is about that stack's secret
    assert event["resources"] == [stack.secret_arn]
    assert event["detail"]["name"] == stack.secret_name
    assert PLACEHOLDER_SECRET_NAME not in json.dumps(event)


def test_invoke_runs_a_handler_on_an_event_against_an_ephemeral_stack(tmp_path: Path) -> None:
    # Given no running `make local` (no state file)
    environ_before = dict(os.environ)

    # When an event is invoked with a fake handler
    result = invoke_event(
        "secret_label_updated", handler=fake_handlers.echo, state_file=tmp_path / "none.json"
    )

    # Then the handler ran on the event, with the secret of the stack it was given
    assert result.ok
    assert result.target.source == "ephemeral"
    body = json.loads(result.response["body"])
    assert body["event"]["resources"] == [result.target.secret_arn]
    assert PLACEHOLDER_SECRET_ARN not in json.dumps(body["event"])
    assert body["env"]["IGNI_SECRET_ID"] == result.target.secret_arn
    assert body["env"]["IGNI_TOKEN_URL"].startswith("http://127.0.0.1:")
    # and the caller's environment is as it was
    assert dict(os.environ) == environ_before


def test_invoke_uses_the_running_local_stack(
    tmp_path: Path, stack: LocalStack, moto_server: str
) -> None:
    # Given a state file like the one `make local` writes, naming a live moto server
    state_file = tmp_path / "env.json"
    state_file.write_text(
        json.dumps(
            {
                "moto_endpoint": moto_server,
                "stack": stack.names(),
                "function_env": stack.function_env(),
                "function_timeout_s": 25.0,
            }
        ),
        encoding="utf-8",
    )

    # When an event is invoked
    result = invoke_event("get_token", handler=fake_handlers.echo, state_file=state_file)

    # Then it ran against that stack
    assert result.target.source == "make local"
    assert json.loads(result.response["body"])["env"]["TOKEN_TABLE_NAME"] == stack.table_name


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("get_token", "TokenFunction"),
        ("post_refresh_bad_body", "TokenFunction"),
        ("prewarm", "MaintenanceFunction"),
        ("secret_label_updated", "MaintenanceFunction"),
    ],
)
def test_invoke_runs_the_handler_of_the_function_that_receives_the_event(
    name: str, function: str, load_event: LoadEvent
) -> None:
    # Given an event of events/ and the template's function that receives it
    expected = resource_properties(load_template(), function)["Handler"]
    # Then make invoke runs that function's handler
    assert handler_for(load_event(name)) == expected


def test_invoke_reports_a_raising_handler_like_lambda(tmp_path: Path) -> None:
    result = invoke_event("prewarm", handler=fake_handlers.boom, state_file=tmp_path / "x.json")
    assert not result.ok
    assert result.error is not None
    assert result.error["errorType"] == "RuntimeError"
    assert result.error["errorMessage"] == "boom"


def _python(
    *args: str, env_overrides: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src")])}
    for var in ("IGNI_WORKSPACE", "IGNI_CLIENT_ID", "IGNI_CLIENT_SECRET"):
        env.pop(var, None)
    env.update(env_overrides or {})
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        **kwargs,
    )


def test_invoke_cli_prints_only_the_response_on_stdout(tmp_path: Path) -> None:
    # When `make invoke` runs an event with a fake handler
    done = _python(
        "-m",
        "local.invoke",
        "events/get_token_min_ttl.json",
        "--handler",
        "tests.integration.fake_handlers:echo",
        "--state-file",
        str(tmp_path / "none.json"),
    )

    # Then stdout is the handler's JSON answer and nothing else
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["event"]["queryStringParameters"] == {"min_ttl": "3600"}

    # And a raising handler exits 1 with Lambda's error shape
    failed = _python(
        "-m",
        "local.invoke",
        "events/prewarm.json",
        "--handler",
        "tests.integration.fake_handlers:boom",
        "--ephemeral",
    )
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["errorType"] == "RuntimeError"


@pytest.mark.slow
def test_make_local_serves_and_cleans_up(tmp_path: Path) -> None:
    # Given `make local` on free ports with a fake handler, in a shell without AWS credentials
    state_file = tmp_path / "env.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src")]),
    }
    for var in (
        "IGNI_WORKSPACE",
        "IGNI_CLIENT_ID",
        "IGNI_CLIENT_SECRET",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "LOCAL_IAM_POLICY",
        "LOCAL_IAM_POLICY_JSON",
        "LOCAL_PROFILES",
    ):
        env.pop(var, None)
    proc, state = start_local_run(
        "--handler",
        "tests.integration.fake_handlers:echo",
        env=env,
        state_file=state_file,
        timeout=30,
    )
    try:
        # When a client calls the API it reports, signed with the documented test credentials
        url = state["api_url"] + "/v1/token"
        request = AWSRequest(method="GET", url=url)
        credentials = Credentials(LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY)
        SigV4Auth(credentials, "execute-api", "us-east-1").add_auth(request)
        response = HTTP.request("GET", url, headers=dict(request.headers.items()))
        unsigned = HTTP.request("GET", url)

        # Then the handler answered with the stack's environment, to the signer only
        assert state["mode"] == "stub"
        assert unsigned.status == 403
        body = echoed(response)
        assert body["event"]["requestContext"]["identity"]["accessKey"] == LOCAL_TEST_ACCESS_KEY_ID
        assert body["env"]["IGNI_SECRET_ID"] == state["stack"]["secret_arn"]
        assert body["env"]["IGNI_TOKEN_URL"] == state["igni_token_url"]
        # and the state file holds no credential but the stub's fake one
        assert "local-secret" not in json.dumps(state["function_env"])
    finally:
        # When it gets SIGTERM
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)

    # Then it exits cleanly, having printed how to call it, and removes its state file
    assert proc.returncode == 0, output
    assert "awscurl --service execute-api" in output
    assert "Mode: STUB" in output
    assert not state_file.exists()


def test_real_igni_mode_puts_the_credentials_in_the_secret_and_starts_no_stub() -> None:
    # Given real Igni credentials in the environment of `make local`
    real = RealIgni.from_environ(
        {"IGNI_WORKSPACE": "acme", "IGNI_CLIENT_ID": "cid", "IGNI_CLIENT_SECRET": "csecret"}
    )
    assert real is not None

    # When the local environment starts in that mode (no call to Igni is made here)
    env = LocalEnvironment(real_igni=real)
    with env as stack:
        secret = stack.secretsmanager().get_secret_value(SecretId=stack.secret_arn)
        function_env = env.function_env

    # Then there is no stub, the secret holds the credentials and no token URL overrides Igni's
    assert env.mode == "igni"
    assert env.stub is None
    assert json.loads(secret["SecretString"]) == {
        "client_id": "cid",
        "client_secret": "csecret",
        "workspace": "acme",
    }
    assert function_env["IGNI_WORKSPACE"] == "acme"
    assert "IGNI_TOKEN_URL" not in function_env
    assert "csecret" not in json.dumps(function_env)


def test_real_igni_mode_needs_the_client_credentials() -> None:
    assert RealIgni.from_environ({}) is None
    with pytest.raises(ValueError, match="IGNI_CLIENT_ID"):
        RealIgni.from_environ({"IGNI_WORKSPACE": "acme"})
    done = _python("-m", "local.run", env_overrides={"IGNI_WORKSPACE": "acme"})
    assert done.returncode == 2
    assert "IGNI_CLIENT_SECRET" in done.stderr
