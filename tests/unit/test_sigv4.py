"""The local endpoint's SigV4 verifier, against requests signed by botocore itself."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.gateway.auth import LocalSigV4Verifier, local_credentials, strip_stage
from local.gateway.sigv4 import (
    DEFAULT_LOCAL_USER_ARN,
    INVALID_TOKEN,
    LOCAL_TEST_ACCESS_KEY_ID,
    LOCAL_TEST_SECRET_ACCESS_KEY,
    MISSING_TOKEN,
    SIGNATURE_MISMATCH,
    AuthError,
    CallerIdentity,
    LocalCredential,
    verify_request,
)

REGION = "us-east-1"
ACCESS_KEY = "AKIAEXAMPLEVERIFIER1"
SECRET_KEY = "verifier-secret-key-0123456789abcdefghij"
SESSION_ACCESS_KEY = "ASIAEXAMPLEVERIFIER2"
SESSION_SECRET = "session-secret-key-0123456789abcdefghijk"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN//////////"
ROLE_ARN = "arn:aws:sts::210987654321:assumed-role/analytics-reader/job-42"

CREDENTIALS: Mapping[str, str | LocalCredential] = {
    ACCESS_KEY: LocalCredential(SECRET_KEY, user_arn="arn:aws:iam::123456789012:user/alice"),
    SESSION_ACCESS_KEY: LocalCredential(
        SESSION_SECRET, session_token=SESSION_TOKEN, user_arn=ROLE_ARN
    ),
    "AKIAPLAINSTRINGKEY00": "plain-string-secret",
}


@dataclass
class Wire:
    """A request as the local HTTP server receives it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


def sign(
    method: str = "GET",
    path: str = "/v1/token",
    query: str = "",
    body: bytes = b"",
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    token: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    region: str = REGION,
    service: str = "execute-api",
) -> Wire:
    """Sign like any botocore-based client, then add the Host header the HTTP client sends."""
    url = f"http://127.0.0.1:3000{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(extra_headers or {}))
    SigV4Auth(Credentials(access_key, secret_key, token), service, region).add_auth(request)
    headers = {"Host": "127.0.0.1:3000", "User-Agent": "test-agent/1.0"}
    headers.update(dict(request.headers.items()))
    return Wire(method, path, query, headers, body)


def verify(wire: Wire, **kw: object) -> CallerIdentity | AuthError:
    return verify_request(
        wire.method,
        wire.path,
        wire.query,
        wire.headers,
        wire.body,
        CREDENTIALS,
        REGION,
        source_ip="10.1.2.3",
        **kw,  # type: ignore[arg-type]
    )


def assert_refused(result: CallerIdentity | AuthError, starts_with: str, error_type: str) -> None:
    assert isinstance(result, AuthError), result
    assert result.status == 403
    assert result.message.startswith(starts_with), result.message
    assert result.error_type == error_type
    assert result.body == {"message": result.message}
    assert result.headers["x-amzn-ErrorType"] == error_type


# ---------------------------------------------------------------------------- valid signatures


def test_valid_signature_yields_the_identity_api_gateway_reports() -> None:
    # Given a GET /v1/token signed by botocore with a known access key
    wire = sign()
    # When the verifier checks it
    result = verify(wire)
    # Then the caller is identified as API Gateway would put it in requestContext.identity
    assert isinstance(result, CallerIdentity)
    assert result.user_arn == "arn:aws:iam::123456789012:user/alice"
    assert result.account_id == "123456789012"
    assert result.access_key == ACCESS_KEY
    assert result.source_ip == "10.1.2.3"
    assert result.user_agent == "test-agent/1.0"
    assert result.caller == result.user
    assert result.caller.startswith("AIDA")
    assert len(result.caller) == 21
    identity = result.as_request_context_identity()
    assert identity["userArn"] == result.user_arn
    assert identity["accessKey"] == ACCESS_KEY
    assert identity["sourceIp"] == "10.1.2.3"
    assert identity["cognitoIdentityId"] is None
    assert set(identity) >= {"caller", "user", "userArn", "accountId", "accessKey", "userAgent"}


def test_valid_signature_with_query_and_without_stage() -> None:
    # Given a signed GET /token?min_ttl=60 (no stage prefix, as the local endpoint allows)
    wire = sign(path="/token", query="min_ttl=60")
    # When verified
    result = verify(wire)
    # Then it is accepted
    assert isinstance(result, CallerIdentity)


