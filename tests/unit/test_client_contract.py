"""igni_token_client (issue 21): surviving a vendor outage, Retry-After, no credential in any
message, the token only for allowed hosts, https only, AWS's transport conventions, the CLI.

The vendor is the loopback stub of test_client (a real HTTP server); time is a fake clock.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import botocore.session
import pytest
import urllib3
from igni_token_client import TokenClient, TokenVendorError
from igni_token_client.auth import HostAllowList, IgniBearerAuth, request_with_token
from igni_token_client.cli import EXIT_CODES, main
from igni_token_client.client import resolve_region, retry_after_seconds

from tests.unit.test_client import (
    ACCESS_KEY,
    LOOPBACK,
    FakeClock,
    Reply,
    Seen,
    Stub,
    Target,
    Vendor,
    _aws_environment,  # noqa: F401 - the autouse fixture: known credentials, no proxy, no CA
    _closed_port,
    _in_threads,
)

SESSION_TOKEN = "FwoGZXIvYXdzEB4aDHsUzQ2mB8xYtLb0pyKBAc7iUu1Xq9yS3n4k5Jm6Qw7Er8Ty9Ui0Op1As2Df3Gh4"


def unavailable(retry_after: str | None = None, error: str = "upstream_unavailable") -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return 503, headers, {"error": error, "message": "Igni is down"}


class Switchable:
    """The vendor, or an outage answer while ``down`` is set."""

    def __init__(self, vendor: Vendor) -> None:
        self.vendor = vendor
        self.down: Callable[[Seen], Reply] | None = None

    def __call__(self, seen: Seen) -> Reply:
        return self.down(seen) if self.down is not None else self.vendor(seen)


@pytest.fixture
def vendor() -> Iterator[tuple[Stub, Vendor]]:
    logic = Vendor()
    stub = Stub(logic).start()
    yield stub, logic
    stub.stop()


@pytest.fixture
def outage() -> Iterator[tuple[Stub, Vendor, Switchable]]:
    logic = Vendor()
    switch = Switchable(logic)
    stub = Stub(switch).start()
    yield stub, logic, switch
    stub.stop()


# ---------------------------------------------------------------------------- 1. early refresh


def test_a_failed_early_refresh_keeps_serving_the_cached_token(
    outage: tuple[Stub, Vendor, Switchable], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a cached 3600 s token (margin 300 s) and a vendor that then answers 503
    stub, _, switch = outage
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock)
    first = client.get_token()
    switch.down = lambda _: unavailable()
    # When half its lifetime has passed / Then the refresh is tried, and the cached token served
    clock.now += 1800
    with caplog.at_level(logging.WARNING, logger="igni_token_client"):
        assert client.get_token() is first
    assert stub.count() == 2
    assert "serving the cached one" in caplog.text
    # And until 300 s before expiry, every failure still serves it
    clock.now += 1499  # 301 s left
    assert client.get_token() is first
    assert stub.count() == 3
    # When the token is inside the margin and the vendor still fails / Then it raises
    clock.now += 2  # 299 s left
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    assert (caught.value.status, caught.value.error) == (503, "upstream_unavailable")


def test_an_early_refresh_that_succeeds_replaces_the_token(
    outage: tuple[Stub, Vendor, Switchable],
) -> None:
    # Given a cached tok-1 and a vendor that has tok-2 by half its lifetime
    stub, logic, _ = outage
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock)
    assert client.get_token().access_token == "tok-1"
    logic.current = None
    # When half the lifetime has passed / Then tok-2 is fetched and served
    clock.now += 1799
    assert client.get_token().access_token == "tok-1"
    clock.now += 1
    assert client.get_token().access_token == "tok-2"
    # And it is cached from then on
    clock.now += 1000
    assert client.get_token().access_token == "tok-2"
    assert stub.count() == 2


def test_the_same_token_again_keeps_its_margin(outage: tuple[Stub, Vendor, Switchable]) -> None:
    # Given a vendor that vends one token, with what is left of its 3600 s
    stub, _, switch = outage
    clock = FakeClock()
    expiry = clock.now + 3600

    def same_token(seen: Seen) -> Reply:
        left = int(expiry - clock.now)
        return (
            200,
            {},
            {"access_token": "tok-1", "token_type": "Bearer", "expires_in": left, "expires_at": 0},
        )

    switch.down = same_token
    client = TokenClient(stub.url, clock=clock)
    first = client.get_token()
    # When it is refreshed early (1800 s left) and the vendor then fails
    clock.now += 1800
    assert client.get_token().expires_in == 1800
    switch.down = lambda _: unavailable()
    # Then the margin is still 300 s (10 % of what was left would be 180 s): 299 s left raises
    clock.now += 1501
    with pytest.raises(TokenVendorError):
        client.get_token()
    assert first.access_token == "tok-1"


def test_refresh_margin_sets_the_mandatory_margin(outage: tuple[Stub, Vendor, Switchable]) -> None:
    # Given refresh_margin=60 and a vendor down after the first token
    stub, _, switch = outage
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock, refresh_margin=60)
    first = client.get_token()
    switch.down = lambda _: unavailable()
    # When 61 s are left / Then the cached token; at 59 s left / Then the error
    clock.now += 3539
    assert client.get_token() is first
    clock.now += 2
    with pytest.raises(TokenVendorError):
        client.get_token()


@pytest.mark.parametrize(
    "failure",
    [
        lambda _: (502, {}, {"message": "Internal server error"}),
        lambda _: (500, {}, b"<html>oops</html>"),
        lambda _: (200, {}, {"access_token": "x"}),
        lambda _: (403, {}, {"message": "Signature expired"}),
        lambda _: (429, {}, {"message": "Too Many Requests"}),
    ],
    ids=["502", "500-html", "200-bad", "403", "429-no-retry-after"],
)
def test_every_call_from_half_life_tries_again_and_any_failure_serves_the_cache(
    outage: tuple[Stub, Vendor, Switchable], failure: Callable[[Seen], Reply]
) -> None:
    # Given a token past half its lifetime and a vendor failing without Retry-After
    stub, logic, switch = outage
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock)
    first = client.get_token()
    switch.down = failure
    clock.now += 1800
    # When callers ask three times / Then each tried the vendor and got the cached token
    for _ in range(3):
        assert client.get_token() is first
    assert stub.count() == 4
    # And once the vendor is back, the next call has the new token
    switch.down = None
    logic.current = None
    assert client.get_token().access_token == "tok-2"


def test_an_unreachable_vendor_serves_the_cache_until_the_margin() -> None:
    # Given a cached token from a vendor that then goes away
    logic = Vendor()
    stub = Stub(logic).start()
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock, retries=urllib3.Retry(0))
    first = client.get_token()
    stub.stop()
    # When half the lifetime has passed / Then the cached token
    clock.now += 1800
    assert client.get_token() is first
    # And inside the margin / Then endpoint_unreachable
    clock.now += 1501
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    assert caught.value.error == "endpoint_unreachable"


def test_threads_are_served_the_cached_token_while_one_refreshes_early(
    outage: tuple[Stub, Vendor, Switchable],
) -> None:
    # Given a token past half its lifetime and a vendor that holds the refresh until released
    stub, logic, switch = outage
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock)
    first = client.get_token()
    logic.current = None
    release = threading.Event()
    arrived = threading.Event()

    def held(seen: Seen) -> Reply:
        arrived.set()
        release.wait(10)
        return logic(seen)

    switch.down = held
    clock.now += 1800
    refresher = threading.Thread(target=client.get_token)
    refresher.start()
    assert arrived.wait(10)
    # When 16 threads ask while the refresh is in flight
    results = _in_threads(16, client.get_token)
    release.set()
    refresher.join(10)
    # Then none waited for it: all got the cached token, and one request was made
    assert all(r is first for r in results), results
    assert stub.count() == 2
    assert client.get_token().access_token == "tok-2"


# ---------------------------------------------------------------------------- 2. Retry-After


def test_retry_after_is_remembered_and_counts_down(outage: tuple[Stub, Vendor, Switchable]) -> None:
    # Given a cold client and a vendor answering 503 Retry-After: 30
    stub, _, switch = outage
    switch.down = lambda _: unavailable("30")
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock)
    with pytest.raises(TokenVendorError) as first:
        client.get_token()
    assert first.value.retry_after == 30
    # When the caller calls again 10 s later
    switch.down = None
    clock.now += 10
    with pytest.raises(TokenVendorError) as again:
        client.get_token()
    # Then the same error, 20 s left, and no request
    assert (again.value.status, again.value.error, again.value.message) == (
        503,
        "upstream_unavailable",
        "Igni is down",
    )
    assert again.value.retry_after == 20
    assert stub.count() == 1
    # And once the time has passed, a request goes out
    clock.now += 20
    assert client.get_token().access_token == "tok-1"
    assert stub.count() == 2


def test_retry_after_is_capped_at_300_s(outage: tuple[Stub, Vendor, Switchable]) -> None:
    # Given a vendor answering 429 with an absurd Retry-After
    stub, _, switch = outage
    switch.down = lambda _: (429, {"Retry-After": "9" * 400}, {"message": "Too Many Requests"})
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock)
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    # Then the wait is 300 s, after which a request goes out
    assert (caught.value.error, caught.value.retry_after) == ("gateway_throttled", 300)
    switch.down = None
    clock.now += 299
    with pytest.raises(TokenVendorError):
        client.get_token()
    clock.now += 1
    client.get_token()
    assert stub.count() == 2


def test_a_cached_token_is_served_during_retry_after_without_a_request(
    outage: tuple[Stub, Vendor, Switchable],
) -> None:
    # Given a token past half its lifetime, and a vendor that answered 503 Retry-After: 60
    stub, _, switch = outage
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock)
    first = client.get_token()
    switch.down = lambda _: unavailable("60")
    clock.now += 1800
    assert client.get_token() is first
    # When callers ask within the 60 s / Then the cached token, no request
    clock.now += 59
    assert client.get_token() is first
    assert stub.count() == 2
    # And after it, the refresh is tried again
    clock.now += 1
    client.get_token()
    assert stub.count() == 3


def test_refresh_rate_limited_holds_back_refreshes_only(vendor: tuple[Stub, Vendor]) -> None:
    # Given a vendor that refuses forced refreshes with Retry-After: 30
    stub, logic = vendor

    def answer(seen: Seen) -> Reply:
        if seen.method == "POST":
            return 429, {"Retry-After": "30"}, {"error": "refresh_rate_limited", "message": "no"}
        return logic(seen)

    stub.respond = answer
    clock = FakeClock()
    client = TokenClient(stub.url, clock=clock)
    token = client.get_token()
    with pytest.raises(TokenVendorError):
        client.invalidate(token.access_token)
    # When the token is reported again / Then the remembered error, no request
    with pytest.raises(TokenVendorError) as caught:
        client.invalidate(token.access_token)
    assert (caught.value.error, caught.value.retry_after) == ("refresh_rate_limited", 30)
    assert stub.count("POST") == 1
    # And an ordinary get_token still asks the vendor
    client.get_token()
    assert stub.count("GET") == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30),
        (" 7 ", 7),
        ("0", 0),
        ("301", 300),
        ("9" * 400, 300),
        ("²", None),  # Unicode digits are not delay-seconds
        ("٣", None),
        ("1e3", None),
        ("-5", None),
        ("3.5", None),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_is_parsed_strictly(value: str, expected: int | None) -> None:
    # Given a Retry-After header / When parsed / Then ASCII digits only, capped at 300
    assert retry_after_seconds({"Retry-After": value}) == expected


def test_retry_after_as_an_http_date_counts_from_the_answers_date() -> None:
    # Given an HTTP-date 45 s after the answer's Date, both far from this machine's clock
    date = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    headers = {
        "Date": format_datetime(date, usegmt=True),
        "Retry-After": format_datetime(date + timedelta(seconds=45), usegmt=True),
    }
    # When parsed / Then 45 s
    assert retry_after_seconds(headers) == 45
    # And a date in the past is no wait
    assert retry_after_seconds({**headers, "Retry-After": "Sat, 01 Jan 2000 00:00:00 GMT"}) == 0


# ---------------------------------------------------------------------------- 3. no leaks


def _leaky_messages(seen: Seen) -> dict[str, str]:
    """What API Gateway says about a bad signature, quoting the request it got."""
    authorization = seen.headers.get("Authorization", "")
    token = seen.headers.get("X-Amz-Security-Token", "")
    date = seen.headers.get("X-Amz-Date", "")
    canonical = (
        f"'GET\n/token\n\nhost:{seen.headers.get('Host')}\nx-amz-date:{date}\n"
        f"x-amz-security-token:{token}\n\nhost;x-amz-date;x-amz-security-token\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'"
    )
    return {
        "mismatch": "The request signature we calculated does not match the signature you "
        "provided. Check your AWS Secret Access Key and signing method. Consult the service "
        "documentation for details.\n\nThe Canonical String for this request should have been\n"
        f"{canonical}\n\nThe String-to-Sign should have been\n'AWS4-HMAC-SHA256\n{date}'\n",
        "echo": "Authorization header requires 'Signature' parameter. "
        f"Authorization={authorization}",
        "query": f"bad query: X-Amz-Security-Token={token}&X-Amz-Credential={ACCESS_KEY}%2F1",
        "header": f"x-amz-security-token: {token}; {authorization}",
    }


def _answers(kind: str, shape: str) -> Callable[[Seen], Reply]:
    def answer(seen: Seen) -> Reply:
        text = _leaky_messages(seen)[kind]
        if shape == "gateway":
            return 403, {}, {"message": text}
        if shape == "iam":
            return 403, {}, {"Message": text}
        if shape == "vendor":
            return 503, {"Retry-After": "5"}, {"error": "upstream_unavailable", "message": text}
        return 502, {"Content-Type": "text/plain"}, text.encode()

    return answer


def _secrets_of(seen: Seen) -> list[str]:
    authorization = seen.headers["Authorization"]
    signature = authorization.rsplit("Signature=", 1)[1]
    return [SESSION_TOKEN, signature, ACCESS_KEY, "x-amz-date:", "e3b0c44298fc"]


def _assert_clean(text: str, seen: Seen) -> None:
    for secret in _secrets_of(seen):
        assert secret not in text, (secret, text)
    assert "\n" not in text.rstrip("\n")


@pytest.fixture
def session_with_token() -> botocore.session.Session:
    session = botocore.session.Session()
    session.set_credentials(ACCESS_KEY, "client-test-secret-key-0123456789abcdef", SESSION_TOKEN)
    return session


@pytest.mark.parametrize("kind", ["mismatch", "echo", "query", "header"])
@pytest.mark.parametrize("shape", ["gateway", "iam", "vendor", "text"])
def test_no_credential_reaches_the_exception(
    kind: str, shape: str, session_with_token: botocore.session.Session
) -> None:
    # Given a server whose error message quotes the signed request
    stub = Stub(_answers(kind, shape)).start()
    clock = FakeClock()
    try:
        client = TokenClient(stub.url, session=session_with_token, clock=clock)
        # When a token is asked for
        with pytest.raises(TokenVendorError) as caught:
            client.get_token()
        # Then the error, its message and its repr carry none of the credentials
        seen = stub.seen[0]
        assert SESSION_TOKEN in seen.headers["X-Amz-Security-Token"]  # it was sent
        for text in (str(caught.value), caught.value.message, repr(caught.value)):
            _assert_clean(text, seen)
        assert caught.value.message  # and something is still said
        # And the remembered (Retry-After) copy is the same error
        if shape == "vendor":
            with pytest.raises(TokenVendorError) as again:
                client.get_token()
            assert again.value.message == caught.value.message
    finally:
        stub.stop()


def test_make_locals_signature_mismatch_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given make local's SigV4 verifier, which answers a wrong secret as API Gateway does (the
    # canonical request quoted, session token included), and a caller with the wrong secret
    sigv4 = pytest.importorskip("local.gateway.sigv4")
    auth = pytest.importorskip("local.gateway.auth")
    access_key = "ASIACLIENTSESSION777"
    verifier = auth.LocalSigV4Verifier(
        {access_key: sigv4.LocalCredential("the-right-secret", session_token=SESSION_TOKEN)},
        region="us-east-1",
    )

    answered: list[object] = []

    def verify(seen: Seen) -> Reply:
        query = "&".join(f"{k}={v[0]}" for k, v in seen.query.items())
        result = verifier.check(seen.method, seen.path, query, seen.headers, seen.body)
        assert isinstance(result, sigv4.AuthError)
        answered.append(result.body)
        return result.status, {}, result.body

    stub = Stub(verify).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-wrong-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    try:
        # When the library asks, and the CLI
        with pytest.raises(TokenVendorError) as caught:
            TokenClient(stub.url).get_token()
        code = main(["get", "--endpoint", stub.url])
    finally:
        stub.stop()
    # Then the gateway's answers did quote the session token
    assert all(SESSION_TOKEN in json.dumps(body) for body in answered)
    # And its first sentence is kept and nothing after it
    message = caught.value.message
    assert message.startswith("The request signature we calculated does not match")
    err = capsys.readouterr().err
    assert code == EXIT_CODES["gateway_forbidden"]
    for text in (str(caught.value), repr(caught.value), err):
        assert SESSION_TOKEN not in text
        assert SESSION_TOKEN[:20] not in text
        assert "x-amz-date:" not in text


def test_redaction_is_idempotent_and_keeps_plain_words() -> None:
    from igni_token_client._redact import redact

    # Given API Gateway's mismatch message and an IAM denial
    mismatch = (
        "The request signature we calculated does not match the signature you provided.\n\n"
        "The Canonical String for this request should have been\n"
        f"'x-amz-security-token:{SESSION_TOKEN}'"
    )
    denial = (
        "User: arn:aws:sts::123456789012:assumed-role/igni-caller/botocore-session-1 is not "
        "authorized to perform: execute-api:Invoke on resource: "
        "arn:aws:execute-api:eu-west-1:********9012:abc123/v1/GET/token"
    )
    # When redacted once and again / Then the same text, the denial untouched
    once = redact(mismatch)
    assert once == redact(once)
    assert once.endswith("you provided. [signing details removed]")
    assert redact(denial) == denial


def test_no_credential_reaches_the_log_lines(
    session_with_token: botocore.session.Session, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a token, then a vendor whose errors quote the signed request
    logic = Vendor()
    leaky = _answers("mismatch", "gateway")
    switch = Switchable(logic)
    stub = Stub(switch).start()
    target = Stub(Target(logic, always_401=True)).start()
    clock = FakeClock()
    try:
        client = TokenClient(stub.url, session=session_with_token, clock=clock)
        client.get_token()
        switch.down = leaky
        with caplog.at_level(logging.DEBUG):
            # When an early refresh fails (logged) and a 401's report fails (logged)
            clock.now += 1800
            client.get_token()
            with urllib3.PoolManager() as pool:
                request_with_token(pool, client, "GET", target.url + "/api", hosts=LOOPBACK)
        # Then both were logged by the client, without any credential (botocore's own DEBUG
        # lines show the canonical request: that is its logger, off by default)
        ours = "\n".join(
            r.getMessage() for r in caplog.records if r.name.startswith("igni_token_client")
        )
        assert "serving the cached one" in ours
        assert "could not replace it" in ours
        _assert_clean(ours.replace("\n", " "), stub.seen[-1])
    finally:
        stub.stop()
        target.stop()


@pytest.mark.parametrize("kind", ["mismatch", "echo"])
def test_no_credential_reaches_the_cli(
    kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given temporary credentials in the environment and a leaky gateway
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    stub = Stub(_answers(kind, "gateway")).start()
    try:
        # When igni-token get runs
        code = main(["get", "--endpoint", stub.url])
    finally:
        stub.stop()
    # Then one clean line on stderr, with gateway_forbidden's exit code
    assert code == EXIT_CODES["gateway_forbidden"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    _assert_clean(err, stub.seen[0])


def test_no_proxy_password_in_an_unreachable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a proxy with a password in its URL, where nothing listens
    monkeypatch.setenv("HTTP_PROXY", f"http://ops:proxy-pass-123@127.0.0.1:{_closed_port()}")
    client = TokenClient(f"http://127.0.0.1:{_closed_port()}", retries=urllib3.Retry(0))
    # When a token is asked for / Then endpoint_unreachable naming the proxy, without the password
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    assert caught.value.error == "endpoint_unreachable"
    assert "through the proxy http://[redacted]@127.0.0.1:" in str(caught.value)
    assert "proxy-pass-123" not in str(caught.value)


def test_no_credential_in_an_aws_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a credential process that fails and prints the session token in its error
    config = Path(os.environ["AWS_CONFIG_FILE"])
    script = f"import sys; sys.stderr.write('token {SESSION_TOKEN} expired'); sys.exit(1)"
    config.write_text(f'[profile leaky]\ncredential_process = {sys.executable} -c "{script}"\n')
    session = botocore.session.Session(profile="leaky")
    client = TokenClient(f"http://127.0.0.1:{_closed_port()}", session=session)
    # When a token is asked for / Then a TokenVendorError without the token
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    assert caught.value.error == "no_credentials"
    assert SESSION_TOKEN not in str(caught.value)


# ---------------------------------------------------------------------------- 4. hosts


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("acme.igni.co", True),
        ("a.b.igni.co", True),
        ("ACME.IGNI.CO.", True),
        ("igni.co", False),
        ("evil-igni.co", False),
        ("acme.igni.co.evil.com", False),
        ("", False),
    ],
)
def test_the_default_hosts_are_igni_subdomains(host: str, allowed: bool) -> None:
    # Given the default allow-list / When a host is checked / Then *.igni.co only
    assert HostAllowList().allows_host(host) is allowed


def test_hosts_patterns_are_checked() -> None:
    # Given exact names and a suffix / Then each matches what it says
    hosts = HostAllowList(["api.example.com", "*.internal.example", "::1"])
    assert hosts.allows("https", "api.example.com")
    assert not hosts.allows("https", "x.api.example.com")
    assert hosts.allows("https", "svc.internal.example")
    assert hosts.allows("http", "::1")
    # And plain http goes nowhere but loopback
    assert not hosts.allows("http", "api.example.com")
    # And a pattern with a scheme, port, path or inner wildcard is refused
    for bad in ["https://api.example.com", "api.example.com:443", "a/b", "a.*.com", "*", ""]:
        with pytest.raises(ValueError, match="not a host name"):
            HostAllowList([bad])


@pytest.fixture
def igni_pair() -> Iterator[tuple[Stub, Stub, Vendor]]:
    logic = Vendor()
    vendor_stub = Stub(logic).start()
    target = Stub(Target(logic, always_401=True)).start()
    yield vendor_stub, target, logic
    vendor_stub.stop()
    target.stop()


def test_urllib3_helper_keeps_the_token_from_other_hosts(
    igni_pair: tuple[Stub, Stub, Vendor],
) -> None:
    # Given a target that answers 401, on a host that is not in hosts
    vendor_stub, target, _ = igni_pair
    client = TokenClient(vendor_stub.url)
    with urllib3.PoolManager() as pool:
        # When a request goes through request_with_token with the default hosts
        response = request_with_token(pool, client, "GET", target.url + "/x")
        # And with an allow-list naming another host
        request_with_token(pool, client, "GET", target.url + "/y", hosts=["127.0.0.2"])
    # Then the target got no token, and no 401 was reported
    assert response.status == 401
    assert [s.headers.get("Authorization") for s in target.seen] == [None, None]
    assert vendor_stub.count() == 0


def test_urllib3_helper_with_a_pool_for_one_host(igni_pair: tuple[Stub, Stub, Vendor]) -> None:
    # Given a connection pool for the target's host, and request paths relative to it
    vendor_stub, target, _ = igni_pair
    client = TokenClient(vendor_stub.url)
    port = int(target.url.rsplit(":", 1)[1])
    with urllib3.HTTPConnectionPool("127.0.0.1", port) as pool:
        # When the host is allowed / Then the token goes; when it is not / Then it does not
        request_with_token(pool, client, "GET", "/a", hosts=LOOPBACK, retries=False)
        request_with_token(pool, client, "GET", "/b", retries=False)
    assert [s.headers.get("Authorization") for s in target.seen[:1]] == ["Bearer tok-1"]
    assert target.seen[-1].headers.get("Authorization") is None


def test_urllib3_helper_does_not_report_a_401_from_a_redirect_elsewhere(
    igni_pair: tuple[Stub, Stub, Vendor],
) -> None:
    # Given an allowed host that redirects to another one (localhost, not allowed) that says 401
    vendor_stub, target, _ = igni_pair
    port = target.url.rsplit(":", 1)[1]
    redirect = Stub(lambda _: (302, {"Location": f"http://localhost:{port}/x"}, b"")).start()
    try:
        client = TokenClient(vendor_stub.url)
        with urllib3.PoolManager() as pool:
            # When a request to the allowed host follows the redirect
            response = request_with_token(pool, client, "GET", redirect.url + "/", hosts=LOOPBACK)
    finally:
        redirect.stop()
    # Then the 401 came back as it was: no token there, no report, no retry
    assert response.status == 401
    assert target.seen[0].headers.get("Authorization") is None
    assert vendor_stub.count("POST") == 0
    assert target.count() == 1


def test_requests_hook_keeps_the_token_from_other_hosts(
    igni_pair: tuple[Stub, Stub, Vendor],
) -> None:
    requests = pytest.importorskip("requests")
    vendor_stub, target, _ = igni_pair
    client = TokenClient(vendor_stub.url)
    # Given session.auth with the default hosts / When a GET goes to an unrelated host
    with requests.Session() as session:
        session.auth = IgniBearerAuth(client)
        response = session.get(target.url + "/x")
        # And one through a redirect from an allowed host to an unrelated one
        port = target.url.rsplit(":", 1)[1]
        redirect = Stub(lambda _: (302, {"Location": f"http://localhost:{port}/y"}, b"")).start()
        try:
            session.auth = IgniBearerAuth(client, hosts=LOOPBACK)
            redirected = session.get(redirect.url + "/")
        finally:
            redirect.stop()
    # Then neither carried the token to that host, and no 401 was reported
    assert (response.status_code, redirected.status_code) == (401, 401)
    assert [s.headers.get("Authorization") for s in target.seen] == [None, None]
    assert vendor_stub.count("POST") == 0


def test_unknown_token_falls_back_to_get(vendor: tuple[Stub, Vendor]) -> None:
    # Given a vendor that answers 409 unknown_token to a refresh
    stub, logic = vendor

    def answer(seen: Seen) -> Reply:
        if seen.method == "POST":
            return 409, {}, {"error": "unknown_token", "message": "not a token we issued"}
        return logic(seen)

    stub.respond = answer
    client = TokenClient(stub.url + "/v1", profile="analytics")
    # When a token it never issued is reported
    token = client.invalidate("tok-from-elsewhere")
    # Then the client fell back to GET, on the same profile, and caches its answer
    assert token.access_token == "tok-1"
    assert [(s.method, s.path) for s in stub.seen] == [
        ("POST", "/v1/token/analytics/refresh"),
        ("GET", "/v1/token/analytics"),
    ]
    assert client.get_token() is token


# ---------------------------------------------------------------------------- 5. https only


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://10.0.0.1:3000",
        "http://abc123.execute-api.eu-west-1.amazonaws.com/v1",
        "http://127.0.0.1.nip.io:3000",
        "http://localhost.example.com",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(endpoint: str) -> None:
    # Given a non-loopback http endpoint / When a client is made / Then ValueError: use https
    with pytest.raises(ValueError, match="use https"):
        TokenClient(endpoint)


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1\\@evil.example/", "https://user:pw@api.example/"]
)
def test_ambiguous_endpoints_are_refused(endpoint: str) -> None:
    # Given a URL whose host depends on the parser, or with credentials in it / Then ValueError
    with pytest.raises(ValueError, match="endpoint"):
        TokenClient(endpoint)


@pytest.mark.parametrize(
    "endpoint", ["http://localhost:1", "http://127.0.0.2:1", "http://[::1]:1", "https://a.example"]
)
def test_loopback_http_and_https_are_accepted(endpoint: str) -> None:
    assert TokenClient(endpoint).endpoint == endpoint


# ---------------------------------------------------------------------------- 6. transport


def test_http_proxy_is_honoured(
    vendor: tuple[Stub, Vendor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given HTTP_PROXY naming the stub, and an endpoint where nothing listens
    stub, _ = vendor
    monkeypatch.setenv("HTTP_PROXY", stub.url)
    endpoint = f"http://127.0.0.1:{_closed_port()}/v1"
    # When a token is asked for / Then it came through the proxy, in absolute form
    assert TokenClient(endpoint).get_token().access_token == "tok-1"
    assert stub.seen[0].target == endpoint + "/token"


def test_no_proxy_bypasses_the_proxy(
    vendor: tuple[Stub, Vendor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a proxy that would refuse, and NO_PROXY naming the endpoint's host
    stub, _ = vendor
    proxy = Stub(lambda _: (502, {}, {"message": "proxy"})).start()
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    try:
        # When a token is asked for / Then it came straight from the vendor
        assert TokenClient(stub.url).get_token().access_token == "tok-1"
    finally:
        proxy.stop()
    assert proxy.count() == 0


def test_https_proxy_tunnels_to_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given HTTPS_PROXY naming a stub that refuses to tunnel
    proxy = Stub(lambda _: (403, {}, b"")).start()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    try:
        client = TokenClient("https://abc123.execute-api.eu-west-1.amazonaws.com/v1")
        # When a token is asked for / Then the proxy was asked for a tunnel, and the error is ours
        with pytest.raises(TokenVendorError) as caught:
            client.get_token()
    finally:
        proxy.stop()
    assert caught.value.error == "endpoint_unreachable"
    assert proxy.seen[0].method == "CONNECT"
    assert proxy.seen[0].target == "abc123.execute-api.eu-west-1.amazonaws.com:443"


@pytest.fixture
def tls_vendor(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The vendor over https on 127.0.0.1, with a self-signed certificate; (url, cert path)."""
    crypto = pytest.importorskip("cryptography")
    del crypto
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "igni test vendor")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "vendor.pem"
    key_path = tmp_path / "vendor.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    stub = Stub(Vendor()).start()
    assert stub.server is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    stub.server.socket = context.wrap_socket(stub.server.socket, server_side=True)
    yield f"https://127.0.0.1:{stub.server.server_address[1]}", cert_path
    stub.stop()


