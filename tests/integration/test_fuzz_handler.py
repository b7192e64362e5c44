"""Property-based tests: malformed API Gateway events thrown at the handler.

Whatever arrives (fields missing or of the wrong type, huge or binary bodies, base64 flags that
lie, odd paths, methods, query strings and headers, lone surrogates raw or as JSON ``\\udXXX``
escapes, events that are not objects at all), the
handler answers a JSON response from the contract: 200 with a token for a valid request, else a
4xx or 5xx whose body is ``{"error": <a code of the contract>, "message": ...}``. It never
raises, and never answers ``internal_error`` (the handler's catch-all: an exception got loose).

The handler runs against the session's moto server and Igni stub, so a request the fuzzer gets
right really is answered with a token (from memory, after the first). Hypothesis is bounded and
derandomized, with no example database, so runs are fast and repeatable in CI.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from local.events import load_event
from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from token_vendor.functions import api as handler

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    # One stack (and one warm runtime) serves every example of a test, on purpose.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# The contract's error codes and the statuses each may come with.
STATUSES = {
    "invalid_request": {400},
    "access_denied": {403},
    "not_found": {404},
    "unknown_profile": {404},
    "method_not_allowed": {405},
    "unknown_token": {409},
    "refresh_rate_limited": {429},
    "configuration_error": {500},
    "internal_error": {500},
    "upstream_auth_failed": {502},
    "upstream_bad_response": {502},
    "upstream_unavailable": {503},
}
TOKEN_FIELDS = {"access_token", "token_type", "expires_in", "expires_at"}
API_MARKERS = ("httpMethod", "requestContext", "resource")
BASES = {
    "get": load_event("get_token"),
    "get_min_ttl": load_event("get_token_min_ttl"),
    "refresh": load_event("post_refresh"),
    "no_identity": load_event("get_token_no_identity"),
}
TOP_LEVEL = [
    "resource",
    "path",
    "httpMethod",
    "headers",
    "multiValueHeaders",
    "queryStringParameters",
    "multiValueQueryStringParameters",
    "pathParameters",
    "stageVariables",
    "requestContext",
    "body",
    "isBase64Encoded",
]
CONTEXT = ["identity", "httpMethod", "path", "stage", "resourcePath", "requestId", "accountId"]
IDENTITY = ["userArn", "accountId", "caller", "sourceIp", "user", "accessKey", "userAgent"]


def invoke(event: Any) -> dict[str, Any]:
    response: dict[str, Any] = handler.lambda_handler(event, FakeLambdaContext(timeout_s=10.0))
    return response


def headers_of(response: dict[str, Any]) -> dict[str, str]:
    merged = dict(response.get("headers") or {})
    for key, values in (response.get("multiValueHeaders") or {}).items():
        merged[key] = values[-1]
    return {k.lower(): v for k, v in merged.items()}


def check_answer(response: Any) -> tuple[int, dict[str, Any]]:
    """Assert that ``response`` is a proxy answer of the contract; returns (status, body)."""
    assert isinstance(response, dict), response
    json.dumps(response)  # API Gateway must be able to read it
    status = response["statusCode"]
    assert isinstance(status, int)
    assert not response.get("isBase64Encoded")
    headers = headers_of(response)
    assert headers.get("content-type") == "application/json", headers
    assert headers.get("cache-control") == "no-store", headers
    assert isinstance(response["body"], str)
    body = json.loads(response["body"])
    assert isinstance(body, dict)
    if status == 200:
        assert set(body) == TOKEN_FIELDS, body
        assert isinstance(body["access_token"], str)
        assert body["access_token"]
        return status, body
    assert 400 <= status <= 599, response
    assert set(body) == {"error", "message"}, body
    code, message = body["error"], body["message"]
    assert code in STATUSES, body
    assert code != "internal_error", f"an exception escaped the handler's logic: {body}"
    assert status in STATUSES[code], response
    assert isinstance(message, str)
    assert message
    assert "Traceback" not in message
    assert 'File "' not in message
    if status == 503:
        assert int(headers["retry-after"]) >= 1
    if status == 405:
        assert headers.get("allow")
    return status, body


@pytest.fixture
def warm(stack: LocalStack) -> str:
    """The stack's token, already vended once: valid fuzzed requests are answered from memory."""
    status, body = check_answer(invoke(load_event("get_token")))
    assert status == 200
    token: str = body["access_token"]
    return token