def test_valid_signature_on_a_post_with_a_json_body() -> None:
    # Given a signed POST /v1/token/analytics/refresh with a JSON body
    body = json.dumps({"rejected_token": "abc"}).encode()
    wire = sign(
        "POST",
        "/v1/token/analytics/refresh",
        body=body,
        extra_headers={"Content-Type": "application/json"},
    )
    # When verified
    result = verify(wire)
    # Then it is accepted
    assert isinstance(result, CallerIdentity)


def test_a_secret_given_as_a_plain_string_is_accepted() -> None:
    # Given a credential configured as access key -> secret string
    wire = sign(access_key="AKIAPLAINSTRINGKEY00", secret_key="plain-string-secret")
    # When verified
    result = verify(wire)
    # Then it is accepted with the default local identity
    assert isinstance(result, CallerIdentity)
    assert result.user_arn == DEFAULT_LOCAL_USER_ARN


def test_headers_added_after_signing_do_not_matter() -> None:
    # Given a signed request to which a proxy added an unsigned header
    wire = sign()
    wire.headers["X-Forwarded-For"] = "192.0.2.1"
    # When verified
    result = verify(wire)
    # Then it is still accepted (only SignedHeaders are covered)
    assert isinstance(result, CallerIdentity)


def test_http_message_headers_from_http_server_are_accepted() -> None:
    # Given the headers as http.server hands them over (an HTTPMessage)
    wire = sign()
    raw = "".join(f"{k}: {v}\r\n" for k, v in wire.headers.items()) + "\r\n"
    message = http.client.parse_headers(io.BytesIO(raw.encode()))
    # When verified
    result = verify_request(
        wire.method, wire.path, wire.query, message, wire.body, CREDENTIALS, REGION
    )
    # Then it is accepted
    assert isinstance(result, CallerIdentity)


# ---------------------------------------------------------------------------- wrong signatures


def test_wrong_secret_key_is_refused_with_api_gateways_message() -> None:
    # Given a request signed with the right access key but a wrong secret
    wire = sign(secret_key="not-the-secret")
    # When verified
    result = verify(wire)
    # Then 403 "signature does not match", with the canonical string as API Gateway shows it
    assert_refused(result, SIGNATURE_MISMATCH, "InvalidSignatureException")
    assert isinstance(result, AuthError)
    assert "The Canonical String for this request should have been\n'GET\n/v1/token\n" in (
        result.message
    )
    assert "not-the-secret" not in result.message
    assert SECRET_KEY not in result.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("path", "/v1/token/analytics"),
        ("path", "/token"),
        ("query", "min_ttl=1"),
        ("method", "POST"),
        ("body", b'{"rejected_token": "x"}'),
    ],
)
def test_tampered_request_is_refused(field: str, value: object) -> None:
    # Given a validly signed GET /v1/token?min_ttl=60
    wire = sign(query="min_ttl=60")
    # When one part of it is changed after signing
    setattr(wire, field, value)
    result = verify(wire)
    # Then the signature no longer matches
    assert_refused(result, SIGNATURE_MISMATCH, "InvalidSignatureException")


def test_tampered_signed_header_is_refused() -> None:
    # Given a request that signed a custom header
    wire = sign(extra_headers={"X-Igni-Purpose": "reporting"})
    assert isinstance(verify(wire), CallerIdentity)
    # When that header is changed after signing
    wire.headers["X-Igni-Purpose"] = "exfiltration"
    # Then the signature no longer matches
    assert_refused(verify(wire), SIGNATURE_MISMATCH, "InvalidSignatureException")


def test_a_declared_payload_hash_that_lies_is_refused() -> None:
    # Given a signed POST whose body is replaced and whose X-Amz-Content-SHA256 claims the new one
    wire = sign("POST", "/v1/token/refresh", body=b'{"rejected_token": "a"}')
    wire.body = b'{"rejected_token": "b"}'
    wire.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b'{"rejected_token": "a"}').hexdigest()
    # When verified
    result = verify(wire)
    # Then it is refused: the body is hashed as received
    assert_refused(result, SIGNATURE_MISMATCH, "InvalidSignatureException")


def test_wrong_region_or_service_in_the_scope_is_refused() -> None:
    # Given requests scoped to another region, and to another service
    other_region = sign(region="eu-west-1")
    other_service = sign(service="lambda")
    # When verified
    # Then each is refused with API Gateway's scope message
    assert_refused(
        verify(other_region),
        "Credential should be scoped to a valid region.",
        "InvalidSignatureException",
    )
    assert_refused(
        verify(other_service),
        "Credential should be scoped to correct service: 'execute-api'.",
        "InvalidSignatureException",
    )


