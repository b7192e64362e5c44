"""The local tools themselves, for real: Igni stub, moto server, stack, events, invoke, make local.

Everything runs as it does for ``make local`` and the other integration tests: the stub and moto
as processes over HTTP. The handlers here are trivial fakes (tests/integration/fake_handlers.py)
so these tests do not depend on the real function. The API Gateway emulation is tested in
test_local_gateway.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.cfn_template import (
    api_routes,
    load_template,
    parameter_defaults,
    resolve,
    resource_properties,
)
from local.dynamodb_local import DynamoDBLocal
from local.events import EVENTS_DIR, PLACEHOLDER_SECRET_ARN, PLACEHOLDER_SECRET_NAME
from local.gateway.sigv4 import LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY
from local.igni_stub import StubProcess, decode_jwt_segment, parse_clients, token_fingerprint
from local.invoke import UnknownEvent, handler_for, invoke_event
from local.lambda_context import FakeLambdaContext
from local.moto_server import LazyPrivateKey, MotoServer
from local.process import temp_log
from local.run import LocalEnvironment, RealIgni
from local.stack import LocalStack
from tests.integration import fake_handlers
from tests.integration.conftest import Rotation
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
    stack: LocalStack, moto_server: str, dynamodb_endpoint: str, igni_stub: StubProcess
) -> None:
    # When the stack fixture applied the function environment
    env = stack.function_env()

    # Then it names this stack's resources as the template's Refs would
    assert env["IGNI_SECRET_ID"] == stack.secret_arn
    assert env["TOKEN_TABLE_NAME"] == stack.table_name
    assert env["TOKEN_KMS_KEY_ID"] == stack.kms_key_arn
    assert env["IGNI_TOKEN_URL"] == igni_stub.token_url
    assert env["AWS_ENDPOINT_URL"] == moto_server
    assert env["AWS_ENDPOINT_URL_DYNAMODB"] == dynamodb_endpoint
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


def test_moto_makes_a_symmetric_keys_rsa_pair_only_when_something_uses_it() -> None:
    # Given moto's key maker, deferred as local.moto_server defers it for symmetric KMS keys
    made: list[str] = []

    def make(spec: str) -> Any:
        made.append(spec)
        return type("Pair", (), {"public_key": lambda self: b"der"})()

    key = LazyPrivateKey(make, "SYMMETRIC_DEFAULT")
    # Then nothing is made at creation (encrypt and decrypt never touch it)
    assert made == []
    # And the pair is made once, on first use
    assert key.public_key() == b"der"
    assert key.public_key() == b"der"
    assert made == ["SYMMETRIC_DEFAULT"]


def _client(service: str, endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
    )


def test_moto_restart_keeps_the_port_and_loses_the_state() -> None:
    # Given a separate moto server (the session one must keep its state) with a secret
    server = MotoServer()
    endpoint = server.start()
    log = temp_log("moto-server")  # /tmp/moto-server-<pid>.log
    assert log.exists()
    try:
        sm = _client("secretsmanager", endpoint)
        sm.create_secret(Name="s", SecretString="v")

        # When it is restarted
        again = server.restart()

        # Then it answers on the same endpoint, empty
        assert again == endpoint
        assert sm.list_secrets()["SecretList"] == []
    finally:
        server.stop()
    # And its temporary log is gone with it
    assert not log.exists()


def test_dynamodb_local_restart_keeps_the_port_and_loses_the_tables() -> None:
    # Given a separate DynamoDB Local (the session one must keep its tables) with a table
    server = DynamoDBLocal()
    endpoint = server.start()
    try:
        ddb = _client("dynamodb", endpoint)
        ddb.create_table(
            TableName="restart-test",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        log = server._log
        assert log is not None
        assert log.exists()

        # When it is restarted
        again = server.restart()

        # Then it answers on the same endpoint, empty
        assert again == endpoint
        assert ddb.list_tables()["TableNames"] == []
    finally:
        server.stop()
    # And its temporary log is gone with it
    assert not log.exists()
    assert not server.running


# --- Lambda context ---------------------------------------------------------------------------


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
    assert result.target["source"] == "ephemeral"
    body = json.loads(result.response["body"])
    assert body["event"]["resources"] == [result.target["stack"]["secret_arn"]]
    assert PLACEHOLDER_SECRET_ARN not in json.dumps(body["event"])
    assert body["env"]["IGNI_SECRET_ID"] == result.target["stack"]["secret_arn"]
    assert body["env"]["IGNI_TOKEN_URL"].startswith("http://127.0.0.1:")
    # and the caller's environment is as it was
    assert dict(os.environ) == environ_before


@pytest.fixture
def running_state(tmp_path: Path, stack: LocalStack, moto_server: str) -> Path:
    """A state file like the one `make local` writes, naming the session's live moto server."""
    state_file = tmp_path / "env.json"
    state = {"moto_endpoint": moto_server, "stack": stack.names(), "function_timeout_s": 25.0}
    state["function_env"] = stack.function_env()
    state["function_envs"] = {f: stack.function_env(f) for f in stack.other_envs}
    state["function_envs"]["TokenFunction"] = stack.function_env()
    state_file.write_text(json.dumps(state), encoding="utf-8")
    return state_file


