"""Issue 13, the upstream side: any RFC 6749 token endpoint, not only Igni's exact answer.

`expires_in` as a numeric string, a float or missing (then the JWT's exp, else the default);
client_secret_basic for servers that accept HTTP Basic only, and the diagnosis when one
challenges a form-authenticated request; an `audience` sent and part of the cache key; the
rotation function authenticating as the vendor does. Real moto server and Igni stub process
(its issue-13 switches: expires_in_style, token_format, auth_methods; calls record the form's
field names and the Authorization scheme, never a credential).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.environment import EnvironmentProcess
from local.events import load_event
from local.igni_stub import StubProcess
from local.run import upstream_parameters
from local.stack import LocalStack
from tests.api_calls import body, header, invoke
from tests.conftest import MakeStack
from tests.integration.conftest import Rotation
from token_vendor.functions.rotation import RotationError
from token_vendor.functions.runtime import reset_runtime

BASIC_ONLY = ["client_secret_basic"]
LIFETIME = 7200


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_runtime()


def vended_expires_in(response: dict[str, Any]) -> int:
    assert response["statusCode"] == 200, response
    expires_in: int = body(response)["expires_in"]
    return expires_in


def profile_event(profile: str) -> dict[str, Any]:
    resource = "/token/{profile}"
    return load_event(
        "get_token",
        path=f"/token/{profile}",
        resource=resource,
        pathParameters={"profile": profile},
        requestContext__resourcePath=resource,
        requestContext__path=f"/v1/token/{profile}",
    )


def assert_no_secret(answer: dict[str, Any], stub: StubProcess) -> None:
    assert stub.client_secret not in answer["body"]
    assert "arn:" not in answer["body"]


# ----------------------------------------------------------------- lifetime parsing


@pytest.mark.parametrize("style", ["string", "float", "omit"])
def test_a_string_float_or_missing_expires_in_is_vended_with_its_lifetime(
    stack: LocalStack, igni_stub: StubProcess, style: str
) -> None:
    # Given Igni sending a 2 h lifetime as "7200", as 7200.5, or not at all (the JWT's exp
    # still 2 h after issue)
    igni_stub.configure(lifetime=LIFETIME, expires_in_style=style)
    # When a token is asked for
    response = invoke(load_event("get_token"))
    # Then it is vended (not 502) with that lifetime, floored to whole seconds
    assert LIFETIME - 5 <= vended_expires_in(response) <= LIFETIME
    assert body(response)["expires_at"] <= igni_stub.calls()[0]["at"] + LIFETIME + 1


@pytest.mark.parametrize(("configured", "lifetime"), [(None, 3600), ("900", 900)])
def test_without_expires_in_or_a_jwt_the_default_lifetime_applies(
    stack: LocalStack,
    igni_stub: StubProcess,
    monkeypatch: pytest.MonkeyPatch,
    configured: str | None,
    lifetime: int,
) -> None:
    # Given Igni sending an opaque token (no exp to read) without expires_in, and
    # IGNI_DEFAULT_EXPIRES_IN unset or set
    igni_stub.configure(expires_in_style="omit", token_format="opaque")
    if configured is not None:
        set_env(monkeypatch, IGNI_DEFAULT_EXPIRES_IN=configured)
    # When a token is asked for
    response = invoke(load_event("get_token"))
    # Then it lives the default: 3600 s, or what is configured
    assert lifetime - 5 <= vended_expires_in(response) <= lifetime


def test_a_profile_default_lifetime_applies_to_its_tokens(
    stack: LocalStack, igni_stub: StubProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a profile whose default lifetime is 10 minutes, and a server sending neither
    # expires_in nor a JWT
    set_env(
        monkeypatch,
        IGNI_PROFILES=json.dumps(
            {
                "short": {
                    "secret_id": stack.secret_arn,
                    "token_url": igni_stub.token_url,
                    "default_expires_in": 600,
                }
            }
        ),
    )
    igni_stub.configure(expires_in_style="omit", token_format="opaque")
    # When its token is asked for, then it lives 600 s
    assert 595 <= vended_expires_in(invoke(profile_event("short"))) <= 600


@pytest.mark.parametrize("value", ["1e3", " 5", "-5", "\u0663", "9" * 400, "NaN", ""])
def test_an_expires_in_string_that_is_not_digits_is_502_upstream_bad_response(
    stack: LocalStack, igni_stub: StubProcess, value: str
) -> None:
    # Given Igni answering 200 with this expires_in
    igni_stub.configure(
        faults=[{"status": 200, "body": {"access_token": "opaque", "expires_in": value}}]
    )
    # When a token is asked for
    response = invoke(load_event("get_token"))
    # Then it is a bad answer, never a 500
    assert response["statusCode"] == 502, response
    assert body(response)["error"] == "upstream_bad_response"
    assert "expires_in" in body(response)["message"]


# ------------------------------------------------------------ client authentication


def test_a_basic_only_server_with_the_default_method_is_diagnosed(
    stack: LocalStack, igni_stub: StubProcess
) -> None:
    # Given a server that accepts HTTP Basic only, and the default client_secret_post
    igni_stub.configure(auth_methods=BASIC_ONLY)
    # When a token is asked for
    response = invoke(load_event("get_token"))
    # Then it is 502 upstream_auth_failed saying the server may want client_secret_basic
    assert response["statusCode"] == 502, response
    answer = body(response)
    assert answer["error"] == "upstream_auth_failed"
    assert "client_secret_basic" in answer["message"]
    assert "realm" not in answer["message"]
    assert_no_secret(response, igni_stub)
    # And the stub saw the credentials in the form and no Authorization header
    [call] = igni_stub.calls()
    assert (call["status"], call["auth_scheme"]) == (401, None)
    assert "client_secret" in call["form_fields"]


def test_client_secret_basic_gets_a_token_from_a_basic_only_server(
    stack: LocalStack, igni_stub: StubProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a Basic-only server and IGNI_TOKEN_ENDPOINT_AUTH_METHOD=client_secret_basic
    igni_stub.configure(auth_methods=BASIC_ONLY)
    set_env(monkeypatch, IGNI_TOKEN_ENDPOINT_AUTH_METHOD="client_secret_basic")
    # When a token is asked for
    response = invoke(load_event("get_token"))
    # Then it is vended
    assert response["statusCode"] == 200, response
    # And the stub got the Basic scheme, and neither the id nor the secret in the form
    [call] = igni_stub.calls()
    assert (call["status"], call["auth_scheme"], call["client_id"]) == (
        200,
        "Basic",
        igni_stub.client_id,
    )
    assert call["form_fields"] == ["grant_type"]


def test_a_profile_sets_its_method_and_audience_and_the_audience_keys_its_token(
    stack: LocalStack, igni_stub: StubProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two profiles on the same secret and token URL, one with client_secret_basic and
    # an audience, and a server accepting both methods
    set_env(
        monkeypatch,
        IGNI_PROFILES=json.dumps(
            {
                "api": {
                    "secret_id": stack.secret_arn,
                    "token_url": igni_stub.token_url,
                    "token_endpoint_auth_method": "client_secret_basic",
                    "audience": "https://api.example",
                },
                "plain": {"secret_id": stack.secret_arn, "token_url": igni_stub.token_url},
            }
        ),
    )
    # When each profile's token is asked for
    api = invoke(profile_event("api"))
    plain = invoke(profile_event("plain"))
    # Then each got its own token
    assert api["statusCode"] == plain["statusCode"] == 200, (api, plain)
    assert body(api)["access_token"] != body(plain)["access_token"]
    # And the stub recorded the profile's method and audience, and nothing of them for the other
    calls = igni_stub.calls()
    assert [(c["auth_scheme"], c["audience"], c["form_fields"]) for c in calls] == [
        ("Basic", "https://api.example", ["audience", "grant_type"]),
        (None, None, ["client_id", "client_secret", "grant_type"]),
    ]
    # And the audience made a cache key of its own: two items, one per profile
    items = stack.dynamodb().scan(TableName=stack.table_name, ConsistentRead=True)["Items"]
    assert len({item["pk"]["S"] for item in items}) == 2


def test_an_unknown_method_is_500_configuration_error_and_calls_nobody(
    stack: LocalStack, igni_stub: StubProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an auth method the vendor does not know, in the variable, then in a profile
    set_env(monkeypatch, IGNI_TOKEN_ENDPOINT_AUTH_METHOD="private_key_jwt")
    by_variable = invoke(load_event("get_token"))
    monkeypatch.delenv("IGNI_TOKEN_ENDPOINT_AUTH_METHOD")
    set_env(
        monkeypatch,
        IGNI_PROFILES=json.dumps(
            {"p": {"secret_id": stack.secret_arn, "token_endpoint_auth_method": "tls"}}
        ),
    )
    by_profile = invoke(load_event("get_token"))
    # Then each is 500 configuration_error naming the setting, and Igni was not called
    for response, name in (
        (by_variable, "IGNI_TOKEN_ENDPOINT_AUTH_METHOD"),
        (by_profile, "profile 'p': field 'token_endpoint_auth_method'"),
    ):
        assert response["statusCode"] == 500, response
        assert body(response)["error"] == "configuration_error"
        assert name in body(response)["message"]
        assert_no_secret(response, igni_stub)
    assert igni_stub.calls() == []


# ----------------------------------------------------- stable errors (auth_failed too)


@pytest.fixture
def other_environment(stack: LocalStack, tmp_path: Path) -> Iterator[EnvironmentProcess]:
    environment = EnvironmentProcess(stack.function_env(), log_path=tmp_path / "other.log")
    yield environment
    environment.close()


def test_during_the_backoff_an_auth_failure_keeps_its_kind(
    stack: LocalStack, igni_stub: StubProcess, other_environment: EnvironmentProcess
) -> None:
    # Given a Basic-only server refusing the form-authenticated exchange
    igni_stub.configure(auth_methods=BASIC_ONLY)
    first = invoke(load_event("get_token"))
    assert body(first)["error"] == "upstream_auth_failed"
    # When other callers ask while the failure is remembered (warm, then another environment)
    warm = invoke(load_event("get_token"))
    cold = other_environment.invoke(load_event("get_token"), timeout_ms=8000)
    # Then they get the same 502 upstream_auth_failed, with Retry-After, still pointing at
    # the method, and Igni is not called again
    for answer in (warm, cold):
        assert answer["statusCode"] == 502, answer
        assert body(answer)["error"] == "upstream_auth_failed"
        assert "client_secret_basic" in body(answer)["message"]
        assert int(header(answer, "Retry-After")) >= 1
    assert len(igni_stub.calls()) == 1


# ------------------------------------------------------------------ rotation function


def test_rotation_tests_a_staged_key_with_client_secret_basic(
    stack: LocalStack,
    igni_stub: StubProcess,
    rotation: Rotation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Basic-only server and a staged key
    igni_stub.configure(auth_methods=BASIC_ONLY)
    rotation.enable()
    staged = rotation.stage(
        {"client_id": igni_stub.client_id, "client_secret": igni_stub.client_secret}
    )
    # When testSecret runs with the default method, it fails with the diagnosis
    with pytest.raises(RotationError, match="client_secret_basic"):
        rotation.step("testSecret", staged)
    # And with IGNI_TOKEN_ENDPOINT_AUTH_METHOD=client_secret_basic, as the vendor's, it passes
    monkeypatch.setenv("IGNI_TOKEN_ENDPOINT_AUTH_METHOD", "client_secret_basic")
    assert rotation.step("testSecret", staged)["outcome"] == "tested"
    assert [(c["status"], c["auth_scheme"]) for c in igni_stub.calls()] == [
        (401, None),
        (200, "Basic"),
    ]


def test_rotation_tests_a_profile_key_with_the_profiles_method_and_audience(
    stack: LocalStack,
    igni_stub: StubProcess,
    rotation: Rotation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the secret belongs to a profile that uses client_secret_basic and an audience
    monkeypatch.setenv(
        "IGNI_PROFILES",
        json.dumps(
            {
                "api": {
                    "secret_id": stack.secret_name,
                    "token_url": igni_stub.token_url,
                    "token_endpoint_auth_method": "client_secret_basic",
                    "audience": "https://api.example",
                }
            }
        ),
    )
    igni_stub.configure(auth_methods=BASIC_ONLY, expires_in_style="string")
    rotation.enable()
    staged = rotation.stage(
        {"client_id": igni_stub.client_id, "client_secret": igni_stub.client_secret}
    )
    # When the rotation runs, then every step passes
    assert rotation.run(staged) == ["staged", "nothing_to_set", "tested", "finished"]
    [call] = igni_stub.calls()
    assert (call["auth_scheme"], call["audience"], call["status"]) == (
        "Basic",
        "https://api.example",
        200,
    )


# ------------------------------------------------------- template parameters, make local


def test_the_template_parameters_set_the_function_and_make_local_passes_them(
    make_stack: MakeStack, igni_stub: StubProcess
) -> None:
    # Given make local's shell setting the three upstream variables
    shell = {
        "IGNI_TOKEN_ENDPOINT_AUTH_METHOD": "client_secret_basic",
        "IGNI_AUDIENCE": "https://api.example",
        "IGNI_DEFAULT_EXPIRES_IN": "900",
        "IGNI_SCOPE": "not passed this way",
    }
    parameters = upstream_parameters(shell)
    assert parameters == {
        "IgniTokenEndpointAuthMethod": "client_secret_basic",
        "IgniAudience": "https://api.example",
        "IgniDefaultExpiresIn": "900",
    }
    # When a stack is made from template.yaml with those parameters, against a Basic-only
    # server sending neither expires_in nor a JWT
    stack = make_stack(parameters=parameters)
    assert {key: stack.function_env()[key] for key in shell if key != "IGNI_SCOPE"} == {
        key: value for key, value in shell.items() if key != "IGNI_SCOPE"
    }
    igni_stub.configure(auth_methods=BASIC_ONLY, expires_in_style="omit", token_format="opaque")
    # Then the function authenticates with Basic, asks for the audience, and applies 900 s
    assert 895 <= vended_expires_in(invoke(load_event("get_token"))) <= 900
    [call] = igni_stub.calls()
    assert (call["auth_scheme"], call["audience"]) == ("Basic", "https://api.example")


def test_the_template_defaults_keep_igni_s_documented_behaviour(
    stack: LocalStack, igni_stub: StubProcess
) -> None:
    # Given the template's defaults (as a deployment without the new parameters has them)
    env = stack.function_env(keep_empty=True)
    assert env["IGNI_TOKEN_ENDPOINT_AUTH_METHOD"] == "client_secret_post"
    assert env["IGNI_DEFAULT_EXPIRES_IN"] == "3600"
    assert env["IGNI_AUDIENCE"] == ""
    # When a token is asked for, then it is exchanged in the form, without an audience
    assert invoke(load_event("get_token"))["statusCode"] == 200
    [call] = igni_stub.calls()
    assert call["auth_scheme"] is None
    assert call["form_fields"] == ["client_id", "client_secret", "grant_type"]


# ------------------------------------------------------------ RFC 8707 resource indicators


def test_igni_resource_is_sent_as_resource_fields_and_keys_the_token(
    stack: LocalStack, igni_stub: StubProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the default profile asks for two resources (IGNI_RESOURCE), and a profile for one
    set_env(
        monkeypatch,
        IGNI_RESOURCE="https://api.example/ https://reports.example/",
        IGNI_PROFILES=json.dumps(
            {
                "reports": {
                    "secret_id": stack.secret_arn,
                    "token_url": igni_stub.token_url,
                    "resource": "https://reports.example/",
                }
            }
        ),
    )
    # When each is asked for a token
    default = invoke(load_event("get_token"))
    reports = invoke(profile_event("reports"))
    # Then each resource went as a form field of its own, in order
    assert default["statusCode"] == reports["statusCode"] == 200, (default, reports)
    assert [c["resource"] for c in igni_stub.calls()] == [
        ["https://api.example/", "https://reports.example/"],
        ["https://reports.example/"],
    ]
    # And the resources are part of the cache key: one item per profile
    items = stack.dynamodb().scan(TableName=stack.table_name, ConsistentRead=True)["Items"]
    assert len({item["pk"]["S"] for item in items}) == 2


def test_rotation_tests_a_staged_key_with_the_profiles_resources(
    stack: LocalStack,
    igni_stub: StubProcess,
    rotation: Rotation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the default profile asks for a resource
    monkeypatch.setenv("IGNI_RESOURCE", '["https://api.example/"]')
    rotation.enable()
    staged = rotation.stage(
        {"client_id": igni_stub.client_id, "client_secret": igni_stub.client_secret}
    )
    # When the rotation runs, the test exchange asks for the same resource
    assert rotation.run(staged) == ["staged", "nothing_to_set", "tested", "finished"]
    [call] = igni_stub.calls()
    assert call["resource"] == ["https://api.example/"]
