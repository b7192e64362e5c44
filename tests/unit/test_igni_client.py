"""The Igni exchange over real HTTP to the stub process: happy path, retries, deadlines."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import urllib3

from local.igni_stub import StubProcess
from token_vendor.errors import UpstreamAuthFailed, UpstreamBadResponse, UpstreamUnavailable
from token_vendor.igni import IgniClient


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
