"""`make local`'s credentials and local IAM policy (local.gateway.auth), without a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.gateway.auth import (
    POLICY_FILE_VAR,
    POLICY_JSON_VAR,
    LocalAuth,
    LocalPolicy,
    PolicyError,
    load_policy,
    local_auth,
    parse_policy,
)
from local.gateway.sigv4 import (
    LOCAL_TEST_ACCESS_KEY_ID,
    LOCAL_TEST_SECRET_ACCESS_KEY,
    AuthError,
    CallerIdentity,
    LocalCredential,
)
from local.run import local_region

ANALYTICS_KEY = "AKIALOCALANALYTICS01"
ANALYTICS_ARN = "arn:aws:iam::123456789012:user/analytics"
RICH_POLICY = {
    "callers": {ANALYTICS_KEY: {"secret_key": "analytics-secret", "user_arn": ANALYTICS_ARN}},
    "allow": {LOCAL_TEST_ACCESS_KEY_ID: ["*"], ANALYTICS_ARN: ["GET/token/analytics"]},
}


def test_no_policy_means_every_verified_caller_is_allowed() -> None:
    # Given an environment without credentials or policy
    auth = local_auth({})
    # Then the test credentials are accepted, no policy applies, and both are said
    assert set(auth.credentials) == {LOCAL_TEST_ACCESS_KEY_ID}
    assert auth.allowed is None
    assert any(POLICY_FILE_VAR in line for line in auth.description)
    assert auth.state() == {
        "callers": {LOCAL_TEST_ACCESS_KEY_ID: "arn:aws:iam::123456789012:user/local-caller"},
        "iam_policy": None,
    }


def test_a_plain_map_is_the_allow_map() -> None:
    # When the policy is only caller -> methods (a single string is one method)
    policy = parse_policy({"AKIAIGNILOCALTESTKEY": "GET/token", "*": ["GET/token/*"]}, "src")
    # Then it is the allow map, with no extra callers
    assert policy == LocalPolicy(
        {"AKIAIGNILOCALTESTKEY": ("GET/token",), "*": ("GET/token/*",)}, {}, "src"
    )


def test_a_policy_file_adds_callers_and_the_map(tmp_path: Path) -> None:
    # Given a policy file with an extra caller
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(RICH_POLICY), encoding="utf-8")
    # When make local reads it
    auth = local_auth({POLICY_FILE_VAR: str(path)})
    # Then both callers are accepted, the map applies, and the secret stays out of the state
    assert auth.credentials[ANALYTICS_KEY] == LocalCredential(
        "analytics-secret", user_arn=ANALYTICS_ARN
    )
    assert auth.allowed == {
        LOCAL_TEST_ACCESS_KEY_ID: ("*",),
        ANALYTICS_ARN: ("GET/token/analytics",),
    }
    assert "analytics-secret" not in json.dumps(auth.state())
    assert any(f"Also accepting {ANALYTICS_KEY}" in line for line in auth.description)


def test_a_caller_the_policy_does_not_name_is_pointed_out() -> None:
    # Given a policy that names only the analytics caller
    policy = {**RICH_POLICY, "allow": {ANALYTICS_ARN: ["GET/token/analytics"]}}
    # When make local reads it / Then it says the test key will be denied everything
    auth = local_auth({POLICY_JSON_VAR: json.dumps(policy)})
    assert any(
        LOCAL_TEST_ACCESS_KEY_ID in line and "all denied" in line for line in auth.description
    )


def test_without_callers_a_default_user_arn_is_derived() -> None:
    policy = parse_policy({"callers": {ANALYTICS_KEY: {"secret_key": "s"}}}, "src")
    assert policy.callers[ANALYTICS_KEY].user_arn == (
        f"arn:aws:iam::123456789012:user/{ANALYTICS_KEY.lower()}"
    )
    assert policy.allowed == {}


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({POLICY_JSON_VAR: "{not json"}, "LOCAL_IAM_POLICY_JSON: not valid JSON"),
        ({POLICY_JSON_VAR: "[]"}, "must map a caller"),
        ({POLICY_JSON_VAR: '{"AKIAX": [1]}'}, "AKIAX: must be a list of methods"),
        ({POLICY_JSON_VAR: '{"allow": {}, "deny": {}}'}, "unknown top-level field 'deny'"),
        ({POLICY_JSON_VAR: '{"callers": {"short": {"secret_key": "s"}}}'}, "not an access key"),
        ({POLICY_JSON_VAR: '{"callers": {"AKIALOCALANALYTICS01": {}}}'}, "secret_key is required"),
        (
            {POLICY_JSON_VAR: '{"callers": {"AKIALOCALANALYTICS01": {"secret_key": "s", "x": 1}}}'},
            "unknown field 'x'",
        ),
        (
            {
                POLICY_JSON_VAR: '{"callers": {"AKIALOCALANALYTICS01": '
                '{"secret_key": "s", "user_arn": "bob"}}}'
            },
            "is not an IAM or STS ARN",
        ),
        ({POLICY_FILE_VAR: "/nonexistent/policy.json"}, "LOCAL_IAM_POLICY=/nonexistent"),
        ({POLICY_FILE_VAR: "a.json", POLICY_JSON_VAR: "{}"}, "not both"),
    ],
)
def test_an_unusable_policy_is_a_clear_error(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(environ)
    assert fragment in str(caught.value)


def test_a_policy_caller_cannot_replace_the_accepted_credentials() -> None:
    policy = {"callers": {LOCAL_TEST_ACCESS_KEY_ID: {"secret_key": "other"}}}
    with pytest.raises(PolicyError, match="already accepted"):
        local_auth({POLICY_JSON_VAR: json.dumps(policy)})


def _check(
    auth: LocalAuth, credentials: Credentials | None, path: str = "/v1/token"
) -> CallerIdentity | AuthError:
    signed = AWSRequest(method="GET", url=f"http://127.0.0.1:3000{path}")
    if credentials is not None:
        SigV4Auth(credentials, "execute-api", "us-east-1").add_auth(signed)
    headers = (("Host", "127.0.0.1:3000"), *signed.headers.items())
    verifier = auth.verifier(region="us-east-1", api_id="api", stage="v1")
    return verifier.check("GET", path, "", headers, b"", source_ip="127.0.0.7")


def test_the_verifier_answers_api_gateways_403_or_the_identity() -> None:
    # Given the verifier make local installs, with the policy allowing analytics one profile
    auth = local_auth({POLICY_JSON_VAR: json.dumps(RICH_POLICY)})
    analytics = Credentials(ANALYTICS_KEY, "analytics-secret")

    # When requests come unsigned, from analytics for /token and for its profile
    unsigned = _check(auth, None)
    denied = _check(auth, analytics)
    allowed = _check(auth, analytics, "/v1/token/analytics")
    test_key = _check(auth, Credentials(LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY))

    # Then refusals are API Gateway's answers, and the allowed get requestContext.identity
    assert isinstance(unsigned, AuthError)
    assert unsigned.status == 403
    assert unsigned.body == {"message": "Missing Authentication Token"}
    assert unsigned.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert isinstance(denied, AuthError)
    assert denied.body["Message"].endswith("api/v1/GET/token")
    assert isinstance(allowed, CallerIdentity)
    identity = allowed.as_request_context_identity()
    assert identity["userArn"] == ANALYTICS_ARN
    assert identity["accessKey"] == ANALYTICS_KEY
    assert identity["sourceIp"] == "127.0.0.7"
    assert isinstance(test_key, CallerIdentity)
    assert test_key.access_key == LOCAL_TEST_ACCESS_KEY_ID


@pytest.mark.parametrize(
    ("environ", "region"),
    [
        ({"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-3"),
        ({"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
        ({"AWS_REGION": " "}, None),
        ({}, None),
    ],
)
def test_make_local_serves_in_the_region_a_client_in_the_same_shell_signs_for(
    environ: dict[str, str], region: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no AWS config file (its region would come next)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    # When make local picks its region / Then as igni-token would, else us-east-1
    assert local_region(environ) == (region or "us-east-1")
