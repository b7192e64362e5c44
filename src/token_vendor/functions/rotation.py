"""Secrets Manager rotation function for Igni credentials that an operator staged as AWSPENDING.

Igni API keys are created by a person in Igni, not through an API, so this function never
generates credentials. It validates and promotes what an operator staged with::

    aws secretsmanager put-secret-value --secret-id <secret> \\
        --secret-string file://igni-new.json --version-stages AWSPENDING

The four steps of the rotation protocol, each idempotent (Secrets Manager may run a step again):

``createSecret``
    Checks that a version holding valid JSON credentials is staged as AWSPENDING; fails with a
    message saying how to stage one if not.
``setSecret``
    Nothing to do at Igni (the key already exists there): logs and returns.
``testSecret``
    Exchanges the pending credentials at Igni's token URL; ``invalid_client``, a bad token
    answer or an unreachable Igni fail the step, so Secrets Manager keeps AWSCURRENT. A version
    that passed gets the staging label ``IGNI_TESTED``.
``finishSecret``
    Moves AWSCURRENT to the rotation's version (the old one becomes AWSPREVIOUS), only while
    that version still holds AWSPENDING and ``IGNI_TESTED``; the vendor's ``Secret Label
    Updated`` rule then purges tokens minted from the old version.

The rotation's version is the one its ``ClientRequestToken`` names, as in AWS's rotation
templates: the operator stages with ``--client-request-token`` and rotates with the same id.
If another version holds AWSPENDING (staged meanwhile, or under another id), every step fails
with a message naming both, and AWSCURRENT stays where it was: only what was tested is ever
promoted. A step whose version is already AWSCURRENT changes nothing. Neither the secret nor
an issued token is ever logged: token fingerprints and version ids at most.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from token_vendor.aws.secret_store import CURRENT, PENDING, parse_credentials
from token_vendor.config import profile_for_secret
from token_vendor.errors import ConfigurationError, VendorError
from token_vendor.functions.deadline import invocation_deadline
from token_vendor.functions.runtime import Runtime, get_runtime
from token_vendor.igni.token_url import token_url_for
from token_vendor.models import Credentials, fingerprint
from token_vendor.observability import logger, metrics
from token_vendor.vending.freshness import effective_expiry

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_secretsmanager import SecretsManagerClient

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
# The staging label testSecret puts on a version Igni accepted; finishSecret promotes no other.
# Custom labels fire no AWSCURRENT event (the vendor's rule listens for AWSCURRENT only).
TESTED = "IGNI_TESTED"
# Kept back from the Lambda's remaining time so that a failing step still reports its reason.
RESERVE_MS = 2_000


class RotationError(Exception):
    """A step failed; raised out of the handler so that Secrets Manager fails the rotation."""


def stage_command(secret_id: str) -> str:
    """The command that stages new credentials, for error messages and logs."""
    return (
        f"aws secretsmanager put-secret-value --secret-id {secret_id} "
        "--secret-string file://igni-new.json --version-stages AWSPENDING"
    )


# ------------------------------------------------------------------------------ versions


@dataclass(frozen=True)
class _Versions:
    """Which version the rotation is about, from DescribeSecret's VersionIdsToStages."""

    secret_id: str
    token: str
    current: str | None
    pending: str | None
    stages: dict[str, list[str]]

    @property
    def done(self) -> bool:
        """The rotation's own version is AWSCURRENT: every step was done already."""
        return CURRENT in self.stages.get(self.token, [])

    @property
    def tested(self) -> bool:
        """The rotation's version passed testSecret (and was not staged again since)."""
        return TESTED in self.stages.get(self.token, [])

    def holder(self, stage: str) -> str | None:
        return next((v for v, s in self.stages.items() if stage in s), None)


def _versions(client: SecretsManagerClient, secret_id: str, token: str) -> _Versions:
    try:
        metadata = client.describe_secret(SecretId=secret_id)
    except (ClientError, BotoCoreError) as exc:
        raise RotationError(
            f"could not describe secret '{secret_id}': {_aws_reason(exc)}"
        ) from None
    if not metadata.get("RotationEnabled"):
        raise RotationError(
            f"secret '{secret_id}' is not enabled for rotation; start the rotation with "
            "aws secretsmanager rotate-secret (see docs/rotation.md)"
        )
    stages = {v: list(s) for v, s in (metadata.get("VersionIdsToStages") or {}).items()}
    current = next((v for v, s in stages.items() if CURRENT in s), None)
    pending = next((v for v, s in stages.items() if PENDING in s), None)
    return _Versions(secret_id, token, current, pending, stages)


