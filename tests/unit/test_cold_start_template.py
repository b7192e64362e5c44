"""The template and Makefile lines of issue 12: precompiled artifacts per function, SnapStart.

Read with local.cfn_template like tests/unit/test_template.py; the transformed-template test
runs the SAM translator from the SAM venv (make test installs it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from local.cfn_template import load_template, resource, resources_of_type
from tests.unit.test_template import needs_sam, sam_transform

REPO_ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


def make_variable(name: str) -> list[str]:
    match = re.search(rf"^{re.escape(name)} :=(.*)$", MAKEFILE, re.MULTILINE)
    assert match is not None, f"the Makefile does not set {name}"
    return match.group(1).split()


def test_every_function_is_built_by_its_makefile_target(template: dict[str, Any]) -> None:
    # Given the template's functions
    functions = resources_of_type(template, "AWS::Serverless::Function")
    # Then sam build runs the top-level Makefile for each, whose generic target knows it
    assert set(make_variable("LAMBDA_FUNCTIONS")) == set(functions)
    for name, fn in functions.items():
        assert fn["Metadata"]["BuildMethod"] == "makefile"
        assert fn["Metadata"]["ContextPath"] == "."
        assert "botocore" in make_variable(f"{name}_PACKAGES")
        assert make_variable(f"{name}_SERVICES")
    # And the recipe compiles hash-based, unchecked bytecode for arm64's 3.13
    assert "--invalidation-mode unchecked-hash" in MAKEFILE
    assert "--platform manylinux2014_aarch64 --only-binary=:all:" in MAKEFILE
    assert "sys.version_info[:2] != (3, 13)" in MAKEFILE


def test_no_function_packages_boto3_and_only_the_api_function_has_the_event_handler() -> None:
    for name in make_variable("LAMBDA_FUNCTIONS"):
        assert "boto3" not in make_variable(f"{name}_PACKAGES")
    # The resolver is the API function's: the maintenance and rotation handlers never import it
    for name in ("MaintenanceFunction", "RotationFunction"):
        assert "aws_lambda_powertools/event_handler" in make_variable(f"{name}_PRUNE"), name
    assert make_variable("TokenFunction_PRUNE") == []
    # The maintenance function makes the token function's clients
    assert make_variable("MaintenanceFunction_SERVICES") == make_variable("TokenFunction_SERVICES")


def test_snapstart_is_a_parameter_off_by_default_for_the_api_function(
    template: dict[str, Any],
) -> None:
    parameter = template["Parameters"]["SnapStart"]
    assert parameter["Default"] == "None"
    assert parameter["AllowedValues"] == ["None", "PublishedVersions"]
    props = resource(template, "TokenFunction")["Properties"]
    assert props["SnapStart"] == {"ApplyOn": {"Ref": "SnapStart"}}
    assert props["AutoPublishAlias"] == "live"


@needs_sam
@pytest.mark.parametrize("snap_start", ["None", "PublishedVersions"])
def test_the_api_invokes_the_alias_and_the_schedule_and_rule_the_maintenance_function(
    snap_start: str,
) -> None:
    out = sam_transform(f"SnapStart={snap_start}")
    resources = out["Resources"]
    assert resources["TokenFunctionAliaslive"]["Type"] == "AWS::Lambda::Alias"
    body = resources["TokenApi"]["Properties"]["Body"]
    uris = [
        str(spec["x-amazon-apigateway-integration"]["uri"])
        for ops in body["paths"].values()
        for spec in ops.values()
    ]
    assert len(uris) == 4
    assert all("${TokenFunctionAliaslive}" in uri for uri in uris)
    permissions = resources_of_type(out, "AWS::Lambda::Permission")
    for name, permission in permissions.items():
        if name.startswith("TokenFunction"):
            assert permission["Properties"]["FunctionName"] == {"Ref": "TokenFunctionAliaslive"}
    # The schedule and the rotation rule target the maintenance function (no SnapStart, so no
    # published version: its latest code), and nothing else targets the token function
    rules = resources_of_type(out, "AWS::Events::Rule")
    assert set(rules) == {"MaintenanceFunctionPrewarm", "MaintenanceFunctionSecretRotated"}
    for rule in rules.values():
        (target,) = rule["Properties"]["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": ["MaintenanceFunction", "Arn"]}