# ---------------------------------------------------------------------------- the clock


def _signed_at(wire: Wire) -> datetime:
    return datetime.strptime(wire.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def test_stale_date_is_refused_as_expired() -> None:
    # Given a request signed more than 5 minutes before the verifier's clock
    wire = sign()
    now = _signed_at(wire) + timedelta(seconds=301)
    # When verified
    result = verify(wire, now=now)
    # Then "Signature expired", with the same arithmetic API Gateway prints
    assert_refused(result, "Signature expired: ", "InvalidSignatureException")
    assert isinstance(result, AuthError)
    signed = wire.headers["X-Amz-Date"]
    earliest = (now - timedelta(minutes=5)).strftime("%Y%m%dT%H%M%SZ")
    current = now.strftime("%Y%m%dT%H%M%SZ")
    assert result.message == (
        f"Signature expired: {signed} is now earlier than {earliest} ({current} - 5 min.)"
    )


def test_a_date_too_far_in_the_future_is_refused() -> None:
    # Given a request signed by a clock more than 5 minutes ahead
    wire = sign()
    now = _signed_at(wire) - timedelta(seconds=301)
    # When verified (the verifier may take epoch seconds too)
    result = verify(wire, now=now.timestamp())
    # Then "Signature not yet current"
    assert_refused(result, "Signature not yet current: ", "InvalidSignatureException")


def test_skew_of_exactly_five_minutes_is_tolerated() -> None:
    # Given a request signed exactly 300 s before, and 300 s after, the verifier's clock
    wire = sign()
    signed = _signed_at(wire)
    # When verified at both edges
    # Then it is accepted at both
    assert isinstance(verify(wire, now=signed + timedelta(seconds=300)), CallerIdentity)
    assert isinstance(verify(wire, now=signed - timedelta(seconds=300)), CallerIdentity)


def test_max_skew_is_configurable() -> None:
    # Given a request signed 90 s ago and a verifier allowing one minute
    wire = sign()
    now = _signed_at(wire) + timedelta(seconds=90)
    # When verified
    result = verify(wire, now=now, max_skew=60)
    # Then it is refused, the message naming the configured window
    assert_refused(result, "Signature expired: ", "InvalidSignatureException")
    assert isinstance(result, AuthError)
    assert result.message.endswith("- 1 min.)")


def test_scope_date_must_match_the_request_date() -> None:
    # Given a request whose X-Amz-Date was changed to the next day after signing
    wire = sign()
    signed = _signed_at(wire) + timedelta(days=1)
    wire.headers["X-Amz-Date"] = signed.strftime("%Y%m%dT%H%M%SZ")
    # When verified at that time
    result = verify(wire, now=signed)
    # Then the scope's date is found wrong
    assert_refused(
        result, "Date in Credential scope does not match YYYYMMDD", "InvalidSignatureException"
    )


# ---------------------------------------------------------------------------- missing, malformed


def test_unsigned_request_is_missing_authentication_token() -> None:
    # Given a request with no Authorization header at all
    wire = Wire("GET", "/v1/token", "", {"Host": "127.0.0.1:3000"}, b"")
    # When verified
    result = verify(wire)
    # Then API Gateway's exact answer
    assert_refused(result, MISSING_TOKEN, "MissingAuthenticationTokenException")
    assert isinstance(result, AuthError)
    assert result.body == {"message": "Missing Authentication Token"}


def test_empty_authorization_header_is_missing_authentication_token() -> None:
    # Given an Authorization header that is blank
    wire = Wire("GET", "/v1/token", "", {"Host": "h", "Authorization": "  "}, b"")
    # When verified / Then it counts as missing
    assert_refused(verify(wire), MISSING_TOKEN, "MissingAuthenticationTokenException")


def test_bearer_token_is_malformed_and_not_echoed() -> None:
    # Given a caller that sends a bearer token instead of a signature
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    wire = Wire("GET", "/v1/token", "", {"Host": "h", "Authorization": f"Bearer {token}"}, b"")
    # When verified
    result = verify(wire)
    # Then API Gateway's "missing equal-sign" message, with the token hashed, not echoed
    assert_refused(
        result, "Invalid key=value pair (missing equal-sign)", "IncompleteSignatureException"
    )
    assert isinstance(result, AuthError)
    digest = base64.b64encode(hashlib.sha256(token.encode()).digest()).decode()
    assert f"'{digest}'" in result.message
    assert token not in result.message


def test_incomplete_authorization_lists_what_is_missing() -> None:
    # Given an Authorization header with only a Credential and no date header
    auth = f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20240101/us-east-1/execute-api/aws4_request"
    wire = Wire("GET", "/v1/token", "", {"Host": "h", "Authorization": auth}, b"")
    # When verified
    result = verify(wire)
    # Then each missing part is named, as API Gateway does
    assert_refused(
        result,
        "Authorization header requires 'Signature' parameter. "
        "Authorization header requires 'SignedHeaders' parameter. "
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ",
        "IncompleteSignatureException",
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda a: a.replace(f"{ACCESS_KEY}/", f"{ACCESS_KEY}/extra/"),
            "Credential must have exactly 5 slash-delimited elements",
        ),
        (lambda a: a.replace("aws4_request", "aws5_request"), "Credential should be scoped with"),
        (lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"), "Unsupported Authorization"),
        (lambda a: a.replace("SignedHeaders=host;", "SignedHeaders="), "'Host' or ':authority'"),
    ],
)
def test_malformed_authorization_is_refused(mutate: object, expected: str) -> None:
    # Given a signed request whose Authorization header is then damaged
    wire = sign()
    wire.headers["Authorization"] = mutate(wire.headers["Authorization"])  # type: ignore[operator]
    # When verified
    result = verify(wire)
    # Then it is refused with the matching message
    assert isinstance(result, AuthError)
    assert result.status == 403
    assert result.message.startswith(expected), result.message


