"""The AWS SDK clients an execution environment uses, with short timeouts and bounded retries.

botocore directly, not boto3: boto3's import pulls in s3transfer, about 70 ms of cold start for
nothing these functions use. Same credential chain, same AWS_ENDPOINT_URL (and the
service-specific AWS_ENDPOINT_URL_DYNAMODB the local stack sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import botocore.session
from botocore.config import Config as BotoConfig

from token_vendor.config import Config

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
