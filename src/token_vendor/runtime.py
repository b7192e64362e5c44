"""What an execution environment builds once: the AWS clients and the services around them.

Two parts, because SnapStart restores many environments from one snapshot: the clients are
the costly part (service models, endpoint rules) and are shared by every environment restored
from a snapshot; the TokenService (lease owner id, memory tier, secret cache, Igni connection
pool) is cheap and each restored environment assembles its own (handler.after_restore).

Both Lambda entry points (handler.py for the API, maintenance.py for the pre-warm schedule and
the rotation rule) take the environment's runtime from get_runtime(): one per process, built at
the first event, or during init when SnapStart snapshots the API function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import botocore.session
import urllib3
from botocore.config import Config as BotoConfig

from token_vendor.config import Config, load_config
from token_vendor.exchange import Exchange
from token_vendor.igni import IgniClient
from token_vendor.lease import Lease
from token_vendor.observability import Telemetry
from token_vendor.secret_store import SecretStore
from token_vendor.service import TokenService
from token_vendor.token_cipher import TokenCipher
from token_vendor.token_store import MemoryTier, TokenTable
from token_vendor.versions import SecretVersions

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient


@dataclass(frozen=True)
class Clients:
    """The AWS SDK clients: the costly part of a runtime (service models, endpoint rules).

    The `quick_*` twins (short timeouts, one attempt) serve the re-checks of a token already
    at hand, so a hanging endpoint costs a caller about a second before the token is served
    anyway; the exchange path keeps the full budget.
    """

    dynamodb: DynamoDBClient
    secretsmanager: SecretsManagerClient
    kms: KMSClient | None
    quick_dynamodb: DynamoDBClient
    quick_secretsmanager: SecretsManagerClient
    quick_kms: KMSClient | None

    def drop_connections(self) -> None:
        """Close every pooled connection; a client opens new ones on its next call."""
        for client in (
            self.dynamodb,
            self.secretsmanager,
            self.kms,
            self.quick_dynamodb,
            self.quick_secretsmanager,
            self.quick_kms,
        ):
            if client is not None:
                client.close()


@dataclass(frozen=True)
class Runtime:
    """What an execution environment builds once and reuses across invocations."""

    config: Config
    service: TokenService
    clients: Clients
    http: urllib3.PoolManager


def build_runtime(config: Config) -> Runtime:
    return assemble_runtime(config, build_clients(config))


def build_clients(config: Config) -> Clients:
    full = BotoConfig(
        connect_timeout=config.aws_connect_timeout,
        read_timeout=config.aws_read_timeout,
        retries={"mode": "standard", "total_max_attempts": config.aws_max_attempts},
    )
    quick = BotoConfig(
        connect_timeout=config.recheck_timeout_seconds,
        read_timeout=config.recheck_timeout_seconds,
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    # botocore directly, not boto3: boto3's import pulls in s3transfer, about 70 ms of cold
    # start for nothing this function uses. Same credential chain, same AWS_ENDPOINT_URL.
    session = botocore.session.get_session()

    def kms(timeouts: BotoConfig) -> KMSClient | None:
        if not config.kms_key_id:
            return None
        return cast("KMSClient", session.create_client("kms", config=timeouts))

    return Clients(
        dynamodb=cast("DynamoDBClient", session.create_client("dynamodb", config=full)),
        secretsmanager=cast(
            "SecretsManagerClient", session.create_client("secretsmanager", config=full)
        ),
        kms=kms(full),
        quick_dynamodb=cast("DynamoDBClient", session.create_client("dynamodb", config=quick)),
        quick_secretsmanager=cast(
            "SecretsManagerClient", session.create_client("secretsmanager", config=quick)
        ),
        quick_kms=kms(quick),
    )


def assemble_runtime(config: Config, clients: Clients) -> Runtime:
    """The cheap part: the service with a new lease owner id, empty caches, its own pool."""
    http = urllib3.PoolManager(num_pools=4, maxsize=2, retries=False)
    telemetry = Telemetry()
    secrets = SecretStore(
        clients.secretsmanager,
        cache_seconds=config.secret_cache_seconds,
        quick_client=clients.quick_secretsmanager,
    )
    versions = SecretVersions(secrets, telemetry, pause_seconds=config.recheck_pause_seconds)
    igni = IgniClient(
        http,
        connect_timeout=config.igni_connect_timeout,
        read_timeout=config.igni_read_timeout,
        max_attempts=config.igni_max_attempts,
        retry_after_max=config.refresh_backoff_max_seconds,
    )
    table = TokenTable(
        clients.dynamodb,
        config.table_name,
        TokenCipher(clients.kms, config.kms_key_id, quick_kms=clients.quick_kms),
        quick_client=clients.quick_dynamodb,
    )
    service = TokenService(
        config,
        versions=versions,
        exchange=Exchange(versions, igni, telemetry, config.freshness),
        table=table,
        lease=Lease(table, lease_seconds=config.lease_seconds),
        memory=MemoryTier(),
        telemetry=telemetry,
    )
    return Runtime(config=config, service=service, clients=clients, http=http)


# The execution environment's runtime: Lambda runs one function per process, so one suffices.
_current: Runtime | None = None


def get_runtime() -> Runtime:
    """This environment's runtime, built from the environment variables on first use."""
    global _current  # noqa: PLW0603 - one runtime per execution environment
    if _current is None:
        _current = build_runtime(load_config())
    return _current


def current_runtime() -> Runtime | None:
    """The runtime built so far, if any (SnapStart's hooks renew it)."""
    return _current


def set_runtime(runtime: Runtime | None) -> None:
    """Make `runtime` the environment's (SnapStart's init and restore; tests' environments)."""
    global _current  # noqa: PLW0603
    _current = runtime


def reset_runtime() -> None:
    """Forget the configuration and clients (tests change the environment between cases)."""
    set_runtime(None)