def test_unparseable_date_is_refused() -> None:
    # Given a signed request whose X-Amz-Date is not ISO 8601 basic format
    wire = sign()
    wire.headers["X-Amz-Date"] = "2024-01-01T00:00:00Z"
    # When verified / Then it is refused
    assert_refused(
        verify(wire), "Date must be in ISO-8601 'basic format'", "IncompleteSignatureException"
    )


def test_unknown_access_key_is_an_invalid_security_token() -> None:
    # Given a request signed with an access key the endpoint does not know
    wire = sign(access_key="AKIAUNKNOWNKEY000000")
    # When verified
    result = verify(wire)
    # Then API Gateway's answer for an unknown key
    assert_refused(result, INVALID_TOKEN, "UnrecognizedClientException")
    assert isinstance(result, AuthError)
    assert result.message == "The security token included in the request is invalid."


# ---------------------------------------------------------------------------- session tokens


def test_session_credentials_are_accepted_with_their_token() -> None:
    # Given a request signed with session credentials (X-Amz-Security-Token)
    wire = sign(access_key=SESSION_ACCESS_KEY, secret_key=SESSION_SECRET, token=SESSION_TOKEN)
    assert wire.headers["X-Amz-Security-Token"] == SESSION_TOKEN
    # When verified
    result = verify(wire)
    # Then the role session is the caller, as API Gateway reports an assumed role
    assert isinstance(result, CallerIdentity)
    assert result.user_arn == ROLE_ARN
    assert result.account_id == "210987654321"
    assert result.caller.startswith("AROA")
    assert result.caller.endswith(":job-42")


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzOTHERTOKEN"])
def test_session_credentials_without_the_right_token_are_refused(token: str | None) -> None:
    # Given a request signed with the session's keys but without (or with another) token
    wire = sign(access_key=SESSION_ACCESS_KEY, secret_key=SESSION_SECRET, token=token)
    # When verified
    result = verify(wire)
    # Then the security token is invalid
    assert_refused(result, INVALID_TOKEN, "UnrecognizedClientException")


def test_a_token_presented_with_long_term_keys_is_refused() -> None:
    # Given long-term keys used with a session token they do not have
    wire = sign(token="FwoGZXIvYXdzSTRAYTOKEN")
    # When verified / Then refused
    assert_refused(verify(wire), INVALID_TOKEN, "UnrecognizedClientException")


def test_a_swapped_security_token_is_refused_even_if_known() -> None:
    # Given session credentials whose token header is replaced after signing
    wire = sign(access_key=SESSION_ACCESS_KEY, secret_key=SESSION_SECRET, token=SESSION_TOKEN)
    wire.headers["X-Amz-Security-Token"] = SESSION_TOKEN + "x"
    # When verified / Then refused
    assert_refused(verify(wire), INVALID_TOKEN, "UnrecognizedClientException")


