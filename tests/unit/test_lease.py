"""The lease state machine, driven fast: an in-memory item, an injected clock, fake upstreams.

The integration tests (test_single_flight, test_fleet) play the same protocol against the moto
server with real processes; these replay its corners (expiry, takeover, fencing, backoff, the
forced-refresh rate limit, the re-check pause) in milliseconds, with time coming from the
clock the service and the lease are given, never from sleeps.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from typing import Any

import pytest

from tests.fakes import Clock, FakeTable
from token_vendor.aws.secret_store import SecretStore
from token_vendor.config import Config, Profile
from token_vendor.errors import (
    RefreshRateLimited,
    UnknownToken,
    UpstreamBadResponse,
    UpstreamUnavailable,
    VendorError,
)
from token_vendor.models import CachedToken, cache_key, fingerprint
from token_vendor.observability import Telemetry
from token_vendor.vending.answers import DYNAMODB, MEMORY, UPSTREAM
from token_vendor.vending.lease import Lease, Take
from token_vendor.vending.memory import MemoryTier
from token_vendor.vending.service import TokenService
from token_vendor.vending.versions import SecretVersions

LIFETIME = 3600
LEASE_SECONDS = 5.0
PROFILE = Profile(name="default", secret_id="igni/test")
KEY = cache_key(PROFILE)


class FakeSecretsManager:
    """get_secret_value as botocore answers it, always version v1."""

    def get_secret_value(self, **_: Any) -> dict[str, str]:
        value = {"client_id": "id", "client_secret": "secret", "workspace": "test"}
        return {"SecretString": json.dumps(value), "VersionId": "v1"}


class FakeExchange:
    """Mints tok-1, tok-2, ... (or raises what is queued), counting the calls."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls = 0
        self.failures: deque[VendorError] = deque()

    def __call__(self, profile: Profile, deadline: float) -> tuple[CachedToken, Any]:
        self.calls += 1
        if self.failures:
            raise self.failures.popleft()
        now = self.clock.wall()
        token = CachedToken(f"tok-{self.calls}", "Bearer", now, int(now + LIFETIME), "v1")
        return token, dataclasses.make_dataclass("C", ["version_id"])("v1")


class Environment:
    """One execution environment: its own memory, lease owner id and service."""

    def __init__(self, name: str, table: FakeTable, clock: Clock, exchange: FakeExchange) -> None:
        config = Config(profiles={"default": PROFILE}, table_name="t", lease_seconds=LEASE_SECONDS)
        telemetry = Telemetry()
        versions = SecretVersions(
            SecretStore(FakeSecretsManager(), cache_seconds=30.0, clock=clock.mono),  # type: ignore[arg-type]
            telemetry,
            pause_seconds=config.recheck_pause_seconds,
            monotonic=clock.mono,
        )
        self.lease = Lease(
            table,  # type: ignore[arg-type]
            lease_seconds=LEASE_SECONDS,
            owner_id=name,
            wall=clock.wall,
            monotonic=clock.mono,
            sleep=clock.sleep,
            jitter=lambda: 0.5,
        )
        self.clock = clock
        self.service = TokenService(
            config,
            versions=versions,
            exchange=exchange,  # type: ignore[arg-type]
            table=table,  # type: ignore[arg-type]
            lease=self.lease,
            memory=MemoryTier(clock=clock.mono),
            telemetry=telemetry,
            wall=clock.wall,
            monotonic=clock.mono,
            jitter=lambda: 1.0,
        )

    def vend(self, min_ttl: int = 0) -> tuple[str, str]:
        vended = self.service.vend(PROFILE, deadline=self.clock.mono() + 20.0, min_ttl=min_ttl)
        return vended.token.access_token, vended.tier

    def report(self, token: str) -> tuple[str, str]:
        vended = self.service.force_refresh(PROFILE, token, deadline=self.clock.mono() + 20.0)
        return vended.token.access_token, vended.tier


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table() -> FakeTable:
    return FakeTable()


@pytest.fixture
def exchange(clock: Clock) -> FakeExchange:
    return FakeExchange(clock)


@pytest.fixture
def env(table: FakeTable, clock: Clock, exchange: FakeExchange) -> Any:
    def make(name: str) -> Environment:
        return Environment(name, table, clock, exchange)

    return make


def test_one_exchange_then_memory_and_table_serve(env: Any, exchange: FakeExchange) -> None:
    # Given two environments
    a, b = env("A"), env("B")
    # When both ask, twice
    # Then one exchange served all four answers, from each tier in turn
    assert a.vend() == ("tok-1", UPSTREAM)
    assert a.vend() == ("tok-1", MEMORY)
    assert b.vend() == ("tok-1", DYNAMODB)
    assert b.vend() == ("tok-1", MEMORY)
    assert exchange.calls == 1


