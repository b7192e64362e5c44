"""What an execution environment builds once: the AWS clients and the services around them.

Two parts, because SnapStart restores many environments from one snapshot: the clients are
the costly part (service models, endpoint rules) and are shared by every environment restored
from a snapshot; the TokenService (lease owner id, memory tier, secret cache, Igni connection
pool) is cheap and each restored environment assembles its own (handler.after_restore).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import botocore.session
import urllib3
from botocore.config import Config as BotoConfig

from token_vendor.config import Config
from token_vendor.igni import IgniClient
from token_vendor.observability import Telemetry
from token_vendor.secret_store import SecretStore
from token_vendor.service import TokenService
from token_vendor.token_cipher import TokenCipher
from token_vendor.token_store import MemoryTier, TokenTable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient


@dataclass(frozen=True)
class Clients:
    """The AWS SDK clients: the costly part of a runtime (service models, endpoint rules)."""

    dynamodb: DynamoDBClient
    secretsmanager: SecretsManagerClient
    kms: KMSClient | None

    def drop_connections(self) -> None:
        """Close every pooled connection; a client opens new ones on its next call."""
        for client in (self.dynamodb, self.secretsmanager, self.kms):
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
    boto_config = BotoConfig(
        connect_timeout=config.aws_connect_timeout,
        read_timeout=config.aws_read_timeout,
        retries={"mode": "standard", "max_attempts": config.aws_max_attempts},
    )
    # botocore directly, not boto3: boto3's import pulls in s3transfer, about 70 ms of cold
    # start for nothing this function uses. Same credential chain, same AWS_ENDPOINT_URL.
    session = botocore.session.get_session()
    return Clients(
        dynamodb=cast("DynamoDBClient", session.create_client("dynamodb", config=boto_config)),
        secretsmanager=cast(
            "SecretsManagerClient", session.create_client("secretsmanager", config=boto_config)
        ),
        kms=cast("KMSClient", session.create_client("kms", config=boto_config))
        if config.kms_key_id
        else None,
    )


def assemble_runtime(config: Config, clients: Clients) -> Runtime:
    """The cheap part: the service with a new lease owner id, empty caches, its own pool."""
    http = urllib3.PoolManager(num_pools=4, maxsize=2, retries=False)
    service = TokenService(
        config,
        secrets=SecretStore(clients.secretsmanager, cache_seconds=config.secret_cache_seconds),
        igni=IgniClient(
            http,
            connect_timeout=config.igni_connect_timeout,
            read_timeout=config.igni_read_timeout,
            max_attempts=config.igni_max_attempts,
        ),
        table=TokenTable(
            clients.dynamodb, config.table_name, TokenCipher(clients.kms, config.kms_key_id)
        ),
        memory=MemoryTier(),
        telemetry=Telemetry(),
    )
    return Runtime(config=config, service=service, clients=clients, http=http)
