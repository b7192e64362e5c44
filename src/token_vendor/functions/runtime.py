"""What an execution environment builds once: the AWS clients and the services around them.

Two parts, because SnapStart restores many environments from one snapshot: the clients are
the costly part (service models, endpoint rules) and are shared by every environment restored
from a snapshot; the TokenService (lease owner id, memory tier, secret cache, Igni connection
pool) is cheap and each restored environment assembles its own (api.after_restore).

The three entry points (api.py, maintenance.py, rotation.py) take the environment's runtime from
get_runtime(): one per process, built at the first event, or during init when SnapStart
snapshots the API function.
"""

from __future__ import annotations

from dataclasses import dataclass

import urllib3

from token_vendor.aws.clients import Clients, build_clients
from token_vendor.aws.secret_store import SecretStore
from token_vendor.aws.token_cipher import TokenCipher
from token_vendor.aws.token_table import TokenTable
from token_vendor.config import Config, load_config
from token_vendor.igni.client import IgniClient
from token_vendor.igni.watchdog import deadline_pool_manager
from token_vendor.observability import Telemetry
from token_vendor.vending.exchange import Exchange
from token_vendor.vending.lease import Lease
from token_vendor.vending.memory import MemoryTier
from token_vendor.vending.service import TokenService
from token_vendor.vending.versions import SecretVersions


@dataclass(frozen=True)
class Runtime:
    """What an execution environment builds once and reuses across invocations."""

    config: Config
    service: TokenService
    clients: Clients
    http: urllib3.PoolManager
    # The rotation function's test exchange uses the same client as the vendor's.
    igni: IgniClient
    telemetry: Telemetry


def build_runtime(config: Config) -> Runtime:
    return assemble_runtime(config, build_clients(config))


def assemble_runtime(config: Config, clients: Clients) -> Runtime:
    """The cheap part: the service with a new lease owner id, empty caches, its own pool."""
    http = deadline_pool_manager(num_pools=4, maxsize=2, retries=False)
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
    return Runtime(
        config=config, service=service, clients=clients, http=http, igni=igni, telemetry=telemetry
    )


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
