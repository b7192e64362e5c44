"""Every log line of an API invocation carries API Gateway's request id as ``correlation_id``.

A caller reports the ``x-amzn-RequestId`` header of a failed call; API Gateway puts the same id
in ``requestContext.requestId``, and Powertools' ``correlation_id_path`` copies it into each log
line, so one CloudWatch Logs Insights filter (``correlation_id = "<id>"``) finds the whole story.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.events import load_event
from local.gateway.auth import LocalSigV4Verifier
from local.gateway.server import ApiServer
from local.gateway.sigv4 import LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY
from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from tests.api_calls import invoke
from token_vendor.functions import maintenance
from token_vendor.observability import logger as powertools_logger


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The function's Powertools log lines so far, parsed (EMF metric lines are not log lines)."""
    buffer = io.StringIO()
    stream = logging.StreamHandler(buffer)
    stream.setFormatter(powertools_logger.registered_formatter)
    std_logger = logging.getLogger(powertools_logger.name)
    std_logger.addHandler(stream)

    def read() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
        buffer.seek(0)
        buffer.truncate()
        return [line for line in lines if "_aws" not in line]

    yield read
    std_logger.removeHandler(stream)


def test_every_log_line_of_an_invocation_carries_its_request_id(
    stack: LocalStack, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    # Given the sample GET /token event, whose requestContext.requestId API Gateway also sends
    # back to the caller as x-amzn-RequestId
    event = load_event("get_token", secret_arn=stack.secret_arn, secret_name=stack.secret_name)
    request_id = event["requestContext"]["requestId"]
    assert request_id == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"

    # When the handler serves it (a cache miss: an upstream call, then the audit line)
    assert invoke(event)["statusCode"] == 200
    lines = log_lines()

    # Then there are log lines, and every one carries that id
    assert {line["message"] for line in lines} >= {"igni token request", "token vended"}
    assert [line.get("correlation_id") for line in lines] == [request_id] * len(lines)


def test_the_next_invocations_carry_their_own_id_and_none_leaks_into_events(
    stack: LocalStack, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    # Given one request served already
    secret = {"secret_arn": stack.secret_arn, "secret_name": stack.secret_name}
    assert invoke(load_event("get_token", **secret))["statusCode"] == 200
    log_lines()

    # When a second request (another id) is served from memory, a third fails (unknown
    # profile), and a scheduled pre-warm event (no request id) follows (the maintenance
    # function's handler, in the same process here: nothing of a request may leak into it)
    second = load_event("get_token", requestContext__requestId="second-request-id", **secret)
    third = load_event(
        "get_token",
        path="/token/nobody",
        resource="/token/{profile}",
        pathParameters={"profile": "nobody"},
        requestContext__requestId="third-request-id",
        **secret,
    )
    assert invoke(second)["statusCode"] == 200
    second_lines = log_lines()
    assert invoke(third)["statusCode"] == 404
    third_lines = log_lines()
    maintenance.lambda_handler(load_event("prewarm", **secret), FakeLambdaContext())
    prewarm_lines = log_lines()

    # Then each request's lines carry its own id, and the event's lines carry none
    assert second_lines
    assert {line.get("correlation_id") for line in second_lines} == {"second-request-id"}
    assert third_lines
    assert {line.get("correlation_id") for line in third_lines} == {"third-request-id"}
    assert prewarm_lines
    assert all("correlation_id" not in line for line in prewarm_lines)


def test_the_local_api_answers_with_the_request_id_it_gave_the_function() -> None:
    # Given the local API Gateway in front of a function that echoes its event's request id
    seen: list[str] = []

    def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event["requestContext"]["requestId"])
        return {"statusCode": 200, "body": "{}"}

    keys = Credentials(LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY)
    verifier = LocalSigV4Verifier({keys.access_key: keys.secret_key})
    with ApiServer(echo, verifier, port=0, quiet=True) as api:
        # When a signed request comes
        request = AWSRequest(method="GET", url=f"{api.base_url}/v1/token")
        SigV4Auth(keys, "execute-api", "us-east-1").add_auth(request)
        response = urllib3.request("GET", request.url, headers=dict(request.headers.items()))

    # Then its x-amzn-RequestId header is the requestContext.requestId the function saw
    assert response.status == 200
    assert response.headers["x-amzn-RequestId"] == seen[0]