# ---------------------------------------------------------------------------- strategies

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
# Text an attacker controls: control characters, surrogate-free unicode, NULs, long runs.
ODD_TEXT = st.text(max_size=80) | st.sampled_from(
    ["", " ", "\x00", "\r\n", "../..", "%2e%2e%2f", "\u202e", "🙂" * 50, "a" * 10_000]
)
# A lone surrogate: a str Python can hold but no UTF-8 encoder accepts. Lambda's JSON event
# decoding or a JSON escape such as \ud800 in a body can produce one; hypothesis's text()
# never does, so these are drawn on purpose.
SURROGATE = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
WITH_SURROGATE = st.builds(
    lambda before, lone, after: before + lone + after,
    st.text(max_size=8),
    SURROGATE,
    st.text(max_size=8),
)
# The six characters `\udXXX` in JSON text: json.loads turns them into a lone surrogate (the
# text around them comes from json.dumps, whose own escapes are complete pairs).
SURROGATE_ESCAPE = st.builds(
    lambda before, code, after: (
        json.dumps(before)[1:-1] + f"\\u{code:04x}" + json.dumps(after)[1:-1]
    ),
    st.text(max_size=8),
    st.integers(min_value=0xD800, max_value=0xDFFF),
    st.text(max_size=8),
)
HUGE = st.sampled_from([0, 1, 16_383, 16_384, 16_385, 300_000, 6_000_000]).map(lambda n: "A" * n)
METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get", "Get", "TRACE", "CONNECT"]
) | st.text(min_size=1, max_size=12)
PATHS = (
    st.sampled_from(
        [
            "/token",
            "/token/",
            "//token",
            "/token/default",
            "/token/refresh",
            "/token/default/refresh",
            "/v1/token",
            "/token/a/b/c",
            "/TOKEN",
            "/token/%2e%2e",
            "/token/..",
            "",
            "/",
            "token",
            "/token?min_ttl=1",
            "/token#x",
            "/token/" + "p" * 300,
            "/token/\ud800",
            "/token/\udfff/refresh",
        ]
    )
    | st.text(max_size=60).map(lambda s: "/" + s)
    | WITH_SURROGATE.map(lambda s: "/token/" + s)
)
STR_MAPS = st.none() | st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=6)
MIN_TTLS = st.sampled_from(
    [
        *("0", "1", "60", "172500", "172501", "999999999", "1000000000", "-1", "1e3", "0x10"),
        # Digits that are not ASCII (Arabic-Indic three, fullwidth one), signs, blanks.
        *(" 5", "5 ", "\u0663", "\uff11", "", "NaN", "3.5", "+1", "00000001"),
        # Lone surrogates, alone and after digits.
        *("\ud800", "60\udc00"),
    ]
) | st.integers(min_value=0, max_value=10**12).map(str)


@st.composite
def mutated_api_events(draw: st.DrawFn) -> dict[str, Any]:
    """A real event with fields dropped or replaced by values of any type."""
    event = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    for key in draw(st.lists(st.sampled_from(TOP_LEVEL), unique=True, max_size=4)):
        if draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = draw(JUNK)
    context = event.get("requestContext")
    if isinstance(context, dict):
        for key in draw(st.lists(st.sampled_from(CONTEXT), unique=True, max_size=3)):
            if draw(st.booleans()):
                context.pop(key, None)
            else:
                context[key] = draw(JUNK)
        identity = context.get("identity")
        if isinstance(identity, dict):
            for key in draw(st.lists(st.sampled_from(IDENTITY), unique=True, max_size=3)):
                if draw(st.booleans()):
                    identity.pop(key, None)
                else:
                    identity[key] = draw(JUNK | ODD_TEXT)
    return event


