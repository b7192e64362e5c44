"""Plain regression tests for the holes the invariants are about, one upstream answer or fault at a
time, in the same world as the model (tests/invariants/world.py): real service, lease, cipher
and Igni client; an injected clock; a hostile Igni and flaky AWS.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.invariants.world import (
    CONFIG,
    KEY,
    METHODS_POST_ONLY,
    TOKEN_URL,
    Answer,
    World,
)
from token_vendor.config import CLIENT_SECRET_BASIC
from token_vendor.errors import (
    RefreshRateLimited,
    UnknownToken,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamUnavailable,
    VendorError,
)
from token_vendor.igni.answers import retry_after_seconds
from token_vendor.igni.client import IgniClient
from token_vendor.models import Credentials
from token_vendor.vending.freshness import vend_margin

NOW = 1_800_000_000.0


def stale_but_vendable(world: World, lifetime: int) -> Any:
    """An environment whose token (shared in the table) is past its refresh point."""
    world.http.lifetime = lifetime
    env = world.environment("A")
    vended = env.vend(world.clock)
    world.clock.sleep(0.8 * lifetime)
    return env, vended.token.access_token


def failing(status: int, retry_after: str | None = None, delay: float = 0.0) -> Answer:
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return Answer("raw", status=status, body=b"{}", headers=headers, delay=delay)


def expect(call: Callable[[], Any], error: type[VendorError]) -> VendorError:
    with pytest.raises(error) as raised:
        call()
    assert raised.value.status != 500
    return raised.value


# ------------------------------------------------------------- 1. never an expired token


def test_a_token_that_runs_out_during_a_failing_exchange_is_not_vended() -> None:
    # Given a 20 s token past its refresh point (2 s of vend margin left after 17 s)
    world = World()
    _, _ = stale_but_vendable(world, lifetime=20)
    # And Igni answering 500 after 6.5 s on every attempt
    world.http.answers.extend([failing(500, delay=6.5)] * 3)
    other = world.environment("B")
    # When another environment asks (it takes the lease and exchanges)
    # Then it gets the failure itself, not the token that ran out meanwhile
    error = expect(lambda: other.vend(world.clock), UpstreamUnavailable)
    assert error.retry_after is not None
    # And the lease is free again
    assert world.table.items[KEY].lease_owner is None


def test_a_token_still_vendable_after_a_failing_exchange_is_served() -> None:
    # Given a one-hour token past its refresh point, and Igni failing fast
    world = World()
    _, token = stale_but_vendable(world, lifetime=3600)
    world.http.answers.extend([failing(500)] * 3)
    # When another environment asks, the failure is absorbed and the token still serves
    vended = world.environment("B").vend(world.clock)
    assert vended.token.access_token == token
    remaining = math.floor(vended.token.expires_at - world.clock.wall())
    assert remaining > vend_margin(vended.token.lifetime, CONFIG.freshness)


# --------------------------------------------------------------- 2. a refresh is not a read


def test_a_refresh_reporting_junk_gets_no_token_and_calls_no_one() -> None:
    # Given a shared token
    world = World()
    token = world.environment("A").vend(world.clock).token.access_token
    attempts = world.http.attempts
    # When a caller allowed only the refresh route reports junk
    error = expect(lambda: world.environment("B").report(world.clock, "junk"), UnknownToken)
    # Then 409 unknown_token, no token in the answer, no upstream call
    assert error.status == 409
    assert token not in error.message
    assert world.http.attempts == attempts


# ------------------------------------------------------- 3 and 4. Retry-After from upstream


@pytest.mark.parametrize(
    "retry_after",
    ["²", "٣", "9" * 400, "315360000", "Fri, 31 Dec 9999 23:59:59 GMT", "-1", "1e9"],
)
def test_any_retry_after_is_bounded_and_a_valid_token_keeps_serving(retry_after: str) -> None:
    # Given a token past its refresh point
    world = World()
    _, token = stale_but_vendable(world, lifetime=3600)
    # When Igni answers 503 with an odd or huge Retry-After
    world.http.answers.extend([failing(503, retry_after)] * 3)
    vended = world.environment("B").vend(world.clock)
    # Then the still-valid token is served, and the fleet's backoff is recorded and bounded
    assert vended.token.access_token == token
    record = world.table.items[KEY]
    ahead = record.backoff_until - world.clock.wall()
    assert 0 < ahead <= CONFIG.refresh_backoff_max_seconds


@pytest.mark.parametrize("retry_after", ["²", "9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_without_a_token_an_odd_retry_after_is_a_503_never_a_500(retry_after: str) -> None:
    world = World()
    world.http.answers.extend([failing(503, retry_after)] * 3)
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamUnavailable)
    assert error.retry_after is not None
    assert error.retry_after <= CONFIG.refresh_backoff_max_seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("120", 60.0),
        ("9" * 400, 60.0),
        ("²", None),
        ("٣", None),
        ("7.5", None),
        ("-7", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Thu, 15 Jan 2027 08:00:30 GMT", 30.0),
        ("Thu, 15 Jan 2027 07:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 60.0),
        ("Thu, 15 Jan 2027 99:99:99 GMT", None),
    ],
)
def test_retry_after_is_ascii_delay_seconds_or_an_http_date_capped(
    value: str | None, seconds: float | None
) -> None:
    # 2027-01-15T08:00:00Z is 1_800_000_000
    assert retry_after_seconds(value, now=NOW, cap=60.0) == seconds


# ------------------------------------------------------------------ 5. any upstream answer


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "abc\\ud800", "token_type": "Bearer", "expires_in": 600}',
        b'{"access_token": "abc\\r\\nX-Injected: 1", "expires_in": 600}',
        b'{"access_token": "t\\u00e9k", "expires_in": 600}',
        b'{"access_token": "tok", "token_type": "Bearer\\u0000", "expires_in": 600}',
    ],
)
def test_a_token_that_is_not_printable_ascii_is_a_502_and_frees_the_lease(body: bytes) -> None:
    # Given a token past its refresh point
    world = World()
    _, token = stale_but_vendable(world, lifetime=3600)
    # When Igni issues a token with a lone surrogate, CR/LF or other non-VSCHAR characters
    world.http.answers.append(Answer("raw", status=200, body=body))
    # Then the still-valid token keeps being served, the lease is free at once and the fleet
    # backs off (nobody waits out the lease)
    assert world.environment("B").vend(world.clock).token.access_token == token
    record = world.table.items[KEY]
    assert record.lease_owner is None
    assert record.backoff_until > world.clock.wall()
    assert record.failure_code == "upstream_bad_response"
    # And without a token at hand the caller gets 502 upstream_bad_response
    fresh = World()
    fresh.http.answers.append(Answer("raw", status=200, body=body))
    error = expect(lambda: fresh.environment("A").vend(fresh.clock), UpstreamBadResponse)
    assert "printable ASCII" in error.message


# ------------------------------------------------------------------ 6. tokens of any size


@pytest.mark.parametrize("size", [5_000, 60_000])
def test_a_large_token_is_encrypted_and_shared(size: int) -> None:
    # Given Igni issuing a large JWT (more than KMS Encrypt's 4,096 bytes)
    world = World()
    world.http.answers.append(Answer("ok", token="x" * size))
    first = world.environment("A").vend(world.clock)
    # When another environment asks
    second = world.environment("B").vend(world.clock)
    # Then it is served from the table: one upstream call, and the item holds no clear text
    assert second.tier == "dynamodb"
    assert second.token.access_token == first.token.access_token
    assert world.http.attempts == 1
    blob, scheme = world.table.sealed[KEY]
    assert scheme == "kms-gcm"
    assert first.token.access_token.encode() not in blob


def test_a_token_over_64_kib_is_a_502_naming_its_size() -> None:
    world = World()
    world.http.answers.append(Answer("ok", token="x" * 70_000))
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamBadResponse)
    # "tok-1" and the 70,000 bytes of padding
    assert "70005 bytes" in error.message


# ------------------------------------------------- 8. the forced-refresh limit without a table


def test_without_the_table_one_forced_exchange_per_interval() -> None:
    # Given an environment with a token, and then the table gone
    world = World()
    env = world.environment("A")
    token = env.vend(world.clock).token.access_token
    world.table.down = True
    attempts = world.http.attempts
    # When its caller reports, ten times, the token it just got
    outcomes: list[int | None] = []
    for _ in range(10):
        try:
            token = env.report(world.clock, token).token.access_token
            outcomes.append(200)
        except RefreshRateLimited as limited:
            outcomes.append(limited.retry_after)
    # Then Igni was called once; the other reports were told when to come back
    assert world.http.attempts - attempts == 1
    assert outcomes == [200] + [CONFIG.forced_refresh_interval_seconds] * 9
    # And once the interval has passed, a report is exchanged again
    world.clock.sleep(CONFIG.forced_refresh_interval_seconds)
    env.report(world.clock, token)
    assert world.http.attempts - attempts == 2


# ------------------------------------------------- 9. Retry-After of rejected credentials


def test_waiting_the_retry_after_of_rejected_credentials_reaches_igni() -> None:
    # Given Igni rejects the credentials and says Retry-After: 56
    world = World()
    rejected = Answer(
        "raw", status=401, body=b'{"error": "invalid_client"}', headers=(("Retry-After", "56"),)
    )
    world.http.answers.append(rejected)
    env = world.environment("A")
    error = expect(lambda: env.vend(world.clock), UpstreamAuthFailed)
    # Then the Retry-After covers the whole memory of the rejection
    assert error.retry_after is not None
    assert error.retry_after >= CONFIG.auth_failure_cache_seconds
    # And a remembered answer says no less than what is left of it
    world.clock.sleep(10.3)
    remembered = expect(lambda: world.environment("B").vend(world.clock), UpstreamAuthFailed)
    assert remembered.retry_after is not None
    assert remembered.retry_after >= CONFIG.auth_failure_cache_seconds - 10.3
    # When the caller waits that long, Igni is asked again (and now accepts)
    world.clock.sleep(remembered.retry_after)
    attempts = world.http.attempts
    assert env.vend(world.clock).tier == "upstream"
    assert world.http.attempts == attempts + 1


# ------------------------------------------------ 10. which client authentication is wanted


def test_a_server_naming_its_methods_gets_a_message_naming_the_setting() -> None:
    # Given a server that accepts client_secret_post only, and a profile sending HTTP Basic
    world = World()
    world.http.answers.append(Answer("raw", status=400, body=METHODS_POST_ONLY))
    igni = IgniClient(world.http, clock=world.clock.mono, wall=world.clock.wall)  # type: ignore[arg-type]
    credentials = Credentials("vendor", "s3cr3t-value", None, "v1")
    # When the exchange is refused
    with pytest.raises(UpstreamAuthFailed) as refused:
        igni.exchange(
            TOKEN_URL,
            credentials.client_id,
            credentials.client_secret,
            deadline=world.clock.mono() + 10,
            auth_method=CLIENT_SECRET_BASIC,
        )
    # Then the message names the method to set, not a wrong secret
    message = refused.value.message
    assert "IGNI_TOKEN_ENDPOINT_AUTH_METHOD=client_secret_post" in message
    assert "check client_id" not in message
    # And the server's own words go to the log line only, sanitized
    assert refused.value.detail is not None
    assert "cannot authenticate with methods" in refused.value.detail
    assert "cannot authenticate" not in message


def test_a_servers_text_is_printable_and_bounded_in_the_log_detail() -> None:
    world = World()
    hostile = b'{"error": "invalid_client", "error_description": "\\u001b[31mx\\r\\n' + (
        b"A" * 5000 + b'"}'
    )
    world.http.answers.append(Answer("raw", status=401, body=hostile))
    error = expect(lambda: world.environment("A").vend(world.clock), UpstreamAuthFailed)
    assert error.detail is not None
    assert len(error.detail) <= 250
    assert all(" " <= char <= "~" for char in error.detail)


# ------------------------------------------------------- a body dripped past the deadline


class _Drip:
    """A body that yields one byte per `pause` seconds of the world's clock."""

    def __init__(self, world: World, pause: float) -> None:
        self._world = world
        self._pause = pause

    def read1(self, amount: int = -1) -> bytes:
        self._world.clock.sleep(self._pause)
        return b"{"

    def read(self, amount: int = -1) -> bytes:
        return self.read1(amount)

    def close(self) -> None:
        pass