def test_a_lease_left_by_a_dead_holder_is_taken_over_once_it_expires(
    env: Any, table: FakeTable, clock: Clock, exchange: FakeExchange
) -> None:
    # Given an environment that took the lease and died before committing
    dead = env("dead")
    taken = dead.lease.settle(KEY, None, deadline=20.0, decide=lambda r, now: Take(seen=None))
    assert table.items[KEY].lease_owner == "dead"
    # When another environment asks
    survivor = env("survivor")
    started = clock.mono()
    token, tier = survivor.vend()
    # Then it waited for the lease to expire (no longer), took it over and exchanged once
    waited = clock.mono() - started
    assert taken.window <= waited <= taken.window + 0.5
    assert (token, tier) == ("tok-1", UPSTREAM)
    assert table.items[KEY].lease_owner is None
    assert exchange.calls == 1


def test_a_late_commit_is_fenced_off_and_the_newer_token_kept(
    env: Any, table: FakeTable, clock: Clock, exchange: FakeExchange
) -> None:
    # Given an environment whose lease expired while it was still exchanging
    slow, fast = env("slow"), env("fast")
    taken = slow.lease.settle(KEY, None, deadline=20.0, decide=lambda r, now: Take(seen=None))
    clock.sleep(taken.window + 0.1)
    # And another that took the lease over and committed
    assert fast.vend() == ("tok-1", UPSTREAM)
    # When the slow one's commit arrives
    late = CachedToken("tok-late", "Bearer", clock.wall(), int(clock.wall() + LIFETIME), "v1")
    committed, current = slow.lease.commit(KEY, late, replaced=None)
    # Then it is refused, and the item still holds the newer token
    assert not committed
    assert current is not None
    assert current.token_fingerprint == fingerprint("tok-1")


def test_a_token_past_its_refresh_point_is_served_while_another_refreshes(
    env: Any, table: FakeTable, clock: Clock, exchange: FakeExchange
) -> None:
    # Given a token past its refresh point (80 % of its life gone), and a lease held elsewhere
    a, b = env("A"), env("B")
    a.vend()
    clock.sleep(0.8 * LIFETIME)
    table.items[KEY] = dataclasses.replace(
        table.items[KEY], lease_owner="elsewhere", lease_until=clock.wall() + 5
    )
    # When another environment asks
    # Then it gets the current token at once, without waiting or exchanging
    started = clock.mono()
    assert b.vend() == ("tok-1", DYNAMODB)
    assert clock.mono() == started
    assert exchange.calls == 1


def test_a_failure_sets_a_shared_backoff_with_a_truthful_retry_after_and_a_stable_code(
    env: Any, table: FakeTable, clock: Clock, exchange: FakeExchange
) -> None:
    # Given Igni answering garbage
    a, b = env("A"), env("B")
    exchange.failures.append(UpstreamBadResponse("Igni answered 2xx with a body that is not JSON"))
    # When the first caller asks
    with pytest.raises(UpstreamBadResponse) as first:
        a.vend()
    # Then the backoff is shared, and Retry-After reaches its end
    item = table.items[KEY]
    assert item.failure_code == "upstream_bad_response"
    assert first.value.retry_after is not None
    assert clock.wall() + first.value.retry_after >= item.backoff_until
    # And a caller during the backoff gets the same error kind, told the same instant
    clock.sleep(1.0)
    with pytest.raises(UpstreamBadResponse) as second:
        b.vend()
    assert second.value.retry_after is not None
    assert clock.wall() + second.value.retry_after >= item.backoff_until
    assert exchange.calls == 1
    # When the caller waits as told
    clock.sleep(second.value.retry_after)
    # Then the fleet tries again, and succeeds
    assert b.vend() == ("tok-2", UPSTREAM)
    assert exchange.calls == 2


def test_the_backoff_grows_and_is_capped(
    env: Any, table: FakeTable, clock: Clock, exchange: FakeExchange
) -> None:
    # Given Igni failing every time
    a = env("A")
    waits = []
    for _ in range(8):
        exchange.failures.append(UpstreamUnavailable("Igni answered HTTP 500"))
        with pytest.raises(UpstreamUnavailable) as failed:
            a.vend()
        assert failed.value.retry_after is not None
        waits.append(failed.value.retry_after)
        clock.sleep(failed.value.retry_after)
    # Then each failure doubles the wait (jitter at its maximum here), up to the cap
    assert waits == [2, 4, 8, 16, 32, 60, 60, 60]
    assert table.items[KEY].failures == 8


