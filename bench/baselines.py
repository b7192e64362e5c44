"""The two baselines the benchmark runs beside the vendor, as Lambda handlers.

Both answer the same API Gateway proxy events with the same body and `X-Token-Cache` header as
`token_vendor.functions.api`, read the Igni credentials from Secrets Manager (cached per environment
for `SECRET_CACHE_SECONDS`, as the vendor does) and exchange them with
`token_vendor.igni.client.IgniClient`. Neither touches DynamoDB.

`naive_handler`
    Exchanges on every request: what a function without any token cache does.
`per_environment_handler`
    A memory cache per execution environment, what each service gets from an OAuth client
    library: the token is reused while it is fresh, then the next request refreshes it. It
    follows the vendor's own freshness policy, read from the same environment variables
    (`TOKEN_REFRESH_FRACTION`, `TOKEN_MIN_REMAINING_*`; the benchmark sets them to the
    vendor's): served while `is_fresh` (75 % of the recorded lifetime by default) and
    `is_vendable` (the `min(300 s, 10 %)` margin), as the vendor's memory tier is. Both variants
    then replace a token at the same point and the comparison isolates the shared tier. (A
    library's fixed skew of 30-60 s would turn the cache off altogether for the benchmark's
    short tokens.) No tier is shared, so E environments make E exchanges per token lifetime.

`X-Token-Cache` is `upstream` when the invocation called Igni, `memory` otherwise. Like the
vendor, both build their clients on the first request, answer `GET /token` for the default
profile and 404 `unknown_profile` for `GET /token/<other>` (the benchmark's warm-up request).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import boto3
import urllib3
from botocore.config import Config as BotoConfig

from token_vendor.aws.secret_store import SecretStore
from token_vendor.config import DEFAULT_PROFILE, Config, load_config
from token_vendor.errors import VendorError
from token_vendor.igni.client import IgniClient
from token_vendor.igni.token_url import token_url_for
from token_vendor.models import CachedToken
from token_vendor.vending.freshness import effective_expiry, is_fresh, is_vendable

MEMORY = "memory"
UPSTREAM = "upstream"
RESPONSE_RESERVE_MS = 750
DEFAULT_REMAINING_MS = 25_000
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class _Runtime:
    config: Config
    secrets: SecretStore
    igni: IgniClient
    token: CachedToken | None = None


_runtime: _Runtime | None = None
_lock = threading.Lock()


def reset_runtime() -> None:
    """A brand-new execution environment: no clients, no cached secret, no cached token."""
    global _runtime  # noqa: PLW0603 - one runtime per execution environment
    _runtime = None


def _get_runtime() -> _Runtime:
    global _runtime  # noqa: PLW0603
    if _runtime is None:
        config = load_config()
        boto_config = BotoConfig(
            connect_timeout=config.aws_connect_timeout,
            read_timeout=config.aws_read_timeout,
            retries={"mode": "standard", "max_attempts": config.aws_max_attempts},
        )
        session = boto3.session.Session()
        _runtime = _Runtime(
            config=config,
            secrets=SecretStore(
                session.client("secretsmanager", config=boto_config),
                cache_seconds=config.secret_cache_seconds,
            ),
            igni=IgniClient(
                urllib3.PoolManager(num_pools=4, maxsize=2, retries=False),
                connect_timeout=config.igni_connect_timeout,
                read_timeout=config.igni_read_timeout,
                max_attempts=config.igni_max_attempts,
            ),
        )
    return _runtime


def _exchange(runtime: _Runtime, context: Any) -> CachedToken:
    profile = runtime.config.profile(DEFAULT_PROFILE)
    if profile is None:
        raise RuntimeError("the baselines serve the default profile only (IGNI_SECRET_ID)")
    credentials = runtime.secrets.current(profile.secret_id)
    remaining_ms = DEFAULT_REMAINING_MS
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if callable(getter):
        remaining_ms = int(getter())
    deadline = time.monotonic() + max(0, remaining_ms - RESPONSE_RESERVE_MS) / 1000.0
    issued_at = time.time()
    issued = runtime.igni.exchange(
        token_url_for(profile, credentials.workspace),
        credentials.client_id,
        credentials.client_secret,
        deadline=deadline,
        scope=profile.scope,
    )
    return CachedToken(
        access_token=issued.access_token,
        token_type=issued.token_type,
        issued_at=issued_at,
        expires_at=effective_expiry(issued_at, issued.expires_in, issued.access_token),
        secret_version=credentials.version_id,
    )


def _answer(status: int, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **NO_STORE, **headers},
        "multiValueHeaders": {},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _token_answer(token: CachedToken, tier: str) -> dict[str, Any]:
    now = time.time()
    body = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": max(0, math.floor(token.expires_at - now)),
        "expires_at": token.expires_at,
    }
    return _answer(200, body, {"X-Token-Cache": tier})


def _serve(event: Any, context: Any, *, cache: bool) -> dict[str, Any]:
    if not isinstance(event, dict) or event.get("httpMethod") != "GET":
        return _answer(404, {"error": "not_found", "message": "only GET /token"}, {})
    path = str(event.get("path") or "").rstrip("/")
    try:
        runtime = _get_runtime()
        if path != "/token":
            message = "the baselines serve the default profile only"
            return _answer(404, {"error": "unknown_profile", "message": message}, {})
        if not cache:
            return _token_answer(_exchange(runtime, context), UPSTREAM)
        with _lock:
            token, now, policy = runtime.token, time.time(), runtime.config.freshness
            if (
                token is not None
                and is_fresh(token, now, policy)
                and is_vendable(token, now, policy)
            ):
                return _token_answer(token, MEMORY)
            runtime.token = token = _exchange(runtime, context)
            return _token_answer(token, UPSTREAM)
    except VendorError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return _answer(exc.status, {"error": exc.code, "message": exc.message}, headers)
    except Exception as exc:
        # An answer rather than a dead environment: the benchmark counts it as an error.
        message = f"unexpected {type(exc).__name__}"
        return _answer(500, {"error": "internal_error", "message": message}, {})


def naive_handler(event: Any, context: Any) -> dict[str, Any]:
    """Exchange on every request."""
    return _serve(event, context, cache=False)


def per_environment_handler(event: Any, context: Any) -> dict[str, Any]:
    """Reuse this environment's token while it is fresh (the vendor's policy)."""
    return _serve(event, context, cache=True)
