"""How tests/e2e finds a deployed target: a base URL, or a stack's ApiUrl output, and the caller's
credentials from botocore's chain. The stack is a CloudFormation stack in the moto server."""

from __future__ import annotations

import json
from typing import Any

import botocore.session
import pytest

from tests.e2e.conftest import deployed_target

API_URL = "https://abc123defg.execute-api.eu-west-2.amazonaws.com/v1"


def test_no_target_variable_means_make_local() -> None:
    assert deployed_target({}) is None


def test_a_base_url_gives_its_region_and_the_callers_credentials(moto_server: str) -> None:
    # Given a base URL (with a trailing slash) and the credentials of this environment
    # (the moto fixture's "testing" keys)
    target = deployed_target({"IGNI_E2E_BASE_URL": API_URL + "/", "IGNI_E2E_PROFILE": "analytics"})

    # Then the suite signs for the URL's region with those credentials, and is not local
    assert target is not None
    assert target.base_url == API_URL
    assert target.region == "eu-west-2"
    assert target.credentials.access_key == "testing"
    assert target.profile == "analytics"
    assert not target.local
    assert target.url("/token") == API_URL + "/token"


def test_a_stack_name_is_resolved_to_its_api_url_output(moto_server: str) -> None:
    # Given a deployed stack (in moto) whose ApiUrl output is the API's base URL
    cloudformation: Any = botocore.session.get_session().create_client(
        "cloudformation", region_name="us-east-1"
    )
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {"ApiUrl": {"Value": API_URL}, "TableName": {"Value": "t"}},
    }
    cloudformation.create_stack(StackName="e2e-target", TemplateBody=json.dumps(template))

    # When the suite is pointed at the stack by name
    target = deployed_target({"IGNI_E2E_STACK": "e2e-target"})

    # Then it calls the output's URL, signing for the URL's region
    assert target is not None
    assert target.base_url == API_URL
    assert target.region == "eu-west-2"
    assert target.profile is None


def test_a_stack_without_the_output_is_a_usage_error(moto_server: str) -> None:
    cloudformation: Any = botocore.session.get_session().create_client(
        "cloudformation", region_name="us-east-1"
    )
    template = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}
    cloudformation.create_stack(StackName="not-the-vendor", TemplateBody=json.dumps(template))
    with pytest.raises(pytest.UsageError, match="no ApiUrl output"):
        deployed_target({"IGNI_E2E_STACK": "not-the-vendor"})
