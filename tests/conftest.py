"""Shared fixtures: DynamoDB Local, a moto server and an Igni stub as real processes, a fresh
stack per test.

Session fixtures
    ``moto_process`` -> :class:`local.moto_server.MotoServer` (for tests that restart it; moto
    loses every resource when restarted), ``moto_server`` -> its endpoint URL (KMS, Secrets
    Manager). ``dynamodb_process`` -> :class:`local.dynamodb_local.DynamoDBLocal`, each xdist
    worker's own, in memory, ``dynamodb_endpoint`` -> its URL. While the session lasts,
    AWS_ENDPOINT_URL points at moto and AWS_ENDPOINT_URL_DYNAMODB at DynamoDB Local, the region
    is us-east-1 and the credentials are fake, so no test can reach a real AWS account.
    ``igni_stub`` -> :class:`local.igni_stub.StubProcess`: ``.base_url``, ``.token_url``,
    ``.client_id`` / ``.client_secret`` (``test-client``), ``.clients`` (also ``other-client``),
    ``.configure(**kw)``, ``.reset()``, ``.calls()``. It is reset (calls, faults and config back
    to start-up) before each test that uses it, directly or through ``stack``.

Function fixtures
    ``stack`` -> :class:`local.stack.LocalStack` built from template.yaml with a unique name, its
    secret holding the stub's client, its function environment applied with monkeypatch, and
    ``token_vendor.functions.runtime.reset_runtime()`` called before and after the test.
    ``make_stack(**kw)`` -> the same, with create_stack's keyword arguments overridden (e.g.
    ``secret_value=...``) and ``apply_env=False`` to leave os.environ alone.
    ``lambda_context`` -> a fresh :class:`local.lambda_context.FakeLambdaContext` (25 s).
    ``load_event(name, **overrides)`` -> an event from events/ (see local.events.load_event),
    with the test's stack's secret swapped in when the test uses ``stack``.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.loaders
import botocore.session
import pytest

from local.dynamodb_local import DynamoDBLocal
from local.events import load_event as _load_event
from local.igni_stub import StubProcess
from local.lambda_context import FakeLambdaContext
from local.moto_server import MotoServer
from local.stack import LocalStack, create_stack

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every test builds a fresh runtime (new botocore sessions, as a cold start does), and each new
# session would decode botocore's endpoint and service JSON again: about 0.5 s per test, most of
# the suite's time. The files never change while the suite runs, so this process shares one
# loader (and its cache) between sessions; environments in their own processes still load their
# own, as Lambda does.
_shared_loader = functools.cache(botocore.loaders.create_loader)
botocore.session.create_loader = _shared_loader  # type: ignore[attr-defined]
STUB_CLIENTS = {"test-client": "test-secret-0123456789", "other-client": "other-secret-9876543210"}
STUB_WORKSPACE = "test"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist (make test): tests go to workers one by one, but tests/e2e goes to one
    worker whole, so that it starts one make local, not one per worker. (xdist's own loadgroup
    cannot do it under pytest 9.2: it renames item._nodeid, which pytest no longer reads.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class E2eOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/e2e" if nodeid.startswith("tests/e2e/") else nodeid

    return E2eOnOneWorker(config, log)


@pytest.fixture(scope="session")
def _dynamodb_launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DynamoDBLocal]:
    """DynamoDB Local's JVM, started but not waited for: moto starts meanwhile."""
    server = DynamoDBLocal(log_path=tmp_path_factory.mktemp("dynamodb") / "dynamodb-local.log")
    server.launch()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_process(
    tmp_path_factory: pytest.TempPathFactory, _dynamodb_launched: DynamoDBLocal
) -> Iterator[MotoServer]:
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto-server.log")
    endpoint = server.start()
    dynamodb = _dynamodb_launched.wait()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        # A developer's AWS profile, session token or config file must not leak into the tests.
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def moto_server(moto_process: MotoServer) -> str:
    return moto_process.endpoint_url


@pytest.fixture(scope="session")
def dynamodb_process(moto_process: MotoServer, _dynamodb_launched: DynamoDBLocal) -> DynamoDBLocal:
    """DynamoDB Local, serving (moto_process waited for it)."""
    return _dynamodb_launched


@pytest.fixture(scope="session")
def dynamodb_endpoint(dynamodb_process: DynamoDBLocal) -> str:
    return dynamodb_process.endpoint_url


@pytest.fixture(scope="session")
def igni_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    stub = StubProcess(STUB_CLIENTS, log_path=tmp_path_factory.mktemp("igni-stub") / "stub.log")
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture(autouse=True)
def _reset_igni_stub(request: pytest.FixtureRequest) -> None:
    """Start each test that uses the stub from its start-up state: no calls, no faults."""
    if "igni_stub" in request.fixturenames:
        stub: StubProcess = request.getfixturevalue("igni_stub")
        stub.reset()


def _reset_runtime() -> None:
    """Drop the functions' cached configuration and clients (a new execution environment)."""
    from token_vendor.functions.runtime import reset_runtime

    reset_runtime()


def unique_stack_name(request: pytest.FixtureRequest) -> str:
    """A stack name from the test's name, unique per call; valid for tables and secrets."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40] or "t"
    return f"{base}-{uuid.uuid4().hex[:8]}"


MakeStack = Callable[..., LocalStack]


@pytest.fixture
def make_stack(
    request: pytest.FixtureRequest,
    moto_server: str,
    dynamodb_endpoint: str,
    igni_stub: StubProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MakeStack]:
    def make(*, apply_env: bool = True, name: str | None = None, **overrides: Any) -> LocalStack:
        kwargs: dict[str, Any] = {
            "endpoint_url": moto_server,
            "dynamodb_endpoint_url": dynamodb_endpoint,
            "secret_value": {
                "client_id": igni_stub.client_id,
                "client_secret": igni_stub.client_secret,
                "workspace": STUB_WORKSPACE,
            },
            "igni_token_url": igni_stub.token_url,
        }
        kwargs.update(overrides)
        stack = create_stack(name or unique_stack_name(request), **kwargs)
        if apply_env:
            for key, value in stack.function_env().items():
                monkeypatch.setenv(key, value)
            _reset_runtime()
        return stack

    _reset_runtime()
    yield make
    _reset_runtime()


@pytest.fixture
def stack(make_stack: MakeStack) -> LocalStack:
    return make_stack()


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


LoadEvent = Callable[..., dict[str, Any]]


@pytest.fixture
def load_event(request: pytest.FixtureRequest) -> LoadEvent:
    def load(name: str, /, **overrides: Any) -> dict[str, Any]:
        if "stack" in request.fixturenames and "secret_arn" not in overrides:
            current: LocalStack = request.getfixturevalue("stack")
            overrides = {
                "secret_arn": current.secret_arn,
                "secret_name": current.secret_name,
                **overrides,
            }
        return _load_event(name, **overrides)

    return load
