"""Fault injection: Igni, DynamoDB, Secrets Manager and KMS failing under a running service.

The moto server and the Igni stub are real processes, reached over loopback sockets. Each fault
is played twice where it matters: with nothing cached (the caller gets a clear JSON error from
the contract, quickly, after a bounded number of attempts) and with a valid token cached past
its refresh point (the caller keeps getting that token).

Outages of AWS services are real outages: a DynamoDB Local or moto server process of this
module's own (never the session's) is stopped under the service, so sockets are refused. Both
forget everything when they stop, so what must survive lives on the session servers, and what
the test takes away lives on the spare ones, reached through boto3's per-service endpoint
variables (``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL_SECRETS_MANAGER``).

Every log line the module produces (Powertools lines in this process, EMF lines on stdout, the
log files of execution environments run as processes) is kept, and the module's last test fails
if any holds a client secret or any token a test was handed.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import urllib3

from local.dynamodb_local import DynamoDBLocal
from local.environment import EnvironmentProcess
from local.events import load_event
from local.igni_stub import StubProcess, token_fingerprint
from local.lambda_context import FakeLambdaContext
from local.moto_server import MotoServer, free_port
from local.stack import LocalStack, create_stack
from tests.aws_errors import AwsErrorEndpoint
from tests.conftest import STUB_WORKSPACE, MakeStack
from token_vendor.config import Config
from token_vendor.functions import api as handler
from token_vendor.functions.runtime import get_runtime, reset_runtime
from token_vendor.models import cache_key
from token_vendor.observability import logger as powertools_logger

# Low enough that a "slow Igni" fault costs the suite little; the contract's 10 s is the cap.
READ_TIMEOUT_S = 0.5
SLOW_IGNI_MS = 2000
MAX_ATTEMPTS = 3  # IGNI_MAX_ATTEMPTS's default: what a deployed function does.
# More faults than attempts are queued, so what is left over counts the attempts made.
QUEUED_FAULTS = MAX_ATTEMPTS + 2
INVOCATION_S = 8.0
FRESHNESS_REFRESH_FRACTION = 0.75  # TOKEN_REFRESH_FRACTION's default


# ----------------------------------------------------------------------- the leak watch


@dataclass
class LeakWatch:
    """Everything the module logged, and every secret and token that must not be in it."""

    secrets: set[str]
    tokens: set[str] = field(default_factory=set)
    chunks: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    stream: io.StringIO = field(default_factory=io.StringIO)

    def saw(self, response: dict[str, Any]) -> dict[str, Any]:
        """Remember the token a response carries (if any); returns the response."""
        if response.get("statusCode") == 200:
            body = json.loads(response["body"])
            if isinstance(body, dict) and isinstance(body.get("access_token"), str):
                self.tokens.add(body["access_token"])
        return response

    def mark(self) -> int:
        return len(self.stream.getvalue())

    def since(self, mark: int) -> list[dict[str, Any]]:
        """The in-process Powertools log records written after ``mark``, parsed."""
        lines = self.stream.getvalue()[mark:].splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def text(self) -> str:
        parts = [self.stream.getvalue(), *self.chunks]
        parts += [path.read_text(errors="replace") for path in self.files if path.exists()]
        return "\n".join(parts)

    def needles(self) -> dict[str, str]:
        """What must never appear, keyed by a name safe to print."""
        found: dict[str, str] = {}
        for secret in self.secrets:
            found[f"client secret {token_fingerprint(secret)}"] = secret
        for token in self.tokens:
            name = f"token {token_fingerprint(token)}"
            found[name] = token
            # A JWT's payload or signature on its own is as good as the token to a reader.
            for index, part in enumerate(token.split(".")):
                if len(part) >= 24:
                    found[f"{name} segment {index}"] = part
        return found


@pytest.fixture(scope="module")
def leaks(igni_stub: StubProcess) -> Iterator[LeakWatch]:
    watch = LeakWatch(secrets=set(igni_stub.clients.values()))
    stream = logging.StreamHandler(watch.stream)
    stream.setFormatter(powertools_logger.registered_formatter)
    std_logger = logging.getLogger(powertools_logger.name)
    std_logger.addHandler(stream)
    yield watch
    std_logger.removeHandler(stream)


@pytest.fixture(autouse=True)
def _keep_output(leaks: LeakWatch, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Keep what each test printed (EMF metrics go to stdout) for the final scan."""
    yield
    captured = capsys.readouterr()
    leaks.chunks.extend([captured.out, captured.err])


