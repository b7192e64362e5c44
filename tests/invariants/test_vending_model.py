"""The vending core's promises as invariants, searched by a Hypothesis state machine.

Several execution environments (each its own TokenService, memory tier, secret cache and lease
owner id) share one token table with DynamoDB's conditional-write semantics, one clock the
machine jumps forward, an Igni that answers anything (tests/invariants/upstream.py) and AWS
calls that fail or hang. Real code runs everywhere else: the service, the lease, the freshness
policy, the secret store, the Igni client and its parser, the envelope cipher.

After every step the machine checks what the service promises its callers:

- every 200 carries a token with more than the vend margin (and any min_ttl) left when the
  answer is returned, and a token upstream actually issued;
- no answer is a 500 and no exception escapes, and no call outlasts API Gateway's 29 s;
- with the table reachable, the fleet calls Igni only when no fresh token serves and no backoff
  holds it back: one call per token lifetime plus one per backoff window; forced refreshes at
  most once per FORCED_REFRESH_INTERVAL_SECONDS;
- a caller who waits the Retry-After it was given is not refused by a remembered failure;
- no lease outlives its holder's failure;
- a refresh vends only to a caller that presents a token this service vended;
- no backoff is longer than REFRESH_BACKOFF_MAX_SECONDS, and no token is stored in clear.

CI runs a bounded, derandomized budget (the `ci` profile in conftest.py); `make fuzz` runs the
`fuzz` profile.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.invariants.world import BUDGET_SECONDS, CONFIG, KEY, PROFILE, World, answers
from token_vendor.errors import VendorError
from token_vendor.models import CachedToken
from token_vendor.vending.freshness import is_fresh, is_vendable, vend_margin
from token_vendor.vending.lease import Take

ENVIRONMENTS = 3
API_GATEWAY_SECONDS = 29.0
ALLOWED = {200, 400, 409, 429, 502, 503}
# What a remembered failure answers: refused without asking Igni.
REMEMBERED = {"upstream_auth_failed", "upstream_bad_response", "upstream_unavailable"}


@dataclass
class Request:
    env: int
    kind: str
    min_ttl: int = 0
    exchanges: int = 0


class VendingModel(RuleBasedStateMachine):
    """Environments, one table, one clock, a hostile Igni and flaky AWS."""

    @initialize(seed=st.integers(0, 2**32 - 1), lifetime=st.sampled_from([20, 600, 3600, 172800]))
    def start(self, seed: int, lifetime: int) -> None:
        self.world = World(seed=seed, lifetime=lifetime, on_exchange=self.exchange_starting)
        self.clock = self.world.clock
        self.rng = self.world.rng
        self.faults = self.world.faults
        self.http = self.world.http
        self.table = self.world.table
        self.environments = [self.world.environment(f"env-{i}") for i in range(ENVIRONMENTS)]
        self.held: dict[int, str] = {}
        self.crashed: set[str] = set()
        self.abandoned: set[tuple[str, float]] = set()
        self.forced_alone: dict[str, float] = {}
        self.shared: CachedToken | None = None
        self.vended: set[str] = set()
        self.request: Request | None = None
        self.last_forced_at: float | None = None
        self.last_error: tuple[int, VendorError] | None = None
        # Exchanges started so far; a remembered failure is judged only while none has since
        # (a newer failure may rightly hold the fleet back longer).
        self.exchanges = 0
        self.exchanges_at_error = 0

    # ------------------------------------------------------------------- the world moves

    @rule(answers=st.lists(answers(), min_size=1, max_size=4))
    def igni_will_answer(self, answers: list[Any]) -> None:
        self.http.answers.extend(answers)

    @rule(faults=st.lists(st.sampled_from([None, None, "error", "hang"]), max_size=6))
    def aws_will_fail(self, faults: list[str | None]) -> None:
        self.faults.queue.extend(faults)

    @rule(
        seconds=st.one_of(
            st.floats(min_value=0, max_value=5), st.sampled_from([30.0, 61.0, 900.0, 4000.0])
        )
    )
    def time_passes(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    @rule(lifetime=st.sampled_from([20, 600, 3600, 172800]))
    def igni_changes_lifetimes(self, lifetime: int) -> None:
        self.http.lifetime = lifetime

    @rule(env=st.integers(0, ENVIRONMENTS - 1))
    def a_holder_dies_holding_the_lease(self, env: int) -> None:
        """An environment takes the lease for a refresh and is killed before it commits."""
        lease = self.environments[env].lease
        record = self.table.items.get(KEY)
        try:
            lease.settle(
                KEY,
                record,
                deadline=self.clock.mono() + BUDGET_SECONDS,
                decide=lambda r, now: Take(seen=r.token_fingerprint if r else None),
            )
        except Exception:
            return
        # The environment is gone: a new one takes its place, with its own owner id.
        self.crashed.add(lease.owner)
        self.environments[env] = self.world.environment(f"env-{env}-{len(self.crashed)}")

    # --------------------------------------------------------------------- the callers

    @rule(env=st.integers(0, ENVIRONMENTS - 1), min_ttl=st.sampled_from([0, 0, 0, 10, 500]))
    def get_token(self, env: int, min_ttl: int) -> None:
        self._call(Request(env, "get", min_ttl=min_ttl))

    @rule(env=st.integers(0, ENVIRONMENTS - 1), which=st.sampled_from(["mine", "any", "junk"]))
    def report_rejected(self, env: int, which: str) -> None:
        if which == "junk" or not self.vended:
            token = f"junk-{self.rng.random()}"
        elif which == "mine" and self.held.get(env):
            token = self.held[env]
        else:
            token = self.rng.choice(sorted(self.vended))
        self._call(Request(env, "refresh"), reported=token)

    @precondition(
        lambda self: (
            self.last_error is not None
            and self.last_error[1].code in REMEMBERED
            and self.last_error[1].retry_after is not None
            and self.exchanges == self.exchanges_at_error
        )
    )
    @rule()
    def wait_retry_after_then_ask_again(self) -> None:
        """A caller who waits what it was told is not refused by a remembered failure."""
        assert self.last_error is not None
        env, error = self.last_error
        assert error.retry_after is not None
        self.clock.sleep(error.retry_after)
        self.faults.queue.clear()
        self.http.answers.clear()
        request = Request(env, "get")
        status, refused = self._call(request)
        if status != 200:
            assert request.exchanges > 0, (
                f"waited Retry-After {error.retry_after} s and was refused again without an "
                f"upstream call: {refused}"
            )

    def _call(self, request: Request, reported: str | None = None) -> tuple[int, str]:
        service = self.environments[request.env].service
        started = self.clock.mono()
        before = self.table.items.get(KEY)
        self._forced_at_before = before.forced_at if before is not None else 0.0
        deadline = started + BUDGET_SECONDS
        self.request = request
        self.faults.hit = False
        self.table.failed_release = None
        error: VendorError | None = None
        try:
            if request.kind == "get":
                vended = service.vend(PROFILE, deadline=deadline, min_ttl=request.min_ttl)
            else:
                assert reported is not None
                vended = service.force_refresh(PROFILE, reported, deadline=deadline)
        except VendorError as exc:
            error = exc
        finally:
            self.request = None
        self._after(request, started)
        if error is not None:
            return self._refused(request, error)
        self._check_vendable(vended.token, request.min_ttl)
        assert vended.token.access_token in self.http.minted, "vended a token Igni never issued"
        if reported is not None:
            assert reported in self.vended, "a refresh vended to a caller with an unknown token"
        self.vended.add(vended.token.access_token)
        self.held[request.env] = vended.token.access_token
        if vended.tier == "upstream" and not self.faults.hit:
            self.shared = vended.token
        if request.kind == "get":
            self.last_error = None
        self._trace(request, f"200 {vended.tier}")
        return 200, ""

    def _refused(self, request: Request, error: VendorError) -> tuple[int, str]:
        # An answer made while DynamoDB or KMS failed cannot know the fleet's backoff in the
        # item: its Retry-After is judged only when the shared state was reachable.
        if request.kind == "get" and not self.faults.hit:
            self.last_error = (request.env, error)
            self.exchanges_at_error = self.exchanges
        elif request.kind == "get":
            self.last_error = None
        assert error.status != 500, f"500 {error.code}: {error.message}"
        assert error.status in ALLOWED, (error.status, error.code)
        if error.status in (429, 503):
            assert error.retry_after is not None
            assert error.retry_after >= 1
        self._trace(request, f"{error.status} {error.code} ra={error.retry_after} {error.message}")
        return error.status, f"{error.code}: {error.message}"

    def _trace(self, request: Request, outcome: str) -> None:
        if os.environ.get("MODEL_TRACE"):
            record = self.table.items.get(KEY)
            print(
                f"t={self.clock.mono():.2f} {request} -> {outcome} | backoff="
                f"{(record.backoff_until - self.clock.wall()) if record else None} "
                f"auth={(record.auth_failed_until - self.clock.wall()) if record else None}"
            )

    def _after(self, request: Request, started: float) -> None:
        elapsed = self.clock.mono() - started
        assert elapsed <= API_GATEWAY_SECONDS, f"the call took {elapsed:.1f} s"
        record = self.table.items.get(KEY)
        owner = self.environments[request.env].lease.owner
        if record is not None and record.lease_held(self.clock.wall()):
            # Unless the table refused the release too: then the lease expires by itself.
            if self.table.failed_release == owner:
                self.abandoned.add((owner, record.lease_until))
            assert record.lease_owner != owner or (owner, record.lease_until) in self.abandoned, (
                "the lease outlived its holder's answer"
            )

    def _check_vendable(self, token: CachedToken, min_ttl: int) -> None:
        remaining = math.floor(token.expires_at - self.clock.wall())
        margin = vend_margin(token.lifetime, CONFIG.freshness)
        assert remaining > margin, f"vended with {remaining} s left (margin {margin:.0f} s)"
        assert remaining >= min_ttl

    # ------------------------------------------------------------------- the accounting

    def exchange_starting(self) -> None:
        """Called as an exchange starts: with the table reachable, it must be needed."""
        request = self.request
        assert request is not None, "an exchange outside any request"
        request.exchanges += 1
        self.exchanges += 1
        now = self.clock.wall()
        interval = CONFIG.forced_refresh_interval_seconds
        if self.faults.hit:
            # DynamoDB or KMS failed in this request: each environment answers on its own, and
            # keeps the forced-refresh limit by itself.
            if request.kind == "refresh":
                # Per environment (a replaced one, with its new owner id, starts afresh).
                owner = self.environments[request.env].lease.owner
                last = self.forced_alone.get(owner)
                assert last is None or now - last >= interval, (
                    f"two forced exchanges {now - last:.1f} s apart without the table"
                )
                self.forced_alone[owner] = now
            return
        record = self.table.items.get(KEY)
        forced = request.kind == "refresh" and record is not None
        if forced and record is not None and record.forced_at > self._forced_at_before:
            # A forced refresh: the fleet makes at most one per interval.
            if self.last_forced_at is not None:
                gap = record.forced_at - self.last_forced_at
                assert gap >= interval, f"two forced exchanges {gap:.1f} s apart"
            self.last_forced_at = record.forced_at
            return
        # The last token an exchange made while the table answered is shared: while it is
        # fresh (and can give what is asked), nobody in the fleet has a reason to call Igni.
        shared = self.shared
        assert shared is None or not (
            is_fresh(shared, now, CONFIG.freshness)
            and is_vendable(shared, now, CONFIG.freshness, request.min_ttl)
        ), "Igni called while a token exchanged earlier was still fresh: it was not shared"
        if record is None:
            return
        assert record.backoff_until <= now, (
            f"Igni called during the fleet's backoff ({record.backoff_until - now:.1f} s left)"
        )
        token = record.token
        if token is not None and not record.undecryptable:
            needed = not is_fresh(token, now, CONFIG.freshness) or not is_vendable(
                token, now, CONFIG.freshness, request.min_ttl
            )
            assert needed, "Igni called while a fresh token served"

    @invariant()
    def no_backoff_beyond_the_maximum(self) -> None:
        if not hasattr(self, "table"):
            return
        record = self.table.items.get(KEY)
        if record is not None:
            ahead = record.backoff_until - self.clock.wall()
            assert ahead <= CONFIG.refresh_backoff_max_seconds + 1e-6, f"backoff {ahead:.0f} s"

    @invariant()
    def no_token_in_clear_in_the_table(self) -> None:
        if not hasattr(self, "table"):
            return
        for blob, _ in self.table.sealed.values():
            for token in self.http.minted[-5:]:
                if len(token) >= 8:
                    assert token.encode() not in blob, "a token stored in clear"


TestVendingModel = VendingModel.TestCase
TestVendingModel.settings = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