def test_aws_ca_bundle_is_honoured(
    tls_vendor: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = tls_vendor
    # Given a vendor whose certificate no default store trusts / Then TLS verification fails
    with pytest.raises(TokenVendorError) as caught:
        TokenClient(url).get_token()
    assert caught.value.error == "endpoint_unreachable"
    # When AWS_CA_BUNDLE names its certificate / Then the token comes
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    assert TokenClient(url).get_token().access_token == "tok-1"


def test_aws_ca_bundle_is_honoured_by_the_async_client(
    tls_vendor: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("httpx")
    import asyncio

    from igni_token_client import AsyncTokenClient

    url, cert = tls_vendor

    async def ask() -> str:
        async with AsyncTokenClient(url) as client:
            return (await client.get_token()).access_token

    # Given a self-signed vendor / Then TLS fails, until AWS_CA_BUNDLE names its certificate
    with pytest.raises(TokenVendorError) as caught:
        asyncio.run(ask())
    assert caught.value.error == "endpoint_unreachable"
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    assert asyncio.run(ask()) == "tok-1"


def test_an_unknown_aws_profile_is_a_token_vendor_error() -> None:
    # Given a session for an AWS profile that does not exist
    session = botocore.session.Session(profile="nope")
    # When the client is made and asked / Then a TokenVendorError, never botocore's own
    client = TokenClient(f"http://127.0.0.1:{_closed_port()}", session=session)
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    assert caught.value.error == "no_credentials"
    assert "nope" in caught.value.message


def test_an_unknown_aws_profile_in_the_environment_is_a_token_vendor_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given AWS_PROFILE naming no profile
    monkeypatch.setenv("AWS_PROFILE", "nope")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    # When a client is made and asked / Then a TokenVendorError, not at construction
    client = TokenClient(endpoint)
    with pytest.raises(TokenVendorError) as caught:
        client.get_token()
    assert caught.value.error == "no_credentials"
    # And the CLI says so in one line, with no_credentials' exit code
    assert main(["get", "--endpoint", endpoint]) == EXIT_CODES["no_credentials"]
    assert capsys.readouterr().err.count("\n") == 1


def test_the_library_reads_the_cli_variables(
    vendor: tuple[Stub, Vendor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given IGNI_TOKEN_ENDPOINT and IGNI_TOKEN_PROFILE
    stub, _ = vendor
    monkeypatch.setenv("IGNI_TOKEN_ENDPOINT", stub.url + "/v1")
    monkeypatch.setenv("IGNI_TOKEN_PROFILE", "analytics")
    # When TokenClient() is made without arguments and asked / Then it used both
    client = TokenClient()
    assert client.get_token().access_token == "tok-1"
    assert stub.seen[0].path == "/v1/token/analytics"
    # And arguments win over the variables ("" is the default profile)
    other = TokenClient("http://127.0.0.1:3999", profile="")
    assert (other.endpoint, other.profile) == ("http://127.0.0.1:3999", None)


def test_make_locals_address_is_the_default_only_without_argument_or_variable() -> None:
    assert TokenClient().endpoint == "http://127.0.0.1:3000"
    assert TokenClient().profile is None


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("abc123-vpce-0123456789abcdef0.execute-api.eu-west-1.vpce.amazonaws.com", "eu-west-1"),
        (
            "vpce-0a1b2c3d4e5f-abcdefgh.execute-api.ap-southeast-2.vpce.amazonaws.com",
            "ap-southeast-2",
        ),
        ("abc123.execute-api.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("abc123.execute-api.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("abc123.execute-api.eu-west-1.amazonaws.com.evil.com", "us-east-1"),
    ],
)
def test_region_from_public_and_private_api_hosts(host: str, region: str) -> None:
    # Given an API host name and no region anywhere else / Then its region
    assert resolve_region(None, f"https://{host}/v1", None, environ={}) == region


# ---------------------------------------------------------------------------- 8. CLI


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "abc", "1e308", "3601"])
def test_cli_timeout_must_be_finite_and_positive(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a bad --timeout / When run / Then a one-line usage error, exit 2
    with pytest.raises(SystemExit) as caught:
        main(["get", "--timeout", value])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--timeout" in err


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0.0, -1.0, 1e308])
def test_the_library_refuses_a_timeout_it_cannot_use(timeout: float) -> None:
    # Given a timeout that is not a usable number of seconds / Then ValueError, before any request
    with pytest.raises(ValueError, match="timeout"):
        TokenClient("http://127.0.0.1:1", timeout=timeout)