# ----------------------------------------------------------------------------- helpers


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    elapsed: float


def answer_of(response: dict[str, Any], elapsed: float) -> Answer:
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for key, values in (response.get("multiValueHeaders") or {}).items():
        headers[key.lower()] = values[-1]
    body = json.loads(response["body"])
    assert isinstance(body, dict), response
    return Answer(response["statusCode"], body, headers, elapsed)


@pytest.fixture
def vend(leaks: LeakWatch) -> Callable[..., Answer]:
    """Invoke the handler in this process (one execution environment) and parse the answer."""

    def call(event: dict[str, Any] | None = None, *, timeout_s: float = INVOCATION_S) -> Answer:
        started = time.monotonic()
        response = handler.lambda_handler(
            event or load_event("get_token"), FakeLambdaContext(timeout_s=timeout_s)
        )
        elapsed = time.monotonic() - started
        return answer_of(leaks.saw(response), elapsed)

    return call


def invoke_in(env: EnvironmentProcess, leaks: LeakWatch, event: dict[str, Any]) -> Answer:
    started = time.monotonic()
    response = env.invoke(event, timeout_ms=int(INVOCATION_S * 1000))
    response.pop("elapsed_ms", None)
    return answer_of(leaks.saw(response), time.monotonic() - started)


def assert_token(answer: Answer, tier: str) -> str:
    assert answer.status == 200, answer
    assert answer.headers["x-token-cache"] == tier, answer.headers
    assert answer.headers["cache-control"] == "no-store"
    assert answer.body["expires_in"] > 0
    token: str = answer.body["access_token"]
    return token


def assert_error(answer: Answer, status: int, code: str) -> str:
    assert answer.status == status, answer
    assert set(answer.body) == {"error", "message"}, answer.body
    assert answer.body["error"] == code
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    message: str = answer.body["message"]
    assert message
    assert "Traceback" not in message
    if status == 503:
        assert int(answer.headers["retry-after"]) >= 1
    return message


def stub_state(stub: StubProcess) -> dict[str, Any]:
    """The stub's GET /_stub/calls: calls made and faults still queued."""
    response = urllib3.request("GET", stub.base_url + "/_stub/calls", timeout=5.0)
    assert response.status == 200
    state: dict[str, Any] = response.json()
    return state


def attempts_made(stub: StubProcess) -> int:
    """Token requests that consumed a fault (delayed ones are counted before they answer)."""
    return QUEUED_FAULTS - int(stub_state(stub)["faults_pending"])


def the_item(stack: LocalStack) -> dict[str, Any]:
    items = stack.dynamodb().scan(TableName=stack.table_name, ConsistentRead=True)["Items"]
    assert len(items) == 1, items
    return items[0]


def age_past_refresh_point(stack: LocalStack) -> int:
    """Rewrite the cached item as if minted 80 % of its lifetime ago: due for refresh, still
    valid for 20 % of it (far above the vend margin). Returns the new expiry."""
    item = the_item(stack)
    lifetime = float(item["expires_at"]["N"]) - float(item["issued_at"]["N"])
    issued = time.time() - 0.8 * lifetime
    expires = int(issued + lifetime)
    stack.dynamodb().update_item(
        TableName=stack.table_name,
        Key={"pk": item["pk"]},
        UpdateExpression="SET issued_at = :issued, expires_at = :exp",
        ExpressionAttributeValues={":issued": {"N": f"{issued:.3f}"}, ":exp": {"N": str(expires)}},
    )
    return expires


