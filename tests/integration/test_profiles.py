"""Several Igni credential sets in one deployment: routes, isolation, errors, audit."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from local.events import load_event
from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from token_vendor.functions import api as handler
from token_vendor.functions.runtime import reset_runtime


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return handler.lambda_handler(event, FakeLambdaContext())


def profile_event(name: str, profile: str, **overrides: Any) -> dict[str, Any]:
    base = "get_token" if name == "get" else "post_refresh"
    suffix = "" if name == "get" else "/refresh"
    resource = "/token/{profile}" + suffix
    return load_event(
        base,
        path=f"/token/{profile}{suffix}",
        resource=resource,
        pathParameters={"profile": profile},
        requestContext__resourcePath=resource,
        requestContext__path=f"/v1/token/{profile}{suffix}",
        **overrides,
    )


def other_client(stub: Any) -> tuple[str, str]:
    """The stub's second client: the analytics profile's credentials."""
    client_id, secret = next((k, v) for k, v in stub.clients.items() if k != stub.client_id)
    return client_id, secret


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def body(response: dict[str, Any]) -> dict[str, Any]:
    assert response["statusCode"] == 200, response
    parsed: dict[str, Any] = json.loads(response["body"])
    return parsed


@pytest.fixture
def two_profiles(stack: LocalStack, igni_stub: Any, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    """The stack's own secret is `default`; `analytics` has other credentials and a scope."""
    stack.secretsmanager().create_secret(
        Name=f"{stack.name}/analytics",
        SecretString=json.dumps(
            dict(zip(("client_id", "client_secret"), other_client(igni_stub), strict=True))
        ),
    )
    monkeypatch.setenv(
        "IGNI_PROFILES",
        json.dumps(
            {
                "analytics": {
                    "secret_id": f"{stack.name}/analytics",
                    "token_url": igni_stub.token_url,
                    "scope": "reports:read",
                }
            }
        ),
    )
    reset_runtime()
    return stack


def test_two_profiles_get_their_own_tokens_with_one_call_each(
    two_profiles: LocalStack, igni_stub: Any
) -> None:
    # When each profile is asked for twice
    default = [body(invoke(load_event("get_token"))) for _ in range(2)]
    analytics = [body(invoke(profile_event("get", "analytics"))) for _ in range(2)]
    # Then each got its own token, minted for its own client (and scope), one call each
    assert default[0]["access_token"] == default[1]["access_token"]
    assert analytics[0]["access_token"] == analytics[1]["access_token"]
    assert default[0]["access_token"] != analytics[0]["access_token"]
    assert claims(default[0]["access_token"])["aud"] == igni_stub.client_id
    assert claims(analytics[0]["access_token"])["aud"] == other_client(igni_stub)[0]
    calls = igni_stub.calls()
    assert sorted((c["client_id"], c["scope"]) for c in calls) == sorted(
        [(igni_stub.client_id, None), (other_client(igni_stub)[0], "reports:read")]
    )
    # And a cold environment finds both in the shared tier
    reset_runtime()
    assert (
        body(invoke(profile_event("get", "analytics")))["access_token"]
        == analytics[0]["access_token"]
    )
    assert len(igni_stub.calls()) == 2


def test_get_token_without_profile_is_the_default_and_default_is_reserved(
    two_profiles: LocalStack, igni_stub: Any
) -> None:
    # Given the default profile holds a token
    implicit = body(invoke(load_event("get_token")))
    assert implicit["access_token"]
    # When it is asked for by name, to read or to refresh
    for event in (
        profile_event("get", "default"),
        profile_event("refresh", "default", body=json.dumps({"rejected_token": "x"})),
    ):
        response = invoke(event)
        # Then the answer is 404 unknown_profile: /token/default is no second name for the
        # default profile, which would get past an IAM Deny on GET/token for a caller allowed
        # GET/token/*
        assert response["statusCode"] == 404, response
        assert json.loads(response["body"])["error"] == "unknown_profile"
    # And the token was neither read for them nor refreshed
    assert len(igni_stub.calls()) == 1
    assert body(invoke(load_event("get_token")))["access_token"] == implicit["access_token"]


def test_default_as_a_profile_name_is_500_configuration_error(
    stack: LocalStack, igni_stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given IGNI_PROFILES naming a profile 'default' (without IGNI_SECRET_ID, so no clash)
    monkeypatch.delenv("IGNI_SECRET_ID")
    monkeypatch.setenv("IGNI_PROFILES", json.dumps({"default": {"secret_id": stack.secret_arn}}))
    reset_runtime()
    # When any token is asked for, at either path
    for event in (load_event("get_token"), profile_event("get", "default")):
        response = invoke(event)
        # Then the configuration is refused, naming the issue and not the secret
        assert response["statusCode"] == 500, response
        answer = json.loads(response["body"])
        assert answer["error"] == "configuration_error"
        assert "'default' is reserved" in answer["message"]
        assert stack.secret_arn not in answer["message"]
        assert stack.secret_name not in answer["message"]
    assert igni_stub.calls() == []


def test_an_unknown_profile_is_404_unknown_profile(
    two_profiles: LocalStack, igni_stub: Any
) -> None:
    for event in (profile_event("get", "nope"), profile_event("refresh", "nope")):
        response = invoke(event)
        assert response["statusCode"] == 404
        assert json.loads(response["body"])["error"] == "unknown_profile"
    assert igni_stub.calls() == []


def test_reporting_one_profiles_token_never_refreshes_another(
    two_profiles: LocalStack, igni_stub: Any
) -> None:
    # Given both profiles hold a token
    default = body(invoke(load_event("get_token")))["access_token"]
    analytics = body(invoke(profile_event("get", "analytics")))["access_token"]
    # When the analytics token is reported to the default profile's refresh route
    crossed = invoke(load_event("post_refresh", body=json.dumps({"rejected_token": analytics})))
    # Then it is not a token that profile vended: 409, no token, and nothing is exchanged
    assert crossed["statusCode"] == 409
    assert json.loads(crossed["body"])["error"] == "unknown_token"
    assert default not in crossed["body"]
    assert len(igni_stub.calls()) == 2
    # And reporting it on its own route refreshes only the analytics profile
    fresh = body(
        invoke(
            profile_event("refresh", "analytics", body=json.dumps({"rejected_token": analytics}))
        )
    )
    assert fresh["access_token"] not in (analytics, default)
    assert claims(fresh["access_token"])["aud"] == other_client(igni_stub)[0]
    assert body(invoke(load_event("get_token")))["access_token"] == default


def test_a_bad_profile_entry_is_a_configuration_error_naming_it(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IGNI_PROFILES", json.dumps({"billing": {"secret": "typo"}}))
    reset_runtime()
    response = invoke(load_event("get_token"))
    assert response["statusCode"] == 500
    error = json.loads(response["body"])
    assert error["error"] == "configuration_error"
    assert "billing" in error["message"]
    assert "secret" in error["message"]