def test_cli_exits_quietly_when_the_pipe_is_closed(vendor: tuple[Stub, Vendor]) -> None:
    # Given stdout a pipe whose reader is gone (igni-token get | head -c0)
    stub, _ = vendor
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        # When igni-token get writes the token
        done = subprocess.run(
            [sys.executable, "-m", "igni_token_client.cli", "get", "--endpoint", stub.url],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    # Then no traceback, nothing on stderr, success
    assert done.stderr == b""
    assert done.returncode == 0


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["get", "--endpoint", "http://10.0.0.1:3000"], 2),
        (["get", "--timeout", "nan"], 2),
        (["get", "--min-ttl", "x"], 2),
        (["get", "--aws-profile", "nope", "--endpoint", "CLOSED"], 3),
        (["refresh", "--rejected", "", "--endpoint", "CLOSED"], 2),
    ],
)
def test_cli_failures_are_one_line(
    args: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a failing invocation / When run / Then one line on stderr and its exit code
    try:
        closed = f"http://127.0.0.1:{_closed_port()}"
        result = main([closed if a == "CLOSED" else a for a in args])
    except SystemExit as exc:
        result = exc.code
    out, err = capsys.readouterr()
    assert result == code, err
    assert err.count("\n") == 1, err
    assert err.startswith("igni-token: ")
    assert out == ""


def test_tokens_have_printable_ascii_only(vendor: tuple[Stub, Vendor]) -> None:
    # Given a vendor whose token would inject a header / Then bad_response
    stub, logic = vendor
    logic.current = "tok\r\nX-Evil: 1"
    with pytest.raises(TokenVendorError) as caught:
        TokenClient(stub.url).get_token()
    assert caught.value.error == "bad_response"
