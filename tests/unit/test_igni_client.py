"""The Igni exchange over real HTTP to the stub process: happy path, retries, deadlines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import urllib3

from local.igni_stub import StubProcess
from token_vendor.errors import (
    ConfigurationError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamUnavailable,
)
from token_vendor.igni import IgniClient, _parse_token

# The longest lifetime believed from Igni: 10 years of 365 days.
TEN_YEARS = 315_360_000


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    log_path = tmp_path_factory.mktemp("igni-client-stub") / "stub.log"
    with StubProcess({"cid": "csecret"}, lifetime=172800, log_path=log_path) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(stub: StubProcess) -> None:
    stub.reset()


def _client(**kw: object) -> IgniClient:
    outcomes: list[str] = []
    client = IgniClient(
        urllib3.PoolManager(retries=False),
        backoff_base=0.01,
        backoff_max=0.05,
        on_attempt=lambda outcome, _ms: outcomes.append(outcome),
        **kw,  # type: ignore[arg-type]
    )
    client.outcomes = outcomes  # type: ignore[attr-defined]
    return client


def _deadline(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def test_the_exchange_follows_the_seed_document(stub: StubProcess) -> None:
    # Given the stub that checks headers, grant type and credentials
    # When the client exchanges valid credentials with a scope
    issued = _client().exchange(
        stub.token_url, "cid", "csecret", deadline=_deadline(), scope="reports:read"
    )
    # Then it gets a Bearer JWT with Igni's 48 h lifetime, and the stub saw the scope
    assert issued.token_type == "Bearer"
    assert issued.expires_in == 172800
    assert issued.access_token.count(".") == 2
    assert [(c["client_id"], c["scope"], c["status"]) for c in stub.calls()] == [
        ("cid", "reports:read", 200)
    ]


def test_invalid_client_is_not_retried(stub: StubProcess) -> None:
    client = _client()
    with pytest.raises(UpstreamAuthFailed, match="invalid_client"):
        client.exchange(stub.token_url, "cid", "wrong", deadline=_deadline())
    assert len(stub.calls()) == 1


@pytest.mark.parametrize(
    "fault", [{"status": 500}, {"status": 503}, {"status": 429}, {"close": True}, {"status": 502}]
)
def test_transient_failures_are_retried_with_backoff(
    stub: StubProcess, fault: dict[str, object]
) -> None:
    # Given one transient failure before a normal answer
    stub.configure(faults=[fault])
    client = _client()
    # When exchanging
    issued = client.exchange(stub.token_url, "cid", "csecret", deadline=_deadline())
    # Then the second attempt succeeds
    assert issued.expires_in == 172800
    assert client.outcomes[-1] == "ok"  # type: ignore[attr-defined]
    assert len(client.outcomes) == 2  # type: ignore[attr-defined]


def test_retry_after_is_honoured_within_the_deadline(stub: StubProcess) -> None:
    stub.configure(faults=[{"status": 429, "retry_after": 1}])
    started = time.monotonic()
    _client().exchange(stub.token_url, "cid", "csecret", deadline=_deadline())
    assert time.monotonic() - started >= 0.95


def test_retry_after_beyond_the_deadline_gives_up_at_once_with_retry_after(
    stub: StubProcess,
) -> None:
    # Given Igni asks for 30 s of patience but only 3 s are left
    stub.configure(faults=[{"status": 503, "retry_after": 30}])
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as caught:
        _client().exchange(stub.token_url, "cid", "csecret", deadline=_deadline(3))
    # Then it does not sleep past the deadline, and passes Igni's Retry-After on
    assert time.monotonic() - started < 1.0
    assert caught.value.retry_after == 30
    assert caught.value.kind == "server_error"


def test_attempts_are_bounded(stub: StubProcess) -> None:
    stub.configure(faults=[{"status": 500}] * 5)
    with pytest.raises(UpstreamUnavailable):
        _client(max_attempts=3).exchange(stub.token_url, "cid", "csecret", deadline=_deadline())
    assert len(stub.calls()) == 3


def test_a_slow_igni_is_cut_by_the_read_timeout(stub: StubProcess) -> None:
    stub.configure(faults=[{"delay_ms": 3000}] * 3)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="timeout"):
        _client(read_timeout=0.3, max_attempts=2).exchange(
            stub.token_url, "cid", "csecret", deadline=_deadline()
        )
    assert time.monotonic() - started < 2.5


def test_the_whole_exchange_fits_in_the_deadline(stub: StubProcess) -> None:
    stub.configure(faults=[{"delay_ms": 5000}] * 3)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        _client().exchange(stub.token_url, "cid", "csecret", deadline=_deadline(1.5))
    assert time.monotonic() - started < 2.0


def test_unreachable_igni_is_unavailable() -> None:
    # Given a port where nothing listens (bound then closed)
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(UpstreamUnavailable, match="connection"):
        _client().exchange(
            f"http://127.0.0.1:{port}/api/v1/oauth2/token", "cid", "s", deadline=_deadline()
        )


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"garbage": True}, "not JSON"),
        ({"status": 200, "body": {"token_type": "Bearer", "expires_in": 60}}, "access_token"),
        ({"status": 200, "body": {"access_token": "x", "expires_in": 0}}, "expires_in"),
        ({"status": 200, "body": {"access_token": "x", "expires_in": "60"}}, "expires_in"),
        ({"status": 200, "body": {"access_token": "x", "expires_in": True}}, "expires_in"),
        ({"status": 200, "body": {"access_token": "x", "expires_in": 10**400}}, "expires_in"),
        ({"status": 200, "body": {"access_token": "x", "expires_in": 10**40}}, "expires_in"),
        ({"status": 200, "body": {"access_token": "x", "expires_in": -1}}, "expires_in"),
        ({"status": 200, "body": {"access_token": "x", "expires_in": 1e400}}, "expires_in"),
        (
            {"status": 200, "body": {"access_token": "x", "expires_in": 60, "token_type": "mac"}},
            "Bearer",
        ),
        ({"status": 200, "body": ["x"]}, "not an object"),
        ({"status": 404}, "HTTP 404"),
    ],
)
def test_unusable_answers_are_bad_responses(
    stub: StubProcess, fault: dict[str, object], message: str
) -> None:
    stub.configure(faults=[fault])
    with pytest.raises(UpstreamBadResponse, match=message):
        _client().exchange(stub.token_url, "cid", "csecret", deadline=_deadline())
    assert len(stub.calls()) == 1


def test_the_ten_year_bound_is_315_360_000_seconds() -> None:
    from token_vendor.igni import MAX_EXPIRES_IN

    assert MAX_EXPIRES_IN == 10 * 365 * 24 * 3600 == TEN_YEARS


@pytest.mark.parametrize("value", [1, 60, 172800, TEN_YEARS])
def test_a_positive_lifetime_of_at_most_ten_years_is_believed(value: int) -> None:
    # Given a token answer announcing a lifetime from 1 s to exactly 10 years
    payload = json.dumps({"access_token": "x", "expires_in": value}).encode()
    # Then the lifetime is taken as announced
    assert _parse_token(payload).expires_in == value


@pytest.mark.parametrize(
    "value",
    [10**400, 10**40, TEN_YEARS + 1, 0, -1, -(10**400), 1.5, 1e400, float("nan"), None, "60"],
)
def test_any_other_lifetime_is_a_bad_response_never_an_overflow(value: object) -> None:
    # Given a token answer whose expires_in is huge, not positive or not an integer
    # (json.dumps writes 1e400 as Infinity and nan as NaN, which json.loads reads back)
    payload = json.dumps({"access_token": "x", "expires_in": value}).encode()
    # Then parsing it is a 502 upstream_bad_response, not an OverflowError further on
    with pytest.raises(UpstreamBadResponse, match="expires_in") as raised:
        _parse_token(payload)
    assert (raised.value.status, raised.value.code) == (502, "upstream_bad_response")


def test_a_deeply_nested_answer_is_a_bad_response_not_a_recursion_error() -> None:
    with pytest.raises(UpstreamBadResponse, match="not JSON"):
        _parse_token(b"[" * 60_000)


class _RecordingHttp:
    """Stands in for urllib3's PoolManager: records what would have been sent."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def request(self, method: str, url: str, **_: object) -> object:
        self.requests.append(url)
        raise AssertionError("nothing may be sent to a refused token URL")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2\\@127.0.0.1:8089/api/v1/oauth2/token",
        "http://evil.example\\@127.0.0.1/api/v1/oauth2/token",
        "http://user:pass@127.0.0.1/api/v1/oauth2/token",
        "http://evil.example/api/v1/oauth2/token",
    ],
)
def test_the_client_itself_refuses_a_token_url_without_sending(url: str) -> None:
    # Given a token URL that configuration would refuse, reaching the client all the same
    http = _RecordingHttp()
    client = IgniClient(http)  # type: ignore[arg-type]
    # When an exchange is attempted
    with pytest.raises(ConfigurationError, match="nothing was sent") as raised:
        client.exchange(url, "cid", "csecret", deadline=_deadline())
    # Then it is a configuration error, and the secret went nowhere
    assert http.requests == []
    assert "csecret" not in raised.value.message
