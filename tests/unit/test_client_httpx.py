"""igni_token_client with httpx: IgniHttpxAuth (sync and async) and AsyncTokenClient.

The vendor and the target are test_client's loopback stubs; time is a fake clock. Each async test
runs its coroutine with asyncio.run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import botocore.session
import pytest
from igni_token_client import TokenClient, TokenVendorError

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
)

httpx = pytest.importorskip("httpx")
from igni_token_client import AsyncTokenClient, IgniHttpxAuth  # noqa: E402 - needs httpx

T = TypeVar("T")
SESSION = "FwoGZXIvYXdzEB4aDHsUzQ2mB8xYtLb0pyKBAc7iUu1Xq9yS3n4k5Jm6Qw7Er8Ty9Ui0Op1As2Df3Gh4"


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await make()

    return asyncio.run(main())


@pytest.fixture
def igni() -> Iterator[tuple[Stub, Stub, Vendor, Target]]:
    logic = Vendor()
    vendor_stub = Stub(logic).start()
    target = Target(logic)
    target_stub = Stub(target).start()
    yield vendor_stub, target_stub, logic, target
    vendor_stub.stop()
    target_stub.stop()


def _stale(logic: Vendor) -> None:
    """Another caller had the token replaced: the vendor now holds tok-2."""
    logic.current = "tok-2"
    logic.issued = 2


# ---------------------------------------------------------------------------- IgniHttpxAuth


def test_sync_auth_retries_once_after_a_401_with_the_body(
    igni: tuple[Stub, Stub, Vendor, Target],
) -> None:
    # Given a TokenClient holding tok-1, which the target no longer accepts
    vendor_stub, target_stub, logic, target = igni
    client = TokenClient(vendor_stub.url)
    client.get_token()
    _stale(logic)
    # When a POST with a body goes through httpx.Client with IgniHttpxAuth
    with httpx.Client(auth=IgniHttpxAuth(client, hosts=LOOPBACK)) as http:
        response = http.post(target_stub.url + "/api/v1/things", content=b"payload")
    # Then the token was reported, the request resent once with tok-2 and its body
    assert response.status_code == 200
    assert response.json()["auth"] == "Bearer tok-2"
    assert [r.status_code for r in response.history] == [401]
    assert target.bodies == [b"payload", b"payload"]
    assert vendor_stub.count("POST", "/token/refresh") == 1


def test_sync_auth_gives_up_after_one_retry(igni: tuple[Stub, Stub, Vendor, Target]) -> None:
    # Given a target that refuses every token
    vendor_stub, target_stub, _, target = igni
    target.always_401 = True
    client = TokenClient(vendor_stub.url)
    # When a GET goes through the auth / Then the second 401 is returned, one refresh
    with httpx.Client(auth=IgniHttpxAuth(client, hosts=LOOPBACK)) as http:
        assert http.get(target_stub.url + "/api").status_code == 401
    assert target_stub.count() == 2
    assert vendor_stub.count("POST") == 1


def test_auth_keeps_the_token_from_other_hosts(igni: tuple[Stub, Stub, Vendor, Target]) -> None:
    # Given a target that answers 401 and is not in the default hosts (*.igni.co)
    vendor_stub, target_stub, _, target = igni
    target.always_401 = True
    client = TokenClient(vendor_stub.url)
    # When requests go to it, directly and through a redirect from an allowed host
    port = target_stub.url.rsplit(":", 1)[1]
    redirect = Stub(lambda _: (302, {"Location": f"http://localhost:{port}/y"}, b"")).start()
    try:
        with httpx.Client(auth=IgniHttpxAuth(client)) as http:
            direct = http.get(target_stub.url + "/x")
        auth = IgniHttpxAuth(client, hosts=LOOPBACK)
        with httpx.Client(auth=auth, follow_redirects=True) as http:
            redirected = http.get(redirect.url + "/")
    finally:
        redirect.stop()
    # Then neither carried the token there, and no 401 was reported
    assert (direct.status_code, redirected.status_code) == (401, 401)
    assert [s.headers.get("Authorization") for s in target_stub.seen] == [None, None]
    assert vendor_stub.count("POST") == 0


def test_async_auth_with_the_async_client(igni: tuple[Stub, Stub, Vendor, Target]) -> None:
    # Given an AsyncTokenClient holding tok-1, which the target no longer accepts
    vendor_stub, target_stub, logic, _ = igni

    async def scenario() -> httpx.Response:
        async with AsyncTokenClient(vendor_stub.url) as client:
            await client.get_token()
            _stale(logic)
            auth = IgniHttpxAuth(client, hosts=LOOPBACK)
            async with httpx.AsyncClient(auth=auth) as http:
                return await http.put(target_stub.url + "/api/v1/things/1", content=b"{}")

    # When a PUT goes through httpx.AsyncClient / Then one report, one retry, success
    response = run(scenario)
    assert response.status_code == 200
    assert response.json()["auth"] == "Bearer tok-2"
    assert vendor_stub.count("POST", "/token/refresh") == 1


def test_async_auth_with_the_sync_client(igni: tuple[Stub, Stub, Vendor, Target]) -> None:
    # Given a TokenClient (its calls run in a worker thread under httpx.AsyncClient)
    vendor_stub, target_stub, logic, _ = igni
    client = TokenClient(vendor_stub.url)
    client.get_token()
    _stale(logic)

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(auth=IgniHttpxAuth(client, hosts=LOOPBACK)) as http:
            return await http.get(target_stub.url + "/api")

    # When a GET goes through / Then it succeeded after one retry
    response = run(scenario)
    assert (response.status_code, response.json()["auth"]) == (200, "Bearer tok-2")


def test_an_async_source_is_refused_by_the_sync_client(
    igni: tuple[Stub, Stub, Vendor, Target],
) -> None:
    vendor_stub, target_stub, _, _ = igni
    auth = IgniHttpxAuth(AsyncTokenClient(vendor_stub.url), hosts=LOOPBACK)
    with httpx.Client(auth=auth) as http, pytest.raises(TypeError, match="AsyncClient"):
        http.get(target_stub.url + "/api")


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_no_credential_reaches_the_httpx_log_line_or_error(
    flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a session token, a target that refuses every token, and a vendor whose refresh
    # answer quotes the signed request (API Gateway's signature mismatch)
    logic = Vendor()

    def answer(seen: Seen) -> Reply:
        if seen.method == "POST":
            quoted = (
                "The request signature we calculated does not match.\n\nThe Canonical String "
                f"for this request should have been\n'x-amz-security-token:{SESSION}'\n"
                f"{seen.headers['Authorization']}"
            )
            return 403, {}, {"message": quoted}
        return logic(seen)

    vendor_stub = Stub(answer).start()
    target_stub = Stub(Target(logic, always_401=True)).start()
    session = botocore.session.Session()
    session.set_credentials(ACCESS_KEY, "client-test-secret-key-0123456789abcdef", SESSION)

    async def scenario() -> None:
        async with AsyncTokenClient(vendor_stub.url, session=session) as client:
            auth = IgniHttpxAuth(client, hosts=LOOPBACK)
            async with httpx.AsyncClient(auth=auth) as http:
                await http.get(target_stub.url + "/api")
            with pytest.raises(TokenVendorError) as caught:
                await client.invalidate("tok-1")
            assert SESSION not in str(caught.value)

    try:
        with caplog.at_level(logging.WARNING, logger="igni_token_client"):
            # When the 401 is reported and the report fails
            if flavour == "sync":
                client = TokenClient(vendor_stub.url, session=session)
                with httpx.Client(auth=IgniHttpxAuth(client, hosts=LOOPBACK)) as http:
                    http.get(target_stub.url + "/api")
            else:
                run(scenario)
    finally:
        vendor_stub.stop()
        target_stub.stop()
    # Then the hook logged it, without the session token, the signature or the access key
    signature = vendor_stub.seen[-1].headers["Authorization"].rsplit("Signature=", 1)[1]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "could not replace it" in logged
    for secret in (SESSION, signature, ACCESS_KEY):
        assert secret not in logged


# ---------------------------------------------------------------------------- AsyncTokenClient


def test_async_client_caches_and_makes_one_request_for_many_tasks(
    igni: tuple[Stub, Stub, Vendor, Target],
) -> None:
    vendor_stub, _, _, _ = igni

    async def scenario() -> list[str]:
        async with AsyncTokenClient(vendor_stub.url + "/v1", profile="analytics") as client:
            tokens = await asyncio.gather(*(client.get_token() for _ in range(16)))
            tokens.append(await client.get_token())
            return [t.access_token for t in tokens]

    # Given a cold client / When 16 tasks ask at once, then one more
    tokens = run(scenario)
    # Then one signed request, to the profile's path, and the same token for all
    assert set(tokens) == {"tok-1"}
    assert vendor_stub.count() == 1
    seen = vendor_stub.seen[0]
    assert seen.path == "/v1/token/analytics"
    assert seen.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")


def test_async_tasks_are_served_the_cached_token_while_one_refreshes_early(
    igni: tuple[Stub, Stub, Vendor, Target],
) -> None:
    # Given a cached tok-1 past half its lifetime, and a vendor that now has tok-2
    vendor_stub, _, logic, _ = igni
    clock = FakeClock()

    async def scenario() -> list[str]:
        async with AsyncTokenClient(vendor_stub.url, clock=clock) as client:
            await client.get_token()
            logic.current = None
            clock.now += 1800
            # When 16 tasks ask at once
            tokens = await asyncio.gather(*(client.get_token() for _ in range(16)))
            return [t.access_token for t in tokens]

    tokens = run(scenario)
    # Then the first refreshed (tok-2), the others did not wait: tok-1; one request in all
    assert tokens == ["tok-2"] + ["tok-1"] * 15
    assert vendor_stub.count() == 2


def test_async_client_serves_one_event_loop_after_another() -> None:
    # Given a vendor that keeps connections alive, and one client used from two asyncio.run calls
    logic = Vendor()
    stub = Stub(logic).start()
    assert stub.server is not None
    stub.server.RequestHandlerClass.protocol_version = "HTTP/1.1"  # type: ignore[attr-defined]
    clock = FakeClock()
    client = AsyncTokenClient(stub.url, clock=clock)
    try:
        first = asyncio.run(client.get_token())
        # When the token has expired and a new loop asks / Then a new token, not a closed loop
        clock.now += 4000
        logic.current = None
        second = asyncio.run(client.get_token())
    finally:
        stub.stop()
    assert (first.access_token, second.access_token) == ("tok-1", "tok-2")


def test_async_client_survives_an_outage_and_remembers_retry_after() -> None:
    # Given a cached 3600 s token, then a vendor answering 503 Retry-After: 30
    logic = Vendor()
    down = False

    def answer(seen: Seen) -> Reply:
        if down:
            return 503, {"Retry-After": "30"}, {"error": "upstream_unavailable", "message": "x"}
        return logic(seen)

    stub = Stub(answer).start()
    clock = FakeClock()

    async def scenario() -> None:
        nonlocal down
        async with AsyncTokenClient(stub.url, clock=clock) as client:
            first = await client.get_token()
            down = True
            # When half the lifetime has passed / Then the cached token, after one try
            clock.now += 1800
            assert await client.get_token() is first
            assert stub.count() == 2
            # And within the Retry-After no request at all
            clock.now += 29
            assert await client.get_token() is first
            assert stub.count() == 2
            # When the token is inside the margin and the vendor still fails / Then it raises
            clock.now += 1500
            with pytest.raises(TokenVendorError) as caught:
                await client.get_token()
            assert (caught.value.status, caught.value.retry_after) == (503, 30)
            # And the next call within 30 s raises without a request, counting down
            clock.now += 10
            with pytest.raises(TokenVendorError) as again:
                await client.get_token()
            assert again.value.retry_after == 20
            assert stub.count() == 3

    try:
        run(scenario)
    finally:
        stub.stop()


def test_async_client_falls_back_to_get_on_unknown_token(
    igni: tuple[Stub, Stub, Vendor, Target],
) -> None:
    vendor_stub, _, logic, _ = igni

    def answer(seen: Seen) -> Reply:
        if seen.method == "POST":
            return 409, {}, {"error": "unknown_token", "message": "never issued"}
        return logic(seen)

    vendor_stub.respond = answer

    async def scenario() -> str:
        async with AsyncTokenClient(vendor_stub.url) as client:
            return (await client.invalidate("tok-elsewhere")).access_token

    # Given a vendor that does not know the token / When it is reported / Then GET follows
    assert run(scenario) == "tok-1"
    assert [s.method for s in vendor_stub.seen] == ["POST", "GET"]
    assert json.loads(vendor_stub.seen[0].body) == {"rejected_token": "tok-elsewhere"}


def test_async_client_honours_http_proxy(
    igni: tuple[Stub, Stub, Vendor, Target], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given HTTP_PROXY naming the stub and an endpoint where nothing listens
    vendor_stub, _, _, _ = igni
    monkeypatch.setenv("HTTP_PROXY", vendor_stub.url)
    endpoint = f"http://127.0.0.1:{_closed_port()}"

    async def scenario() -> str:
        async with AsyncTokenClient(endpoint) as client:
            return (await client.get_token()).access_token

    # When a token is asked for / Then it came through the proxy
    assert run(scenario) == "tok-1"
    assert vendor_stub.seen[0].target == endpoint + "/token"


def test_async_client_errors_are_token_vendor_errors() -> None:
    # Given an unknown AWS profile, and an endpoint where nothing listens
    session = botocore.session.Session(profile="nope")
    endpoint = f"http://127.0.0.1:{_closed_port()}"

    async def ask(client: AsyncTokenClient) -> str:
        async with client:
            return (await client.get_token()).access_token

    # When asked / Then TokenVendorError each time
    with pytest.raises(TokenVendorError) as profile:
        run(lambda: ask(AsyncTokenClient(endpoint, session=session)))
    assert profile.value.error == "no_credentials"
    with pytest.raises(TokenVendorError) as unreachable:
        run(lambda: ask(AsyncTokenClient(endpoint)))
    assert unreachable.value.error == "endpoint_unreachable"
    # And plain http to a remote host is refused before any request
    with pytest.raises(ValueError, match="use https"):
        AsyncTokenClient("http://10.0.0.1:3000")


# ---------------------------------------------------------------------------- imports


def test_importing_the_package_imports_neither_requests_nor_httpx() -> None:
    # Given a fresh interpreter / When the package and its client are used
    code = (
        "import sys, igni_token_client\n"
        "igni_token_client.TokenClient('http://127.0.0.1:1')\n"
        "print(sorted(m for m in ('requests', 'httpx', 'anyio') if m in sys.modules))\n"
        # And without httpx installed, the httpx names say which extra to install
        "sys.modules['httpx'] = None\n"
        "from igni_token_client import *\n"
        "try:\n"
        "    igni_token_client.IgniHttpxAuth\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    # Then neither was imported, and the error names igni-token-client[httpx]
    lines = done.stdout.splitlines()
    assert lines[0] == "[]"
    assert "pip install 'igni-token-client[httpx]'" in lines[1]
