"""Igni client credentials from Secrets Manager, cached in memory for a short, bounded time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from token_vendor.errors import ConfigurationError, SecretUnavailable
from token_vendor.models import Credentials

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

CURRENT = "AWSCURRENT"
PENDING = "AWSPENDING"
_CONFIG_ERRORS = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "AccessDenied",
        "DecryptionFailure",
        "InvalidRequestException",
        "InvalidParameterException",
        "UnrecognizedClientException",
        "KMSAccessDeniedException",
    }
)


def parse_credentials(secret_id: str, secret_string: object, version_id: str) -> Credentials:
    """Validate the secret's JSON; the error names the field, never a value or the secret."""

    def invalid(problem: str) -> ConfigurationError:
        return ConfigurationError(f"the Igni client secret {problem}", detail=f"secret {secret_id}")

    if not isinstance(secret_string, str):
        raise invalid("has no SecretString (binary secrets are not supported)")
    try:
        data = json.loads(secret_string)
    except ValueError:
        raise invalid("is not JSON") from None
    if not isinstance(data, dict):
        raise invalid("must be a JSON object")
    values: dict[str, str] = {}
    for name in ("client_id", "client_secret"):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise invalid(f"lacks a non-empty '{name}'")
        values[name] = value.strip()
    workspace = data.get("workspace")
    if workspace is not None and not isinstance(workspace, str):
        raise invalid("has a 'workspace' that is not a string")
    return Credentials(
        client_id=values["client_id"],
        client_secret=values["client_secret"],
        workspace=workspace.strip() or None if workspace else None,
        version_id=version_id,
    )


class SecretStore:
    """Reads `AWSCURRENT` (or another stage) and caches the current version per secret.

    `quick_client` (short timeouts, one attempt) serves the re-checks made while a valid token
    is at hand: they must not hold a caller for the exchange path's whole AWS budget.
    """

    def __init__(
        self,
        client: SecretsManagerClient,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        quick_client: SecretsManagerClient | None = None,
    ) -> None:
        self._client = client
        self._quick_client = quick_client or client
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, Credentials]] = {}
        self._lock = threading.Lock()

    def current(self, secret_id: str, *, force: bool = False, quick: bool = False) -> Credentials:
        """The `AWSCURRENT` credentials; `force` bypasses the memory cache, `quick` reads with
        the short, single-attempt client."""
        now = self._clock()
        if not force:
            with self._lock:
                cached = self._cache.get(secret_id)
            if cached is not None and now - cached[0] < self._cache_seconds:
                return cached[1]
        credentials = self.read(secret_id, stage=CURRENT, quick=quick)
        with self._lock:
            self._cache[secret_id] = (now, credentials)
        return credentials

    def cached(self, secret_id: str) -> Credentials | None:
        """The last credentials read, however old, without I/O."""
        with self._lock:
            cached = self._cache.get(secret_id)
        return cached[1] if cached else None

    def read(
        self,
        secret_id: str,
        *,
        stage: str | None = None,
        version_id: str | None = None,
        quick: bool = False,
    ) -> Credentials:
        kwargs: dict[str, Any] = {"SecretId": secret_id}
        if version_id:
            kwargs["VersionId"] = version_id
        if stage:
            kwargs["VersionStage"] = stage
        try:
            client = self._quick_client if quick else self._client
            answer = client.get_secret_value(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _CONFIG_ERRORS:
                raise ConfigurationError(
                    f"the Igni client secret could not be read ({code}): check that it exists, "
                    "has a value and that the function may read it",
                    detail=f"secret {secret_id}",
                ) from None
            raise SecretUnavailable(f"Secrets Manager failed ({code})") from None
        except BotoCoreError as exc:
            raise SecretUnavailable(f"Secrets Manager unreachable ({type(exc).__name__})") from None
        return parse_credentials(secret_id, answer.get("SecretString"), answer["VersionId"])