def test_invoke_uses_the_running_local_stack(running_state: Path, stack: LocalStack) -> None:
    # Given a state file like the one `make local` writes, naming a live moto server
    state_file = running_state

    # When an event is invoked
    result = invoke_event("get_token", handler=fake_handlers.echo, state_file=state_file)

    # Then it ran against that stack
    assert result.target["source"] == "make local"
    assert json.loads(result.response["body"])["env"]["TOKEN_TABLE_NAME"] == stack.table_name


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("get_token", "TokenFunction"),
        ("post_refresh_bad_body", "TokenFunction"),
        ("prewarm", "MaintenanceFunction"),
        ("secret_label_updated", "MaintenanceFunction"),
        ("rotation_create_secret", "RotationFunction"),
    ],
)
def test_invoke_runs_the_handler_of_the_function_that_receives_the_event(
    name: str, function: str, load_event: LoadEvent
) -> None:
    # Given an event of events/ and the template's function that receives it
    expected = resource_properties(load_template(), function)["Handler"]
    # Then make invoke runs that function's handler
    assert handler_for(load_event(name)) == expected


@pytest.mark.parametrize(
    "event",
    [{"hello": "world"}, {"SecretId": "s", "Step": "createSecret"}, ["a", "list"]],
    ids=["unknown keys", "half a rotation step", "not an object"],
)
def test_invoke_refuses_an_event_no_function_receives(event: Any) -> None:
    with pytest.raises(UnknownEvent, match="no function receives this event"):
        handler_for(event)


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("get_token", "TokenFunction"),
        ("prewarm", "MaintenanceFunction"),
        ("secret_label_updated", "MaintenanceFunction"),
        ("rotation_create_secret", "RotationFunction"),
    ],
)
def test_invoke_names_the_function_that_ran_in_its_context_and_environment(
    name: str, function: str, running_state: Path, stack: LocalStack
) -> None:
    # When an event is invoked (a fake handler that echoes its context)
    result = invoke_event(name, handler=fake_handlers.echo, state_file=running_state)
    # Then the context (what the Powertools log lines carry) names the function that
    # receives it
    assert result.ok, result.error
    body = json.loads(result.response["body"])
    assert body["context"]["function_name"] == f"{stack.name}-{function}"


def test_invoke_runs_a_rotation_step_from_any_file_through_the_rotation_function(
    running_state: Path, stack: LocalStack, rotation: Rotation, tmp_path: Path
) -> None:
    # Given a secret enabled for rotation with new credentials staged as AWSPENDING
    rotation.enable()
    staged = rotation.stage({"client_id": "test-client", "client_secret": "test-secret-0123456789"})
    # And the step as Secrets Manager sends it, in a file outside events/ (any name)
    step = {"SecretId": stack.secret_arn, "ClientRequestToken": staged, "Step": "createSecret"}
    event_file = tmp_path / "step.txt"
    event_file.write_text(json.dumps(step), encoding="utf-8")
    # When make invoke runs it, with no handler named
    result = invoke_event(str(event_file), state_file=running_state)
    # Then the rotation function ran the step (the maintenance function would not know it)
    assert result.ok, result.error
    assert result.response == {"step": "createSecret", "outcome": "staged"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such event file"),
        ("{not json", "is not JSON: Expecting property name"),
        ("# a README\n", "is not JSON: Expecting value at line 1 column 1"),
        ("[1, 2]", "is not a JSON object"),
        ('{"hello": "world"}', "no function receives this event"),
    ],
    ids=["missing", "malformed", "markdown", "a list", "unknown shape"],
)
def test_invoke_cli_says_what_is_wrong_with_the_event_in_one_line(
    content: str | None, expected: str, tmp_path: Path
) -> None:
    # Given an event file that is missing, not JSON or not an event
    path = tmp_path / "event.md"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    # When make invoke is given it
    done = _python("-m", "local.invoke", str(path), "--ephemeral")
    # Then it exits 2 with one line saying so, no traceback, nothing on stdout
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("make invoke: ")
    assert expected in line


