"""Calling the API function in this process, and reading its proxy answers (shared by tests)."""

from __future__ import annotations

import json
from typing import Any

from local.lambda_context import FakeLambdaContext
from token_vendor.functions import api as handler


def invoke(event: Any, timeout_s: float = 25.0) -> dict[str, Any]:
    """One invocation of the API function, in this process's execution environment."""
    response: dict[str, Any] = handler.lambda_handler(event, FakeLambdaContext(timeout_s=timeout_s))
    return response


def body(response: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response["body"])
    return parsed


def headers_of(response: dict[str, Any]) -> dict[str, str]:
    """Every header, lower-cased, wherever the resolver put it (single- or multi-value)."""
    merged = dict(response.get("headers") or {})
    for key, values in (response.get("multiValueHeaders") or {}).items():
        merged[key] = values[-1]
    return {str(k).lower(): str(v) for k, v in merged.items()}


def header(response: dict[str, Any], name: str) -> str:
    found = headers_of(response).get(name.lower())
    if found is None:
        raise AssertionError(f"no {name} header in {response}")
    return found
