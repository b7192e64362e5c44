"""Lambda entry point of the maintenance function: the pre-warm schedule and rotation events.

template.yaml's MaintenanceFunction is invoked asynchronously by its two events only, each
known by what its definition guarantees: the `Prewarm` schedule's Input `{"action": "prewarm"}`
and the `SecretRotated` rule's source `aws.secretsmanager`. The rule already filters the
detail type, the label (AWSCURRENT) and, without profiles, the secret: nothing here checks them
again. Any other event is answered `{"ok": false, "error": "unsupported_event"}`.

A pre-warm or rotation that leaves a profile without a token raises AsyncEventFailed, so that
Lambda retries the event, counts an error and at last sends it to the dead-letter queue.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from token_vendor.errors import VendorError
from token_vendor.functions.deadline import RESPONSE_RESERVE_MS, invocation_deadline
from token_vendor.functions.runtime import get_runtime
from token_vendor.observability import logger, metrics
from token_vendor.vending.answers import DYNAMODB, MEMORY, UPSTREAM

PREWARM_ACTION = "prewarm"
ROTATION_SOURCE = "aws.secretsmanager"
TIERS = frozenset({MEMORY, DYNAMODB, UPSTREAM})
UNSUPPORTED = (
    "the maintenance function takes the pre-warm schedule's event "
    '{"action": "prewarm"} and Secrets Manager\'s Secret Label Updated events only'
)


class AsyncEventFailed(Exception):
    """A pre-warm or rotation invocation that did not leave every profile with a token."""


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    is_dict = isinstance(event, dict)
    if is_dict and event.get("action") == PREWARM_ACTION:
        kind = "prewarm"
    elif is_dict and event.get("source") == ROTATION_SOURCE:
        kind = "rotation"
    else:
        logger.warning("unsupported event", extra={"event_type": type(event).__name__})
        return {"ok": False, "error": "unsupported_event", "message": UNSUPPORTED}
    try:
        runtime = get_runtime()
    except VendorError as exc:
        logger.error("configuration error", extra={"reason": exc.message})
        return {"ok": False, "error": exc.code, "message": exc.message}
    deadline = invocation_deadline(context, reserve_ms=RESPONSE_RESERVE_MS)
    if kind == "prewarm":
        outcome = runtime.service.prewarm(deadline=deadline)
        logger.info("prewarm done", extra={"outcome": outcome})
        return _result(kind, outcome)
    # The rotated secret is the event's resource (its ARN): a profile naming it by name or ARN
    # matches (config.same_secret), and a secret no profile names changes nothing.
    resources = event.get("resources")
    refs = [r for r in resources if isinstance(r, str)] if isinstance(resources, list) else []
    outcome = {}
    for ref in dict.fromkeys(refs):
        outcome.update(runtime.service.on_secret_rotated(ref, deadline=deadline))
    logger.info("rotation handled", extra={"outcome": outcome})
    return _result(kind, outcome)


def _result(kind: str, outcome: dict[str, str]) -> dict[str, Any]:
    """Raise on failure (see the module's docstring); the outcome names error codes, never a
    secret."""
    failed = {name: tier for name, tier in outcome.items() if tier not in TIERS}
    if failed:
        raise AsyncEventFailed(f"{kind} failed for {failed}")
    return {"ok": True, "profiles": outcome}