@pytest.mark.parametrize("option", ["--port", "--moto-port", "--stub-port", "--ddb-port"])
def test_make_local_names_a_busy_port_in_one_line(option: str) -> None:
    # Given a port something already listens on
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        others = {"--port": "0", "--moto-port": "0", "--stub-port": "0", "--ddb-port": "0"}
        args = [a for name, value in {**others, option: str(port)}.items() for a in (name, value)]
        # When make local is told to use it
        done = _python("-m", "local.run", *args, "--state-file", os.devnull)
    # Then it exits at once with one line: the port, the Make variable to set, and why
    variable = option.removeprefix("--").replace("-", "_").upper()
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"port {port} ({variable}) is in use" in line
    assert "another `make local` may be running" in line
    assert f"make local {variable}=<port>" in line
    assert "Traceback" not in done.stderr + done.stdout


def test_make_local_passes_its_port_variables_to_local_run() -> None:
    shown = subprocess.run(
        ["make", "-n", "local", "PORT=3101", "MOTO_PORT=5106", "STUB_PORT=8190", "DDB_PORT=8101"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.replace("\\\n", " ")
    assert "--port 3101 --moto-port 5106 --stub-port 8190" in shown
    assert "--ddb-port 8101" in shown


def test_invoke_leaves_the_environment_as_it_was_when_the_handler_cannot_be_imported(
    running_state: Path,
) -> None:
    # Given a function environment with a variable the caller's does not have
    state = json.loads(running_state.read_text(encoding="utf-8"))
    state["function_env"]["INVOKE_TEST_ONLY"] = "function"
    running_state.write_text(json.dumps(state), encoding="utf-8")
    environ_before = dict(os.environ)
    # When the handler to invoke does not import
    with pytest.raises(ModuleNotFoundError):
        invoke_event("get_token", handler="tests.no_such_module:handler", state_file=running_state)
    # Then none of the function's environment stays behind
    assert "INVOKE_TEST_ONLY" not in os.environ
    assert dict(os.environ) == environ_before


def test_invoke_reports_a_raising_handler_like_lambda(running_state: Path) -> None:
    result = invoke_event("prewarm", handler=fake_handlers.boom, state_file=running_state)
    assert not result.ok
    assert result.error is not None
    assert result.error["errorType"] == "RuntimeError"
    assert result.error["errorMessage"] == "boom"


def echoed(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    assert response.status == 200, response.data
    return json.loads(response.data)  # type: ignore[no-any-return]


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


def test_invoke_cli_prints_only_the_response_on_stdout(running_state: Path) -> None:
    # When `make invoke` runs an event with a fake handler (against the running stack)
    done = _python(
        "-m",
        "local.invoke",
        "events/get_token_min_ttl.json",
        "--handler",
        "tests.integration.fake_handlers:echo",
        "--state-file",
        str(running_state),
    )

    # Then stdout is the handler's JSON answer and nothing else
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["event"]["queryStringParameters"] == {"min_ttl": "3600"}

    # And a raising handler exits 1 with Lambda's error shape (on a throw-away stack)
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
    # And the logs of its servers (moto's, DynamoDB Local's) with it
    assert state["pid"] == proc.pid
    left = [p.name for p in Path(tempfile.gettempdir()).glob(f"*-{proc.pid}.log")]
    assert left == []


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