def cold_environment(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Apply ``env`` and start a brand-new execution environment in this process."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_runtime()


def logged(records: list[dict[str, Any]], message: str, level: str | None = None) -> bool:
    return any(
        r.get("message") == message and (level is None or r.get("level") == level) for r in records
    )


Fleet = Callable[..., list[EnvironmentProcess]]


@pytest.fixture
def fleet(leaks: LeakWatch, tmp_path: Path) -> Iterator[Fleet]:
    """Execution environments as processes; their log files join the final scan."""
    started: list[EnvironmentProcess] = []

    def start(*envs: dict[str, str]) -> list[EnvironmentProcess]:
        """One process per environment variable set, started side by side."""
        paths = [tmp_path / f"env{len(started) + i}.log" for i in range(len(envs))]
        leaks.files.extend(paths)
        with ThreadPoolExecutor(max_workers=len(envs)) as pool:
            procs = list(pool.map(lambda e, p: EnvironmentProcess(e, log_path=p), envs, paths))
        started.extend(procs)
        return procs

    yield start
    with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:  # they exit side by side
        list(pool.map(EnvironmentProcess.close, started))


@pytest.fixture(scope="module")
def _spare_moto_process(
    moto_process: MotoServer, tmp_path_factory: pytest.TempPathFactory, leaks: LeakWatch
) -> Iterator[MotoServer]:
    log = tmp_path_factory.mktemp("spare-moto") / "moto-server.log"
    leaks.files.append(log)
    server = MotoServer(log_path=log)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def spare_moto(_spare_moto_process: MotoServer) -> MotoServer:
    """A moto server this module may stop and restart; running (and empty or not) on entry."""
    _spare_moto_process.start()
    return _spare_moto_process


@pytest.fixture(scope="module")
def _spare_dynamodb_process(
    dynamodb_process: DynamoDBLocal, tmp_path_factory: pytest.TempPathFactory, leaks: LeakWatch
) -> Iterator[DynamoDBLocal]:
    log = tmp_path_factory.mktemp("spare-dynamodb") / "dynamodb-local.log"
    leaks.files.append(log)
    server = DynamoDBLocal(log_path=log)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def spare_dynamodb(_spare_dynamodb_process: DynamoDBLocal) -> DynamoDBLocal:
    """A DynamoDB Local this module may stop and restart; running on entry."""
    _spare_dynamodb_process.start()
    return _spare_dynamodb_process


def stack_on(
    server: MotoServer, dynamodb: DynamoDBLocal, like: LocalStack, stub: StubProcess
) -> LocalStack:
    """``like``'s resources, with the same names, on other servers (local.stack)."""
    return create_stack(
        like.name,
        endpoint_url=server.endpoint_url,
        dynamodb_endpoint_url=dynamodb.endpoint_url,
        secret_value={
            "client_id": stub.client_id,
            "client_secret": stub.client_secret,
            "workspace": STUB_WORKSPACE,
        },
        igni_token_url=stub.token_url,
    )


# ---------------------------------------------------------------------------- Igni faults

IGNI_FAULTS: dict[str, tuple[dict[str, Any], int, str, int]] = {
    # name: (fault, status, error, attempts)
    "timeout": ({"delay_ms": SLOW_IGNI_MS}, 503, "upstream_unavailable", MAX_ATTEMPTS),
    "http-500": ({"status": 500}, 503, "upstream_unavailable", MAX_ATTEMPTS),
    "http-429": ({"status": 429, "retry_after": 1}, 503, "upstream_unavailable", MAX_ATTEMPTS),
    # A 2xx without a token is not transient: not retried.
    "garbage": ({"garbage": True}, 502, "upstream_bad_response", 1),
    "connection-closed": ({"close": True}, 503, "upstream_unavailable", MAX_ATTEMPTS),
}


@pytest.fixture
def slow_igni_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGNI_READ_TIMEOUT", str(READ_TIMEOUT_S))
    reset_runtime()


@pytest.mark.usefixtures("slow_igni_times_out")
@pytest.mark.parametrize("name", list(IGNI_FAULTS))
def test_igni_fault_with_nothing_cached_is_a_clear_error(
    name: str, stack: LocalStack, igni_stub: StubProcess, vend: Callable[..., Answer]
) -> None:
    fault, status, code, attempts = IGNI_FAULTS[name]
    # Given a fresh stack (no token anywhere) and Igni failing the same way on every request
    igni_stub.configure(faults=[fault] * QUEUED_FAULTS)
    # When a caller asks for a token
    answer = vend()
    # Then it gets the contract's JSON error (503 with Retry-After when retrying may help)
    message = assert_error(answer, status, code)
    assert "Igni" in message
    # And Igni was tried a bounded number of times, and the answer came before the deadline
    assert attempts_made(igni_stub) == attempts
    assert answer.elapsed < INVOCATION_S - 0.5
    if name == "http-429":
        # Retry-After was honoured between the attempts
        times = [call["at"] for call in igni_stub.calls()]
        assert len(times) == attempts
        assert all(b - a >= 0.9 for a, b in itertools.pairwise(times)), times
    # And nothing was cached: the table holds no token
    items = stack.dynamodb().scan(TableName=stack.table_name)["Items"]
    assert all("tok" not in item for item in items)


@pytest.mark.usefixtures("slow_igni_times_out")
@pytest.mark.parametrize("name", list(IGNI_FAULTS))
def test_igni_fault_past_the_refresh_point_keeps_vending_the_cached_token(
    name: str,
    *,
    stack: LocalStack,
    igni_stub: StubProcess,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fault, _status, _code, attempts = IGNI_FAULTS[name]
    # Given a token in the shared tier, due for refresh but valid for hours yet
    token = assert_token(vend(), "upstream")
    expires_at = age_past_refresh_point(stack)
    # And a cold execution environment, and Igni failing from now on
    cold_environment(monkeypatch)
    igni_stub.configure(faults=[fault] * QUEUED_FAULTS)
    mark = leaks.mark()
    # When a caller asks for a token
    answer = vend()
    # Then the refresh was tried (a bounded number of times) and the cached token is vended
    assert assert_token(answer, "dynamodb") == token
    assert answer.body["expires_at"] == expires_at
    assert attempts_made(igni_stub) == attempts
    assert answer.elapsed < INVOCATION_S - 0.5
    # And the failure is logged as a refresh failure while still vending (the alarm's signal)
    records = leaks.since(mark)
    failed = [r for r in records if r.get("message") == "token refresh failed"]
    assert any(r.get("still_vending") is True for r in failed), records
    # When asked again at once
    again = vend()
    # Then the same token comes back without hammering Igni (the failure's backoff is shared)
    assert assert_token(again, "dynamodb") == token
    assert attempts_made(igni_stub) == attempts


# ---------------------------------------------------------------------- DynamoDB outages


def test_dynamodb_unreachable_mid_run_then_back(
    *,
    stack: LocalStack,
    igni_stub: StubProcess,
    spare_moto: MotoServer,
    spare_dynamodb: DynamoDBLocal,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    fleet: Fleet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the table on a DynamoDB Local of its own (Secrets Manager and KMS stay up), every
    # request consulting the table (no memory shortcut), and AWS calls failing fast
    stack_on(spare_moto, spare_dynamodb, stack, igni_stub)
    env = {
        **stack.function_env(),
        "AWS_ENDPOINT_URL_DYNAMODB": spare_dynamodb.endpoint_url,
        "MEMORY_REVALIDATE_SECONDS": "0",
        "AWS_MAX_ATTEMPTS": "1",
        # Re-check the table at once when it is back (the pause after a failed re-check is
        # what test_aws_hanging_costs_a_token_in_memory_little_time is about).
        "RECHECK_PAUSE_SECONDS": "0",
    }
    cold_environment(monkeypatch, **env)
    # (the second environment keeps the deployed AWS retries: it must still answer in time)
    deployed_retries = {**env, "AWS_MAX_ATTEMPTS": str(Config.aws_max_attempts)}
    second, third = fleet(deployed_retries, env)
    # And a warm environment holding a token it committed to the table
    first_token = assert_token(vend(), "upstream")
    table_home = dataclasses.replace(stack, dynamodb_endpoint_url=spare_dynamodb.endpoint_url)
    assert "tok" in the_item(table_home)
    calls = len(igni_stub.calls())

    # When DynamoDB goes away
    spare_dynamodb.stop()
    mark = leaks.mark()
    # Then the warm environment keeps vending its token from memory, and logs the outage
    assert assert_token(vend(), "memory") == first_token
    assert logged(leaks.since(mark), "token table unavailable", "ERROR")
    # And a cold environment exchanges directly (one call), then serves that token from memory
    answer = invoke_in(second, leaks, load_event("get_token"))
    direct = assert_token(answer, "upstream")
    assert answer.elapsed < INVOCATION_S - 0.5
    assert assert_token(invoke_in(second, leaks, load_event("get_token")), "memory") == direct
    assert len(igni_stub.calls()) == calls + 1
    # And a caller whose token was rejected gets a new one by a direct exchange
    rejected = load_event("post_refresh", body=json.dumps({"rejected_token": first_token}))
    replaced = assert_token(vend(rejected), "upstream")
    assert replaced not in (first_token, direct)
    assert len(igni_stub.calls()) == calls + 2

    # When DynamoDB comes back (in memory, it forgets everything: the table is created again,
    # empty; the spare moto server too, which holds the copies stack_on makes of the rest)
    spare_dynamodb.start()
    spare_moto.restart()
    stack_on(spare_moto, spare_dynamodb, stack, igni_stub)
    # Then the next request commits a token to the table again
    committed = assert_token(vend(), "upstream")
    item = the_item(table_home)
    assert item["fp"]["S"] == token_fingerprint(committed)
    assert int(item["expires_at"]["N"]) > time.time()
    # And a brand-new environment is served that token from the table, without calling Igni
    assert assert_token(invoke_in(third, leaks, load_event("get_token")), "dynamodb") == committed
    # And the environment that had exchanged on its own converges on the shared token
    assert assert_token(invoke_in(second, leaks, load_event("get_token")), "dynamodb") == committed
    assert len(igni_stub.calls()) == calls + 3
    # And the outage is in the process environments' logs too
    assert "token table unavailable" in leaks.text()


def test_dynamodb_and_secrets_manager_unreachable_together(
    *,
    make_stack: MakeStack,
    igni_stub: StubProcess,
    spare_moto: MotoServer,
    spare_dynamodb: DynamoDBLocal,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the whole stack on servers that will go away, and AWS calls failing fast
    stack = make_stack(
        endpoint_url=spare_moto.endpoint_url, dynamodb_endpoint_url=spare_dynamodb.endpoint_url
    )
    cold_environment(
        monkeypatch, MEMORY_REVALIDATE_SECONDS="0", AWS_MAX_ATTEMPTS="1", RECHECK_PAUSE_SECONDS="0"
    )
    # And a warm environment holding a token (and the secret, in its cache)
    token = assert_token(vend(), "upstream")
    assert "tok" in the_item(stack)
    calls = len(igni_stub.calls())

    # When the servers stop: no table, no secret
    spare_moto.stop()
    spare_dynamodb.stop()
    mark = leaks.mark()
    # Then the warm environment still vends its token from memory, and logs the outage
    assert assert_token(vend(), "memory") == token
    assert logged(leaks.since(mark), "token table unavailable", "ERROR")
    # And a caller whose token was rejected gets a new one: the secret cannot be read afresh,
    # so the environment exchanges the credentials it read last (one call to Igni)
    rejected = load_event("post_refresh", body=json.dumps({"rejected_token": token}))
    replacement = assert_token(vend(rejected), "upstream")
    assert replacement != token
    assert len(igni_stub.calls()) == calls + 1
    calls += 1
    # And a cold environment, with nothing cached at all, answers the same clear 503, in time
    cold_environment(monkeypatch)
    answer = vend(timeout_s=INVOCATION_S)
    assert "Secrets Manager" in assert_error(answer, 503, "upstream_unavailable")
    assert answer.elapsed < INVOCATION_S - 0.5
    assert len(igni_stub.calls()) == calls


# -------------------------------------------------------------- Secrets Manager outages


def test_secrets_manager_unreachable_keeps_vending_a_valid_cached_token(
    *,
    stack: LocalStack,
    igni_stub: StubProcess,
    spare_moto: MotoServer,
    spare_dynamodb: DynamoDBLocal,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the secret alone on a moto server that will go away (table and key stay up), the
    # secret re-read on every use (no secret cache), and AWS calls failing fast
    secret_home = stack_on(spare_moto, spare_dynamodb, stack, igni_stub)
    cold_environment(
        monkeypatch,
        AWS_ENDPOINT_URL_SECRETS_MANAGER=spare_moto.endpoint_url,
        IGNI_SECRET_ID=secret_home.secret_arn,
        SECRET_CACHE_SECONDS="0",
        AWS_MAX_ATTEMPTS="1",
    )
    # And a warm environment that has vended a token
    token = assert_token(vend(), "upstream")
    calls = len(igni_stub.calls())

    # When Secrets Manager goes away
    spare_moto.stop()
    mark = leaks.mark()
    # Then the warm environment keeps vending the token from memory, and logs why it could not
    # check the secret's version
    assert assert_token(vend(), "memory") == token
    assert logged(leaks.since(mark), "secrets manager unavailable", "WARNING")
    # And a cold environment vends it from the table, then from its own memory
    cold_environment(monkeypatch)
    assert assert_token(vend(), "dynamodb") == token
    assert assert_token(vend(), "memory") == token

    # When the token is due for refresh (still valid) in a cold environment
    age_past_refresh_point(stack)
    cold_environment(monkeypatch)
    mark = leaks.mark()
    # Then the refresh cannot read the secret, and the valid token is still vended
    assert assert_token(vend(), "dynamodb") == token
    records = leaks.since(mark)
    assert logged(records, "secrets manager unavailable")
    assert len(igni_stub.calls()) == calls

    # When no valid token is cached at all
    stack.dynamodb().delete_item(TableName=stack.table_name, Key={"pk": the_item(stack)["pk"]})
    cold_environment(monkeypatch)
    answer = vend()
    # Then the answer is a clear 503 with Retry-After, in time, and Igni was not called
    assert "Secrets Manager" in assert_error(answer, 503, "upstream_unavailable")
    assert answer.elapsed < INVOCATION_S - 0.5
    assert len(igni_stub.calls()) == calls


SECRETS_MANAGER_REFUSALS = {
    # name: the error Secrets Manager answers (what botocore raises), in every way it can fail
    "access-denied": "AccessDeniedException",
    "secret-deleted": "ResourceNotFoundException",
    "throttled": "ThrottlingException",
    "kms-decryption-failure": "DecryptionFailure",
}


@pytest.fixture
def refusing_secrets_manager(moto_server: str) -> Iterator[AwsErrorEndpoint]:
    endpoint = AwsErrorEndpoint(moto_server).start()
    yield endpoint
    endpoint.stop()


@pytest.mark.parametrize("name", list(SECRETS_MANAGER_REFUSALS))
def test_secrets_manager_refusing_keeps_vending_a_valid_cached_token(
    *,
    name: str,
    stack: LocalStack,
    igni_stub: StubProcess,
    refusing_secrets_manager: AwsErrorEndpoint,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    fleet: Fleet,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given Secrets Manager behind an endpoint that can be told to refuse, the secret re-read
    # on every use, and a token vended and cached (memory and table)
    env = {
        **stack.function_env(),
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": refusing_secrets_manager.endpoint_url,
        "SECRET_CACHE_SECONDS": "0",
    }
    cold_environment(monkeypatch, **env)
    token = assert_token(vend(), "upstream")
    calls = len(igni_stub.calls())
    # When Secrets Manager refuses every read in this way
    refusing_secrets_manager.code = SECRETS_MANAGER_REFUSALS[name]
    mark = leaks.mark()
    capsys.readouterr()
    # Then the warm environment keeps vending the token from memory
    assert assert_token(vend(), "memory") == token
    # And logs a warning and counts SecretUnavailable, naming no secret
    records = leaks.since(mark)
    assert logged(records, "secrets manager unavailable", "WARNING")
    emitted = capsys.readouterr().out
    leaks.chunks.append(emitted)
    metrics = [json.loads(line) for line in emitted.splitlines() if '"_aws"' in line]
    assert any("SecretUnavailable" in m for m in metrics)
    # And a cold environment (another process) vends it from the table, then from memory
    (cold,) = fleet(env)
    assert assert_token(invoke_in(cold, leaks, load_event("get_token")), "dynamodb") == token
    assert assert_token(invoke_in(cold, leaks, load_event("get_token")), "memory") == token

    # When the token is due for refresh (still valid), in a cold environment
    age_past_refresh_point(stack)
    cold_environment(monkeypatch)
    # Then the refresh cannot read the secret, and the valid token is still vended
    assert assert_token(vend(), "dynamodb") == token
    assert assert_token(vend(), "dynamodb") == token
    assert len(igni_stub.calls()) == calls

    # When no valid token is cached at all, an exchange is needed: only now is it an error
    stack.dynamodb().delete_item(TableName=stack.table_name, Key={"pk": the_item(stack)["pk"]})
    cold_environment(monkeypatch)
    answer = vend()
    assert answer.status in (500, 503), answer
    assert answer.body["error"] in ("configuration_error", "upstream_unavailable")
    assert stack.secret_arn not in json.dumps(answer.body)
    assert len(igni_stub.calls()) == calls


# ------------------------------------------------------------------ AWS hanging, not down


def test_aws_hanging_costs_a_token_in_memory_little_time(
    *,
    make_stack: MakeStack,
    igni_stub: StubProcess,
    spare_moto: MotoServer,
    spare_dynamodb: DynamoDBLocal,
    fleet: Fleet,
    leaks: LeakWatch,
) -> None:
    # Given the whole stack (table, secret, key) on servers that will hang, every request
    # re-checking the secret and the table (the worst case), and the deployed AWS timeouts
    stack = make_stack(
        endpoint_url=spare_moto.endpoint_url,
        dynamodb_endpoint_url=spare_dynamodb.endpoint_url,
        apply_env=False,
    )
    env = {**stack.function_env(), "SECRET_CACHE_SECONDS": "0", "MEMORY_REVALIDATE_SECONDS": "0"}
    (environment,) = fleet(env)
    # And an execution environment holding a vendable token in memory (and in the table)
    token = assert_token(invoke_in(environment, leaks, load_event("get_token")), "upstream")

    # When DynamoDB, Secrets Manager and KMS all stop answering (the process is frozen: its
    # socket still accepts connections, nothing ever answers)
    spare_moto.freeze()
    spare_dynamodb.freeze()
    try:
        answers = [invoke_in(environment, leaks, load_event("get_token")) for _ in range(8)]
    finally:
        spare_moto.thaw()
        spare_dynamodb.thaw()

    # Then every request is served the token at hand
    assert [assert_token(a, "memory") for a in answers] == [token] * len(answers)
    # And the first request of the outage takes at most 3 s, the others a median of 0.5 s
    elapsed = [round(a.elapsed, 3) for a in answers]
    print(f"per-request seconds while AWS hangs: {elapsed}")  # the figure, with pytest -rP
    assert elapsed[0] <= 3.0, elapsed
    assert statistics.median(elapsed[1:]) <= 0.5, elapsed
    assert len(igni_stub.calls()) == 1


# --------------------------------------------------------------------------- KMS faults


def test_kms_refusing_to_decrypt_under_another_key_is_a_miss(
    stack: LocalStack,
    igni_stub: StubProcess,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a token in the table, encrypted under the stack's key
    old = assert_token(vend(), "upstream")
    # And a cold environment configured with another key (the key was replaced)
    new_key = stack.kms().create_key(Description="replacement")["KeyMetadata"]["KeyId"]
    cold_environment(monkeypatch, TOKEN_KMS_KEY_ID=new_key)
    mark = leaks.mark()
    # When a caller asks for a token
    answer = vend()
    # Then KMS's refusal is a miss: a fresh token is exchanged and vended, not an error
    fresh = assert_token(answer, "upstream")
    assert fresh != old
    assert len(igni_stub.calls()) == 2
    assert logged(leaks.since(mark), "cached token could not be decrypted; treated as a miss")
    # And the fresh token is committed under the new key: the next cold environment reads it
    assert the_item(stack)["fp"]["S"] == token_fingerprint(fresh)
    cold_environment(monkeypatch)
    assert assert_token(vend(), "dynamodb") == fresh
    assert len(igni_stub.calls()) == 2


def test_kms_refusing_an_item_moved_to_another_cache_key_is_a_miss(
    stack: LocalStack,
    igni_stub: StubProcess,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a token in the table, encrypted with its cache key as encryption context
    old = assert_token(vend(), "upstream")
    item = the_item(stack)
    # And the item copied to the cache key of another credential set (here: another scope)
    cold_environment(monkeypatch, IGNI_SCOPE="fault-injection")
    runtime = get_runtime()
    other_key = cache_key(runtime.config.profiles["default"])
    assert other_key != item["pk"]["S"]
    stack.dynamodb().put_item(TableName=stack.table_name, Item={**item, "pk": {"S": other_key}})
    mark = leaks.mark()
    # When that credential set's caller asks for a token
    answer = vend()
    # Then the encryption context does not match, KMS refuses, and it is a miss: a fresh token
    fresh = assert_token(answer, "upstream")
    assert fresh != old
    assert len(igni_stub.calls()) == 2
    assert logged(leaks.since(mark), "cached token could not be decrypted; treated as a miss")


def test_kms_unreachable_falls_back_to_a_direct_exchange_and_loses_nothing(
    stack: LocalStack,
    igni_stub: StubProcess,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a token in the table
    shared = assert_token(vend(), "upstream")
    # When KMS is unreachable for a cold environment
    dead = f"http://127.0.0.1:{free_port()}"
    cold_environment(monkeypatch, AWS_ENDPOINT_URL_KMS=dead, AWS_MAX_ATTEMPTS="1")
    mark = leaks.mark()
    answer = vend()
    # Then it exchanges on its own (200), logging that the table could not be used
    assert assert_token(answer, "upstream") != shared
    assert logged(leaks.since(mark), "token table unavailable", "ERROR")
    # And once KMS is back, the shared token is still there and served
    monkeypatch.delenv("AWS_ENDPOINT_URL_KMS")
    cold_environment(monkeypatch)
    assert assert_token(vend(), "dynamodb") == shared


def test_kms_refusing_to_encrypt_does_not_hold_the_fleet_back(
    stack: LocalStack,
    igni_stub: StubProcess,
    vend: Callable[..., Answer],
    leaks: LeakWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an environment whose KMS key is gone (KMS refuses to encrypt and decrypt with it)
    gone = "11111111-2222-3333-4444-555555555555"
    cold_environment(monkeypatch, TOKEN_KMS_KEY_ID=gone)
    mark = leaks.mark()
    # When it vends a token
    first = assert_token(vend(), "upstream")
    # Then the token is vended though it could not be stored, and that is logged
    assert logged(leaks.since(mark), "token table unavailable", "ERROR")
    # And another environment asking right after is not kept waiting on a refresh lease that
    # the first one no longer uses: it exchanges at once
    cold_environment(monkeypatch)
    answer = vend()
    assert assert_token(answer, "upstream") != first
    assert answer.elapsed < 3.0
    assert len(igni_stub.calls()) == 2


# ------------------------------------------------------------------------ the log scan


def test_no_log_line_of_the_suite_holds_a_secret_or_a_token(leaks: LeakWatch) -> None:
    if not leaks.tokens:
        pytest.skip("runs after the rest of this module: there is nothing to scan on its own")
    # Given every log line the module produced, and every token its tests were handed
    text = leaks.text()
    assert '"token vended"' in text
    # Then none of them, nor any client secret, appears in any line (the failure names them by
    # fingerprint only)
    leaked = sorted(name for name, needle in leaks.needles().items() if needle in text)
    assert not leaked, f"leaked into the logs: {leaked}"
