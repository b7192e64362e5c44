"""The API Gateway emulation (local.gateway.server) on a loopback socket, with fake handlers.

Requests are signed with botocore's SigV4Auth and the documented test credentials, as the
local API requires; the handlers are tests/integration/fake_handlers.py, so these tests do not
depend on the real function.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.cfn_template import api_routes, load_template
from local.gateway.auth import LocalSigV4Verifier
from local.gateway.server import (
    MAX_PAYLOAD_BYTES,
    ApiServer,
    Handler,
    HttpRequest,
    MalformedProxyResponse,
    proxy_response_to_http,
)
from local.gateway.sigv4 import (
    DEFAULT_LOCAL_USER_ARN,
    LOCAL_TEST_ACCESS_KEY_ID,
    LOCAL_TEST_SECRET_ACCESS_KEY,
    MISSING_TOKEN,
)
from tests.integration import fake_handlers

HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=False)
TEST_KEYS = Credentials(LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY)
VERIFIER = LocalSigV4Verifier({LOCAL_TEST_ACCESS_KEY_ID: LOCAL_TEST_SECRET_ACCESS_KEY})
MISSING = {"message": MISSING_TOKEN}


def serve(handler: Handler = fake_handlers.echo) -> ApiServer:
    return ApiServer(handler, VERIFIER, port=0, quiet=True)


@pytest.fixture
def echo_api() -> Iterator[ApiServer]:
    with serve() as api:
        yield api


def signed(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    credentials: Credentials | None = TEST_KEYS,
) -> urllib3.BaseHTTPResponse:
    """The request signed by botocore's SigV4Auth (unsigned with ``credentials=None``)."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    if credentials is not None:
        SigV4Auth(credentials, "execute-api", "us-east-1").add_auth(request)
    return HTTP.request(method, url, body=body or None, headers=dict(request.headers.items()))