@st.composite
def refresh_bodies(draw: st.DrawFn) -> tuple[str | None, bool]:
    """A POST body and its isBase64Encoded flag, which may lie either way."""
    kind = draw(
        st.sampled_from(
            [
                *("json", "text", "binary", "huge", "deep", "none", "b64-json", "b64-bin"),
                *("escape", "b64-escape", "lone"),
            ]
        )
    )
    body: str | None
    if kind == "json":
        body = json.dumps(
            draw(
                st.dictionaries(
                    st.sampled_from(["rejected_token", "token", ""]) | st.text(max_size=5),
                    JUNK | ODD_TEXT,
                    max_size=3,
                )
                | JUNK
            )
        )
    elif kind == "text":
        body = draw(ODD_TEXT)
    elif kind == "binary":
        body = draw(st.binary(max_size=200)).decode("latin-1")
    elif kind == "huge":
        body = json.dumps({"rejected_token": draw(HUGE)})
    elif kind == "deep":
        depth = draw(st.sampled_from([10, 1_000, 100_000]))
        body = "[" * depth + "]" * depth
    elif kind == "none":
        body = None
    elif kind in ("escape", "b64-escape"):
        # A lone surrogate as a JSON escape: in the token, in another key, or nested
        escaped = draw(SURROGATE_ESCAPE)
        body = (
            draw(
                st.sampled_from(
                    [
                        '{"rejected_token": "%s"}',
                        '{"rejected_token": "t", "%s": 1}',
                        '{"rejected_token": "t", "x": ["%s"]}',
                    ]
                )
            )
            % escaped
        )
        if kind == "b64-escape":
            body = base64.b64encode(body.encode()).decode()
    elif kind == "lone":
        body = json.dumps({"rejected_token": draw(WITH_SURROGATE)}, ensure_ascii=False)
    elif kind == "b64-json":
        payload = json.dumps({"rejected_token": draw(ODD_TEXT)}).encode()
        body = base64.b64encode(payload).decode()
    else:
        body = base64.b64encode(draw(st.binary(max_size=200))).decode()
    return body, draw(st.booleans())


def expected_refresh(body: str | None, flagged: bool) -> bool:
    """Whether the handler should accept this body as a refresh request (an oracle)."""
    if not body or not is_unicode(body):
        return False
    text = body
    if flagged:
        try:
            text = base64.b64decode(body, validate=True).decode()
        except ValueError:
            return False
    if len(text) > 16 * 1024:
        return False
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not is_unicode(json.dumps(data, ensure_ascii=False)):
        return False
    token = data.get("rejected_token") if isinstance(data, dict) else None
    return isinstance(token, str) and bool(token.strip())


