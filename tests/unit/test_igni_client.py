"""The Igni exchange over real HTTP to the stub process: happy path, retries, deadlines."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
import urllib3

from local.igni_stub import StubProcess, basic_credentials
from token_vendor.errors import (
    ConfigurationError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamUnavailable,
)
from token_vendor.igni.answers import basic_challenge, parse_token
from token_vendor.igni.client import IgniClient
from token_vendor.igni.request import basic_authorization

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
        ({"status": 200, "body": {"access_token": "x", "expires_in": "1e3"}}, "expires_in"),
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
    from token_vendor.config import MAX_EXPIRES_IN

    assert MAX_EXPIRES_IN == 10 * 365 * 24 * 3600 == TEN_YEARS


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1, 1),
        (60, 60),
        (172800, 172800),
        (TEN_YEARS, TEN_YEARS),
        # Issue 13: a float is floored, a string of ASCII digits is read as the number.
        (1.5, 1),
        (172800.9, 172800),
        (float(TEN_YEARS), TEN_YEARS),
        ("172800", 172800),
        ("1", 1),
        ("000060", 60),
        (str(TEN_YEARS), TEN_YEARS),
        ("0" * 11 + "172800", 172800),
    ],
)
def test_a_positive_lifetime_of_at_most_ten_years_is_believed(value: object, seconds: int) -> None:
    # Given a token answer announcing a lifetime from 1 s to exactly 10 years, as an integer,
    # a float or a string of digits
    payload = json.dumps({"access_token": "x", "expires_in": value}).encode()
    # Then the lifetime is taken as announced, in whole seconds
    assert parse_token(payload).expires_in == seconds


@pytest.mark.parametrize("body", [{"access_token": "x"}, {"access_token": "x", "expires_in": None}])
def test_a_missing_lifetime_is_left_to_the_jwt_or_the_default(body: dict[str, object]) -> None:
    # Given a token answer without expires_in (RFC 6749 5.1 only RECOMMENDS it), or with null
    # Then parsing it succeeds, with no lifetime (freshness.effective_expiry decides)
    assert parse_token(json.dumps(body).encode()).expires_in is None


@pytest.mark.parametrize(
    "value",
    [
        10**400,
        10**40,
        TEN_YEARS + 1,
        0,
        -1,
        -(10**400),
        1e400,
        float("nan"),
        -1e400,
        0.5,
        -1.5,
        float(TEN_YEARS + 1),
        1e300,
        True,
        False,
        [60],
        {"seconds": 60},
        # Strings: digits 0-9 only, no sign, space, exponent, separator or other script.
        "1e3",
        " 5",
        "5 ",
        "-5",
        "+5",
        "1_000",
        "0x10",
        "60.0",
        "",
        "\u0663",  # Arabic-Indic digit three (str.isdigit accepts it)
        "\uff16\uff10",  # fullwidth 60
        "0",
        "000",
        str(TEN_YEARS + 1),
        "9" * 21,
        "9" * 5000,
    ],
)
def test_any_other_lifetime_is_a_bad_response_never_an_overflow(value: object) -> None:
    # Given a token answer whose expires_in is huge, not positive, not finite or not a number
    # (json.dumps writes 1e400 as Infinity and nan as NaN, which json.loads reads back)
    payload = json.dumps({"access_token": "x", "expires_in": value}).encode()
    # Then parsing it is a 502 upstream_bad_response, not an OverflowError further on
    with pytest.raises(UpstreamBadResponse, match="expires_in") as raised:
        parse_token(payload)
    assert (raised.value.status, raised.value.code) == (502, "upstream_bad_response")


def test_a_deeply_nested_answer_is_a_bad_response_not_a_recursion_error() -> None:
    with pytest.raises(UpstreamBadResponse, match="not JSON"):
        parse_token(b"[" * 60_000)


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


# ------------------------------------------------ issue 13: client authentication, audience


@pytest.mark.parametrize(
    ("client_id", "client_secret", "decoded"),
    [
        ("cid", "csecret", "cid:csecret"),
        # RFC 6749 2.3.1: each is form-urlencoded first, so a ':' in the id cannot split it.
        ("id:with:colons", "s:e:c", "id%3Awith%3Acolons:s%3Ae%3Ac"),
        ("100%", "a+b c", "100%25:a%2Bb+c"),
        ("é", "ß/ü=&?", "%C3%A9:%C3%9F%2F%C3%BC%3D%26%3F"),
        ("a-b_c.d~e", "*", "a-b_c.d~e:%2A"),
    ],
)
def test_the_basic_header_holds_the_form_urlencoded_id_and_secret(
    client_id: str, client_secret: str, decoded: str
) -> None:
    # When the client_secret_basic header is built
    header = basic_authorization(client_id, client_secret)
    # Then it is "Basic " and base64 of urlencode(id) ":" urlencode(secret)
    scheme, encoded = header.split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded, validate=True).decode("ascii") == decoded
    # And the stub's RFC 6749 reading gives back exactly the id and the secret
    assert basic_credentials(header) == (client_id, client_secret)


def test_client_secret_basic_sends_the_secret_only_in_the_header(stub: StubProcess) -> None:
    # Given a server that accepts HTTP Basic only
    stub.configure(auth_methods=["client_secret_basic"], clients={"c:d %": "s+é"})
    # When the client exchanges with client_secret_basic, a scope and an audience
    issued = _client().exchange(
        stub.token_url,
        "c:d %",
        "s+é",
        deadline=_deadline(),
        scope="reports:read",
        audience="https://api.example",
        auth_method="client_secret_basic",
    )
    # Then it gets the token, and the form held neither the id nor the secret
    assert issued.expires_in == 172800
    [call] = stub.calls()
    assert call["auth_scheme"] == "Basic"
    assert call["client_id"] == "c:d %"
    assert call["form_fields"] == ["audience", "grant_type", "scope"]
    assert call["audience"] == "https://api.example"


def test_client_secret_post_is_the_default_and_sends_no_authorization(stub: StubProcess) -> None:
    # When the client exchanges without naming a method
    _client().exchange(stub.token_url, "cid", "csecret", deadline=_deadline())
    # Then the id and secret are in the form, there is no Authorization header nor audience
    [call] = stub.calls()
    assert call["auth_scheme"] is None
    assert call["form_fields"] == ["client_id", "client_secret", "grant_type"]


def test_a_basic_challenge_to_a_form_authenticated_request_suggests_client_secret_basic(
    stub: StubProcess,
) -> None:
    # Given a server that accepts HTTP Basic only (401 with WWW-Authenticate: Basic realm=...)
    stub.configure(auth_methods=["client_secret_basic"])
    # When the client authenticates in the form
    with pytest.raises(UpstreamAuthFailed) as raised:
        _client().exchange(stub.token_url, "cid", "csecret", deadline=_deadline())
    # Then the 502 upstream_auth_failed says the server may want client_secret_basic, naming
    # the setting, and repeats nothing of the header but its scheme
    message = raised.value.message
    assert "client_secret_basic" in message
    assert "IGNI_TOKEN_ENDPOINT_AUTH_METHOD" in message
    assert "realm" not in message
    assert 'igni"' not in message
    assert (raised.value.status, raised.value.code) == (502, "upstream_auth_failed")
    assert len(stub.calls()) == 1


def test_wrong_credentials_without_a_challenge_are_not_blamed_on_the_method(
    stub: StubProcess,
) -> None:
    # Given Igni's own 401 (no WWW-Authenticate), and a Basic-only server refusing a bad secret
    with pytest.raises(UpstreamAuthFailed) as post_refused:
        _client().exchange(stub.token_url, "cid", "wrong", deadline=_deadline())
    stub.configure(auth_methods=["client_secret_basic"])
    with pytest.raises(UpstreamAuthFailed) as basic_refused:
        _client().exchange(
            stub.token_url, "cid", "wrong", deadline=_deadline(), auth_method="client_secret_basic"
        )
    # Then neither message suggests another method: the credentials are the suspects
    for raised in (post_refused, basic_refused):
        assert "client_secret_basic" not in raised.value.message
        assert "check client_id and client_secret" in raised.value.message


@pytest.mark.parametrize(
    ("challenge", "suggests"),
    [
        ('Basic realm="igni"', True),
        ("basic", True),
        ('Bearer realm="x", Basic realm="y"', True),
        ('Bearer realm="basic"', False),
        ("Basically", False),
        ("", False),
    ],
)
def test_only_a_basic_scheme_in_the_challenge_counts(challenge: str, *, suggests: bool) -> None:
    assert basic_challenge(challenge) is suggests