def _read_pending(client: SecretsManagerClient, versions: _Versions) -> Credentials:
    """The rotation's staged credentials, validated as JSON; a clear error when the rotation's
    version does not hold AWSPENDING or holds nothing usable."""
    secret_id = versions.secret_id
    if versions.pending is not None and versions.pending not in (
        versions.token,
        versions.current,
    ):
        raise RotationError(
            f"version {versions.pending} of secret '{secret_id}' holds AWSPENDING, not this "
            f"rotation's version {versions.token} (its ClientRequestToken): only the version "
            "a rotation names is tested and promoted; rotate with --client-request-token "
            f"{versions.pending} (AWSCURRENT was not moved)"
        )
    if versions.pending is None or versions.pending == versions.current:
        raise RotationError(
            f"nothing is staged for rotation of secret '{secret_id}' (no version other than "
            f"AWSCURRENT holds AWSPENDING): stage the new Igni credentials as AWSPENDING first: "
            f"{stage_command(secret_id)}"
        )
    try:
        answer = client.get_secret_value(
            SecretId=secret_id, VersionId=versions.pending, VersionStage=PENDING
        )
    except ClientError as exc:
        if _code(exc) == "ResourceNotFoundException":
            # Secrets Manager attaches AWSPENDING to an empty version when a rotation starts
            # with nothing staged.
            raise RotationError(
                f"version {versions.pending} of secret '{secret_id}' holds AWSPENDING but no "
                "value: stage the new Igni credentials as AWSPENDING first: "
                f"{stage_command(secret_id)}"
            ) from None
        raise RotationError(
            f"could not read the AWSPENDING version of secret '{secret_id}': {_aws_reason(exc)}"
        ) from None
    except BotoCoreError as exc:
        raise RotationError(f"Secrets Manager unreachable ({type(exc).__name__})") from None
    try:
        return parse_credentials(secret_id, answer.get("SecretString"), answer["VersionId"])
    except ConfigurationError as exc:
        raise RotationError(
            f"the AWSPENDING version {versions.pending} is not usable Igni credentials: "
            f"{exc.message}; stage a JSON object "
            '{"client_id": "...", "client_secret": "...", "workspace": "..."}'
        ) from None


# --------------------------------------------------------------------------------- steps


def on_create_secret(runtime: Runtime, versions: _Versions) -> str:
    """Nothing is generated: an operator must have staged valid credentials as AWSPENDING.

    AWSPENDING left on the current version by an earlier rotation means nothing new is staged.
    """
    if versions.done:
        return "already_current"
    credentials = _read_pending(runtime.clients.secretsmanager, versions)
    logger.info("staged credentials found", extra={"pending_version": credentials.version_id})
    return "staged"


def on_set_secret(versions: _Versions) -> str:
    """Igni keys are created by a person in Igni: there is nothing to set upstream."""
    if versions.done:
        return "already_current"
    logger.info(
        "nothing to set at Igni (keys are created there by a person)",
        extra={"pending_version": versions.pending},
    )
    return "nothing_to_set"


