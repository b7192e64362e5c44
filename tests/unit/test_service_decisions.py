"""The service's decisions at their edges, in the invariants' world (real service, lease, cipher
and Igni client on an injected clock): when the fleet holds back and what it answers meanwhile,
the forced-refresh limit on both sides of the table's fence, what a refresh may name, and the
moment an answer is judged. Each test pins an edge a one-character change to service.py (or
to the possession proof in token_store.py) would move (make mutate)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.fakes import EPOCH
from tests.invariants.world import CONFIG, KEY, PROFILE, Answer, World
from token_vendor.config import CLIENT_SECRET_BASIC
from token_vendor.errors import (
    InvalidRequest,
    RefreshRateLimited,
    StoreUnavailable,
    UnknownToken,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamUnavailable,
    VendorError,
)
from token_vendor.models import RECENT_TOKENS, CachedToken, Record, cache_key, fingerprint
from token_vendor.vending.answers import DYNAMODB, MEMORY, UPSTREAM, Vended
from token_vendor.vending.memory import MemoryTier

INTERVAL = CONFIG.forced_refresh_interval_seconds
INVALID_CLIENT = Answer("raw", status=401, body=b'{"error": "invalid_client"}')


def expect(call: Callable[[], Any], error: type[VendorError]) -> VendorError:
    with pytest.raises(error) as raised:
        call()
    return raised.value


def counting_world(**kwargs: Any) -> tuple[World, list[int]]:
    """A world, and the number of exchanges (calls to Igni, retries included) made in it."""
    exchanges = [0]

    def count() -> None:
        exchanges[0] += 1

    return World(on_exchange=count, **kwargs), exchanges


def remembered(world: World, **fields: Any) -> None:
    """The shared item as a failure left it: no token, these fields set."""
    world.table.items[KEY] = Record(**fields)


# ----------------------------------------------------------- held back: rejected credentials


def test_remembered_bad_credentials_are_not_used_again_while_a_token_serves() -> None:
    # Given a token past its refresh point, and Igni rejecting the credentials when asked
    world, exchanges = counting_world()
    env = world.environment("A")
    token = env.vend(world.clock).token
    world.clock.sleep(0.8 * 3600)
    world.http.answers.append(INVALID_CLIENT)
    assert env.vend(world.clock).token == token
    assert exchanges[0] == 2
    # When callers keep asking while the rejection is remembered
    for _ in range(5):
        world.clock.sleep(5)
        vended = env.vend(world.clock)
        # Then the token at hand is served, and Igni is not asked with credentials known bad
        assert vended.token == token
        assert vended.tier == DYNAMODB
    assert exchanges[0] == 2


def test_remembered_bad_credentials_answer_until_every_remembered_failure_lapses() -> None:
    # Given no token, credentials rejected 10 s ago (remembered 20 s more) and a backoff
    # that lasts 40 s more
    world, exchanges = counting_world()
    now = world.clock.wall()
    remembered(
        world,
        auth_failed_until=now + 20.0,
        auth_failed_version="v1",
        backoff_until=now + 40.0,
        failures=1,
        failure_code="upstream_auth_failed",
    )
    # When a caller asks
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamAuthFailed)
    # Then it is told the credentials were rejected, to come back when both have lapsed,
    # and Igni is not asked
    assert error.retry_after == 40
    assert error.message == (
        "Igni rejected the client credentials (invalid_client) moments ago; fix the secret "
        "(or, if Igni asked for HTTP Basic, set client_secret_basic) and retry"
    )
    assert exchanges[0] == 0


def test_a_remembered_rejection_longer_than_the_backoff_sets_the_retry_after() -> None:
    # Given credentials rejected, remembered 50.5 s more, and a backoff of 3 s more
    world, _ = counting_world()
    now = world.clock.wall()
    remembered(
        world, auth_failed_until=now + 50.5, auth_failed_version="v1", backoff_until=now + 3.0
    )
    # When / Then the caller is told 51 s (rounded up)
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamAuthFailed)
    assert error.retry_after == 51


def test_a_basic_profiles_remembered_rejection_does_not_suggest_basic() -> None:
    # Given a profile that already authenticates with HTTP Basic, and remembered rejection
    profile = dataclasses.replace(PROFILE, token_endpoint_auth_method=CLIENT_SECRET_BASIC)
    config = dataclasses.replace(CONFIG, profiles={"default": profile})
    world, _ = counting_world(config=config)
    now = world.clock.wall()
    world.table.items[world_key(profile)] = Record(
        auth_failed_until=now + 20.0, auth_failed_version="v1"
    )
    # When / Then the message only says to fix the secret
    error = expect(
        lambda: world.environment("A").service.vend(profile, deadline=world.clock.mono() + 20),
        UpstreamAuthFailed,
    )
    assert error.message == (
        "Igni rejected the client credentials (invalid_client) moments ago; fix the secret "
        "and retry"
    )


def world_key(profile: Any) -> str:
    return cache_key(profile)


def test_a_rejection_of_an_older_secret_version_does_not_hold_back_the_new_one() -> None:
    # Given credentials v0 rejected moments ago, and the secret now at v1
    world, exchanges = counting_world()
    now = world.clock.wall()
    remembered(
        world, auth_failed_until=now + 50.0, auth_failed_version="v0", backoff_until=now + 50.0
    )
    # When a caller asks
    vended = world.environment("A").vend(world.clock)
    # Then v1 is exchanged at once
    assert vended.tier == UPSTREAM
    assert exchanges[0] == 1


def test_a_rejection_is_remembered_until_its_moment_and_not_a_moment_longer() -> None:
    # Given credentials rejected, remembered until exactly now
    world, exchanges = counting_world()
    remembered(world, auth_failed_until=world.clock.wall(), auth_failed_version="v1")
    # When / Then Igni is asked again
    assert world.environment("A").vend(world.clock).tier == UPSTREAM
    assert exchanges[0] == 1


# ------------------------------------------------------------------ held back: the backoff


def test_a_backoff_without_a_token_answers_the_failures_own_error_and_time_left() -> None:
    # Given no token and a shared backoff 10.2 s more, after 3 bad answers
    world, exchanges = counting_world()
    now = world.clock.wall()
    remembered(world, backoff_until=now + 10.2, failures=3, failure_code="upstream_bad_response")
    # When a caller asks
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamBadResponse)
    # Then it gets the same error as the failure, told to come back in 11 s; Igni not asked
    assert error.message == (
        "refreshing the token failed 3 time(s) in a row (upstream_bad_response); backing off"
    )
    assert error.retry_after == 11
    assert exchanges[0] == 0


def test_a_backoff_of_unknown_failure_is_a_503_and_a_fraction_of_a_second_is_one() -> None:
    # Given no token and a backoff of 0.2 s more, its failure not recorded
    world, _ = counting_world()
    remembered(world, backoff_until=world.clock.wall() + 0.2, failures=1)
    # When / Then a 503 to retry in 1 s
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamUnavailable)
    assert error.retry_after == 1
    assert error.message == (
        "refreshing the token failed 1 time(s) in a row (upstream_unavailable); backing off"
    )


def test_a_backoff_ends_at_its_moment() -> None:
    # Given a backoff that ends exactly now
    world, exchanges = counting_world()
    remembered(world, backoff_until=world.clock.wall(), failures=4)
    # When / Then Igni is asked
    assert world.environment("A").vend(world.clock).tier == UPSTREAM
    assert exchanges[0] == 1


def test_during_a_backoff_a_stale_token_is_served_and_not_kept_as_fresh() -> None:
    # Given a token past its refresh point, and a failed refresh (backoff shared)
    world, exchanges = counting_world()
    env = world.environment("A")
    token = env.vend(world.clock).token
    world.clock.sleep(0.8 * 3600)
    world.http.answers.extend([Answer("raw", status=500, body=b"{}")] * 3)
    failed_over = env.vend(world.clock)
    assert (failed_over.token, failed_over.tier) == (token, DYNAMODB)
    calls = exchanges[0]
    # When another environment asks twice during the backoff
    other = world.environment("B")
    first, second = other.vend(world.clock), other.vend(world.clock)
    # Then it is served the stale token from the table both times (never from memory: a
    # stale token is not kept), with no call to Igni
    assert (first.token, first.tier) == (token, DYNAMODB)
    assert (second.token, second.tier) == (token, DYNAMODB)
    assert exchanges[0] == calls


def test_a_fresh_token_from_the_table_is_kept_in_memory() -> None:
    # Given a token another environment exchanged
    world, _ = counting_world()
    token = world.environment("A").vend(world.clock).token
    env = world.environment("B")
    # When this environment asks twice
    # Then the table serves it once, memory after
    assert env.vend(world.clock).tier == DYNAMODB
    assert (env.vend(world.clock).tier, env.vend(world.clock).token) == (MEMORY, token)


# ----------------------------------------------------------------- forced refresh: the limit


def test_a_second_forced_refresh_within_the_interval_is_refused_until_it_ends() -> None:
    # Given a token reported and replaced 29.5 s ago
    world, exchanges = counting_world()
    env = world.environment("A")
    first = env.vend(world.clock).token.access_token
    second = env.report(world.clock, first).token.access_token
    started = world.clock.t
    world.clock.sleep(INTERVAL - 0.5 - (world.clock.t - started))
    # When the new token is reported too
    error = expect(lambda: env.report(world.clock, second), RefreshRateLimited)
    # Then it is refused for the half second left (1 s), with no call to Igni
    assert error.retry_after == 1
    assert error.message == (
        "a forced refresh of profile 'default' happened less than 30 s ago and Igni still "
        "rejects its token"
    )
    assert exchanges[0] == 2


def test_a_forced_refresh_once_the_interval_has_passed_is_made() -> None:
    # Given a token reported and replaced exactly one interval ago
    world, exchanges = counting_world()
    env = world.environment("A")
    first = env.vend(world.clock).token.access_token
    forced_at = world.clock.wall()
    second = env.report(world.clock, first).token.access_token
    assert world.table.items[KEY].forced_at == forced_at
    world.clock.t = forced_at - EPOCH + INTERVAL
    # When the new token is reported
    third = env.report(world.clock, second)
    # Then it is replaced
    assert third.tier == UPSTREAM
    assert exchanges[0] == 3


def test_the_table_fences_a_forced_refresh_decided_on_an_old_view() -> None:
    # Given two environments holding the same token; B reads the item, then A's forced
    # refresh of that token is made (and fails: the token stays) before B's write
    world, exchanges = counting_world()
    a, b = world.environment("A"), world.environment("B")
    token = a.vend(world.clock).token.access_token
    assert b.vend(world.clock).token.access_token == token
    hook = world.table.fault
    writes = [0]

    def a_reports_first(operation: str) -> None:
        if hook is not None:
            hook(operation)
        if operation == "UpdateItem" and writes[0] == 0:
            writes[0] += 1
            world.table.fault = hook
            world.http.answers.extend([Answer("raw", status=500, body=b"{}")] * 3)
            expect(lambda: a.report(world.clock, token), UpstreamUnavailable)
            world.table.fault = a_reports_first

    world.table.fault = a_reports_first
    calls = exchanges[0]
    # When B's forced refresh of the same token reaches the table
    error = expect(lambda: b.report(world.clock, token), RefreshRateLimited)
    # Then the table refuses it (a forced refresh happened since B's view): one call to Igni
    assert exchanges[0] == calls + 1
    assert error.retry_after is not None
    assert error.retry_after <= INTERVAL


# ------------------------------------------------------------- what a refresh may name


def test_a_report_on_an_empty_table_is_unknown_and_calls_no_one() -> None:
    # Given no token ever vended
    world, exchanges = counting_world()
    # When / Then
    expect(lambda: world.environment("A").report(world.clock, "anything"), UnknownToken)
    assert exchanges[0] == 0


def test_a_report_of_any_of_the_recent_tokens_is_served_the_current_one() -> None:
    # Given a token replaced RECENT_TOKENS times by forced refreshes
    world, exchanges = counting_world()
    env = world.environment("A")
    tokens = [env.vend(world.clock).token.access_token]
    for _ in range(RECENT_TOKENS):
        world.clock.sleep(INTERVAL)
        tokens.append(env.report(world.clock, tokens[-1]).token.access_token)
    calls = exchanges[0]
    other = world.environment("B")
    # When each replaced token is reported (the oldest last)
    for old in reversed(tokens[:-1]):
        vended = other.report(world.clock, old)
        # Then the current token is served, with no exchange
        assert vended.token.access_token == tokens[-1]
    assert exchanges[0] == calls
    # And one older than that is no longer known
    assert world.table.items[KEY].recent_fingerprints == tuple(
        fingerprint(t) for t in reversed(tokens[:-1])
    )


def test_a_record_knows_its_current_and_recent_tokens_only() -> None:
    # Given an item holding tok-3, having replaced tok-2 then tok-1
    record = Record(token_fingerprint="fp3", recent_fingerprints=("fp2", "fp1"))
    # When / Then it vended those three, and its succession puts the current first
    assert [record.vended(fp) for fp in ("fp3", "fp2", "fp1", "fp0")] == [
        True,
        True,
        True,
        False,
    ]
    assert record.succession() == ("fp3", "fp2", "fp1")
    assert Record(recent_fingerprints=("fp1",)).succession() == ("fp1",)
    full = Record(token_fingerprint="new", recent_fingerprints=tuple(f"f{i}" for i in range(8)))
    assert full.succession() == ("new", *(f"f{i}" for i in range(7)))


def test_memory_knows_the_tokens_it_held_and_forgets_none_it_drops() -> None:
    # Given an environment's memory holding a token, then a second, then dropping it
    world = World()
    memory = MemoryTier(clock=world.clock.mono)
    env = world.environment("A")
    first = env.vend(world.clock).token
    second = dataclasses.replace(first, access_token="other")
    memory.put(KEY, first)
    assert memory.vended(KEY, first.fingerprint)
    assert not memory.vended(KEY, second.fingerprint)
    memory.put(KEY, second)
    assert memory.vended(KEY, second.fingerprint)
    memory.drop(KEY, first.fingerprint)
    # Then it still holds the second (dropping another fingerprint leaves it) ...
    assert memory.get(KEY) is not None
    memory.drop(KEY, second.fingerprint)
    # ... and once dropped, both are still known as tokens it vended; others are not
    assert memory.get(KEY) is None
    assert memory.vended(KEY, first.fingerprint)
    assert memory.vended(KEY, second.fingerprint)
    assert not memory.vended(KEY, fingerprint("never"))
    assert not memory.vended("token#other", first.fingerprint)


# ---------------------------------------------------------- the moment an answer is judged


def test_a_token_that_ran_out_while_its_commit_hung_is_not_vended() -> None:
    # Given 4 s tokens, and the table hanging for 5 s on the commit of the new one
    world, _ = counting_world(lifetime=4)
    hook = world.table.fault
    writes = [0]

    def hang_on_commit(operation: str) -> None:
        if hook is not None:
            hook(operation)
        if operation == "UpdateItem":
            writes[0] += 1
            if writes[0] == 2:
                world.clock.sleep(5.0)
                raise StoreUnavailable("DynamoDB UpdateItem failed (ReadTimeoutError)")

    world.table.fault = hang_on_commit
    # When a caller asks
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamUnavailable)
    # Then the token, judged at the moment of the answer, is not given: the caller retries
    assert error.message == "the token at hand ran out while the answer was made; retry"
    assert error.retry_after == 1


def test_min_ttl_is_bounded_by_what_a_fresh_token_gives() -> None:
    # Given an empty table and 3600 s tokens (at most 3300 s can be promised)
    world, exchanges = counting_world()
    env = world.environment("A")
    # When a caller asks for more than a fresh token has (3601 s)
    error = expect(lambda: env.vend(world.clock, min_ttl=3601), InvalidRequest)
    # Then it is refused, naming the most a fresh token can promise (the token is kept)
    assert error.message == "min_ttl=3601 exceeds what a fresh token can give (3300 s)"
    # And with a token at hand, exactly 3300 s is served, 3301 s refused
    assert env.vend(world.clock, min_ttl=3300).tier == MEMORY
    again = expect(lambda: env.vend(world.clock, min_ttl=3301), InvalidRequest)
    assert again.message == "min_ttl=3301 exceeds what a fresh token can give (3300 s)"
    assert exchanges[0] == 1


def test_without_the_table_a_forced_exchange_waits_the_whole_interval() -> None:
    # Given the table gone (a while after the environment started), and a token reported and
    # replaced
    world, exchanges = counting_world()
    world.clock.t = 1000.0
    env = world.environment("A")
    token = env.vend(world.clock).token.access_token
    world.table.down = True
    start = world.clock.mono()
    token = env.report(world.clock, token).token.access_token
    # When the new one is reported 29.5 s after the first forced exchange started
    world.clock.t = start + INTERVAL - 0.5
    error = expect(lambda: env.report(world.clock, token), RefreshRateLimited)
    # Then it is refused for 1 s; at 30 s it is exchanged
    assert error.retry_after == 1
    assert error.message == (
        "a forced refresh of profile 'default' happened less than 30 s ago and Igni still "
        "rejects its token"
    )
    world.clock.t = start + INTERVAL
    assert env.report(world.clock, token).tier == UPSTREAM
    assert exchanges[0] == 3


# ------------------------------------------------------------------------ more edges


def test_a_token_minted_from_another_secret_version_is_not_served() -> None:
    # Given the shared item holding a token minted from credentials v0; the secret is at v1
    world, exchanges = counting_world()
    now = world.clock.wall()
    old = CachedToken("old-version-token", "Bearer", now, int(now + 3600), "v0")
    world.table.items[KEY] = Record(token=old, token_fingerprint=old.fingerprint)
    # When a caller asks
    vended = world.environment("A").vend(world.clock)
    # Then v1 is exchanged and its token served
    assert vended.tier == UPSTREAM
    assert vended.token.access_token != old.access_token
    assert exchanges[0] == 1


def test_during_a_backoff_a_token_that_ran_out_gets_the_failures_own_error() -> None:
    # Given a token that has run out, and a shared backoff after bad answers
    world, exchanges = counting_world()
    now = world.clock.wall()
    gone = CachedToken("gone", "Bearer", now - 3600, int(now - 1), "v1")
    world.table.items[KEY] = Record(
        token=gone,
        token_fingerprint=gone.fingerprint,
        backoff_until=now + 20.0,
        failures=2,
        failure_code="upstream_bad_response",
    )
    # When a caller asks
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamBadResponse)
    # Then it hears the failure and when the fleet tries again, not "retry at once"
    assert error.retry_after == 20
    assert exchanges[0] == 0


def test_a_stale_token_served_during_a_backoff_is_not_kept_in_memory() -> None:
    # Given a token past its refresh point and a shared backoff; B is served it from the table
    world, exchanges = counting_world()
    env = world.environment("A")
    token = env.vend(world.clock).token
    world.clock.sleep(0.8 * 3600)
    world.http.answers.extend([Answer("raw", status=500, body=b"{}")] * 3)
    failed_over = env.vend(world.clock)
    assert (failed_over.token, failed_over.tier) == (token, DYNAMODB)
    other = world.environment("B")
    assert other.vend(world.clock).token == token
    calls = exchanges[0]
    # When the table goes away
    world.table.down = True
    # Then B, which kept nothing past its refresh point, exchanges on its own
    assert other.vend(world.clock).tier == UPSTREAM
    assert exchanges[0] == calls + 1


def test_a_rejection_of_an_older_version_does_not_hold_back_a_refresh_due() -> None:
    # Given a token past its refresh point, and credentials v0 rejected moments ago
    world, exchanges = counting_world()
    env = world.environment("A")
    token = env.vend(world.clock).token
    world.clock.sleep(0.8 * 3600)
    now = world.clock.wall()
    world.table.items[KEY] = dataclasses.replace(
        world.table.items[KEY], auth_failed_until=now + 50.0, auth_failed_version="v0"
    )
    # When a caller asks
    vended = world.environment("B").vend(world.clock)
    # Then the token is refreshed with v1, not served stale
    assert vended.tier == UPSTREAM
    assert vended.token != token
    assert exchanges[0] == 2


def test_a_report_of_a_token_never_vended_is_told_to_use_get() -> None:
    # Given a shared token
    world, _ = counting_world()
    env = world.environment("A")
    env.vend(world.clock)
    # When / Then another token is reported
    error = expect(lambda: env.report(world.clock, "junk"), UnknownToken)
    assert error.message == (
        "the reported token is not one this service vended for profile 'default' (or it was "
        "replaced too long ago): get the current token with GET instead"
    )


def test_a_failed_forced_refresh_is_logged_as_failing_while_the_token_still_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a shared token, and Igni failing
    world, _ = counting_world()
    env = world.environment("A")
    token = env.vend(world.clock).token.access_token
    world.http.answers.extend([Answer("raw", status=500, body=b"{}")] * 3)
    # When its holder reports it, and the forced refresh fails
    expect(lambda: env.report(world.clock, token), UpstreamUnavailable)
    # Then the failure is logged as one while the reported token still serves the fleet
    failures = [r for r in caplog.records if r.getMessage() == "token refresh failed"]
    assert [getattr(r, "still_vending", None) for r in failures] == [True]


def test_an_undecryptable_token_is_a_miss_logged_with_its_profile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a shared item whose token cannot be decrypted (another key, a copied item)
    world, exchanges = counting_world()
    now = world.clock.wall()
    sealed = CachedToken("", "Bearer", now, int(now + 3600), "v1")
    world.table.items[KEY] = Record(token=sealed, token_fingerprint="f" * 12)
    world.table.sealed[KEY] = (b"not a ciphertext", "kms")
    # When a caller asks
    vended = world.environment("A").vend(world.clock)
    # Then a new token is exchanged, and the miss is logged with the profile it concerns
    assert vended.tier == UPSTREAM
    assert exchanges[0] == 1
    misses = [r for r in caplog.records if "could not be decrypted" in r.getMessage()]
    assert misses
    assert {getattr(r, "profile", None) for r in misses} == {"default"}


def test_each_token_vended_is_counted_by_profile_and_tier(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an environment that vends a token, then vends it again from memory
    world, _ = counting_world()
    env = world.environment("A")
    capsys.readouterr()
    env.vend(world.clock)
    env.vend(world.clock)
    # When the metrics it printed (EMF, one JSON object a line) are read
    counted = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{") and '"TokensVended"' in line:
            metric = json.loads(line)
            counted.append((metric["profile"], metric["tier"]))
    # Then each answer was counted once, with its profile and tier
    assert counted == [("default", UPSTREAM), ("default", MEMORY)]


def test_the_answer_body_tells_the_whole_seconds_left_and_never_less_than_zero() -> None:
    # Given a token expiring at a whole second
    token = CachedToken("tok", "Bearer", 1000.0, 4600, "v1")
    vended = Vended(token=token, tier=MEMORY)
    # When / Then the body tells the token, its type, the whole seconds left and the expiry
    assert vended.body(1000.4) == {
        "access_token": "tok",
        "token_type": "Bearer",
        "expires_in": 3599,
        "expires_at": 4600,
    }
    assert vended.body(4600.0)["expires_in"] == 0
    assert vended.body(4700.0)["expires_in"] == 0