class _DrippingHttp:
    def __init__(self, world: World) -> None:
        self.world = world

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        import urllib3

        return urllib3.HTTPResponse(
            body=_Drip(self.world, pause=5.0), status=200, preload_content=False
        )


def test_a_body_dripped_slower_than_the_deadline_is_cut_at_the_deadline() -> None:
    # Given a server that answers 200 and then drips its body, a byte every 5 s (each socket
    # read well within the read timeout)
    world = World()
    igni = IgniClient(
        _DrippingHttp(world),  # type: ignore[arg-type]
        max_attempts=1,
        clock=world.clock.mono,
        wall=world.clock.wall,
        sleep=world.clock.sleep,
    )
    # When the exchange has 12 s
    with pytest.raises(UpstreamUnavailable, match="timeout"):
        igni.exchange(TOKEN_URL, "id", "secret", deadline=world.clock.mono() + 12)
    # Then it gives up at the deadline, not when the body ends
    assert world.clock.mono() <= 12 + 5


def test_the_cold_path_never_imports_cryptography() -> None:
    # Given a fresh interpreter
    # When the API function's handler is imported and a small token sealed and opened
    code = (
        "import sys; import token_vendor.functions.api; "
        "from tests.invariants.world import HostileKms, Faults; from tests.fakes import Clock; "
        "from token_vendor.aws.token_cipher import TokenCipher; "
        "c = TokenCipher(HostileKms(Faults(Clock(), 1.0)), 'k'); "
        "blob, scheme = c.encrypt('t' * 4096, 'key'); assert c.decrypt(blob, scheme, 'key'); "
        "print(scheme, 'cryptography' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    # Then KMS encrypted it itself, and cryptography (arm64-only in the artifact) was not loaded
    assert done.stdout.split() == ["kms", "False"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b'{"error": "invalid_request", "error_description": "Missing parameter: client_id"}'),
        (401, b'{"error": "invalid_client", "message": "client_secret is required"}'),
        (400, b'{"error": "invalid_client", "error_description": "no client_id in the request"}'),
    ],
)
def test_a_basic_request_refused_for_lacking_form_fields_names_client_secret_post(
    status: int, body: bytes
) -> None:
    # Given a server that wants the id and secret in the form, and a profile sending HTTP Basic
    world = World()
    world.http.answers.append(Answer("raw", status=status, body=body))
    igni = IgniClient(world.http, clock=world.clock.mono, wall=world.clock.wall)  # type: ignore[arg-type]
    # When the exchange is refused
    with pytest.raises(UpstreamAuthFailed) as refused:
        igni.exchange(
            TOKEN_URL,
            "id",
            "secret",
            deadline=world.clock.mono() + 10,
            auth_method="client_secret_basic",
        )
    # Then the message says which method to set
    assert "IGNI_TOKEN_ENDPOINT_AUTH_METHOD=client_secret_post" in refused.value.message