# ---------------------------------------------------------------------------- authorization


def _identity(access_key: str = ACCESS_KEY) -> CallerIdentity:
    result = verify(sign(access_key=access_key, secret_key=SECRET_KEY))
    assert isinstance(result, CallerIdentity)
    return result


ALICE = CallerIdentity(
    caller="AIDAEXAMPLE",
    user="AIDAEXAMPLE",
    user_arn="arn:aws:iam::123456789012:user/alice",
    account_id="123456789012",
    access_key=ACCESS_KEY,
    source_ip="127.0.0.1",
    user_agent=None,
)


@pytest.mark.parametrize(
    ("patterns", "method", "path", "allowed"),
    [
        (["GET/token"], "GET", "/token", True),
        (["GET/token"], "GET", "/token/analytics", False),
        (["GET/token"], "POST", "/token/refresh", False),
        (["GET/token/analytics"], "GET", "/token/analytics", True),
        (["GET/token/analytics"], "GET", "/token/billing", False),
        (["GET/token/*"], "GET", "/token/billing", True),
        (["GET/token/*"], "GET", "/token", False),
        (["*/token/analytics*"], "POST", "/token/analytics/refresh", True),
        (["*"], "DELETE", "/anything", True),
        (["GET/token/Analytics"], "GET", "/token/analytics", False),
        (["GET/token/analytic?"], "GET", "/token/analytics", True),
        (["arn:aws:execute-api:us-east-1:123456789012:local/v1/GET/token"], "GET", "/token", True),
        (["arn:aws:execute-api:us-east-1:*:*/*/GET/token/*"], "GET", "/token/x", True),
        (["arn:aws:execute-api:eu-west-1:*:*/*/GET/token"], "GET", "/token", False),
        ([], "GET", "/token", False),
    ],
)
def test_authorize_matches_method_arns_like_iam(
    patterns: list[str], method: str, path: str, allowed: bool
) -> None:
    # Given an allow-list for alice's access key
    policy = {ACCESS_KEY: patterns}
    # When a call is authorized / Then IAM's wildcard rules decide
    assert LocalSigV4Verifier({}, allowed=policy).authorize(ALICE, method, path) is allowed


def test_authorize_by_user_arn_default_and_unconfigured() -> None:
    # Given policies keyed by user ARN, by the "*" default, or no policy at all
    # When authorized / Then the ARN entry applies, "*" covers others, and None allows everything
    def authorize(policy: dict[str, list[str]] | None) -> bool:
        return LocalSigV4Verifier({}, allowed=policy).authorize(ALICE, "GET", "/token")

    assert authorize({ALICE.user_arn: ["GET/token"]})
    assert authorize({"*": ["GET/*"]})
    assert not authorize({"AKIASOMEONEELSE00000": ["*"]})
    assert authorize(None)


def test_not_authorized_error_is_api_gateways_capitalised_message() -> None:
    # Given alice denied GET /token/analytics
    # When the refusal is built
    error = LocalSigV4Verifier({}).not_authorized_error(ALICE, "GET", "/token/analytics")
    # Then it is API Gateway's 403 with "Message" and the account masked
    assert error.status == 403
    assert error.body == {
        "Message": "User: arn:aws:iam::123456789012:user/alice is not authorized to perform: "
        "execute-api:Invoke on resource: "
        "arn:aws:execute-api:us-east-1:********9012:local/v1/GET/token/analytics"
    }
    assert error.headers["x-amzn-ErrorType"] == "AccessDeniedException"


def test_method_arn() -> None:
    # Given / When / Then the ARN IAM policies name
    verifier = LocalSigV4Verifier({}, "eu-west-1", api_id="a1")
    assert (
        verifier.method_arn("get", "/token/analytics", "1")
        == "arn:aws:execute-api:eu-west-1:1:a1/v1/GET/token/analytics"
    )


# ---------------------------------------------------------------------------- the server's facade


