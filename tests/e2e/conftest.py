"""The end-to-end suite's target: a deployed stack, or `make local` started for the session.

The suite is a black box: a base URL and AWS credentials, nothing else. It finds them in order:

- ``IGNI_E2E_BASE_URL``: the API's base URL, stage included
  (``https://ID.execute-api.REGION.amazonaws.com/v1``);
- ``IGNI_E2E_STACK``: a deployed stack's name; its ``ApiUrl`` output is read with
  CloudFormation's DescribeStacks (``make e2e STACK=<name>`` sets it);
- neither: ``make local`` (``python -m local.run``) is started on free ports with the Igni stub
  and stopped at the end; errors only a stub can provoke (Igni down) are tested there only.

Against a deployed stack the requests are signed with the credentials botocore's chain finds
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, SSO, a
role); the caller needs ``execute-api:Invoke`` on the API. ``IGNI_E2E_REGION`` (else
``AWS_REGION``, ``AWS_DEFAULT_REGION``, the URL's region) is the signing region and
``IGNI_E2E_PROFILE`` names a configured credential profile for the ``/token/{profile}`` success
cases (skipped without it).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import botocore.session
import pytest
from botocore.credentials import Credentials
from igni_token_client.client import resolve_region

from local.gateway.sigv4 import LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY
from local.igni_stub import StubControl
from tests.local_run import REPO_ROOT, start_local_run

BASE_URL_VAR = "IGNI_E2E_BASE_URL"
STACK_VAR = "IGNI_E2E_STACK"
REGION_VAR = "IGNI_E2E_REGION"
PROFILE_VAR = "IGNI_E2E_PROFILE"
# make local's extra profiles: one that works, one per upstream fault (each its own backoff).
LOCAL_PROFILE = "e2e"
DOWN_PROFILE = "e2e-down"
BAD_PROFILE = "e2e-bad"
LOCAL_REGION = "us-east-1"
STARTUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Target:
    """What the suite talks to and how it signs; ``stub`` only for `make local`."""

    base_url: str
    region: str
    credentials: Credentials
    profile: str | None
    stub: StubControl | None = None
    description: str = ""

    @property
    def local(self) -> bool:
        return self.stub is not None

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def shell_env(self, credentials: Credentials | None = None) -> dict[str, str]:
        """An environment for the CLI and curl: this target's (or the given) keys, region."""
        creds = credentials or self.credentials
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_") and k not in ("IGNI_TOKEN_ENDPOINT", "IGNI_TOKEN_PROFILE")
        }
        env.update(
            AWS_ACCESS_KEY_ID=creds.access_key,
            AWS_SECRET_ACCESS_KEY=creds.secret_key,
            AWS_REGION=self.region,
            # No shared config or credentials file may override the keys given here.
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        if creds.token:
            env["AWS_SESSION_TOKEN"] = creds.token
        return env


def stack_api_url(stack: str, region: str | None) -> str:
    """The ``ApiUrl`` output of a deployed stack (CloudFormation DescribeStacks)."""
    session = botocore.session.get_session()
    # Any: no CloudFormation stubs are installed for one call.
    cloudformation: Any = session.create_client("cloudformation", region_name=region)
    stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if "ApiUrl" not in outputs:
        raise pytest.UsageError(f"stack {stack} has no ApiUrl output; is it the token vendor?")
    return str(outputs["ApiUrl"])


def deployed_target(environ: Mapping[str, str]) -> Target | None:
    base_url = environ.get(BASE_URL_VAR, "").strip()
    stack = environ.get(STACK_VAR, "").strip()
    if not base_url and not stack:
        return None
    session = botocore.session.get_session()
    explicit = environ.get(REGION_VAR, "").strip() or None
    if not base_url:
        stack_region = explicit or resolve_region(None, None, session, environ)
        base_url = stack_api_url(stack, stack_region)
    region = resolve_region(explicit, base_url, session, environ)
    found = session.get_credentials()
    if found is None:
        raise pytest.UsageError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    frozen = found.get_frozen_credentials()
    if not frozen.access_key or not frozen.secret_key:
        raise pytest.UsageError("the AWS credentials found have no access key or secret key")
    return Target(
        base_url=base_url.rstrip("/"),
        region=region,
        credentials=Credentials(frozen.access_key, frozen.secret_key, frozen.token),
        profile=environ.get(PROFILE_VAR, "").strip() or None,
        description=f"deployed stack {stack}" if stack else base_url,
    )


def _local_env() -> dict[str, str]:
    """`make local`'s environment: no AWS credentials (it accepts the documented test keys),
    no real Igni, no IAM policy, a fixed region."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "IGNI_", "LOCAL_", "POWERTOOLS_", "TOKEN_"))
    }
    env.update(
        AWS_REGION=LOCAL_REGION,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src")]),
        LOCAL_PROFILES=",".join((LOCAL_PROFILE, DOWN_PROFILE, BAD_PROFILE)),
    )
    return env


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    deployed = deployed_target(os.environ)
    if deployed is not None:
        yield deployed
        return
    state_file = tmp_path_factory.mktemp("e2e") / "env.json"
    proc, state = start_local_run(
        "--stack-name",
        "e2e",
        env=_local_env(),
        state_file=state_file,
        timeout=STARTUP_TIMEOUT_S,
    )
    try:
        yield Target(
            base_url=str(state["api_url"]) + "/v1",
            region=str(state["stack"]["region"]),
            credentials=Credentials(LOCAL_TEST_ACCESS_KEY_ID, LOCAL_TEST_SECRET_ACCESS_KEY),
            profile=LOCAL_PROFILE,
            stub=StubControl(str(state["stub_base_url"])),
            description="make local",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture
def stub(target: Target) -> Iterator[StubControl]:
    """The Igni stub behind `make local`; skips the test against a deployed stack."""
    if target.stub is None:
        pytest.skip(
            "needs make local's Igni stub to make Igni fail; a deployed stack talks to the "
            "real Igni, which this suite does not break"
        )
    yield target.stub
    target.stub.configure(faults=[])


@pytest.fixture
def named_profile(target: Target) -> str:
    """A configured credential profile, for the /token/{profile} success cases."""
    if target.profile is None:
        pytest.skip(f"set {PROFILE_VAR} to a profile the deployed stack serves")
    return target.profile


def pytest_report_header(config: pytest.Config) -> str | None:
    if os.environ.get(BASE_URL_VAR) or os.environ.get(STACK_VAR):
        where = os.environ.get(BASE_URL_VAR) or f"stack {os.environ.get(STACK_VAR)}"
        return f"e2e target: {where}"
    return None
