"""Fixtures for the integration tests that drive Secrets Manager rotation.

``rotation`` -> :class:`Rotation` for the test's ``stack``: it enables rotation on the secret
(moto's way, see :meth:`Rotation.enable`), stages versions as AWSPENDING as an operator would,
and runs the real rotation function (``token_vendor.functions.rotation.lambda_handler``) one step
at a time, as Secrets Manager would invoke it. moto cannot invoke a rotation Lambda itself (its
``rotate_secret`` with a Lambda ARN needs a Lambda backend running the code in Docker), so the
steps are called directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from token_vendor.functions import rotation as rotation_module
from token_vendor.functions.runtime import reset_runtime

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


class Rotation:
    """Operator and Secrets Manager actions on one stack's secret."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.sm = stack.secretsmanager()

    def enable(self) -> str:
        """Turn rotation on (RotationEnabled) and return the AWSCURRENT version id after it.

        moto's rotate_secret without a Lambda ARN promotes a new version itself; with
        RotateImmediately=False that version is a copy of the current value, so the
        credentials stay the same but AWSCURRENT gets a new version id. Call this before a
        token is minted if the test compares versions.
        """
        self.sm.rotate_secret(
            SecretId=self.stack.secret_arn,
            RotationRules={"AutomaticallyAfterDays": 30},
            RotateImmediately=False,
        )
        assert self.sm.describe_secret(SecretId=self.stack.secret_arn).get("RotationEnabled")
        current = self.version_with("AWSCURRENT")
        assert current is not None
        return current

    def stage(self, value: Mapping[str, Any] | str, version_id: str | None = None) -> str:
        """``put-secret-value --version-stages AWSPENDING``; returns the new version id."""
        text = value if isinstance(value, str) else json.dumps(dict(value))
        answer = self.sm.put_secret_value(
            SecretId=self.stack.secret_arn,
            ClientRequestToken=version_id or str(uuid.uuid4()),
            SecretString=text,
            VersionStages=["AWSPENDING"],
        )
        return answer["VersionId"]

    def stages(self) -> dict[str, list[str]]:
        """VersionIdsToStages, without versions that carry no label (moto keeps them)."""
        described = self.sm.describe_secret(SecretId=self.stack.secret_arn)
        return {
            version: sorted(labels)
            for version, labels in (described.get("VersionIdsToStages") or {}).items()
            if labels
        }

    def version_with(self, stage: str) -> str | None:
        return next((v for v, labels in self.stages().items() if stage in labels), None)

    def step(self, step: str, token: str) -> dict[str, str]:
        """Invoke the rotation function as Secrets Manager does for one step."""
        event = {"SecretId": self.stack.secret_arn, "ClientRequestToken": token, "Step": step}
        return rotation_module.lambda_handler(event, FakeLambdaContext(timeout_s=30.0))

    def run(self, token: str) -> list[str]:
        """All four steps in order; returns their outcomes."""
        return [self.step(step, token)["outcome"] for step in STEPS]


@pytest.fixture
def rotation(stack: LocalStack) -> Iterator[Rotation]:
    reset_runtime()
    yield Rotation(stack)
    reset_runtime()
