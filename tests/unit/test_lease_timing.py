"""The lease's timing promises, on the injected clock: a lease never outlives its invocation,
an exchange ends before a second holder may start, a waiter answers a clean 503 before the
deadline, and the polling pace. Each test pins a boundary that a one-character change to
lease.py would move (make mutate; tests/mutation-equivalents.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.fakes import Clock, FakeTable
from token_vendor.errors import UpstreamUnavailable
from token_vendor.models import CachedToken, Record
from token_vendor.vending.exchange import MIN_EXCHANGE_SECONDS
from token_vendor.vending.lease import COMMIT_RESERVE_SECONDS, Lease, Serve, Take, Taken

KEY = "token#timing"
LEASE_SECONDS = 15.0
START = 100.0


def token(name: str, clock: Clock) -> CachedToken:
    now = clock.wall()
    return CachedToken(name, "Bearer", now, int(now + 3600), "v1")


def make_lease(
    table: Any, clock: Clock, *, jitter: float = 0.0, sleeps: list[float] | None = None
) -> Lease:
    def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)
        clock.sleep(seconds)

    return Lease(
        table,
        lease_seconds=LEASE_SECONDS,
        owner_id="me",
        wall=clock.wall,
        monotonic=clock.mono,
        sleep=sleep,
        jitter=lambda: jitter,
    )


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.t = START
    return clock


def held_elsewhere(table: FakeTable, clock: Clock, *, until: float = 1e12) -> Record:
    """An item whose token another environment ("other") is refreshing."""
    current = token("tok-1", clock)
    record = Record(
        token=current,
        token_fingerprint=current.fingerprint,
        lease_owner="other",
        lease_until=until,
    )
    table.items[KEY] = record
    return record


def always_take(record: Record | None, now: float) -> Take:
    return Take(seen=record.token_fingerprint if record is not None else None)


# ----------------------------------------------------------------------- the lease window


def test_the_timing_constants_are_one_second_to_exchange_and_half_a_second_to_commit() -> None:
    # Given / When / Then the documented values (docs/architecture: 503 below 1.5 s left)
    assert MIN_EXCHANGE_SECONDS == 1.0
    assert COMMIT_RESERVE_SECONDS == 0.5


def test_a_lease_taken_with_little_time_left_ends_at_the_invocations_deadline(
    clock: Clock,
) -> None:
    # Given an invocation with 3 s left, and a 15 s lease configured
    lease = make_lease(FakeTable(), clock)
    # When a lease is sized
    # Then it lasts the 3 s left, not the configured 15 s (it never outlives the invocation)
    assert lease.window(START + 3.0) == 3.0


def test_a_lease_with_time_to_spare_lasts_the_configured_length(clock: Clock) -> None:
    # Given an invocation with 25 s left
    lease = make_lease(FakeTable(), clock)
    # When / Then the lease is the configured 15 s
    assert lease.window(START + 25.0) == LEASE_SECONDS


def test_exactly_the_exchange_and_commit_minimum_left_is_still_enough(clock: Clock) -> None:
    # Given exactly MIN_EXCHANGE_SECONDS + COMMIT_RESERVE_SECONDS (1.5 s) left
    lease = make_lease(FakeTable(), clock)
    # When / Then the lease is taken for those 1.5 s
    assert lease.window(START + 1.5) == 1.5


@pytest.mark.parametrize("left", [1.49, 1.0, 0.6, 0.0, -5.0])
def test_less_than_one_and_a_half_seconds_left_is_a_503_to_retry_in_one_second(
    clock: Clock, left: float
) -> None:
    # Given less than 1.5 s left (1 s to exchange, 0.5 s to commit)
    lease = make_lease(FakeTable(), clock)
    # When a lease is sized
    # Then no lease: a 503 that says why, with Retry-After 1
    with pytest.raises(UpstreamUnavailable) as raised:
        lease.window(START + left)
    assert raised.value.message == "too little time left to refresh the token"
    assert raised.value.retry_after == 1


def test_an_exchange_ends_half_a_second_before_its_lease_does(clock: Clock) -> None:
    # Given a lease of 5 s just taken, in an invocation with 25 s left
    lease = make_lease(FakeTable(), clock)
    # When the exchange's deadline is set
    # Then it is 0.5 s before the lease ends: the commit lands before a second holder may start
    assert lease.exchange_deadline(START + 25.0, 5.0) == START + 4.5


def test_an_exchange_never_runs_past_the_invocations_deadline(clock: Clock) -> None:
    # Given a 15 s lease and only 2 s left in the invocation
    lease = make_lease(FakeTable(), clock)
    # When / Then the exchange ends at the invocation's deadline
    assert lease.exchange_deadline(START + 2.0, LEASE_SECONDS) == START + 2.0


def test_the_lease_written_to_the_item_ends_within_the_deadline(clock: Clock) -> None:
    # Given an empty item and an invocation with 4 s left
    table = FakeTable()
    lease = make_lease(table, clock)
    # When the lease is taken
    outcome = lease.settle(KEY, None, deadline=START + 4.0, decide=always_take)
    # Then the item's lease ends 4 s from now (wall clock), and the holder knows its window
    assert isinstance(outcome, Taken)
    assert outcome.window == 4.0
    assert table.items[KEY].lease_until == clock.wall() + 4.0
    assert table.items[KEY].lease_owner == "me"


# ---------------------------------------------------------------------------- waiting


def test_a_waiter_polls_every_50_to_200_ms_by_its_jitter(clock: Clock) -> None:
    # Given an item another environment holds the lease of, and waiters with fixed jitter
    for jitter, pause in [(0.0, 0.05), (1.0, 0.2), (0.5, 0.05 + 0.15 * 0.5)]:
        table = FakeTable()
        held_elsewhere(table, clock)
        sleeps: list[float] = []
        lease = make_lease(table, clock, jitter=jitter, sleeps=sleeps)
        # When one waits with 2 s left
        with pytest.raises(UpstreamUnavailable):
            lease.settle(KEY, table.items[KEY], deadline=clock.mono() + 2.0, decide=always_take)
        # Then every pause is 0.05 s + 0.15 s x jitter
        assert sleeps
        assert sleeps == [pytest.approx(pause)] * len(sleeps)


def test_a_waiter_gives_up_with_a_clean_503_before_the_deadline(clock: Clock) -> None:
    # Given a lease held elsewhere that never ends, and 1 s left
    table = FakeTable()
    held_elsewhere(table, clock)
    lease = make_lease(table, clock, jitter=0.0)
    deadline = clock.mono() + 1.0
    # When this environment waits for it
    with pytest.raises(UpstreamUnavailable) as raised:
        lease.settle(KEY, table.items[KEY], deadline=deadline, decide=always_take)
    # Then it gives up while a pause and 0.2 s are still left (never sleeping past the deadline),
    # polling as long as that much is left, with a 503 to retry in 1 s
    assert clock.mono() + 0.05 + 0.2 > deadline
    assert clock.mono() + 0.05 + 0.2 - 0.05 <= deadline + 1e-9
    assert raised.value.retry_after == 1
    assert raised.value.message == (
        "timed out waiting for another execution environment to refresh the token"
    )


def test_a_waiter_with_exactly_a_pause_and_the_reserve_left_polls_once_more(
    clock: Clock,
) -> None:
    # Given a lease held elsewhere, and exactly one pause (0.05 s) plus 0.2 s left
    table = FakeTable()
    held_elsewhere(table, clock)
    sleeps: list[float] = []
    lease = make_lease(table, clock, jitter=0.0, sleeps=sleeps)
    deadline = clock.mono() + (0.05 + 0.15 * 0.0) + 0.2
    # When it waits
    with pytest.raises(UpstreamUnavailable):
        lease.settle(KEY, table.items[KEY], deadline=deadline, decide=always_take)
    # Then it still polled once (the limit is "more than the time left", not "as much")
    assert sleeps == [0.05]


def test_a_waiter_with_less_than_the_reserve_left_does_not_sleep(clock: Clock) -> None:
    # Given a lease held elsewhere, and 0.24 s left (less than a pause and 0.2 s)
    table = FakeTable()
    held_elsewhere(table, clock)
    sleeps: list[float] = []
    lease = make_lease(table, clock, jitter=0.0, sleeps=sleeps)
    # When it waits
    with pytest.raises(UpstreamUnavailable):
        lease.settle(KEY, table.items[KEY], deadline=clock.mono() + 0.24, decide=always_take)
    # Then it answers at once, without sleeping
    assert sleeps == []


def test_an_item_deleted_while_waiting_is_refreshed_from_scratch(clock: Clock) -> None:
    # Given a lease held elsewhere, and the item deleted (TTL, or an operator) while we wait
    table = FakeTable()
    held = held_elsewhere(table, clock)
    table.before_reads.append(lambda: table.items.pop(KEY))
    seen: list[Record | None] = []

    def decide(record: Record | None, now: float) -> Take:
        seen.append(record)
        return always_take(record, now)

    lease = make_lease(table, clock)
    # When this environment waits
    outcome = lease.settle(KEY, held, deadline=clock.mono() + 10.0, decide=decide)
    # Then it re-decides on "no item" and takes the lease on an empty item
    assert seen == [held, None]
    assert isinstance(outcome, Taken)
    assert outcome.record is None
    assert table.items[KEY].lease_owner == "me"


@pytest.mark.parametrize("change", ["commit", "fail", "expire", "takeover"])
def test_a_waiter_redecides_only_when_the_item_changed(clock: Clock, change: str) -> None:
    # Given a lease held elsewhere that is unchanged for 3 polls, then changes
    table = FakeTable()
    held = held_elsewhere(table, clock)
    fresh = token("tok-2", clock)
    changed = {
        "commit": Record(token=fresh, token_fingerprint=fresh.fingerprint),
        "fail": dataclasses.replace(held, lease_owner=None, lease_until=0.0, backoff_until=1.0),
        "expire": dataclasses.replace(held, lease_until=clock.wall() - 1.0),
        "takeover": dataclasses.replace(held, lease_owner="third"),
    }[change]
    table.before_reads.extend([None, None, None, lambda: table.items.__setitem__(KEY, changed)])
    views: list[Record | None] = []

    def decide(record: Record | None, now: float) -> Serve | Take:
        views.append(record)
        if record is not None and record.token_fingerprint == fresh.fingerprint:
            return Serve(fresh)
        if record is not None and record.lease_owner == "third":
            return Serve(held.token)  # type: ignore[arg-type]
        return always_take(record, now)

    lease = make_lease(table, clock)
    # When this environment waits
    lease.settle(KEY, held, deadline=clock.mono() + 10.0, decide=decide)
    # Then the policy was asked on the first view and on the changed one only
    assert len(views) == 2
    assert table.reads == 4


def test_a_token_served_while_another_refreshes_is_not_marked_fresh(clock: Clock) -> None:
    # Given a lease held elsewhere and a stale but vendable token
    table = FakeTable()
    held = held_elsewhere(table, clock)
    assert held.token is not None
    lease = make_lease(table, clock)

    def decide(record: Record | None, now: float) -> Take:
        return Take(seen=held.token_fingerprint, stale=held.token)

    # When this environment settles
    outcome = lease.settle(KEY, held, deadline=clock.mono() + 10.0, decide=decide)
    # Then it serves the stale token at once, marked not fresh (not kept in memory), no wait
    assert outcome == Serve(held.token, fresh=False)
    assert table.reads == 0


def test_the_lease_is_fenced_on_the_token_judged(clock: Clock) -> None:
    # Given an item with a token, not leased
    table = FakeTable()
    current = token("tok-1", clock)
    record = Record(token=current, token_fingerprint=current.fingerprint)
    table.items[KEY] = record
    lease = make_lease(table, clock)
    # When the policy asks to replace that token
    outcome = lease.settle(KEY, record, deadline=clock.mono() + 10.0, decide=always_take)
    # Then the lease is taken on it (the write names the token it judged)
    assert isinstance(outcome, Taken)
    assert outcome.record == record


def test_a_lost_race_decides_on_the_writes_answer_without_another_read(clock: Clock) -> None:
    # Given an item read free, then leased by another environment before our write
    table = FakeTable()
    current = token("tok-1", clock)
    record = Record(token=current, token_fingerprint=current.fingerprint)
    table.items[KEY] = dataclasses.replace(record, lease_owner="other", lease_until=1e12)
    views: list[Record | None] = []

    def decide(view: Record | None, now: float) -> Take:
        views.append(view)
        return Take(seen=current.fingerprint, stale=current)

    lease = make_lease(table, clock)
    # When this environment tries to take the lease
    outcome = lease.settle(KEY, record, deadline=clock.mono() + 10.0, decide=decide)
    # Then the refused write's answer is the new view: it serves the stale token, with no read
    assert outcome == Serve(current, fresh=False)
    assert views[1] is not None
    assert views[1].lease_owner == "other"
    assert table.reads == 0


# ------------------------------------------------------------------ commit and owner


class RecordingTable:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def commit(self, key: str, **kwargs: Any) -> tuple[bool, None]:
        self.calls.append({"key": key, **kwargs})
        return True, None


def test_a_commit_is_stamped_with_the_wall_clock_and_keeps_the_replaced_fingerprints(
    clock: Clock,
) -> None:
    # Given a lease on an item whose token replaced others
    table = RecordingTable()
    lease = make_lease(table, clock)
    new = token("tok-3", clock)
    replaced = Record(token_fingerprint="fp-2", recent_fingerprints=("fp-1",))
    # When the new token is committed
    lease.commit(KEY, new, replaced=replaced)
    # Then the write carries this owner, the wall clock's now and the succession
    assert table.calls == [
        {"key": KEY, "owner": "me", "token": new, "now": clock.wall(), "recent": ("fp-2", "fp-1")}
    ]


def test_a_renewed_owner_is_a_new_fencing_token() -> None:
    # Given a lease owner restored from a snapshot
    lease = Lease(FakeTable(), lease_seconds=1.0, owner_id="snapshot")  # type: ignore[arg-type]
    # When it renews its owner id
    lease.renew_owner()
    # Then the id is new, and unique to this environment
    assert lease.owner != "snapshot"
    assert len(lease.owner) == 32


def test_a_write_refused_on_a_vanished_item_is_followed_by_a_fresh_read(clock: Clock) -> None:
    # Given a token judged stale, whose item is deleted before our write, and recreated by
    # another environment's commit before we read it again
    table = FakeTable()
    old = token("tok-1", clock)
    new = token("tok-2", clock)
    record = Record(token=old, token_fingerprint=old.fingerprint)
    recreated = Record(token=new, token_fingerprint=new.fingerprint)
    table.before_reads.append(lambda: table.items.__setitem__(KEY, recreated))
    views: list[Record | None] = []

    def decide(view: Record | None, now: float) -> Serve | Take:
        views.append(view)
        if view is not None and view.token_fingerprint == new.fingerprint:
            return Serve(new)
        return always_take(view, now)

    lease = make_lease(table, clock)
    # When this environment tries to take the lease on the token it judged
    outcome = lease.settle(KEY, record, deadline=clock.mono() + 10.0, decide=decide)
    # Then the refused write is followed by a read, and the policy decides on what it found
    assert outcome == Serve(new)
    assert views == [record, recreated]
    assert table.reads == 1


def test_a_lease_released_quietly_is_free_at_once_and_a_table_away_is_no_error(
    clock: Clock,
) -> None:
    # Given a lease this environment took
    table = FakeTable()
    lease = make_lease(table, clock)
    lease.settle(KEY, None, deadline=clock.mono() + 10.0, decide=always_take)
    assert table.items[KEY].lease_owner == "me"
    # When it lets go of it
    lease.release_quietly(KEY)
    # Then the next environment may take it now, not when it expires
    assert table.items[KEY].lease_owner is None
    # And with the table away, letting go raises nothing (the lease expires by itself)
    lease.settle(KEY, table.items[KEY], deadline=clock.mono() + 10.0, decide=always_take)
    table.down = True
    lease.release_quietly(KEY)
    assert table.failed_release == "me"
