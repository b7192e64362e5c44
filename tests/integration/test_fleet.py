"""A fleet of execution environments, each its own process, sharing one DynamoDB tier.

These tests hold the single-flight promise: one upstream call per refresh across the fleet,
never an expired token vended, a crashed lease holder blocking refresh for one lease at most.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from local.environment import EnvironmentProcess
from local.events import load_event
from local.stack import LocalStack

Fleet = Callable[..., list[EnvironmentProcess]]


@pytest.fixture
def fleet(stack: LocalStack, tmp_path: Path) -> Iterator[Fleet]:
    started: list[EnvironmentProcess] = []

    def start(count: int, **env: str) -> list[EnvironmentProcess]:
        environment = {**stack.function_env(), **env}
        with ThreadPoolExecutor(max_workers=count) as pool:
            procs = list(
                pool.map(
                    lambda i: EnvironmentProcess(environment, log_path=tmp_path / f"env{i}.log"),
                    range(len(started), len(started) + count),
                )
            )
        started.extend(procs)
        return procs

    yield start
    with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:  # they exit side by side
        list(pool.map(EnvironmentProcess.close, started))


def all_at_once(
    envs: list[EnvironmentProcess], event: dict[str, Any], **kw: Any
) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=len(envs)) as pool:
        return list(pool.map(lambda env: env.invoke(event, **kw), envs))


def token_of(response: dict[str, Any]) -> dict[str, Any]:
    assert response["statusCode"] == 200, response
    body: dict[str, Any] = json.loads(response["body"])
    return body


def successful_calls(stub: Any) -> list[dict[str, Any]]:
    return [c for c in stub.calls() if c["status"] == 200]


def test_two_environments_share_one_token(fleet: Fleet, igni_stub: Any) -> None:
    # Given two execution environments
    first, second = fleet(2)
    # When one fetches a token and then the other
    a = token_of(first.invoke(load_event("get_token")))
    b = token_of(second.invoke(load_event("get_token")))
    # Then the second is served from DynamoDB: one upstream call for both
    assert a["access_token"] == b["access_token"]
    assert len(igni_stub.calls()) == 1


def test_many_cold_environments_make_one_upstream_call(fleet: Fleet, igni_stub: Any) -> None:
    # Given eight cold environments and an Igni that takes 300 ms to answer
    igni_stub.configure(latency_ms=300)
    envs = fleet(8)
    # When they all ask at the same moment
    responses = all_at_once(envs, load_event("get_token"))
    # Then exactly one of them called Igni and all vend the same token
    tokens = {token_of(r)["access_token"] for r in responses}
    assert len(tokens) == 1
    assert len(igni_stub.calls()) == 1


def test_at_the_end_of_a_short_lifetime_the_fleet_refreshes_once(
    fleet: Fleet, igni_stub: Any
) -> None:
    # Given six environments holding a 3 s token, vendable while a whole second is left (no
    # margin): so for at most 2 s after it was minted, and a fresh one for at least 1 s
    igni_stub.configure(lifetime=3, latency_ms=200)
    envs = fleet(6, TOKEN_MIN_REMAINING_SECONDS="0", TOKEN_MIN_REMAINING_FRACTION="0")
    first = {token_of(r)["access_token"] for r in all_at_once(envs, load_event("get_token"))}
    assert len(first) == 1
    # When the token is past the point where it may be vended and they all ask again
    time.sleep(2.0)
    responses = all_at_once(envs, load_event("get_token"))
    # Then one more upstream call was made between them, and all vend the same fresh token
    bodies = [token_of(r) for r in responses]
    assert len({b["access_token"] for b in bodies}) == 1
    assert bodies[0]["access_token"] not in first
    assert all(b["expires_in"] >= 1 for b in bodies)
    assert len(igni_stub.calls()) == 2


def test_refresh_ahead_serves_the_current_token_while_one_environment_refreshes(
    fleet: Fleet, igni_stub: Any
) -> None:
    # Given a 20 s token, past its refresh point (2 s) but still vendable (until about 17 s);
    # the new token's own refresh point is 2 s after it is minted
    igni_stub.configure(lifetime=20, latency_ms=600)
    envs = fleet(5, TOKEN_REFRESH_FRACTION="0.1")
    old = token_of(envs[0].invoke(load_event("get_token")))["access_token"]
    time.sleep(2.0)
    # When all environments ask at once
    responses = all_at_once(envs, load_event("get_token"))
    # Then one of them refreshed (one more call) and nobody was handed an expired token
    bodies = [token_of(r) for r in responses]
    assert len(igni_stub.calls()) == 2
    assert all(b["expires_in"] > 0 for b in bodies)
    new = {b["access_token"] for b in bodies} - {old}
    assert len(new) == 1


def test_a_short_lived_token_is_still_cached(fleet: Fleet, igni_stub: Any) -> None:
    # Given Igni issues 10 s tokens, far shorter than the fixed 300 s margin
    igni_stub.configure(lifetime=10)
    (env,) = fleet(1)
    # When asked repeatedly within the first seconds
    bodies = [token_of(env.invoke(load_event("get_token"))) for _ in range(5)]
    # Then one exchange served them all
    assert len({b["access_token"] for b in bodies}) == 1
    assert len(igni_stub.calls()) == 1


def test_a_holder_that_dies_mid_refresh_blocks_refresh_for_one_lease_at_most(
    fleet: Fleet, igni_stub: Any
) -> None:
    # Given a 2 s lease and an Igni that is slow for the first caller
    igni_stub.configure(faults=[{"delay_ms": 8000}])
    doomed, survivor = fleet(2, LEASE_SECONDS="2")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(doomed.invoke, load_event("get_token"))
        # When the lease holder dies before committing, its request inside the slow Igni (the
        # stub took the fault; a fixed pause could be too short on a loaded machine)
        deadline = time.monotonic() + 10
        while igni_stub.configure()["faults_pending"] and time.monotonic() < deadline:
            time.sleep(0.02)
        doomed.kill()
    started = time.monotonic()
    body = token_of(survivor.invoke(load_event("get_token")))
    # Then another environment takes over once the lease expires and gets a token
    assert body["expires_in"] > 0
    assert time.monotonic() - started < 2 + 1.5
    assert len(successful_calls(igni_stub)) == 1


def test_reports_of_a_rejected_token_coalesce_into_one_refresh(
    fleet: Fleet, igni_stub: Any
) -> None:
    # Given a fleet that shares a token which Igni has just started rejecting
    igni_stub.configure(latency_ms=300)
    envs = fleet(6)
    rejected = token_of(envs[0].invoke(load_event("get_token")))["access_token"]
    event = load_event("post_refresh", body=json.dumps({"rejected_token": rejected}))
    # When every environment reports it at once
    responses = all_at_once(envs, event)
    # Then exactly one new token was exchanged, and every reporter gets it
    bodies = [token_of(r) for r in responses]
    assert len({b["access_token"] for b in bodies}) == 1
    assert bodies[0]["access_token"] != rejected
    assert len(igni_stub.calls()) == 2
    # And a late report of the old token gets the new one without another call
    late = token_of(envs[1].invoke(event))
    assert late["access_token"] == bodies[0]["access_token"]
    assert len(igni_stub.calls()) == 2


def test_a_refresh_failure_keeps_vending_and_the_backoff_is_shared(
    fleet: Fleet, igni_stub: Any
) -> None:
    # Given a 10 s token past its refresh point (1 s), still vendable for about 7 s more,
    # a shared backoff of at least 5 s after a failure, and Igni failing from then on
    igni_stub.configure(lifetime=10)
    first, second = fleet(2, TOKEN_REFRESH_FRACTION="0.1", REFRESH_BACKOFF_BASE_SECONDS="10")
    token = token_of(first.invoke(load_event("get_token")))["access_token"]
    time.sleep(1.2)
    igni_stub.configure(faults=[{"status": 500}] * 20)
    # When one environment tries to refresh
    body = token_of(first.invoke(load_event("get_token")))
    calls_after_failure = len(igni_stub.calls())
    # Then the still-valid token is vended, and the other environment backs off as well
    assert body["access_token"] == token
    assert calls_after_failure > 1
    again = token_of(second.invoke(load_event("get_token")))
    assert again["access_token"] == token
    assert len(igni_stub.calls()) == calls_after_failure


def test_invalid_client_is_remembered_across_the_fleet(
    fleet: Fleet, igni_stub: Any, stack: LocalStack
) -> None:
    # Given credentials Igni rejects
    igni_stub.configure(clients={"nobody": "nothing"})
    first, second = fleet(2)
    # When one environment is refused and another asks right after
    assert first.invoke(load_event("get_token"))["statusCode"] == 502
    response = second.invoke(load_event("get_token"))
    # Then the second answers 502 upstream_auth_failed at once, without calling Igni
    assert response["statusCode"] == 502
    assert json.loads(response["body"])["error"] == "upstream_auth_failed"
    assert len(igni_stub.calls()) == 1