def test_a_forced_refresh_is_rate_limited_per_credential_set(
    env: Any, clock: Clock, exchange: FakeExchange
) -> None:
    # Given a token reported once and replaced
    a = env("A")
    first, _ = a.vend()
    second, tier = a.report(first)
    assert (second, tier) == ("tok-2", UPSTREAM)
    # When the replacement is reported 10 s later
    clock.sleep(10)
    # Then the report is refused until 30 s after the first one
    with pytest.raises(RefreshRateLimited) as limited:
        a.report(second)
    assert limited.value.retry_after == 20
    # And honoured after that
    clock.sleep(20)
    assert a.report(second) == ("tok-3", UPSTREAM)


def test_a_failed_forced_refresh_leaves_the_token_to_everyone_else(
    env: Any, table: FakeTable, exchange: FakeExchange
) -> None:
    # Given a shared token, and Igni failing
    a, b = env("A"), env("B")
    token, _ = a.vend()
    exchange.failures.append(UpstreamUnavailable("Igni answered HTTP 500"))
    # When a caller reports it, the reporter gets the error
    with pytest.raises(UpstreamUnavailable):
        a.report(token)
    # Then the token is still in the item and served to the others
    assert table.items[KEY].token_fingerprint == fingerprint(token)
    assert b.vend() == (token, DYNAMODB)


def test_reports_made_while_a_forced_refresh_runs_wait_for_its_token(
    env: Any, table: FakeTable, clock: Clock, exchange: FakeExchange
) -> None:
    # Given a shared token, and one environment that took the forced-refresh lease for it
    a, b = env("A"), env("B")
    token, _ = a.vend()
    reported = table.items[KEY]
    taken = a.lease.settle(
        KEY,
        reported,
        deadline=20.0,
        decide=lambda r, now: Take(seen=reported.token_fingerprint, forced_floor=now - 30),
    )
    # And that environment commits its new token once the other one has seen the lease
    fresh = CachedToken("tok-new", "Bearer", clock.wall(), int(clock.wall() + LIFETIME), "v1")
    table.before_reads.extend([None, lambda: a.lease.commit(KEY, fresh, replaced=reported)])
    # When the other environment reports the same token (the forced refresh is under way)
    # Then it is not refused by the rate limit: it waits, and gets the replacement
    assert b.report(token) == ("tok-new", DYNAMODB)
    assert taken.window > 0
    assert exchange.calls == 1


def test_reporting_a_replaced_token_returns_the_current_one(
    env: Any, clock: Clock, exchange: FakeExchange
) -> None:
    # Given a token that a forced refresh replaced
    a, b = env("A"), env("B")
    old, _ = a.vend()
    clock.sleep(31)
    current, _ = a.report(old)
    assert current != old
    # When another environment's caller reports the replaced token
    # Then it gets the current one, without another exchange
    assert b.report(old) == (current, DYNAMODB)
    assert exchange.calls == 2


def test_reporting_a_token_never_vended_is_refused_without_an_upstream_call(
    env: Any, table: FakeTable, exchange: FakeExchange
) -> None:
    # Given a shared token
    a = env("A")
    a.vend()
    before = table.items[KEY]
    # When a caller reports something this service never vended (a refresh grant used as a read)
    # Then it is refused 409 unknown_token, nothing is exchanged and the item is unchanged
    with pytest.raises(UnknownToken) as refused:
        a.report("junk")
    assert refused.value.status == 409
    assert "tok-1" not in refused.value.message
    assert exchange.calls == 1
    assert table.items[KEY] == before


def test_reporting_any_token_before_one_was_vended_is_refused(
    env: Any, exchange: FakeExchange
) -> None:
    # Given an empty table, a report is not a way to get a first token
    with pytest.raises(UnknownToken):
        env("A").report("anything")
    assert exchange.calls == 0


def test_min_ttl_beyond_the_cached_token_refreshes_it(
    env: Any, clock: Clock, exchange: FakeExchange
) -> None:
    # Given a token with half its life left
    a = env("A")
    a.vend()
    clock.sleep(LIFETIME / 2)
    # When a caller needs more than that
    # Then it gets a fresh token
    assert a.vend(min_ttl=LIFETIME - 600) == ("tok-2", UPSTREAM)


def test_a_failed_table_recheck_serves_memory_and_pauses_the_rechecks(
    env: Any, table: FakeTable, clock: Clock
) -> None:
    # Given a token in memory past the re-validation age
    a = env("A")
    a.vend()
    clock.sleep(31)
    reads = table.reads
    # When the table stops answering
    table.down = True
    # Then the token at hand is served, and the table was tried once
    assert a.vend() == ("tok-1", MEMORY)
    assert table.reads == reads
    # And not again during the pause
    table.down = False
    clock.sleep(5)
    assert a.vend() == ("tok-1", MEMORY)
    assert table.reads == reads
    # And again after it
    clock.sleep(6)
    assert a.vend() == ("tok-1", DYNAMODB)
    assert table.reads == reads + 1
