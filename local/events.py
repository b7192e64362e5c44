"""Load the sample events in events/, with overrides and the local stack's secret filled in.

The events name the secret ``igni-token-vendor/local/default`` (ARN
:data:`PLACEHOLDER_SECRET_ARN`); :func:`load_event` swaps in a real stack's secret so that a
``Secret Label Updated`` event matches the stack under test, as the template's rule would.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
PLACEHOLDER_SECRET_NAME = "igni-token-vendor/local/default"
PLACEHOLDER_SECRET_ARN = (
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:igni-token-vendor/local/default-AbCdEf"
)

Event = dict[str, Any]


def event_path(name: str) -> Path:
    """events/<name>.json; ``name`` may carry the .json suffix or be a path to any file."""
    candidate = Path(name)
    if candidate.suffix == ".json" and candidate.exists():
        return candidate
    return EVENTS_DIR / (name if name.endswith(".json") else f"{name}.json")


def substitute_secret(event: Any, secret_arn: str, secret_name: str) -> Any:
    """Replace the placeholder secret ARN and name everywhere in ``event`` (a copy is returned)."""
    if isinstance(event, dict):
        return {k: substitute_secret(v, secret_arn, secret_name) for k, v in event.items()}
    if isinstance(event, list):
        return [substitute_secret(v, secret_arn, secret_name) for v in event]
    if isinstance(event, str):
        # The ARN holds the name, so it goes first.
        return event.replace(PLACEHOLDER_SECRET_ARN, secret_arn).replace(
            PLACEHOLDER_SECRET_NAME, secret_name
        )
    return event


def set_path(event: Event, path: str, value: Any) -> None:
    """Set ``event[a][b][c] = value`` for path ``a__b__c``, creating missing objects."""
    keys = path.split("__")
    node = event
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def set_query(event: Event, params: Mapping[str, str] | None) -> None:
    """Set both query-string maps as API Gateway would (None when there is no query string)."""
    event["queryStringParameters"] = dict(params) if params else None
    event["multiValueQueryStringParameters"] = (
        {k: [v] for k, v in params.items()} if params else None
    )


def set_headers(event: Event, headers: Mapping[str, str] | None) -> None:
    """Set both header maps as API Gateway would."""
    event["headers"] = dict(headers) if headers else None
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()} if headers else None


def load_event(
    name: str,
    /,
    *,
    secret_arn: str | None = None,
    secret_name: str | None = None,
    **overrides: Any,
) -> Event:
    """Read an event and apply ``overrides``.

    Each override key is a path with ``__`` between levels, e.g.
    ``requestContext__identity__userArn=None`` or ``body='{"x": 1}'``. Overriding
    ``queryStringParameters`` or ``headers`` also sets its multi-value twin unless that is
    overridden too, so the two stay consistent as API Gateway keeps them.
    """
    event = cast(Event, json.loads(event_path(name).read_text(encoding="utf-8")))
    if secret_arn or secret_name:
        event = substitute_secret(
            event,
            secret_arn or PLACEHOLDER_SECRET_ARN,
            secret_name or (secret_arn or "").split(":secret:")[-1].rsplit("-", 1)[0],
        )
    for path, value in overrides.items():
        if path == "queryStringParameters" and "multiValueQueryStringParameters" not in overrides:
            set_query(event, value)
        elif path == "headers" and "multiValueHeaders" not in overrides:
            set_headers(event, value)
        else:
            set_path(event, path, copy.deepcopy(value))
    return event
