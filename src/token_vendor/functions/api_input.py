"""What the API function accepts: the proxy event's shape, the `min_ttl` query parameter and
the refresh body. Anything else is InvalidRequest (400), never an exception that escapes."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from token_vendor.errors import InvalidRequest

MAX_REJECTED_TOKEN_BYTES = 16 * 1024
MAX_MIN_TTL_DIGITS = 9


def min_ttl(query: Mapping[str, str]) -> int:
    """The `min_ttl` query parameter: ASCII digits only, at most MAX_MIN_TTL_DIGITS."""
    raw = query.get("min_ttl")
    if raw is None:
        return 0
    if (
        not isinstance(raw, str)
        or not raw.isascii()
        or not raw.isdigit()
        or len(raw) > MAX_MIN_TTL_DIGITS
    ):
        raise InvalidRequest("min_ttl must be a non-negative whole number of seconds")
    return int(raw)


def rejected_token(event: Mapping[str, Any]) -> str:
    """The token a refresh reports, from the body `{"rejected_token": "<token>"}`."""
    body = event.get("body")
    if not isinstance(body, str) or not body:
        raise InvalidRequest('the body must be a JSON object {"rejected_token": "<token>"}')
    if event.get("isBase64Encoded") is True:
        try:
            body = base64.b64decode(body, validate=True).decode()
        except ValueError:
            # binascii.Error, UnicodeDecodeError, and the ValueError b64decode raises for a
            # body with non-ASCII characters: all mean the flag lies about the body.
            raise InvalidRequest("the body is flagged base64 but does not decode to text") from None
    if len(body) > MAX_REJECTED_TOKEN_BYTES:
        raise InvalidRequest("the body is too large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest(
            'the body must be a JSON object {"rejected_token": "<token>"}'
        ) from None
    if not is_unicode(data):
        # A JSON escape such as \ud800 decodes to a lone surrogate, which no UTF-8 encoder
        # (the token's fingerprint, the log line) accepts.
        raise InvalidRequest("the body holds a string that is not valid Unicode (a lone surrogate)")
    token = data.get("rejected_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise InvalidRequest('the body must be a JSON object {"rejected_token": "<token>"}')
    return token.strip()


def is_unicode(value: object) -> bool:
    """Whether every string in `value` (dict keys included) encodes as UTF-8: none holds a lone
    surrogate. Iterative, so that a deeply nested value cannot exhaust the stack."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def api_event_problem(event: dict[str, Any]) -> str | None:
    """What makes an API Gateway proxy event unusable, before Powertools parses it."""
    if not isinstance(event.get("httpMethod"), str) or not event["httpMethod"]:
        return "httpMethod"
    if not isinstance(event.get("path"), str):
        return "path"
    for name in ("headers", "queryStringParameters", "pathParameters", "stageVariables"):
        value = event.get(name)
        if value is not None and (
            not isinstance(value, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            return name
    for name in ("multiValueHeaders", "multiValueQueryStringParameters"):
        value = event.get(name)
        if value is not None and (
            not isinstance(value, dict)
            or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v)
                for k, v in value.items()
            )
        ):
            return name
    if event.get("body") is not None and not isinstance(event.get("body"), str):
        return "body"
    if event.get("isBase64Encoded") is not None and not isinstance(
        event.get("isBase64Encoded"), bool
    ):
        return "isBase64Encoded"
    context = event.get("requestContext")
    if context is not None and not isinstance(context, dict):
        return "requestContext"
    for name, value in event.items():
        if not is_unicode(name) or not is_unicode(value):
            # Named only when the name is plain: the message never echoes arbitrary text.
            plain = isinstance(name, str) and name.isascii() and name.isidentifier()
            field = name[:64] if plain else "a field"
            return f"{field} holds text that is not valid Unicode"
    return None