def on_test_secret(runtime: Runtime, versions: _Versions, deadline: float) -> str:
    """Exchange the staged credentials at Igni; any failure fails the rotation."""
    if versions.done:
        return "already_current"
    credentials = _read_pending(runtime.clients.secretsmanager, versions)
    try:
        profile = profile_for_secret(versions.secret_id)
        url = token_url_for(profile, credentials.workspace)
    except ConfigurationError as exc:
        raise RotationError(f"cannot test the staged credentials: {exc.message}") from None
    issued_at = time.time()
    try:
        issued = runtime.igni.exchange_for(
            profile,
            url,
            credentials,
            deadline=deadline,
            on_attempt=lambda outcome, ms: logger.info(
                "igni token request",
                extra={"outcome": outcome, "upstream_latency_ms": round(ms, 1)},
            ),
        )
    except VendorError as exc:
        # invalid_client, a bad answer, or Igni unreachable (Secrets Manager retries the step).
        raise RotationError(
            f"Igni did not accept the staged credentials (version {credentials.version_id}): "
            f"{exc.code}: {exc.message}"
        ) from None
    expires_at = effective_expiry(
        issued_at, issued.expires_in, issued.access_token, profile.default_expires_in
    )
    if expires_at <= time.time():
        raise RotationError(
            "Igni issued an already expired token for the staged credentials "
            f"(version {credentials.version_id})"
        )
    logger.info(
        "staged credentials accepted by Igni",
        extra={
            "pending_version": credentials.version_id,
            "token_fingerprint": fingerprint(issued.access_token),
            "expires_in": math.floor(expires_at - issued_at),
        },
    )
    _move_label(runtime.clients.secretsmanager, versions, TESTED)
    return "tested"


def on_finish_secret(runtime: Runtime, versions: _Versions) -> str:
    """Move AWSCURRENT to the pending version; the old one becomes AWSPREVIOUS."""
    if versions.done:
        return "already_current"
    client = runtime.clients.secretsmanager
    # Only the rotation's own version, still AWSPENDING, still credentials, and tested.
    credentials = _read_pending(client, versions)
    if not versions.tested:
        raise RotationError(
            f"version {versions.token} of secret '{versions.secret_id}' has not passed "
            "testSecret (no IGNI_TESTED label): run testSecret first; AWSCURRENT was not moved"
        )
    _move_label(client, versions, CURRENT)
    logger.info(
        "AWSCURRENT moved to the staged credentials",
        extra={"new_version": credentials.version_id, "previous_version": versions.current},
    )
    runtime.telemetry.rotation_completed()
    return "finished"


def _move_label(client: SecretsManagerClient, versions: _Versions, stage: str) -> None:
    """Put `stage` on the rotation's version, taking it from the version that holds it."""
    holder = versions.holder(stage)
    if holder == versions.token:
        return
    kwargs: dict[str, Any] = {
        "SecretId": versions.secret_id,
        "VersionStage": stage,
        "MoveToVersionId": versions.token,
    }
    if holder is not None:
        kwargs["RemoveFromVersionId"] = holder
    try:
        client.update_secret_version_stage(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise RotationError(f"could not move {stage}: {_aws_reason(exc)}") from None


# ------------------------------------------------------------------------------- handler


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, str]:
    """Entry point; raises RotationError (failing the invocation) when a step fails."""
    secret_id = event.get("SecretId") if isinstance(event, dict) else None
    token = event.get("ClientRequestToken") if isinstance(event, dict) else None
    step = event.get("Step") if isinstance(event, dict) else None
    if not isinstance(secret_id, str) or not isinstance(token, str) or step not in STEPS:
        raise RotationError(
            "not a Secrets Manager rotation event: expected SecretId, ClientRequestToken and "
            f"Step in {', '.join(STEPS)}"
        )
    logger.append_keys(secret_id=secret_id, step=step, client_request_token=token)
    deadline = invocation_deadline(context, reserve_ms=RESERVE_MS)
    try:
        runtime = get_runtime()
    except ConfigurationError as exc:
        # The vendor's own configuration: a key is tested only as the vendor would use it.
        logger.error("rotation step failed", extra={"reason": exc.message})
        raise RotationError(f"the configuration is invalid: {exc.message}") from None
    try:
        versions = _versions(runtime.clients.secretsmanager, secret_id, token)
        if step == "createSecret":
            outcome = on_create_secret(runtime, versions)
        elif step == "setSecret":
            outcome = on_set_secret(versions)
        elif step == "testSecret":
            outcome = on_test_secret(runtime, versions, deadline)
        else:
            outcome = on_finish_secret(runtime, versions)
    except RotationError as exc:
        logger.error("rotation step failed", extra={"reason": str(exc)})
        runtime.telemetry.rotation_step_failed(str(step))
        raise
    logger.info("rotation step done", extra={"outcome": outcome})
    return {"step": str(step), "outcome": outcome}


# ------------------------------------------------------------------------------- helpers


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _aws_reason(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        return _code(exc) or "ClientError"
    return type(exc).__name__