def test_verifier_authorizes_the_resource_path_without_the_stage() -> None:
    # Given a verifier allowing alice only GET /token
    verifier = LocalSigV4Verifier(CREDENTIALS, REGION, allowed={ACCESS_KEY: ["GET/token"]})
    # When alice calls /v1/token, /token, then /v1/token/analytics
    results = [
        verifier.check("GET", w.path, w.query, w.headers, w.body)
        for w in (sign(path="/v1/token"), sign(path="/token"), sign(path="/v1/token/analytics"))
    ]
    # Then the first two pass and the profile is denied as IAM would deny it
    assert isinstance(results[0], CallerIdentity)
    assert isinstance(results[1], CallerIdentity)
    assert isinstance(results[2], AuthError)
    assert results[2].message_key == "Message"
    assert results[2].message.endswith("local/v1/GET/token/analytics")


def test_verifier_passes_signature_errors_through() -> None:
    # Given a verifier and an unsigned request
    verifier = LocalSigV4Verifier(CREDENTIALS, REGION)
    # When checked / Then the signature error comes back, not an authorization error
    result = verifier.check("GET", "/v1/token", "", {"Host": "h"}, None)
    assert isinstance(result, AuthError)
    assert result.body == {"message": MISSING_TOKEN}


@pytest.mark.parametrize(
    ("raw", "resource"),
    [("/v1/token", "/token"), ("/token", "/token"), ("/v1", "/"), ("/v1x/token", "/v1x/token")],
)
def test_strip_stage_strips_only_the_stage(raw: str, resource: str) -> None:
    assert strip_stage(raw, "v1") == resource


# ---------------------------------------------------------------------------- local credentials


def test_local_credentials_come_from_the_environment() -> None:
    # Given an environment with AWS credentials and a session token
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAENVKEY0000000001",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_SESSION_TOKEN": "env-token",
        "IGNI_LOCAL_CALLER_ARN": "arn:aws:iam::111122223333:user/bob",
    }
    # When make local decides what to accept
    accepted, described = local_credentials(env)
    # Then exactly those, with the configured identity, and the message hides the secret
    assert accepted == {
        "AKIAENVKEY0000000001": LocalCredential(
            "env-secret", session_token="env-token", user_arn="arn:aws:iam::111122223333:user/bob"
        )
    }
    assert "env-secret" not in described
    assert "AKIA…0001" in described


def test_local_credentials_fall_back_to_documented_test_values() -> None:
    # Given an environment without AWS credentials
    # When make local decides what to accept
    accepted, described = local_credentials({})
    # Then the documented test credentials, printed for the user
    assert accepted == {LOCAL_TEST_ACCESS_KEY_ID: LocalCredential(LOCAL_TEST_SECRET_ACCESS_KEY)}
    assert LOCAL_TEST_ACCESS_KEY_ID in described
    assert LOCAL_TEST_SECRET_ACCESS_KEY in described
    # And a request signed with them verifies
    wire = sign(access_key=LOCAL_TEST_ACCESS_KEY_ID, secret_key=LOCAL_TEST_SECRET_ACCESS_KEY)
    result = verify_request(
        wire.method, wire.path, wire.query, wire.headers, wire.body, accepted, REGION
    )
    assert isinstance(result, CallerIdentity)
    assert result.user_arn == DEFAULT_LOCAL_USER_ARN


def test_the_client_falls_back_to_the_same_test_credentials() -> None:
    # Given the client package (installed in the dev environment)
    client_module = pytest.importorskip("igni_token_client.client")
    # When its loopback fallback credentials are read / Then they are the server's
    assert client_module.LOCAL_TEST_ACCESS_KEY_ID == LOCAL_TEST_ACCESS_KEY_ID
    assert client_module.LOCAL_TEST_SECRET_ACCESS_KEY == LOCAL_TEST_SECRET_ACCESS_KEY


def test_check_takes_the_request_as_the_server_received_it() -> None:
    # Given a signed request as the local server records it (header pairs, raw path and query)
    wire = sign(path="/v1/token", query="min_ttl=30")
    pairs = tuple(wire.headers.items())
    verifier = LocalSigV4Verifier(CREDENTIALS, REGION, api_id="local0api1")
    # When it is checked
    result = verifier.check("GET", wire.path, wire.query, pairs, b"", source_ip="127.0.0.9")
    # Then the caller is identified, with the client's address
    assert isinstance(result, CallerIdentity)
    assert result.source_ip == "127.0.0.9"
    # And a tampered copy is refused with the headers API Gateway sends
    refused = verifier.check("GET", "/v1/token", "min_ttl=0", pairs, b"")
    assert isinstance(refused, AuthError)
    assert list(refused.headers.items()) == [
        ("Content-Type", "application/json"),
        ("x-amzn-ErrorType", "InvalidSignatureException"),
    ]