def is_unicode(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@st.composite
def events_with_a_lone_surrogate(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request but for one lone surrogate, raw anywhere or as a JSON escape in a body."""
    place = draw(
        st.sampled_from(
            [
                *("body-escape", "body-escape-b64", "body", "min_ttl", "query-key", "query"),
                *("header-key", "header", "multi-header", "profile", "path", "user-arn"),
                *("source-ip", "stage-variable", "method"),
            ]
        )
    )
    if place.startswith("body-escape"):
        event = copy.deepcopy(BASES["refresh"])
        event["body"] = '{"rejected_token": "' + draw(SURROGATE_ESCAPE) + '"}'
        if place == "body-escape-b64":
            event["body"] = base64.b64encode(event["body"].encode()).decode()
            event["isBase64Encoded"] = True
        return event
    event = copy.deepcopy(BASES[draw(st.sampled_from(["get", "get_min_ttl", "refresh"]))])
    lone = draw(WITH_SURROGATE)
    if place == "body":
        event["body"] = draw(
            st.sampled_from([lone, json.dumps({"rejected_token": lone}, ensure_ascii=False)])
        )
    elif place in ("min_ttl", "query-key", "query"):
        key, value = {"min_ttl": ("min_ttl", lone), "query-key": (lone, "1"), "query": ("x", lone)}[
            place
        ]
        event["queryStringParameters"] = {key: value}
        event["multiValueQueryStringParameters"] = {key: [value]}
    elif place == "header-key":
        event["headers"] = {**(event.get("headers") or {}), lone: "x"}
    elif place == "header":
        event["headers"] = {**(event.get("headers") or {}), "X-Custom": lone}
    elif place == "multi-header":
        event["multiValueHeaders"] = {**(event.get("multiValueHeaders") or {}), "X-Custom": [lone]}
    elif place in ("profile", "path"):
        event["path"] = "/token/" + lone
        event["resource"] = "/token/{profile}"
        if place == "profile":
            event["pathParameters"] = {"profile": lone}
    elif place == "user-arn":
        event["requestContext"]["identity"]["userArn"] = "arn:" + lone
    elif place == "source-ip":
        event["requestContext"]["identity"]["sourceIp"] = lone
    elif place == "stage-variable":
        event["stageVariables"] = {"x": lone}
    else:
        event["httpMethod"] = "GET" + lone
    return event


# --------------------------------------------------------------------------------- tests


@FUZZ
@given(event=st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.lists(JUNK))
def test_an_event_that_is_not_an_object_is_a_json_400(event: Any) -> None:
    status, body = check_answer(invoke(event))
    assert (status, body["error"]) == (400, "invalid_request")


@FUZZ
@given(event=mutated_api_events())
def test_a_mutated_api_event_gets_an_answer_of_the_contract(
    warm: str, event: dict[str, Any]
) -> None:
    # Given an API Gateway event with any fields dropped or replaced by values of any type
    # When the handler gets it
    response = invoke(event)
    # Then the answer is one of the contract's (never an exception, never internal_error)
    check_answer(response)


@FUZZ
@given(
    event=st.dictionaries(
        st.sampled_from([*TOP_LEVEL, "source", "detail", "action"]) | st.text(max_size=10),
        JUNK,
        max_size=6,
    )
)
# Found by this test: an object with HTTP fields but none of httpMethod, requestContext or
# resource was taken for a schedule event and answered without a statusCode.
@example(event={"path": None})
@example(event={"headers": {}, "body": "{}"})
@example(event={"source": "igni-token-vendor.prewarm", "action": "prewarm"})
@example(event={"source": "aws.secretsmanager", "detail": {"labelUpdated": "AWSCURRENT"}})
def test_any_object_is_answered_as_an_http_request(warm: str, event: dict[str, Any]) -> None:
    # Given any object, an API Gateway request or not (the schedule's and the rotation rule's
    # events go to the maintenance function, never to this one)
    response = invoke(event)
    # Then the answer is one of the contract's, never raised; without httpMethod and
    # requestContext it is not an API Gateway request at all: 400 invalid_request
    status, body = check_answer(response)
    if "httpMethod" not in event and "requestContext" not in event:
        assert (status, body["error"]) == (400, "invalid_request")


@FUZZ
@given(method=METHODS, path=PATHS)
def test_any_method_on_any_path(warm: str, method: str, path: str) -> None:
    event = copy.deepcopy(BASES["get"])
    event["httpMethod"] = method
    event["path"] = path
    status, body = check_answer(invoke(event))
    if status == 200:
        # API Gateway sends methods in capitals; the resolver matches them in any case
        assert method.upper() == "GET"
        assert body["access_token"] == warm
    else:
        assert body["error"] in {
            "not_found",
            "method_not_allowed",
            "unknown_profile",
            "invalid_request",
            "access_denied",
        }, body


@FUZZ
@given(
    headers=STR_MAPS,
    query=STR_MAPS,
    min_ttl=st.none() | MIN_TTLS,
    body=st.none() | ODD_TEXT | HUGE,
    flagged=st.booleans(),
)
def test_odd_headers_queries_and_bodies_on_a_valid_get(
    warm: str,
    *,
    headers: dict[str, str] | None,
    query: dict[str, str] | None,
    min_ttl: str | None,
    body: str | None,
    flagged: bool,
) -> None:
    # Given a valid GET /token with arbitrary headers, query parameters and a body it ignores
    event = copy.deepcopy(BASES["get"])
    event["headers"] = headers
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()} if headers else None
    params = dict(query or {})
    params.pop("min_ttl", None)
    if min_ttl is not None:
        params["min_ttl"] = min_ttl
    event["queryStringParameters"] = params or None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in params.items()} or None
    event["body"] = body
    event["isBase64Encoded"] = flagged
    # When the handler gets it
    status, answer = check_answer(invoke(event))
    # Then only min_ttl decides: a whole number the token can honour gives a token (between
    # that and the most any token can give, a fresh one may be minted); anything else is
    # invalid_request
    honourable = min_ttl is None or (
        min_ttl.isascii() and min_ttl.isdigit() and len(min_ttl) <= 9 and int(min_ttl) < 172000
    )
    if honourable:
        assert status == 200, answer
    else:
        assert status in (200, 400)
        if status == 400:
            assert answer["error"] == "invalid_request"


@FUZZ
@given(case=refresh_bodies())
# Found by this test: a body flagged base64 holding a non-ASCII character made b64decode raise
# a plain ValueError, which escaped as a 500 internal_error.
@example(case=("\x80", True))
@example(case=("é" * 8, True))
def test_refresh_bodies_huge_binary_and_lying_about_base64(
    warm: str, case: tuple[str | None, bool]
) -> None:
    body, flagged = case
    # Given POST /token/refresh with any body and a base64 flag that may lie
    event = copy.deepcopy(BASES["refresh"])
    event["body"] = body
    event["isBase64Encoded"] = flagged
    # When the handler gets it
    status, answer = check_answer(invoke(event))
    # Then a well-formed report of a token this service never vended is 409 unknown_token
    # (a refresh is not a read: no token in the answer), and anything else is invalid_request
    if expected_refresh(body, flagged):
        assert (status, answer["error"]) == (409, "unknown_token"), answer
        assert warm not in json.dumps(answer)
    else:
        assert (status, answer["error"]) == (400, "invalid_request"), answer


@FUZZ
@given(event=events_with_a_lone_surrogate())
# Found by this test: the JSON escape \ud800 as the reported token reached the fingerprint's
# sha256 (token.encode()) and escaped as a 500 internal_error.
@example(event=load_event("post_refresh", body='{"rejected_token": "\\ud800"}'))
def test_a_lone_surrogate_anywhere_is_400_invalid_request(warm: str, event: dict[str, Any]) -> None:
    # Given a request that would be valid but for one lone surrogate (raw, or a JSON escape)
    # When the handler gets it
    status, answer = check_answer(invoke(event))
    # Then it is a JSON 400 invalid_request, never a 500
    assert (status, answer["error"]) == (400, "invalid_request"), answer


@FUZZ
@given(
    user_arn=st.none() | JUNK | ODD_TEXT | st.text(max_size=40).map(lambda s: "arn:" + s),
    identity=st.none() | JUNK,
)
def test_any_caller_identity(warm: str, user_arn: Any, identity: Any) -> None:
    # Given a GET /token whose identity (or the userArn within it) is anything at all
    event = copy.deepcopy(BASES["get"])
    if identity is not None:
        event["requestContext"]["identity"] = identity
    else:
        event["requestContext"]["identity"]["userArn"] = user_arn
    # Then only an ARN-shaped string of an IAM caller is served; anything else is access_denied
    status, answer = check_answer(invoke(event))
    if identity is None:
        arn = user_arn
    else:
        arn = identity.get("userArn") if isinstance(identity, dict) else None
    served = isinstance(arn, str) and arn.startswith("arn:")
    if served:
        assert status == 200, answer
    else:
        assert (status, answer["error"]) == (403, "access_denied"), answer