def echoed(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    assert response.status == 200, response.data
    return json.loads(response.data)  # type: ignore[no-any-return]


def raw_exchange(api: ApiServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; (status, lower-cased headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            if sep and len(rest) >= int(headers.get("content-length", "0")):
                return int(lines[0].split()[1]), headers, rest
    raise AssertionError(f"no complete answer: {data!r}")


# --- events and answers --------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_api_turns_a_get_into_a_rest_proxy_event(echo_api: ApiServer, prefix: str) -> None:
    # When a client GETs /token with a repeated query parameter, with or without the stage
    response = signed(
        "GET",
        f"{echo_api.base_url}{prefix}/token?min_ttl=60&x=1&x=2",
        headers={"User-Agent": "pytest-agent", "X-Custom": "yes"},
    )

    # Then the handler got a version 1.0 REST proxy event for the /token resource
    event = echoed(response)["event"]
    assert event["resource"] == "/token"
    assert event["path"] == "/token"
    assert event["httpMethod"] == "GET"
    assert event["queryStringParameters"] == {"min_ttl": "60", "x": "2"}
    assert event["multiValueQueryStringParameters"] == {"min_ttl": ["60"], "x": ["1", "2"]}
    assert event["headers"]["X-Custom"] == "yes"
    assert event["multiValueHeaders"]["X-Custom"] == ["yes"]
    assert event["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert event["headers"]["X-Amzn-Trace-Id"].startswith("Root=1-")
    assert event["pathParameters"] is None
    assert event["stageVariables"] is None
    assert event["body"] is None
    assert event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["stage"] == "v1"
    assert ctx["path"] == "/v1/token"
    assert ctx["resourcePath"] == "/token"
    assert ctx["httpMethod"] == "GET"
    assert ctx["accountId"] == "123456789012"
    assert ctx["apiId"]
    assert ctx["requestId"] == response.headers["x-amzn-RequestId"]
    # and the caller identity is the signer, filled as API Gateway does under AWS_IAM
    identity = ctx["identity"]
    assert identity["userArn"] == DEFAULT_LOCAL_USER_ARN
    assert identity["accountId"] == "123456789012"
    assert identity["caller"] == identity["user"]
    assert identity["accessKey"] == LOCAL_TEST_ACCESS_KEY_ID
    assert identity["sourceIp"] == "127.0.0.1"
    assert identity["userAgent"] == "pytest-agent"
    assert identity["cognitoIdentityId"] is None
    assert identity["cognitoAuthenticationType"] is None
    # and it ran with a fresh context counting down from 25 s
    assert 20_000 < echoed(response)["context"]["remaining_ms"] <= 25_000


def test_api_passes_bodies_and_translates_responses_back(echo_api: ApiServer) -> None:
    # When a client POSTs a JSON body to /token/refresh
    response = signed(
        "POST",
        f"{echo_api.base_url}/v1/token/refresh",
        body=b'{"rejected_token": "eyJ"}',
        headers={"Content-Type": "application/json"},
    )

    # Then the event carries it as text under the refresh resource
    event = echoed(response)["event"]
    assert event["resource"] == "/token/refresh"
    assert event["body"] == '{"rejected_token": "eyJ"}'
    assert event["isBase64Encoded"] is False
    # and the proxy response's headers and multi-value headers both reach the client
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert response.headers["Content-Type"] == "application/json"


def test_api_base64_encodes_binary_request_bodies() -> None:
    # Given a request whose body is not UTF-8
    headers = (("Host", "h"),)
    request = HttpRequest("POST", "/token/refresh", "", headers, b"\xff\xfe", "1.2.3.4", 3000)

    # When it becomes an event
    api = ApiServer(fake_handlers.echo, VERIFIER)
    event = api.request_to_event(request, {"userArn": "arn"}, ("/token/refresh", None), "id")

    # Then the body is base64 and flagged so
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\xfe"


def test_api_decodes_base64_response_bodies() -> None:
    # Given an API whose handler answers bytes, base64-encoded
    with serve(fake_handlers.binary) as api:
        # When a client calls it
        response = signed("GET", f"{api.base_url}/token")

    # Then the client gets the raw bytes and the handler's status
    assert response.status == 201
    assert response.data == b"\x00\x01\xfe\xff"
    assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "result",
    [
        None,
        {"body": "no status"},
        {"statusCode": 200, "body": {"not": "a string"}},
        {"statusCode": 200, "headers": {"X": ["list"]}},
        {"statusCode": 200, "body": "!!", "isBase64Encoded": True},
    ],
)
def test_malformed_proxy_responses_are_rejected(result: object) -> None:
    with pytest.raises(MalformedProxyResponse):
        proxy_response_to_http(result)


def test_proxy_response_defaults_like_api_gateway() -> None:
    # When a handler answers only a status
    response = proxy_response_to_http({"statusCode": 204})

    # Then the body is empty and the content type defaults to JSON
    assert response.status_code == 204
    assert response.get_data() == b""
    assert response.headers["Content-Type"] == "application/json"


def test_api_answers_502_when_the_handler_fails() -> None:
    # Given handlers that raise or answer something that is not a proxy response
    for handler in (fake_handlers.boom, lambda event, context: {"body": "no status"}):
        with serve(handler) as api:
            # When a client calls
            response = signed("GET", f"{api.base_url}/token")

        # Then it gets API Gateway's 502
        assert response.status == 502
        assert response.json() == {"message": "Internal server error"}


def test_api_serialises_invocations_like_one_execution_environment() -> None:
    # Given a slow handler that counts how many invocations overlap
    state = {"active": 0, "max": 0}
    lock = threading.Lock()

    def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
        with lock:
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
        time.sleep(0.05)
        with lock:
            state["active"] -= 1
        return {"statusCode": 200, "body": "{}"}

    with serve(slow) as api:
        # When four clients call at once
        threads = [
            threading.Thread(target=signed, args=("GET", f"{api.base_url}/token")) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

    # Then the handler ran one invocation at a time
    assert state["max"] == 1


# --- routing as API Gateway routes ---------------------------------------------------------------


def test_api_routes_path_parameters_with_literal_segments_first(echo_api: ApiServer) -> None:
    # Given the template's routes, where /token/{profile} sits beside /token/refresh
    assert ("GET", "/token/{profile}") in api_routes(load_template())

    # When clients call a profile's token, and POST the literal refresh path
    profile = echoed(signed("GET", f"{echo_api.base_url}/v1/token/reporting"))["event"]
    refresh = echoed(signed("POST", f"{echo_api.base_url}/v1/token/refresh"))["event"]

    # Then the variable is a path parameter, and the literal resource wins over the variable
    assert profile["resource"] == "/token/{profile}"
    assert profile["pathParameters"] == {"profile": "reporting"}
    assert profile["requestContext"]["resourcePath"] == "/token/{profile}"
    assert refresh["resource"] == "/token/refresh"
    assert refresh["pathParameters"] is None


@pytest.mark.parametrize("signer", [TEST_KEYS, None], ids=["signed", "unsigned"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nothing-here"),  # a path the API does not declare
        ("GET", "/elsewhere/token"),  # nor this one
        ("GET", "/v1/token/a/b"),  # deeper than /token/{profile}
        ("DELETE", "/v1/token"),  # a method /token does not declare
        ("POST", "/token"),
        ("GET", "/v1/token/refresh"),  # the literal resource, not /token/{profile}
        ("PUT", "/token/analytics/refresh"),
        ("HEAD", "/token"),
        ("OPTIONS", "/token"),
    ],
)
def test_an_undeclared_path_or_method_is_missing_authentication_token(
    method: str, path: str, signer: Credentials | None
) -> None:
    # Given an API whose function records every invocation
    invoked: list[dict[str, Any]] = []

    def recording(event: dict[str, Any], context: Any) -> dict[str, Any]:
        invoked.append(event)
        return fake_handlers.echo(event, context)

    with serve(recording) as api:
        # When a request comes for a path or method template.yaml's API does not declare
        response = signed(method, api.base_url + path, credentials=signer)

    # Then API Gateway's 403 answers it, signed or not, and the function never ran
    assert response.status == 403
    assert response.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    if method != "HEAD":
        assert response.json() == MISSING
    assert invoked == []


def test_the_route_is_checked_before_the_signature(echo_api: ApiServer) -> None:
    # When a request to an undeclared path carries a wrong signature, and one to /token too
    wrong = Credentials(LOCAL_TEST_ACCESS_KEY_ID, "not-the-secret")
    undeclared = signed("GET", f"{echo_api.base_url}/v1/nowhere", credentials=wrong)
    declared = signed("GET", f"{echo_api.base_url}/v1/token", credentials=wrong)

    # Then the first is the routing 403, the second the signature's
    assert undeclared.json() == MISSING
    assert declared.status == 403
    assert declared.headers["x-amzn-ErrorType"] == "InvalidSignatureException"


# --- answers the server gives by itself: JSON, never an HTML page --------------------------------


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    message = json.loads(body)["message"]
    assert message
    assert "<" not in message


def test_a_body_over_10_mb_is_413_json(echo_api: ApiServer) -> None:
    # When a request announces a body larger than API Gateway's payload limit
    head = f"POST /v1/token/refresh HTTP/1.1\r\nHost: h\r\nContent-Length: {MAX_PAYLOAD_BYTES + 1}"
    status, headers, body = raw_exchange(echo_api, f"{head}\r\n\r\n".encode())
    # Then 413 in JSON, before any of the body is read
    assert_json_error(status, headers, body, 413)


def test_a_uri_too_long_is_414_json(echo_api: ApiServer) -> None:
    # When the request line is longer than the server reads
    request = b"GET /v1/token?x=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    status, headers, body = raw_exchange(echo_api, request)
    # Then 414 in JSON
    assert_json_error(status, headers, body, 414)


@pytest.mark.parametrize(
    "header_lines",
    [b"X-Big: " + b"a" * 70_000 + b"\r\n", b"".join(b"X-%d: 1\r\n" % i for i in range(120))],
    ids=["one-long-header", "too-many-headers"],
)
def test_header_fields_too_large_are_431_json(echo_api: ApiServer, header_lines: bytes) -> None:
    # When a header line is too long, or there are too many headers
    request = b"GET /v1/token HTTP/1.1\r\nHost: h\r\n" + header_lines + b"\r\n"
    status, headers, body = raw_exchange(echo_api, request)
    # Then 431 in JSON
    assert_json_error(status, headers, body, 431)


def test_an_unknown_method_is_501_json(echo_api: ApiServer) -> None:
    status, headers, body = raw_exchange(echo_api, b"BREW /v1/token HTTP/1.1\r\nHost: h\r\n\r\n")
    assert_json_error(status, headers, body, 501)


def test_an_unknown_transfer_encoding_is_501_json(echo_api: ApiServer) -> None:
    request = b"POST /v1/token/refresh HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"
    status, headers, body = raw_exchange(echo_api, request)
    assert_json_error(status, headers, body, 501)


def test_a_chunked_body_is_411_json_and_never_reaches_the_function(echo_api: ApiServer) -> None:
    # When a body comes chunked, without Content-Length
    request = (
        b"POST /v1/token/refresh HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    status, headers, body = raw_exchange(echo_api, request)
    # Then 411 Length Required in JSON, and the connection is closed (the body is not read)
    assert_json_error(status, headers, body, 411)
    assert headers["connection"] == "close"


def test_a_malformed_request_line_is_400_json(echo_api: ApiServer) -> None:
    status, headers, body = raw_exchange(echo_api, b'GET /"x" HTTP/9.9 junk\r\n\r\n')
    assert_json_error(status, headers, body, 400)
