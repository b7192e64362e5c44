"""Lambda entry point of the API function: API Gateway REST proxy events, and nothing else.

The pre-warm schedule and the Secret Label Updated rule invoke the maintenance function
(maintenance.py); the rotation function is rotation.py. A direct invoke with any other event is
answered 400 invalid_request in the proxy's shape: no other event shape is guessed at.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from token_vendor.config import DEFAULT_PROFILE, Config, Profile, load_config
from token_vendor.errors import AccessDenied, UnknownProfile, VendorError
from token_vendor.functions.api_input import api_event_problem, min_ttl, rejected_token
from token_vendor.functions.deadline import RESPONSE_RESERVE_MS, invocation_deadline
from token_vendor.functions.runtime import (
    assemble_runtime,
    build_runtime,
    current_runtime,
    get_runtime,
    set_runtime,
)
from token_vendor.observability import logger, metrics
from token_vendor.vending.answers import Vended

# API Gateway's REST integration gives up at 29 s; answer well before it whatever the timeout.
API_GATEWAY_BUDGET_MS = 28_000
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

app = APIGatewayRestResolver()

# --------------------------------------------------------------------------- SnapStart
# Lambda sets AWS_LAMBDA_INITIALIZATION_TYPE to "snap-start" for the init that a SnapStart
# snapshot is taken of (the template's SnapStart parameter turns it on). Then the configuration
# and clients are built here, during init, so that a restored environment does not pay for
# them. Nothing is fetched: no secret, token or lease is ever in a snapshot. Every environment
# restored from one snapshot starts with the same memory, so after_restore() gives each its
# own lease owner id, random state and connections. See docs/deploying.md.
SNAPSTART = "snap-start"


def after_restore() -> None:
    """Run by the runtime in each environment restored from a snapshot, before its first event."""
    # The snapshot's random state is every restored environment's: jitter would be in lockstep.
    random.seed(os.urandom(32))
    runtime = current_runtime()
    if runtime is None:
        return
    # Connections opened before the snapshot are shared, or dead, after it.
    runtime.clients.drop_connections()
    runtime.http.clear()
    # A new TokenService: a lease owner id of its own (two environments with one id would each
    # take the other's lease for their own), an empty memory tier and secret cache.
    set_runtime(assemble_runtime(runtime.config, runtime.clients))


def init_for_snapshot() -> bool:
    """Build the runtime during init when SnapStart will snapshot it; True if it was built.

    A configuration error is left for get_runtime() to raise again at each request, where it
    is answered 500 configuration_error. Without the managed runtime's snapshot_restore_py
    nothing is built early: a snapshot must never hold an identity it cannot renew.
    """
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != SNAPSTART:
        return False
    try:
        hooks = importlib.import_module("snapshot_restore_py")
    except ImportError:
        logger.warning("snapshot_restore_py not found: the runtime is built at the first event")
        return False
    hooks.register_after_restore(after_restore)
    try:
        config = load_config()
    except VendorError as exc:
        logger.error("configuration error", extra={"reason": exc.message})
        return False
    set_runtime(build_runtime(config))
    return True


init_for_snapshot()


# --------------------------------------------------------------------------------- routes


def get_default_token() -> Response[str]:
    return _vend(DEFAULT_PROFILE)


def get_profile_token(profile: str) -> Response[str]:
    return _vend(profile, by_name=True)


def refresh_default_token() -> Response[str]:
    return _refresh(DEFAULT_PROFILE)


def refresh_profile_token(profile: str) -> Response[str]:
    return _refresh(profile, by_name=True)


# The routes, declared once (in template.yaml's path syntax, which tests hold them to): the
# resolver is given each, and a path with no route for its method is answered 405 from here.
ROUTES: tuple[tuple[str, str, Callable[..., Response[str]]], ...] = (
    ("GET", "/token", get_default_token),
    ("GET", "/token/{profile}", get_profile_token),
    ("POST", "/token/refresh", refresh_default_token),
    ("POST", "/token/{profile}/refresh", refresh_profile_token),
)
_PARAMETER = re.compile(r"\{(\w+)\}")
for _method, _path, _view in ROUTES:
    app.route(_PARAMETER.sub(r"<\1>", _path), method=_method)(_view)
_MATCHERS = tuple(
    (method, re.compile("^" + _PARAMETER.sub("[^/]+", path) + "$")) for method, path, _ in ROUTES
)


def _vend(profile_name: str, *, by_name: bool = False) -> Response[str]:
    caller = _caller()
    needed = min_ttl(app.current_event.query_string_parameters or {})
    runtime = get_runtime()
    profile = _profile(runtime.config, profile_name, by_name=by_name)
    vended = runtime.service.vend(profile, deadline=_deadline(), min_ttl=needed)
    return _token_response(vended, profile, caller, "vend")


def _refresh(profile_name: str, *, by_name: bool = False) -> Response[str]:
    caller = _caller()
    rejected = rejected_token(app.current_event.raw_event)
    runtime = get_runtime()
    profile = _profile(runtime.config, profile_name, by_name=by_name)
    vended = runtime.service.force_refresh(profile, rejected, deadline=_deadline())
    return _token_response(vended, profile, caller, "refresh")


def _token_response(
    vended: Vended, profile: Profile, caller: dict[str, str], action: str
) -> Response[str]:
    now = time.time()
    body = vended.body(now)
    logger.info(
        "token vended",
        extra={
            "audit": True,
            "action": action,
            "profile": profile.name,
            "tier": vended.tier,
            "token_fingerprint": vended.token.fingerprint,
            "secret_version": vended.token.secret_version,
            "expires_in": body["expires_in"],
            **caller,
        },
    )
    # Which tier answered: helps a caller see why one call was slower than another.
    return _json(200, body, {"X-Token-Cache": vended.tier})


# ------------------------------------------------------------------------- request parts


def _caller() -> dict[str, str]:
    """The IAM caller API Gateway authenticated; refuse a request that carries none."""
    context = app.current_event.raw_event.get("requestContext")
    identity = context.get("identity") if isinstance(context, dict) else None
    identity = identity if isinstance(identity, dict) else {}
    user_arn = identity.get("userArn")
    if not isinstance(user_arn, str) or not user_arn.startswith("arn:"):
        raise AccessDenied("the request carries no IAM caller identity; sign it with SigV4")
    caller = {"caller_arn": user_arn}
    for field, name in (
        ("accountId", "caller_account"),
        ("sourceIp", "source_ip"),
        ("caller", "caller_id"),
    ):
        value = identity.get(field)
        if isinstance(value, str):
            caller[name] = value[:256]
    logger.append_keys(caller_arn=user_arn)
    return caller


def _profile(config: Config, name: str, *, by_name: bool) -> Profile:
    # `default` is reserved: /token/default would be a second path to the default profile,
    # past an IAM Deny on GET/token for a caller allowed GET/token/*.
    profile = None if by_name and name == DEFAULT_PROFILE else config.profile(name)
    if profile is None:
        raise UnknownProfile(f"no credential profile named '{name[:64]}' is configured")
    return profile


def _deadline() -> float:
    return invocation_deadline(
        app.lambda_context, reserve_ms=RESPONSE_RESERVE_MS, cap_ms=API_GATEWAY_BUDGET_MS
    )


# ------------------------------------------------------------------------------ answers


def _json(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response[str]:
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps(body),
        headers={**NO_STORE, **(headers or {})},
    )


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response[str]:
    return _json(status, {"error": code, "message": message}, headers)


@app.exception_handler(VendorError)  # type: ignore[untyped-decorator]
def handle_vendor_error(exc: VendorError) -> Response[str]:
    log = logger.warning if exc.status < 500 else logger.error
    extra: dict[str, Any] = {"error": exc.code, "status": exc.status, "reason": exc.message}
    if exc.detail:
        extra["detail"] = exc.detail
    log("request failed", extra=extra)
    retry_after = exc.retry_after
    if exc.status == 503 and retry_after is None:
        retry_after = 1
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return _error(exc.status, exc.code, exc.message, headers)


@app.not_found
def handle_not_found(_: NotFoundError) -> Response[str]:
    method = str(app.current_event.http_method).upper()
    allowed = _allowed_methods(app.current_event.path)
    if allowed and method not in allowed:
        return _error(
            405,
            "method_not_allowed",
            f"{method} is not allowed here",
            {"Allow": ", ".join(sorted(allowed))},
        )
    return _error(404, "not_found", "no such resource; try GET /token")


def _allowed_methods(path: str) -> set[str]:
    """The methods ROUTES declares for `path`."""
    return {method for method, matcher in _MATCHERS if matcher.match(path)}


def _unexpected(status: int, code: str, message: str) -> dict[str, Any]:
    """An answer built before (or without) the resolver, in the resolver's shape."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **NO_STORE},
        "multiValueHeaders": {},
        "body": json.dumps({"error": code, "message": message}),
        "isBase64Encoded": False,
    }


# ---------------------------------------------------------------------------- dispatch


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_REST
)
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    if not isinstance(event, dict):
        logger.warning("unsupported event", extra={"event_type": type(event).__name__})
        return _unexpected(400, "invalid_request", "the event is not a JSON object")
    if "httpMethod" not in event and "requestContext" not in event:
        # Not a proxy event: the schedule and the rotation rule invoke the maintenance function,
        # so nothing else is guessed at here.
        logger.warning("not an API Gateway event", extra={"fields": len(event)})
        return _unexpected(
            400,
            "invalid_request",
            "this function takes API Gateway REST events only (no httpMethod or requestContext)",
        )
    problem = api_event_problem(event)
    if problem is not None:
        logger.warning("malformed API Gateway event", extra={"field": problem})
        return _unexpected(400, "invalid_request", f"malformed API Gateway event ({problem})")
    try:
        return app.resolve(event, context)
    except Exception:
        # Never a stack trace to the caller; the log keeps it (it holds no token or secret).
        logger.exception("unhandled error")
        return _unexpected(500, "internal_error", "unexpected error; see the function's logs")
