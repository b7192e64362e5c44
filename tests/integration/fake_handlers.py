"""Trivial Lambda handlers for testing the local tools without the real function.

Importable by name (``tests.integration.fake_handlers:echo``) so subprocesses such as
``python -m local.invoke --handler ...`` and ``python -m local.run --handler ...`` can use them.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

ENV_SEEN = ("IGNI_SECRET_ID", "TOKEN_TABLE_NAME", "TOKEN_KMS_KEY_ID", "IGNI_TOKEN_URL")


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """200 with the event, a few context fields and the function env it ran with."""
    body = {
        "event": event,
        "context": {
            "function_name": context.function_name,
            "aws_request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
        },
        "env": {name: os.environ.get(name) for name in ENV_SEEN},
    }
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def binary(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A base64-encoded binary body, as a function returning bytes through API Gateway does."""
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/octet-stream"},
        "body": base64.b64encode(b"\x00\x01\xfe\xff").decode(),
        "isBase64Encoded": True,
    }


def boom(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Raises, like a function with an unhandled error."""
    raise RuntimeError("boom")
