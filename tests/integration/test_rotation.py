"""Credential rotation end to end, against the moto server and the Igni stub (issue 4).

The API handler (``token_vendor.functions.api.lambda_handler``) runs on events/get_token.json, the
maintenance handler (``token_vendor.functions.maintenance.lambda_handler``) on
events/secret_label_updated.json; the rotation function (``token_vendor.functions.rotation``) runs
one step at a time as Secrets Manager would invoke it (moto cannot run a rotation Lambda).
Execution environments are Runtime objects (token_vendor.functions.runtime): ``reset_runtime()``
starts a new one, :class:`Env` keeps several alive side by side.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest

from local.igni_stub import decode_jwt_segment
from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from tests.integration.conftest import STEPS, Rotation
from token_vendor.functions import api as handler
from token_vendor.functions import maintenance, runtime
from token_vendor.functions.rotation import RotationError
from token_vendor.functions.runtime import get_runtime, reset_runtime
from token_vendor.models import fingerprint

STAGE_HINT = (
    "stage the new Igni credentials as AWSPENDING first: aws secretsmanager put-secret-value"
)


class Env:
    """One execution environment: its own memory tier and caches. An API event goes to the API
    function's handler, a rotation event to the maintenance function's (in Lambda they are two
    functions; what these tests follow is the token table and the secret they share)."""

    def __init__(self) -> None:
        reset_runtime()
        self.runtime = get_runtime()

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        runtime.set_runtime(self.runtime)  # this environment answers the next invocation
        function = handler if "httpMethod" in event else maintenance
        answer: dict[str, Any] = function.lambda_handler(event, FakeLambdaContext())
        return answer

    def token(self, event: dict[str, Any]) -> str:
        """GET /token; the access token of a 200 answer."""
        response = self.invoke(event)
        assert response["statusCode"] == 200, response
        token: str = json.loads(response["body"])["access_token"]
        return token


def client_of(token: str) -> str:
    """The client id a stub token was minted for (the JWT's ``aud``, as Passport sets it)."""
    return str(decode_jwt_segment(token, 1)["aud"])


def other_client(stub: Any) -> tuple[str, str]:
    """The stub's second client: the "new Igni key" of these tests."""
    return next((cid, sec) for cid, sec in stub.clients.items() if cid != stub.client_id)


def creds(stub: Any, *, other: bool = False, secret: str | None = None) -> dict[str, str]:
    client_id, client_secret = other_client(stub) if other else (stub.client_id, stub.client_secret)
    return {"client_id": client_id, "client_secret": secret or client_secret}


def make_current(stack: LocalStack, value: dict[str, str]) -> str:
    """A new AWSCURRENT version, as a finished rotation leaves it; returns its id."""
    return stack.put_secret_value(value)


def table_versions(stack: LocalStack) -> list[str | None]:
    """The secret version of every token the table holds."""
    items = stack.dynamodb().scan(TableName=stack.table_name, ConsistentRead=True)["Items"]
    return [
        item["secret_version"]["S"] if "secret_version" in item else None
        for item in items
        if "fp" in item
    ]


def upstream(stub: Any) -> list[tuple[str, int | None]]:
    return [(call["client_id"], call["status"]) for call in stub.calls()]


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every log record with its structured fields, as one string to search."""
    return "\n".join(json.dumps(vars(record), default=str) for record in caplog.records)


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_runtime()


# ------------------------------------------------------------------ version-aware cache


def test_token_from_old_version_not_vended_once_new_version_is_current(
    stack: LocalStack, igni_stub: Any, load_event: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an environment that caches the secret for 1 s and has vended a token from A
    set_env(monkeypatch, SECRET_CACHE_SECONDS="1")
    env = Env()
    old = env.token(load_event("get_token"))
    assert client_of(old) == igni_stub.client_id
    assert env.token(load_event("get_token")) == old
    # When version B (another Igni key) becomes AWSCURRENT, with no rotation event
    version_b = make_current(stack, creds(igni_stub, other=True))
    time.sleep(1.2)
    # Then the next request exchanges B's credentials, and A's token is never vended again
    new = env.token(load_event("get_token"))
    assert new != old
    assert client_of(new) == other_client(igni_stub)[0]
    assert upstream(igni_stub) == [(igni_stub.client_id, 200), (other_client(igni_stub)[0], 200)]
    assert table_versions(stack) == [version_b]
    for _ in range(3):
        assert env.token(load_event("get_token")) == new
    # And a new execution environment is served B's token from the table, without Igni
    assert Env().token(load_event("get_token")) == new
    assert len(igni_stub.calls()) == 2


def test_new_environment_never_vends_the_old_token(
    stack: LocalStack, igni_stub: Any, load_event: Any
) -> None:
    # Given a token from version A in the table (default secret cache)
    old = Env().token(load_event("get_token"))
    # When version B becomes current
    make_current(stack, creds(igni_stub, other=True))
    # Then a new execution environment (which reads the secret afresh) mints from B at once
    new = Env().token(load_event("get_token"))
    assert client_of(new) == other_client(igni_stub)[0]
    assert new != old
    assert len(igni_stub.calls()) == 2


# ------------------------------------------------------------- invalid_client and retry


def test_invalid_client_then_newer_version_succeeds_with_one_retry(
    stack: LocalStack, igni_stub: Any, load_event: Any
) -> None:
    # Given Igni now accepts only the new key, and the secret still holds the old one
    igni_stub.configure(
        clients={other_client(igni_stub)[0]: other_client(igni_stub)[1]},
        # The old key's exchange is slow, so the new version lands while it is in flight.
        faults=[{"delay_ms": 1500}],
    )
    env = Env()
    rotated = threading.Event()

    def rotate_meanwhile() -> None:
        time.sleep(0.5)
        make_current(stack, creds(igni_stub, other=True))
        rotated.set()

    rotator = threading.Thread(target=rotate_meanwhile)
    rotator.start()
    # When a caller asks for a token (the exchange with the old key gets invalid_client)
    try:
        response = env.invoke(load_event("get_token"))
    finally:
        rotator.join()
    assert rotated.is_set()
    # Then the service re-read AWSCURRENT, retried once with the new key, and vends its token
    assert response["statusCode"] == 200, response
    token = json.loads(response["body"])["access_token"]
    assert client_of(token) == other_client(igni_stub)[0]
    # And exactly one upstream attempt failed
    assert upstream(igni_stub) == [(igni_stub.client_id, 401), (other_client(igni_stub)[0], 200)]
    assert len(table_versions(stack)) == 1


def test_invalid_client_without_newer_version_answers_502_after_one_attempt(
    stack: LocalStack, igni_stub: Any, load_event: Any
) -> None:
    # Given Igni no longer accepts the key in the secret, and no newer version exists
    igni_stub.configure(clients={other_client(igni_stub)[0]: other_client(igni_stub)[1]})
    # When a caller asks for a token
    response = Env().invoke(load_event("get_token"))
    # Then the answer is 502 upstream_auth_failed after a single attempt (no retry, same key)
    assert response["statusCode"] == 502, response
    assert json.loads(response["body"])["error"] == "upstream_auth_failed"
    assert upstream(igni_stub) == [(igni_stub.client_id, 401)]


@pytest.mark.parametrize("environment", ["same", "new"])
def test_remembered_invalid_client_does_not_block_a_newer_version(
    stack: LocalStack, igni_stub: Any, load_event: Any, environment: str
) -> None:
    # Given Igni already accepts only the new key while the secret still holds the old one
    igni_stub.configure(clients={other_client(igni_stub)[0]: other_client(igni_stub)[1]})
    env = Env()
    refused = env.invoke(load_event("get_token"))
    assert refused["statusCode"] == 502, refused
    # When the new key becomes AWSCURRENT (no rotation event)
    make_current(stack, creds(igni_stub, other=True))
    # Then the next request is served from the new key: the remembered invalid_client was
    # about the old version only, so there is no further failed attempt
    later = env if environment == "same" else Env()
    token = later.token(load_event("get_token"))
    assert client_of(token) == other_client(igni_stub)[0]
    assert upstream(igni_stub) == [(igni_stub.client_id, 401), (other_client(igni_stub)[0], 200)]


# ------------------------------------------------------------ invalidation on rotation


def test_label_updated_event_purges_and_remints(
    stack: LocalStack, igni_stub: Any, load_event: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given environments re-check memory every second, and one of them holds A's token
    set_env(monkeypatch, MEMORY_REVALIDATE_SECONDS="1")
    holder = Env()
    old = holder.token(load_event("get_token"))
    assert table_versions(stack) != []
    # When B becomes current and Secrets Manager's Secret Label Updated event arrives
    version_b = make_current(stack, creds(igni_stub, other=True))
    event = load_event("secret_label_updated", detail__versionId=version_b)
    outcome = Env().invoke(event)
    # Then the function purged A's token and exchanged B's credentials at once (one call)
    assert outcome == {"ok": True, "profiles": {"default": "upstream"}}
    assert table_versions(stack) == [version_b]
    assert upstream(igni_stub) == [(igni_stub.client_id, 200), (other_client(igni_stub)[0], 200)]
    # And the environment holding A's token in memory stops vending it within the re-check
    time.sleep(1.2)
    new = holder.token(load_event("get_token"))
    assert new != old
    assert client_of(new) == other_client(igni_stub)[0]
    # And nobody called Igni again: the re-minted token is shared through the table
    assert len(igni_stub.calls()) == 2


def test_label_updated_event_in_the_same_environment_takes_effect_at_once(
    stack: LocalStack, igni_stub: Any, load_event: Any
) -> None:
    # Given the default caches (30 s secret cache) and a token from A in this environment (in
    # Lambda the maintenance function's own, which pre-warm fills; the API function's follow
    # through the memory re-check, as the test above shows)
    env = Env()
    old = env.token(load_event("get_token"))
    # When B becomes current and the rotation event reaches this environment
    make_current(stack, creds(igni_stub, other=True))
    assert env.invoke(load_event("secret_label_updated"))["ok"] is True
    # Then its next answer is B's token, without waiting for the secret cache
    new = env.token(load_event("get_token"))
    assert new != old
    assert client_of(new) == other_client(igni_stub)[0]


def test_label_updated_event_for_another_label_or_secret_changes_nothing(
    stack: LocalStack, igni_stub: Any, load_event: Any
) -> None:
    # Given a token from the current version
    env = Env()
    token = env.token(load_event("get_token"))
    # When events arrive for another secret, and for AWSPREVIOUS (the rule lets only AWSCURRENT
    # through, and the function does not check it again: the current version is unchanged)
    other_arn = stack.secret_arn.replace("/default-", "/other-")
    other = load_event(
        "secret_label_updated",
        resources=[other_arn],
        detail__name=stack.secret_name.replace("/default", "/other"),
    )
    previous = load_event("secret_label_updated", detail__labelUpdated="AWSPREVIOUS")
    assert env.invoke(previous)["ok"] is True
    assert env.invoke(other) == {"ok": True, "profiles": {}}
    # Then the token is kept and Igni was not called again
    assert Env().token(load_event("get_token")) == token
    assert len(igni_stub.calls()) == 1


# ----------------------------------------------------------- the rotation function


def test_rotation_validates_and_promotes_the_staged_key(
    stack: LocalStack, igni_stub: Any, load_event: Any, rotation: Rotation
) -> None:
    # Given rotation is on, the service vends a token from the current key
    old_version = rotation.enable()
    env = Env()
    old = env.token(load_event("get_token"))
    # And an operator staged the new Igni key as AWSPENDING with a version id of their own
    staged = rotation.stage(creds(igni_stub, other=True))
    assert rotation.version_with("AWSCURRENT") == old_version
    assert rotation.version_with("AWSPENDING") == staged
    # When Secrets Manager runs the four steps with that version as ClientRequestToken
    outcomes = rotation.run(staged)
    # Then the key was exchanged once at Igni and promoted
    assert outcomes == ["staged", "nothing_to_set", "tested", "finished"]
    assert upstream(igni_stub)[-1] == (other_client(igni_stub)[0], 200)
    assert rotation.version_with("AWSCURRENT") == staged
    assert rotation.version_with("AWSPREVIOUS") == old_version
    # And after the label event the service vends a token from the new key
    assert env.invoke(load_event("secret_label_updated", detail__versionId=staged))["ok"]
    new = env.token(load_event("get_token"))
    assert new != old
    assert client_of(new) == other_client(igni_stub)[0]
    assert table_versions(stack) == [staged]


def test_a_rotation_whose_token_names_another_version_promotes_nothing(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given an operator staged a version, and rotate-secret ran with another ClientRequestToken
    current = rotation.enable()
    staged = rotation.stage(creds(igni_stub, other=True))
    token = str(uuid.uuid4())
    for step in ("createSecret", "testSecret", "finishSecret"):
        # When a step that reads the staged version runs for that rotation
        # Then it fails naming the staged version and what to run, and Igni is not called
        with pytest.raises(RotationError) as failed:
            rotation.step(step, token)
        assert f"--client-request-token {staged}" in str(failed.value)
        assert "AWSCURRENT was not moved" in str(failed.value)
    # And AWSCURRENT stays where it was
    assert rotation.version_with("AWSCURRENT") == current
    assert igni_stub.calls() == []


def test_finish_promotes_only_the_tested_version_when_another_was_staged_meanwhile(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given v1 staged, and createSecret, setSecret and testSecret passed for it (Igni said yes)
    current = rotation.enable()
    v1 = rotation.stage(creds(igni_stub, other=True))
    assert [rotation.step(step, v1)["outcome"] for step in STEPS[:3]] == [
        "staged",
        "nothing_to_set",
        "tested",
    ]
    # And then another version was staged as AWSPENDING (never tested)
    v2 = rotation.stage(creds(igni_stub, secret="never-tested"))
    # When finishSecret runs for the rotation of v1
    # Then it fails clearly, and AWSCURRENT stays on the version it was on
    with pytest.raises(RotationError, match=f"version {v2} .* holds AWSPENDING"):
        rotation.step("finishSecret", v1)
    assert rotation.version_with("AWSCURRENT") == current
    # And a rotation of v2 cannot finish before it is tested either
    with pytest.raises(RotationError, match="has not passed testSecret"):
        rotation.step("finishSecret", v2)
    assert rotation.version_with("AWSCURRENT") == current


def test_finish_without_test_promotes_nothing(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given a staged key that testSecret never ran for
    current = rotation.enable()
    staged = rotation.stage(creds(igni_stub, other=True))
    # When finishSecret runs
    # Then it refuses, and AWSCURRENT has not moved
    with pytest.raises(RotationError, match="has not passed testSecret"):
        rotation.step("finishSecret", staged)
    assert rotation.version_with("AWSCURRENT") == current
    assert igni_stub.calls() == []


def test_each_step_run_twice_changes_nothing(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given a staged key
    rotation.enable()
    staged = rotation.stage(creds(igni_stub, other=True))
    for step in STEPS:
        # When a step runs, and then runs again (Secrets Manager may retry any step)
        first = rotation.step(step, staged)["outcome"]
        after_first = rotation.stages()
        second = rotation.step(step, staged)["outcome"]
        # Then the second run leaves the version stages exactly as the first left them
        assert rotation.stages() == after_first, step
        if step == "finishSecret":
            assert (first, second) == ("finished", "already_current")
        else:
            assert first == second, step
    assert rotation.version_with("AWSCURRENT") == staged
    # And once the version is current, every step is a no-op (and Igni is not called)
    calls = len(igni_stub.calls())
    before = rotation.stages()
    for step in STEPS:
        assert rotation.step(step, staged)["outcome"] == "already_current"
    assert rotation.stages() == before
    assert len(igni_stub.calls()) == calls == 2  # the two testSecret runs


def test_failing_test_secret_leaves_awscurrent_and_the_service_vending(
    stack: LocalStack,
    igni_stub: Any,
    load_event: Any,
    rotation: Rotation,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given the service vends tokens from the current key
    current = rotation.enable()
    env = Env()
    token = env.token(load_event("get_token"))
    # And an operator staged a wrong key (a client secret Igni does not know)
    wrong_secret = "wrong-secret-" + uuid.uuid4().hex
    staged = rotation.stage(creds(igni_stub, other=True, secret=wrong_secret))
    assert rotation.step("createSecret", staged)["outcome"] == "staged"
    assert rotation.step("setSecret", staged)["outcome"] == "nothing_to_set"
    # When testSecret exchanges it at Igni
    with pytest.raises(RotationError, match="upstream_auth_failed") as failure:
        rotation.step("testSecret", staged)
    # Then the rotation fails, AWSCURRENT is untouched and the wrong key stays pending
    assert rotation.version_with("AWSCURRENT") == current
    assert rotation.version_with("AWSPENDING") == staged
    assert upstream(igni_stub)[-1] == (other_client(igni_stub)[0], 401)
    assert wrong_secret not in str(failure.value)
    assert wrong_secret not in logged(caplog)
    # And the service keeps vending valid tokens, in this and in a new environment
    assert env.token(load_event("get_token")) == token
    fresh = Env().token(load_event("get_token"))
    assert client_of(fresh) == igni_stub.client_id
    # When the operator clears AWSPENDING and stages the right key (the runbook's recovery)
    rotation.sm.update_secret_version_stage(
        SecretId=stack.secret_arn, VersionStage="AWSPENDING", RemoveFromVersionId=staged
    )
    assert rotation.version_with("AWSPENDING") is None
    fixed = rotation.stage(creds(igni_stub, other=True))
    # Then the rotation goes through
    assert rotation.run(fixed) == ["staged", "nothing_to_set", "tested", "finished"]
    assert rotation.version_with("AWSCURRENT") == fixed


def test_test_secret_fails_when_igni_is_unreachable(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given a valid staged key, and Igni failing every attempt
    current = rotation.enable()
    staged = rotation.stage(creds(igni_stub, other=True))
    igni_stub.configure(faults=[{"status": 503}] * 3)
    # When testSecret runs
    with pytest.raises(RotationError, match="upstream_unavailable"):
        rotation.step("testSecret", staged)
    # Then nothing moved (Secrets Manager retries the step later)
    assert rotation.version_with("AWSCURRENT") == current
    assert rotation.version_with("AWSPENDING") == staged


def test_create_secret_with_nothing_staged_fails_with_the_clear_message(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given rotation is on and no version is staged
    rotation.enable()
    before = rotation.stages()
    # When Secrets Manager starts a rotation (createSecret with a new version id)
    with pytest.raises(RotationError) as failure:
        rotation.step("createSecret", str(uuid.uuid4()))
    # Then it fails saying how to stage a key, and nothing changed
    assert STAGE_HINT in str(failure.value)
    assert "--version-stages AWSPENDING" in str(failure.value)
    assert rotation.stages() == before
    assert igni_stub.calls() == []


def test_create_secret_after_a_finished_rotation_needs_a_new_staged_key(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given a finished rotation (AWSPENDING stays on the version that became current)
    rotation.enable()
    staged = rotation.stage(creds(igni_stub, other=True))
    rotation.run(staged)
    assert "AWSPENDING" in rotation.stages()[staged]
    # When a new rotation starts without a new key staged
    with pytest.raises(RotationError) as failure:
        rotation.step("createSecret", str(uuid.uuid4()))
    # Then it fails with the clear message
    assert STAGE_HINT in str(failure.value)
    assert rotation.version_with("AWSCURRENT") == staged


@pytest.mark.parametrize(
    ("staged_value", "reason"),
    [
        ("not json", "is not JSON"),
        ('{"client_id": "only-an-id"}', "lacks a non-empty 'client_secret'"),
    ],
)
def test_create_secret_rejects_a_staged_value_that_is_not_credentials(
    stack: LocalStack, igni_stub: Any, rotation: Rotation, staged_value: str, reason: str
) -> None:
    # Given an operator staged something that is not Igni credentials
    current = rotation.enable()
    staged = rotation.stage(staged_value)
    # When createSecret, or finishSecret run directly, look at it
    for step in ("createSecret", "finishSecret"):
        with pytest.raises(RotationError, match=reason):
            rotation.step(step, staged)
    # Then nothing moved and Igni was not called
    assert rotation.version_with("AWSCURRENT") == current
    assert igni_stub.calls() == []


def test_rotation_refused_when_the_secret_is_not_enabled_for_rotation(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given a staged key on a secret whose rotation was never turned on
    staged = rotation.stage(creds(igni_stub, other=True))
    # When a step runs
    with pytest.raises(RotationError, match="not enabled for rotation"):
        rotation.step("testSecret", staged)
    # Then nothing was called or moved
    assert igni_stub.calls() == []
    assert rotation.version_with("AWSPENDING") == staged


def test_test_secret_refuses_plain_http_to_a_remote_host(
    stack: LocalStack,
    igni_stub: Any,
    rotation: Rotation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the rotation function is configured with a plain-http token URL off loopback
    rotation.enable()
    staged = rotation.stage(creds(igni_stub, other=True))
    monkeypatch.setenv("IGNI_TOKEN_URL", "http://igni.example.com/api/v1/oauth2/token")
    # When testSecret runs, then it refuses to send the key there
    with pytest.raises(RotationError, match="must use https"):
        rotation.step("testSecret", staged)
    assert igni_stub.calls() == []


def test_rotation_logs_neither_the_key_nor_the_token(
    stack: LocalStack, igni_stub: Any, rotation: Rotation, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a staged key
    rotation.enable()
    staged = rotation.stage(creds(igni_stub, other=True))
    caplog.clear()
    # When the whole rotation runs
    rotation.run(staged)
    # Then the logs hold the test token's fingerprint, never the secret or a token
    out = logged(caplog)
    issued = igni_stub.calls()[-1]["fingerprint"]
    assert issued
    assert issued in out
    assert other_client(igni_stub)[1] not in out
    assert "eyJ" not in out  # no JWT
    assert fingerprint(other_client(igni_stub)[1]) not in out


def test_a_profile_secret_is_tested_where_its_profile_exchanges_it(
    stack: LocalStack, igni_stub: Any, rotation: Rotation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the secret belongs to profile `analytics` (its own token URL and scope), while the
    # default profile's token URL is valid but nothing listens there (an exchange at it fails)
    monkeypatch.setenv(
        "IGNI_PROFILES",
        json.dumps(
            {
                "analytics": {
                    "secret_id": stack.secret_name,
                    "token_url": igni_stub.token_url,
                    "scope": "reports:read",
                }
            }
        ),
    )
    monkeypatch.setenv("IGNI_TOKEN_URL", "http://127.0.0.1:9/api/v1/oauth2/token")
    rotation.enable()
    staged = rotation.stage(creds(igni_stub, other=True))
    # When the rotation runs
    outcomes = rotation.run(staged)
    # Then testSecret exchanged the staged key at the profile's URL, with its scope
    assert outcomes == ["staged", "nothing_to_set", "tested", "finished"]
    last = igni_stub.calls()[-1]
    assert (last["client_id"], last["scope"], last["status"]) == (
        other_client(igni_stub)[0],
        "reports:read",
        200,
    )
