"""SnapStart: built during init, nothing fetched then, each restored environment its own.

A snapshot and its restores are simulated with os.fork() after a real init (see
tests/integration/snapstart/simulate.py); the children share the moto server and the Igni stub
as restored environments of one function version share DynamoDB and Igni.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from local.events import load_event
from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from token_vendor.functions import api as handler
from token_vendor.functions.runtime import current_runtime, get_runtime

REPO_ROOT = Path(__file__).resolve().parents[2]
SIMULATOR = Path(__file__).resolve().parent / "snapstart" / "simulate.py"


def simulate(stack: LocalStack, tmp_path: Path, children: int) -> dict[str, Any]:
    env = {
        **os.environ,
        **stack.function_env(),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start",
        "PYTHONPATH": os.pathsep.join(
            [str(SIMULATOR.parent), str(REPO_ROOT / "src"), str(REPO_ROOT)]
        ),
    }
    done = subprocess.run(
        [sys.executable, str(SIMULATOR), str(tmp_path), str(children)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        "init": json.loads((tmp_path / "init.json").read_text()),
        "children": [
            json.loads((tmp_path / f"child{i}.json").read_text()) for i in range(children)
        ],
    }


def test_init_builds_the_clients_and_fetches_nothing(
    stack: LocalStack, tmp_path: Path, igni_stub: Any
) -> None:
    # Given a function with SnapStart on
    # When Lambda runs its init (the import), before the snapshot
    seen = simulate(stack, tmp_path, children=0)
    # Then the configuration and clients are built, and no AWS request or upstream call was
    # made: no secret, token or lease can be in the snapshot
    assert seen["init"]["built"] is True
    assert seen["init"]["aws_requests_during_init"] == []
    assert igni_stub.calls() == []
    assert stack.dynamodb().scan(TableName=stack.table_name)["Items"] == []


def test_two_restored_environments_have_their_own_owner_id_and_random_state(
    stack: LocalStack, tmp_path: Path
) -> None:
    # Given one snapshot
    # When two environments are restored from it and each serves a request
    seen = simulate(stack, tmp_path, children=2)
    first, second = seen["children"]
    # Then each has a lease owner id of its own, not the snapshot's, and its own random state
    assert first["status"] == second["status"] == 200
    assert first["owner"] != second["owner"]
    assert seen["init"]["owner"] not in (first["owner"], second["owner"])
    assert first["random"] != second["random"]


def test_many_restored_environments_make_one_upstream_call(
    stack: LocalStack, tmp_path: Path, igni_stub: Any
) -> None:
    # Given an Igni that takes 300 ms to answer and six environments restored from one snapshot
    igni_stub.configure(latency_ms=300)
    # When they all ask for a token at the same moment
    seen = simulate(stack, tmp_path, children=6)
    # Then exactly one of them called Igni and all vend the same token
    assert [c["status"] for c in seen["children"]] == [200] * 6
    assert len({c["token"] for c in seen["children"]}) == 1
    assert len(igni_stub.calls()) == 1


def test_a_configuration_error_at_init_is_answered_per_request(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch, lambda_context: FakeLambdaContext
) -> None:
    # Given SnapStart, the runtime hooks, and a function whose table name is missing
    hooks: list[Any] = []
    fake = types.ModuleType("snapshot_restore_py")
    fake.register_after_restore = hooks.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    monkeypatch.delenv("TOKEN_TABLE_NAME")
    # When the init runs
    built = handler.init_for_snapshot()
    # Then nothing is built (the hook is registered all the same), and each request is
    # answered 500 configuration_error
    assert built is False
    assert hooks == [handler.after_restore]
    for _ in range(2):
        response = handler.lambda_handler(load_event("get_token"), lambda_context)
        assert response["statusCode"] == 500
        assert json.loads(response["body"])["error"] == "configuration_error"


def test_without_the_runtime_hooks_nothing_is_built_at_init(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given SnapStart but no snapshot_restore_py (not the managed runtime)
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    # When the init runs
    # Then nothing is built: an identity that cannot be renewed after restore is never snapshot
    assert handler.init_for_snapshot() is False
    assert current_runtime() is None


def test_after_restore_drops_the_pooled_connections(stack: LocalStack, igni_stub: Any) -> None:
    # Given a runtime whose Igni pool and DynamoDB client hold open connections
    runtime = get_runtime()
    runtime.http.request("GET", igni_stub.base_url + "/")
    runtime.clients.dynamodb.describe_table(TableName=stack.table_name)
    assert runtime.http.pools
    # When the environment is restored
    handler.after_restore()
    # Then the old pools are empty and the new runtime shares no pool, only the clients
    assert not runtime.http.pools
    restored = get_runtime()
    assert restored.http is not runtime.http
    assert restored.clients is runtime.clients
    assert restored.service is not runtime.service
