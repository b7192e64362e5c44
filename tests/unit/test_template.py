"""The contract lines of issues 2, 6, 7, 10 and 11 that live in template.yaml.

Read with local.cfn_template (short-form intrinsics become their long form), and where a value
depends on parameters, resolved for a given set of parameter values the way CloudFormation
would. The last tests run the SAM translator and ``sam validate --lint`` when the SAM venv
(.venv-sam, made by ``make build``) exists, and are skipped otherwise.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from local.cfn_template import (
    evaluate_condition,
    function_properties,
    load_template,
    parameter_defaults,
    resolve,
    resource,
    resource_properties,
    resources_of_type,
)
from tests.unit.test_routes import template_routes
from token_vendor import observability

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC = REPO_ROOT / "src" / "token_vendor"
SAM_PYTHON = REPO_ROOT / ".venv-sam" / "bin" / "python"
SAM = REPO_ROOT / ".venv-sam" / "bin" / "sam"

ACCOUNT = "111122223333"
STACK = "vendor"
NO_VALUE = object()
# The functions that vend tokens: the API function and the maintenance function (pre-warm and
# rotation), which read the secrets, the table and the key alike.
VENDING_ROLES = ("TokenFunctionRole", "MaintenanceFunctionRole")
ITEM_LEVEL_DYNAMODB = {
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


def refs_for(template: Mapping[str, Any], **params: str) -> dict[str, Any]:
    """What Ref/GetAtt/Sub give for a deployment of stack ``vendor`` with these parameters."""
    refs: dict[str, Any] = {
        **parameter_defaults(template),
        **params,
        "AWS::StackName": STACK,
        "AWS::Region": "eu-west-1",
        "AWS::AccountId": ACCOUNT,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::NoValue": NO_VALUE,
    }
    key_arn = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/0000-stack-key"
    refs.update(
        {
            "TokenKey": "0000-stack-key",
            "TokenKey.Arn": key_arn,
            "IgniSecret": f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:igni-token-vendor/"
            f"{STACK}/default-AbCdEf",
            "TokenTable": "vendor-TokenTable-X",
            "TokenTable.Arn": f"arn:aws:dynamodb:eu-west-1:{ACCOUNT}:table/vendor-TokenTable-X",
            "AsyncFailureQueue.Arn": f"arn:aws:sqs:eu-west-1:{ACCOUNT}:vendor-AsyncFailureQueue",
            "ApiAccessLogGroup.Arn": f"arn:aws:logs:eu-west-1:{ACCOUNT}:log-group:/aws/"
            f"apigateway/{STACK}/access:*",
            "ApiGatewayAccount": "vendor-ApiGa-1",
        }
    )
    return refs


def strip_no_value(value: Any) -> Any:
    """Drop what resolved to AWS::NoValue, as CloudFormation does."""
    if isinstance(value, list):
        return [strip_no_value(v) for v in value if v is not NO_VALUE]
    if isinstance(value, dict):
        return {k: strip_no_value(v) for k, v in value.items() if v is not NO_VALUE}
    return value


def resolved(template: Mapping[str, Any], value: Any, **params: str) -> Any:
    return strip_no_value(resolve(template, value, refs_for(template, **params)))


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def walk(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every node with its path from the root."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, (*path, i))


def references(value: Any) -> set[str]:
    """Logical ids (and parameters) a value refers to through Ref, GetAtt and Sub."""
    found: set[str] = set()
    for _path, node in walk(value):
        if not isinstance(node, dict) or len(node) != 1:
            continue
        ((fn, args),) = node.items()
        if fn == "Ref" and isinstance(args, str):
            found.add(args)
        elif fn == "Fn::GetAtt":
            found.add(str(args[0] if isinstance(args, list) else args).split(".")[0])
        elif fn == "Fn::Sub":
            text = args[0] if isinstance(args, list) else args
            found.update(
                name.split(".")[0]
                for name in re.findall(r"\$\{([^}!]+)\}", str(text))
                if not name.startswith("AWS::")
            )
    return found


def policy_statements(role: Mapping[str, Any]) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for policy in role["Properties"].get("Policies", []):
        statements.extend(as_list(policy["PolicyDocument"]["Statement"]))
    return statements


# ------------------------------------------------------------------------------ issue 2


def test_rest_api_with_iam_as_the_default_authorizer(template: dict[str, Any]) -> None:
    api = resource(template, "TokenApi")
    assert api["Type"] == "AWS::Serverless::Api"  # a REST API, not an HttpApi
    auth = api["Properties"]["Auth"]
    assert auth["DefaultAuthorizer"] == "AWS_IAM"
    assert auth.get("InvokeRole") == "NONE"
    assert not resources_of_type(template, "AWS::Serverless::HttpApi")


def test_endpoint_type_is_a_parameter_regional_by_default_private_allowed(
    template: dict[str, Any],
) -> None:
    param = template["Parameters"]["EndpointType"]
    assert param["Default"] == "REGIONAL"
    assert set(param["AllowedValues"]) == {"REGIONAL", "PRIVATE"}
    endpoint = resource_properties(template, "TokenApi")["EndpointConfiguration"]
    assert endpoint["Type"] == {"Ref": "EndpointType"}


def test_functions_run_python313_on_arm64_within_api_gateways_timeout(
    template: dict[str, Any],
) -> None:
    globals_fn = template["Globals"]["Function"]
    assert globals_fn["Runtime"] == "python3.13"
    assert globals_fn["Architectures"] == ["arm64"]
    for props in (
        f["Properties"] for f in resources_of_type(template, "AWS::Serverless::Function").values()
    ):
        assert props.get("Runtime", "python3.13") == "python3.13"
        assert props.get("Architectures", ["arm64"]) == ["arm64"]
    token_fn = resource_properties(template, "TokenFunction")
    assert token_fn["Handler"] == "token_vendor.functions.api.lambda_handler"
    assert token_fn["Timeout"] < 29
    maintenance = resource_properties(template, "MaintenanceFunction")
    assert maintenance["Handler"] == "token_vendor.functions.maintenance.lambda_handler"


def test_three_functions_from_one_package_each_with_its_own_events(
    template: dict[str, Any],
) -> None:
    """Issue 11: the API function receives API Gateway events only, the maintenance function
    the pre-warm schedule and the Secret Label Updated rule, the rotation function none (Secrets
    Manager invokes it through its permission); all three are built from src/."""
    # Given the template's functions
    functions = resources_of_type(template, "AWS::Serverless::Function")
    # Then there are exactly three, from the one package (the global CodeUri)
    assert set(functions) == {"TokenFunction", "MaintenanceFunction", "RotationFunction"}
    assert template["Globals"]["Function"]["CodeUri"] == "src/"
    for fn_id, fn in functions.items():
        assert "CodeUri" not in fn["Properties"], fn_id
    # And each has its own events: API events only on TokenFunction
    events = {
        fn_id: {name: e["Type"] for name, e in fn["Properties"].get("Events", {}).items()}
        for fn_id, fn in functions.items()
    }
    assert events["TokenFunction"]
    assert set(events["TokenFunction"].values()) == {"Api"}
    # the schedule and the rotation rule only on MaintenanceFunction
    assert events["MaintenanceFunction"] == {
        "Prewarm": "Schedule",
        "SecretRotated": "EventBridgeRule",
    }
    assert events["RotationFunction"] == {}
    # And each function has a role of its own
    roles = function_roles(template)
    assert len(set(roles.values())) == 3
    assert {role_arn(template, r).rsplit("/", 1)[1] for r in roles.values()} == {
        f"{STACK}-token-fn",
        f"{STACK}-maintenance-fn",
        f"{STACK}-rotation-fn",
    }
    # And SnapStart (with the alias it needs) is the API function's only
    for fn_id in ("MaintenanceFunction", "RotationFunction"):
        assert "SnapStart" not in functions[fn_id]["Properties"], fn_id
        assert "AutoPublishAlias" not in functions[fn_id]["Properties"], fn_id


def test_each_role_allows_exactly_what_its_function_calls(template: dict[str, Any]) -> None:
    """Least privilege per function: the whole set of actions each role's policies allow."""
    vending = {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "secretsmanager:GetSecretValue",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        # Encrypt for tokens up to 4 KB, a data key for larger ones (envelope), Decrypt of
        # either (token_cipher.py).
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    }
    expected = {
        "TokenFunctionRole": vending,
        # Its events are asynchronous: failures go to the dead-letter queue.
        "MaintenanceFunctionRole": vending | {"sqs:SendMessage"},
        "RotationFunctionRole": {
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "secretsmanager:DescribeSecret",
            "secretsmanager:GetSecretValue",
            "secretsmanager:UpdateSecretVersionStage",
            "kms:Decrypt",
        },
    }
    assert set(function_roles(template).values()) == set(expected)
    for role_id, actions in expected.items():
        profile_arns = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:igni/*"
        statements = resolved(
            template, policy_statements(resource(template, role_id)), ProfileSecretArns=profile_arns
        )
        allowed = {a for st in statements for a in as_list(st["Action"])}
        assert all(st["Effect"] == "Allow" for st in statements), role_id
        assert allowed == actions, role_id


def test_the_maintenance_function_reads_what_the_token_function_reads(
    template: dict[str, Any],
) -> None:
    # Given both vending functions' environment
    token = function_properties(template, "TokenFunction")
    maintenance = function_properties(template, "MaintenanceFunction")
    rotation = function_properties(template, "RotationFunction")
    # Then they build the same profiles and cache keys from the same secret, table and key
    assert maintenance["Environment"] == token["Environment"]
    # And the rotation function reads the same configuration, under its own service name
    variables = dict(rotation["Environment"]["Variables"])
    assert variables.pop("POWERTOOLS_SERVICE_NAME") == "igni-token-rotation"
    assert {**token["Environment"]["Variables"], **variables} == token["Environment"]["Variables"]
    # And the shared environment is written once, in Globals
    for function_id in ("TokenFunction", "MaintenanceFunction"):
        assert "Environment" not in resource_properties(template, function_id)
    assert maintenance["KmsKeyArn"] == token["KmsKeyArn"]


def test_function_environment_declares_the_contract_variables(template: dict[str, Any]) -> None:
    env = function_properties(template, "TokenFunction")["Environment"]["Variables"]
    for name in (
        "IGNI_SECRET_ID",
        "TOKEN_TABLE_NAME",
        "IGNI_WORKSPACE",
        "IGNI_TOKEN_URL",
        "TOKEN_KMS_KEY_ID",
        "IGNI_PROFILES",
    ):
        assert name in env, name
    # The secret: the stack's own by default, or an existing one.
    assert resolved(template, env["IGNI_SECRET_ID"]).startswith("arn:aws:secretsmanager:")
    existing = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:igni/ops-Zz9"
    assert resolved(template, env["IGNI_SECRET_ID"], ExistingSecretArn=existing) == existing
    assert resolved(template, env["IGNI_PROFILES"], Profiles='{"a": {}}') == '{"a": {}}'


def test_api_events_serve_the_routes_on_the_rest_api(template: dict[str, Any]) -> None:
    events = resource_properties(template, "TokenFunction")["Events"]
    api_events = [e["Properties"] for e in events.values() if e["Type"] == "Api"]
    # The routes themselves are declared here once (test_routes holds the function to them)
    assert {(e["Method"].upper(), e["Path"]) for e in api_events} == template_routes()
    for event in api_events:
        assert event["RestApiId"] == {"Ref": "TokenApi"}
        assert "Auth" not in event  # nothing opts out of AWS_IAM


def test_token_table_is_on_demand_with_ttl_on_expires_at(template: dict[str, Any]) -> None:
    table = resource_properties(template, "TokenTable")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    # The TTL attribute is never a key attribute (it holds a number of seconds).
    keys = {k["AttributeName"] for k in table["KeySchema"]}
    assert "expires_at" not in keys


def test_secret_is_created_for_the_operator_unless_an_existing_one_is_given(
    template: dict[str, Any],
) -> None:
    secret = resource(template, "IgniSecret")
    assert secret["Condition"] == "CreateSecret"
    assert evaluate_condition(template, "CreateSecret", refs_for(template))
    assert not evaluate_condition(
        template, "CreateSecret", refs_for(template, ExistingSecretArn="arn:x")
    )
    name = resolved(template, secret["Properties"]["Name"])
    assert name == f"igni-token-vendor/{STACK}/default"


def test_outputs_name_the_api_url_the_function_and_the_table(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert {"ApiUrl", "FunctionName", "TableName", "SecretArn", "TokenKeyArn"} <= set(outputs)
    for output, fn in (
        ("FunctionName", "TokenFunction"),
        ("MaintenanceFunctionName", "MaintenanceFunction"),
        ("RotationFunctionName", "RotationFunction"),
    ):
        assert outputs[output]["Value"] == {"Ref": fn}


# ------------------------------------------------------------------ least privilege


@pytest.mark.parametrize("role_id", VENDING_ROLES)
def test_vending_role_reads_only_the_configured_secrets(
    template: dict[str, Any], role_id: str
) -> None:
    statements = policy_statements(resource(template, role_id))
    secret_statements = [
        s
        for s in (resolved(template, st) for st in statements)
        if isinstance(s, dict)
        and any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))
    ]
    assert secret_statements
    for statement in secret_statements:
        assert as_list(statement["Action"]) == ["secretsmanager:GetSecretValue"]
    own = (
        f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:"
        f"igni-token-vendor/{STACK}/default-??????"
    )
    assert [s["Resource"] for s in secret_statements] == [own]

    profile_arns = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:igni/*"
    with_profiles = [resolved(template, st, ProfileSecretArns=profile_arns) for st in statements]
    resources = [
        s["Resource"]
        for s in with_profiles
        if isinstance(s, dict) and "secretsmanager:GetSecretValue" in as_list(s["Action"])
    ]
    assert resources == [own, profile_arns]


@pytest.mark.parametrize("role_id", VENDING_ROLES)
def test_vending_role_has_item_level_dynamodb_actions_on_the_table_only(
    template: dict[str, Any], role_id: str
) -> None:
    statements = policy_statements(resource(template, role_id))
    dynamo = [
        s
        for s in statements
        if any(str(a).startswith("dynamodb:") for a in as_list(s.get("Action", [])))
    ]
    assert len(dynamo) == 1
    assert set(as_list(dynamo[0]["Action"])) <= ITEM_LEVEL_DYNAMODB
    # and no more than what token_store.py calls
    assert set(as_list(dynamo[0]["Action"])) == {"dynamodb:GetItem", "dynamodb:UpdateItem"}
    assert dynamo[0]["Resource"] == {"Fn::GetAtt": ["TokenTable", "Arn"]}


def test_no_role_grants_wildcard_actions(template: dict[str, Any]) -> None:
    for logical_id, role in resources_of_type(template, "AWS::IAM::Role").items():
        for statement in policy_statements(role):
            for action in as_list(statement.get("Action", [])):
                assert "*" not in str(action), (logical_id, action)


# ------------------------------------------------------------------------------ issue 6


def key_policy(template: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(resource_properties(template, "TokenKey")["KeyPolicy"]["Statement"])


def test_only_the_vending_roles_may_use_the_key_directly_and_only_for_tokens(
    template: dict[str, Any],
) -> None:
    vending_roles = [role_arn(template, role_id) for role_id in VENDING_ROLES]
    assert vending_roles == [
        f"arn:aws:iam::{ACCOUNT}:role/{STACK}-token-fn",
        f"arn:aws:iam::{ACCOUNT}:role/{STACK}-maintenance-fn",
    ]
    crypto = {
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:Decrypt*",
        "kms:ReEncrypt*",
        "kms:GenerateDataKey*",
    }
    direct = []
    for statement in (resolved(template, s) for s in key_policy(template)):
        actions = set(as_list(statement["Action"]))
        if statement["Effect"] != "Allow" or not actions & crypto:
            continue
        condition = statement.get("Condition", {})
        via_service = condition.get("StringEquals", {}).get("kms:ViaService")
        logs_context = condition.get("ArnLike", {}).get("kms:EncryptionContext:aws:logs:arn")
        if via_service:
            # Through DynamoDB, Secrets Manager or Lambda on behalf of this account only.
            assert condition["StringEquals"]["kms:CallerAccount"] == ACCOUNT
            continue
        if logs_context:
            assert statement["Principal"] == {"Service": "logs.eu-west-1.amazonaws.com"}
            continue
        direct.append(statement)
    assert len(direct) == 1
    (statement,) = direct
    assert set(as_list(statement["Action"])) == {
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    }
    assert statement["Condition"]["ArnEquals"]["aws:PrincipalArn"] == vending_roles
    assert statement["Condition"]["Null"] == {"kms:EncryptionContext:cache_key": "false"}


def test_the_key_policy_context_is_the_one_the_function_binds_tokens_to() -> None:
    source = (SRC / "aws" / "token_cipher.py").read_text(encoding="utf-8")
    assert 'EncryptionContext={"cache_key": cache_key}' in source


def test_administrators_cannot_decrypt_without_changing_the_key_policy(
    template: dict[str, Any],
) -> None:
    admin = next(s for s in key_policy(template) if s["Sid"] == "AccountAdministration")
    assert not any(
        a in ("kms:*", "kms:Decrypt", "kms:Encrypt") or a.startswith("kms:Decrypt")
        for a in admin["Action"]
    )


def test_logs_statement_names_exactly_the_stacks_log_groups(template: dict[str, Any]) -> None:
    statement = next(s for s in key_policy(template) if s["Sid"] == "LogGroupsOfThisStack")
    arns = resolved(
        template, statement["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    )
    groups = {
        resolved(template, props["LogGroupName"])
        for props in (
            g["Properties"] for g in resources_of_type(template, "AWS::Logs::LogGroup").values()
        )
    }
    assert {a.split(":log-group:", 1)[1] for a in arns} == groups


def test_the_key_is_created_unless_an_existing_key_arn_is_given(template: dict[str, Any]) -> None:
    key = resource(template, "TokenKey")
    assert key["Condition"] == "CreateTokenKey"
    assert key["Properties"]["EnableKeyRotation"] is True
    # The secret is encrypted with it: a deleted stack must not take the key with it.
    assert key["DeletionPolicy"] == "Retain"
    env = function_properties(template, "TokenFunction")["Environment"]["Variables"]
    assert resolved(template, env["TOKEN_KMS_KEY_ID"]).startswith("arn:aws:kms:")
    existing = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert resolved(template, env["TOKEN_KMS_KEY_ID"], TokenKmsKeyArn=existing) == existing
    assert not evaluate_condition(
        template, "CreateTokenKey", refs_for(template, TokenKmsKeyArn=existing)
    )


@pytest.mark.parametrize(
    ("logical_id", "condition"),
    [
        ("TokenKey", "CreateTokenKey"),
        ("IgniSecret", "CreateSecret"),
        ("ApiGatewayAccount", "CreateApiGatewayAccount"),
        ("ApiGatewayCloudWatchRole", "CreateApiGatewayAccount"),
    ],
)
def test_conditional_resources_are_only_referenced_under_their_condition(
    template: dict[str, Any], logical_id: str, condition: str
) -> None:
    assert resource(template, logical_id)["Condition"] == condition
    for owner, res in template["Resources"].items():
        if res.get("Condition") == condition:
            continue
        for path, node in walk(res):
            if logical_id not in references(node) or not isinstance(node, dict):
                continue
            if set(node) & {"Ref", "Fn::GetAtt", "Fn::Sub"}:
                # Somewhere above this reference an Fn::If on the condition picks it.
                # In the "true" branch of an Fn::If on the condition, somewhere above.
                guarded = any(
                    path[i : i + 2] == ("Fn::If", 1) and _at(res, path[: i + 1])[0] == condition
                    for i in range(len(path) - 1)
                )
                assert guarded, (owner, path)
    for name, output in template["Outputs"].items():
        if logical_id in references(output["Value"]):
            assert output["Value"].get("Fn::If", [None])[0] == condition, name


def _at(root: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        root = root[step]
    return root


def test_table_and_secret_are_encrypted_with_the_customer_key(template: dict[str, Any]) -> None:
    sse = resource_properties(template, "TokenTable")["SSESpecification"]
    assert sse["SSEEnabled"] is True
    assert sse["SSEType"] == "KMS"
    assert resolved(template, sse["KMSMasterKeyId"]) == "0000-stack-key"
    secret = resource_properties(template, "IgniSecret")
    assert resolved(template, secret["KmsKeyId"]) == "0000-stack-key"
    for logical_id in resources_of_type(template, "AWS::Serverless::Function"):
        kms = resource_properties(template, logical_id)["KmsKeyArn"]
        assert resolved(template, kms).startswith("arn:aws:kms:")


def api_policy(template: Mapping[str, Any], **params: str) -> list[dict[str, Any]]:
    statements = resource_properties(template, "TokenApi")["Auth"]["ResourcePolicy"][
        "CustomStatements"
    ]
    return list(resolved(template, statements, **params))


def test_resource_policy_admits_only_this_account_through_iam_by_default(
    template: dict[str, Any],
) -> None:
    (statement,) = api_policy(template)
    assert statement["Effect"] == "Allow"
    # The account root delegates to IAM: callers still need execute-api:Invoke per path.
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert statement["Action"] == "execute-api:Invoke"
    assert statement["Resource"] == "execute-api:/*"


def test_resource_policy_parameters_add_the_organization_principals_and_endpoints(
    template: dict[str, Any],
) -> None:
    statements = api_policy(
        template,
        AllowedOrganizationId="o-abcdefghij",
        AllowedPrincipalArns=f"arn:aws:iam::{ACCOUNT}:role/app-*,arn:aws:iam::444455556666:role/x",
        AllowedVpcEndpointIds="vpce-0a1b2c,vpce-3d4e5f",
        EndpointType="PRIVATE",
    )
    by_sid = {s["Sid"]: s for s in statements}
    org = by_sid["AllowTheOrganizationsOtherAccounts"]
    assert org["Effect"] == "Allow"
    assert org["Condition"]["StringEquals"] == {"aws:PrincipalOrgID": "o-abcdefghij"}
    # This account's callers stay under IAM (the root statement), not this blanket allow.
    assert org["Condition"]["ArnNotLike"] == {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:*"}
    principals = by_sid["DenyAllButTheListedPrincipals"]
    assert principals["Effect"] == "Deny"
    assert principals["Condition"]["ArnNotLike"]["aws:PrincipalArn"] == [
        f"arn:aws:iam::{ACCOUNT}:role/app-*",
        "arn:aws:iam::444455556666:role/x",
    ]
    endpoints = by_sid["DenyAllButTheListedVpcEndpoints"]
    assert endpoints["Effect"] == "Deny"
    assert endpoints["Condition"]["StringNotEquals"]["aws:SourceVpce"] == [
        "vpce-0a1b2c",
        "vpce-3d4e5f",
    ]
    endpoint = resolved(
        template,
        resource_properties(template, "TokenApi")["EndpointConfiguration"],
        AllowedVpcEndpointIds="vpce-0a1b2c,vpce-3d4e5f",
        EndpointType="PRIVATE",
    )
    assert endpoint == {"Type": "PRIVATE", "VpcEndpointIds": ["vpce-0a1b2c", "vpce-3d4e5f"]}


def test_vpc_endpoints_require_the_private_endpoint_type(template: dict[str, Any]) -> None:
    rule = template["Rules"]["VpcEndpointsNeedAPrivateApi"]
    assert rule["RuleCondition"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AllowedVpcEndpointIds"}, ""]}]
    }
    assert rule["Assertions"][0]["Assert"] == {"Fn::Equals": [{"Ref": "EndpointType"}, "PRIVATE"]}


def test_access_log_is_json_with_the_audit_fields(template: dict[str, Any]) -> None:
    setting = resource_properties(template, "TokenApi")["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    # What API Gateway writes for a request: each $context variable becomes a value.
    line = setting["Format"].replace("$context.error.messageString", '"Forbidden"')
    line = re.sub(r"\$context\.[A-Za-z.]+", "x", line)
    record = json.loads(line)
    variables = set(re.findall(r"\$context\.[A-Za-z.]+", setting["Format"]))
    for variable in (
        "$context.requestId",
        "$context.identity.userArn",
        "$context.identity.accountId",
        "$context.identity.sourceIp",
        "$context.httpMethod",
        "$context.resourcePath",
        "$context.status",
        "$context.responseLatency",
        "$context.integration.error",
    ):
        assert variable in variables, variable
    assert {"requestId", "callerArn", "status"} <= set(record)


def test_logs_have_a_retention_period_and_the_functions_log_to_them(
    template: dict[str, Any],
) -> None:
    groups = resources_of_type(template, "AWS::Logs::LogGroup")
    assert set(groups) == {
        "ApiAccessLogGroup",
        "TokenFunctionLogGroup",
        "MaintenanceFunctionLogGroup",
        "RotationFunctionLogGroup",
    }
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert resolved(template, group["Properties"]["KmsKeyId"]).startswith("arn:aws:kms:")
    for fn, group in (
        ("TokenFunction", "TokenFunctionLogGroup"),
        ("MaintenanceFunction", "MaintenanceFunctionLogGroup"),
        ("RotationFunction", "RotationFunctionLogGroup"),
    ):
        props = resource_properties(template, fn)
        assert props["LoggingConfig"]["LogGroup"] == {"Ref": group}
        name = resolved(template, resource_properties(template, group)["LogGroupName"])
        assert name == "/aws/lambda/" + resolved(template, props["FunctionName"])


def test_tracing_is_on_for_the_stage_and_the_functions(template: dict[str, Any]) -> None:
    assert resource_properties(template, "TokenApi")["TracingEnabled"] is True
    assert template["Globals"]["Function"]["Tracing"] == "Active"
    for logical_id in function_roles(template).values():
        managed = resolved(template, resource_properties(template, logical_id)["ManagedPolicyArns"])
        assert "arn:aws:iam::aws:policy/AWSXRayDaemonWriteAccess" in managed


def test_stage_throttling_from_parameters_and_no_caching(template: dict[str, Any]) -> None:
    api = resource_properties(template, "TokenApi")
    (settings,) = api["MethodSettings"]
    assert settings["ResourcePath"] == "/*"
    assert settings["HttpMethod"] == "*"
    assert settings["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    assert settings["CachingEnabled"] is False
    assert settings["DataTraceEnabled"] is False  # would log response bodies: tokens
    assert api["CacheClusterEnabled"] is False
    for name in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
        assert template["Parameters"][name]["Type"] == "Number"


def alarms(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: v["Properties"] for k, v in resources_of_type(template, "AWS::CloudWatch::Alarm").items()
    }


def test_alarms_cover_5xx_refresh_auth_rotation_errors_and_throttles(
    template: dict[str, Any],
) -> None:
    found = alarms(template)
    plain = {
        (a["Namespace"], a["MetricName"], json.dumps(a["Dimensions"], sort_keys=True))
        for a in found.values()
        if "MetricName" in a
    }
    api_name = resource_properties(template, "TokenApi")["Name"]
    assert (
        "AWS/ApiGateway",
        "5XXError",
        json.dumps(
            [{"Name": "ApiName", "Value": api_name}, {"Name": "Stage", "Value": "v1"}],
            sort_keys=True,
        ),
    ) in plain
    for fn in resources_of_type(template, "AWS::Serverless::Function"):
        for metric in ("Errors", "Throttles"):
            dims = json.dumps([{"Name": "FunctionName", "Value": {"Ref": fn}}], sort_keys=True)
            assert ("AWS/Lambda", metric, dims) in plain, (fn, metric)

    queries = [
        resolved(template, q["Expression"], MetricsNamespace="Team/Igni")
        for a in found.values()
        for q in a.get("Metrics", [])
        if "Expression" in q
    ]
    for metric in ("RefreshFailuresWhileValid", "UpstreamAuthFailures", "RotationExchangeFailures"):
        # One query per metric, summed over every dimension set (profile, service, kind), in
        # the namespace the stack gives its functions.
        query = f'SELECT SUM({metric}) FROM "Team/Igni"'  # noqa: S608
        assert query in queries, metric
    for fn in resources_of_type(template, "AWS::Serverless::Function"):
        variables = function_properties(template, fn)["Environment"]["Variables"]
        assert variables["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}


def test_alarmed_metric_names_are_the_ones_the_function_emits() -> None:
    source = (SRC / "observability.py").read_text(encoding="utf-8")
    for metric in ("RefreshFailuresWhileValid", "UpstreamAuthFailures", "RotationExchangeFailures"):
        assert f'"{metric}"' in source, metric
    assert observability.NAMESPACE == "IgniTokenVendor"


def test_every_alarm_says_what_to_do_and_notifies_the_optional_topic(
    template: dict[str, Any],
) -> None:
    for logical_id, alarm in alarms(template).items():
        assert len(alarm["AlarmDescription"]) > 80, logical_id
        for key in ("AlarmActions", "OKActions"):
            assert resolved(template, alarm[key]) == [], (logical_id, key)
            topic = f"arn:aws:sns:eu-west-1:{ACCOUNT}:oncall"
            assert resolved(template, alarm[key], AlarmTopicArn=topic) == [topic]
        assert alarm["TreatMissingData"] == "notBreaching", logical_id


def test_rotation_rule_and_prewarm_schedule(template: dict[str, Any]) -> None:
    events = resource_properties(template, "MaintenanceFunction")["Events"]
    rotated = events["SecretRotated"]
    assert rotated["Type"] == "EventBridgeRule"
    pattern = rotated["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.secretsmanager"]
    assert pattern["detail-type"] == ["Secret Label Updated"]
    assert pattern["detail"]["labelUpdated"] == ["AWSCURRENT"]
    secret = resolve(template, {"Ref": "IgniSecret"}, refs_for(template))
    assert resolved(template, pattern["resources"]) == [secret]
    # With profiles, their secrets' rotations reach the function too (it ignores others).
    with_profiles = resolved(
        template, pattern, ProfileSecretArns="arn:aws:secretsmanager:us-east-1:1:secret:igni/*"
    )
    assert "resources" not in with_profiles
    assert with_profiles["detail"]["labelUpdated"] == ["AWSCURRENT"]
    prewarm = events["Prewarm"]
    assert prewarm["Type"] == "Schedule"
    assert json.loads(prewarm["Properties"]["Input"])["action"] == "prewarm"
    assert "Enabled" not in prewarm["Properties"]  # SAM takes State with a condition
    assert resolved(template, prewarm["Properties"]["State"]) == "ENABLED"
    assert resolved(template, prewarm["Properties"]["State"], PrewarmEnabled="false") == "DISABLED"


def test_async_failures_go_to_an_encrypted_queue(template: dict[str, Any]) -> None:
    # Given the function whose events are asynchronous, the maintenance function
    fn = resource_properties(template, "MaintenanceFunction")
    queue = {"Fn::GetAtt": ["AsyncFailureQueue", "Arn"]}
    # Then Lambda's failed invocations and EventBridge's undelivered events go to the queue
    assert fn["DeadLetterQueue"] == {"Type": "SQS", "TargetArn": queue}
    for event in fn["Events"].values():
        assert event["Properties"]["DeadLetterConfig"] == {"Arn": queue}
        assert event["Properties"]["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert resource_properties(template, "AsyncFailureQueue")["SqsManagedSseEnabled"] is True
    sends = [
        s
        for s in policy_statements(resource(template, "MaintenanceFunctionRole"))
        if "sqs:SendMessage" in as_list(s.get("Action", []))
    ]
    assert [s["Resource"] for s in sends] == [queue]
    # And the API function, invoked synchronously only, has no queue and may not send to it
    assert "DeadLetterQueue" not in resource_properties(template, "TokenFunction")
    assert not [
        s
        for s in policy_statements(resource(template, "TokenFunctionRole"))
        if any(str(a).startswith("sqs:") for a in as_list(s.get("Action", [])))
    ]


def test_no_reserved_concurrency(template: dict[str, Any]) -> None:
    for fn in resources_of_type(template, "AWS::Serverless::Function").values():
        assert "ReservedConcurrentExecutions" not in fn["Properties"]


def test_every_skipped_checkov_check_says_why(template: dict[str, Any]) -> None:
    skipped = []
    for logical_id, res in template["Resources"].items():
        for skip in (res.get("Metadata") or {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), (logical_id, skip)
            assert len(skip.get("comment", "")) > 60, (logical_id, skip["id"])
            skipped.append((logical_id, skip["id"]))
    # Caching must stay off (CKV_AWS_120 is skipped, never "fixed").
    assert ("TokenApi", "CKV_AWS_120") in skipped


def test_no_circular_dependencies(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    graph: dict[str, set[str]] = {}
    for logical_id, res in resources.items():
        body = {k: v for k, v in res.items() if k != "Metadata"}
        events = (body.get("Properties") or {}).get("Events") or {}
        if res["Type"] == "AWS::Serverless::Function":
            body["Properties"] = {k: v for k, v in body["Properties"].items() if k != "Events"}
        deps = references(body)
        deps.update(as_list(res.get("DependsOn", [])))
        graph[logical_id] = {d for d in deps if d in resources and d != logical_id}
        # SAM turns each event into resources (permission, rule) that depend on the function
        # and on what the event names; the API's definition integrates the function.
        for name, event in events.items():
            node = f"{logical_id}.{name}"
            graph[node] = {logical_id} | (references(event) & set(resources))
            api = event.get("Properties", {}).get("RestApiId", {})
            if isinstance(api, dict) and api.get("Ref") in resources:
                graph[api["Ref"]].add(logical_id)

    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        if node in done:
            return
        assert node not in visiting, " -> ".join((*trail, node))
        visiting.add(node)
        for dep in graph[node]:
            visit(dep, (*trail, node))
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, ())


# ----------------------------------------------------------------- issue 10, holes 10-12


def matches(pattern: str, action: str) -> bool:
    """Whether a policy's action (wildcards allowed) covers ``action``; IAM ignores case."""
    return fnmatch.fnmatchcase(action.lower(), str(pattern).lower())


def role_arn(template: Mapping[str, Any], role_id: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/" + resolved(
        template, resource_properties(template, role_id)["RoleName"]
    )


def function_roles(template: Mapping[str, Any]) -> dict[str, str]:
    """Each serverless function's logical id -> its role's logical id (its Role: !GetAtt)."""
    roles = {}
    for fn_id, fn in resources_of_type(template, "AWS::Serverless::Function").items():
        role = fn["Properties"]["Role"]
        assert set(role) == {"Fn::GetAtt"}, fn_id
        assert role["Fn::GetAtt"][1] == "Arn", fn_id
        roles[fn_id] = role["Fn::GetAtt"][0]
    return roles


def test_no_principal_can_grant_itself_use_of_the_key(template: dict[str, Any]) -> None:
    """Hole 10: kms:Create* gave the account root kms:CreateGrant.

    Given the key policy, with every action pattern matched as IAM matches it,
    when a statement allows kms:CreateGrant (by name or by any wildcard),
    then it is a service's grant path only: kms:GrantIsForAWSResource, made through DynamoDB or
    Lambda for this account; so a principal that IAM allows CreateGrant cannot call it itself
    to give itself Decrypt. The administrators' statement covers no grant creation at all.
    """
    statements = [resolved(template, s) for s in key_policy(template)]
    assert not any("NotAction" in s for s in statements if s["Effect"] == "Allow")
    admin = next(s for s in statements if s["Sid"] == "AccountAdministration")
    assert not [a for a in as_list(admin["Action"]) if matches(a, "kms:CreateGrant")]
    grant_paths = [
        s
        for s in statements
        if s["Effect"] == "Allow"
        and any(matches(a, "kms:CreateGrant") for a in as_list(s["Action"]))
    ]
    assert grant_paths  # DynamoDB and Lambda need one (SSE, the functions' environment)
    for statement in grant_paths:
        assert as_list(statement["Action"]) == ["kms:CreateGrant"], statement["Sid"]
        condition = statement["Condition"]
        assert condition["Bool"] == {"kms:GrantIsForAWSResource": "true"}, statement["Sid"]
        assert condition["StringEquals"]["kms:CallerAccount"] == ACCOUNT
        assert set(as_list(condition["StringEquals"]["kms:ViaService"])) <= {
            "dynamodb.eu-west-1.amazonaws.com",
            "lambda.eu-west-1.amazonaws.com",
        }


def test_only_the_vending_roles_decrypt_directly_and_only_with_the_cache_key_context(
    template: dict[str, Any],
) -> None:
    """Hole 10's invariant: the roles of the functions that vend tokens (the API function and,
    since issue 11, the maintenance function) are the only direct decrypters.

    Given every key policy statement whose actions match kms:Decrypt (wildcards included),
    then each one is theirs, conditioned on the cache_key encryption context, or
    is bound to a service (DynamoDB, Secrets Manager or Lambda for this account, or CloudWatch
    Logs for this stack's log groups), which decrypts only its own data keys.
    """
    vending_roles = [role_arn(template, role_id) for role_id in VENDING_ROLES]
    services = {
        f"{name}.eu-west-1.amazonaws.com" for name in ("dynamodb", "secretsmanager", "lambda")
    }
    direct = []
    for statement in (resolved(template, s) for s in key_policy(template)):
        if statement["Effect"] != "Allow" or not any(
            matches(a, "kms:Decrypt") for a in as_list(statement["Action"])
        ):
            continue
        condition = statement.get("Condition", {})
        via = condition.get("StringEquals", {}).get("kms:ViaService")
        if via is not None:
            assert set(as_list(via)) <= services, statement["Sid"]
            assert condition["StringEquals"]["kms:CallerAccount"] == ACCOUNT
        elif statement["Principal"] == {"Service": "logs.eu-west-1.amazonaws.com"}:
            assert condition["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
        else:
            direct.append(statement)
    assert len(direct) == 1
    (statement,) = direct
    assert statement["Condition"] == {
        "ArnEquals": {"aws:PrincipalArn": vending_roles},
        "Null": {"kms:EncryptionContext:cache_key": "false"},
    }


def secret_policies(template: Mapping[str, Any], secret_id: str) -> list[dict[str, Any]]:
    return [
        p
        for p in resources_of_type(template, "AWS::SecretsManager::ResourcePolicy").values()
        if p["Properties"]["SecretId"] == {"Ref": secret_id}
    ]


def test_every_secret_the_stack_creates_is_readable_only_by_its_function_roles(
    template: dict[str, Any],
) -> None:
    """Hole 11: any principal with GetSecretValue on "*" could read the Igni client secret.

    Given each AWS::SecretsManager::Secret of the template,
    then a resource policy, present whenever the secret is, denies GetSecretValue to every
    principal whose ARN is not one of the stack's function roles (an aws:PrincipalArn
    condition, so IAM policies cannot override it), and denies nothing else: operators can
    still put a new version and describe the secret. BreakGlassPrincipalArn adds one role.
    """
    roles = {role_arn(template, r) for r in function_roles(template).values()}
    assert roles == {
        f"arn:aws:iam::{ACCOUNT}:role/{STACK}-token-fn",
        f"arn:aws:iam::{ACCOUNT}:role/{STACK}-maintenance-fn",
        f"arn:aws:iam::{ACCOUNT}:role/{STACK}-rotation-fn",
    }
    secrets = resources_of_type(template, "AWS::SecretsManager::Secret")
    assert secrets
    for secret_id, secret in secrets.items():
        (policy,) = secret_policies(template, secret_id)
        assert policy.get("Condition") == secret.get("Condition"), secret_id
        assert policy["Properties"]["BlockPublicPolicy"] is True
        document = policy["Properties"]["ResourcePolicy"]
        for params, readers in (
            ({}, roles),
            (
                {"BreakGlassPrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/ops/break-glass"},
                roles | {f"arn:aws:iam::{ACCOUNT}:role/ops/break-glass"},
            ),
        ):
            statements = as_list(resolved(template, document, **params)["Statement"])
            assert all(s["Effect"] == "Deny" for s in statements)  # it grants nothing
            (deny,) = [
                s
                for s in statements
                if any(matches(a, "secretsmanager:GetSecretValue") for a in as_list(s["Action"]))
            ]
            assert deny["Principal"] in ("*", {"AWS": "*"})
            assert deny["Resource"] == "*"
            ((operator, keys),) = deny["Condition"].items()
            assert operator in ("ArnNotEquals", "ArnNotLike", "StringNotEquals", "StringNotLike")
            assert set(keys) == {"aws:PrincipalArn"}
            assert set(as_list(keys["aws:PrincipalArn"])) == readers, params
            assert not any("*" in arn or "?" in arn for arn in as_list(keys["aws:PrincipalArn"]))
            for action in (
                "secretsmanager:PutSecretValue",
                "secretsmanager:DescribeSecret",
                "secretsmanager:UpdateSecretVersionStage",
            ):
                assert not any(matches(a, action) for s in statements for a in s["Action"])


def test_no_role_uses_the_basic_execution_role_managed_policy(template: dict[str, Any]) -> None:
    """Hole 12: AWSLambdaBasicExecutionRole allows logs actions on every log group.

    Given the template's roles and functions,
    then no role attaches AWSLambdaBasicExecutionRole, no function names it through SAM's
    Policies (or gets a SAM-made role, which attaches it: each names its own role), and the
    function roles' only managed policy is X-Ray's (its actions take no resource).
    """
    for logical_id, role in resources_of_type(template, "AWS::IAM::Role").items():
        managed = json.dumps(role["Properties"].get("ManagedPolicyArns", []))
        assert "AWSLambdaBasicExecutionRole" not in managed, logical_id
    functions = resources_of_type(template, "AWS::Serverless::Function")
    assert "Policies" not in template["Globals"]["Function"]
    for fn_id, fn in functions.items():
        assert "AWSLambdaBasicExecutionRole" not in json.dumps(fn["Properties"]), fn_id
        assert "Policies" not in fn["Properties"], fn_id
    for fn_id, role_id in function_roles(template).items():
        managed = resolved(template, resource_properties(template, role_id)["ManagedPolicyArns"])
        assert managed == ["arn:aws:iam::aws:policy/AWSXRayDaemonWriteAccess"], fn_id


def test_each_function_writes_only_to_its_own_log_group(template: dict[str, Any]) -> None:
    """Hole 12: each function writes to its own log group and no other.

    Given each function, its role and the log group its LoggingConfig names,
    then the role's only logs actions are CreateLogStream and PutLogEvents, on that log group's
    streams only; the log group is a resource of the template, so nothing needs CreateLogGroup.
    """
    for fn_id, role_id in function_roles(template).items():
        props = resource_properties(template, fn_id)
        group_id = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert resource(template, group_id)["Type"] == "AWS::Logs::LogGroup"
        group_name = resolved(template, resource_properties(template, group_id)["LogGroupName"])
        own_streams = f"arn:aws:logs:eu-west-1:{ACCOUNT}:log-group:{group_name}:*"
        statements = resolved(template, policy_statements(resource(template, role_id)))
        logs = [
            s
            for s in statements
            if any(str(a).lower().startswith("logs:") for a in as_list(s["Action"]))
        ]
        assert logs, fn_id
        actions: set[str] = set()
        for statement in logs:
            assert statement["Effect"] == "Allow"
            actions.update(as_list(statement["Action"]))
            assert as_list(statement["Resource"]) == [own_streams], fn_id
        assert actions == {"logs:CreateLogStream", "logs:PutLogEvents"}, fn_id


# ------------------------------------------------------------------------ dashboard (issue 13)

DASHBOARD_FUNCTION = "vendor-token"


def dashboard_body(template: Mapping[str, Any], **params: str) -> dict[str, Any]:
    """The dashboard's JSON as CloudFormation would render it for stack ``vendor``."""
    body = resource_properties(template, "TokenDashboard")["DashboardBody"]
    text = resolved(template, body, TokenFunction=DASHBOARD_FUNCTION, **params)
    assert isinstance(text, str)
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def graph_lines(body: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Each metric widget's title and its metric lines."""
    return {
        w["properties"]["title"]: w["properties"]["metrics"]
        for w in body["widgets"]
        if w["type"] == "metric"
    }


def test_the_dashboard_exists_and_the_outputs_link_to_it(template: dict[str, Any]) -> None:
    dashboard = resource(template, "TokenDashboard")
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    # Dashboards are global to an account: one per stack and region.
    name = resolved(template, dashboard["Properties"]["DashboardName"])
    assert name == f"{STACK}-eu-west-1"
    url = resolved(template, template["Outputs"]["DashboardUrl"]["Value"], TokenDashboard=name)
    assert url == (
        "https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1"
        f"#dashboards/dashboard/{name}"
    )


def test_the_dashboard_body_is_json_once_its_placeholders_are_substituted(
    template: dict[str, Any],
) -> None:
    # Given the body as written: a !Sub string
    body = resource_properties(template, "TokenDashboard")["DashboardBody"]
    text = body["Fn::Sub"]
    assert isinstance(text, str)
    # Then with any value for every ${...} it is JSON, and each name it uses exists
    names = set(re.findall(r"\$\{([^}!]+)\}", text))
    assert names <= {"AWS::StackName", "AWS::Region", "MetricsNamespace", "TokenFunction"}
    for name in names - {"AWS::StackName", "AWS::Region"}:
        assert name in template["Parameters"] or name in template["Resources"], name
    json.loads(re.sub(r"\$\{[^}!]+\}", "x", text))
    # and as CloudFormation renders it for a stack, too
    assert dashboard_body(template)["widgets"]


def test_the_dashboard_graphs_what_the_issue_asks_for(template: dict[str, Any]) -> None:
    body = dashboard_body(template, MetricsNamespace="Team/Igni")
    graphs = graph_lines(body)
    api = resolved(template, resource_properties(template, "TokenApi")["Name"])
    searches = [
        line[0]["expression"]
        for lines in graphs.values()
        for line in lines
        if isinstance(line[0], dict)
    ]
    plain = {
        (line[0], line[1], tuple(line[2:-1]), line[-1].get("stat"))
        for lines in graphs.values()
        for line in lines
        if isinstance(line[0], str)
    }

    # Tokens vended by tier: one line per tier, every profile summed, in the stack's namespace
    for tier in ("memory", "dynamodb", "upstream"):
        assert (
            'SUM(SEARCH(\'{"Team/Igni",profile,service,tier} MetricName="TokensVended" '
            f"tier=\"{tier}\"', 'Sum'))"
        ) in searches, tier
    # Upstream calls and errors; refresh failures while still vending
    for metric, dimensions in (
        ("UpstreamCalls", "profile,service"),
        ("UpstreamErrors", "kind,profile,service"),
        ("RefreshFailuresWhileValid", "profile,service"),
    ):
        expected = f"SUM(SEARCH('{{\"Team/Igni\",{dimensions}}} MetricName=\"{metric}\"', 'Sum'))"
        assert expected in searches, metric
    # API Gateway: 5xx, 4xx (widget stat Sum), p50 and p99 latency, for this API and stage
    stage = ("ApiName", api, "Stage", "v1")
    assert ("AWS/ApiGateway", "5XXError", stage, None) in plain
    assert ("AWS/ApiGateway", "4XXError", stage, None) in plain
    assert ("AWS/ApiGateway", "Latency", stage, "p50") in plain
    assert ("AWS/ApiGateway", "Latency", stage, "p99") in plain
    # Lambda: the token function's duration, throttles and concurrent executions
    function = ("FunctionName", DASHBOARD_FUNCTION)
    assert ("AWS/Lambda", "Duration", function, "p99") in plain
    assert ("AWS/Lambda", "Throttles", function, None) in plain
    assert ("AWS/Lambda", "ConcurrentExecutions", function, "Maximum") in plain
    # Every graph is in the stack's region; the Sum graphs say so at widget level
    for widget in body["widgets"]:
        if widget["type"] == "metric":
            assert widget["properties"]["region"] == "eu-west-1"
            if any(
                isinstance(line[0], str) and "stat" not in line[-1]
                for line in widget["properties"]["metrics"]
            ):
                assert widget["properties"]["stat"] == "Sum"


def test_the_dashboards_own_metrics_are_the_ones_the_function_emits() -> None:
    # Given the metric names the dashboard searches for, and the dimensions each carries
    source = (SRC / "observability.py").read_text(encoding="utf-8")
    for metric in ("TokensVended", "UpstreamCalls", "UpstreamErrors", "RefreshFailuresWhileValid"):
        assert f'"{metric}"' in source, metric
    assert 'self._count("TokensVended", profile, tier=tier)' in source
    assert 'self._count("UpstreamErrors", profile, kind=outcome)' in source


def test_the_dashboard_widgets_fit_the_grid_without_overlapping(template: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for widget in dashboard_body(template)["widgets"]:
        x, y, width, height = (widget[k] for k in ("x", "y", "width", "height"))
        assert x >= 0
        assert x + width <= 24
        area = {(col, row) for col in range(x, x + width) for row in range(y, y + height)}
        assert not area & cells, widget
        cells |= area


def test_tracing_is_lambdas_and_api_gateways_own_no_sdk_is_packaged() -> None:
    # docs/observability.md: active tracing without the Powertools Tracer, whose X-Ray SDK
    # would add to every cold start
    packaged = (REPO_ROOT / "src" / "requirements.txt").read_text(encoding="utf-8").lower()
    assert "aws-xray-sdk" not in packaged
    for module in SRC.glob("*.py"):
        text = module.read_text(encoding="utf-8")
        assert "Tracer" not in text, module.name
        assert "aws_xray_sdk" not in text, module.name


# ------------------------------------------------------------- SAM (needs .venv-sam)

needs_sam = pytest.mark.skipif(
    not SAM_PYTHON.exists(), reason="no .venv-sam (make build creates it)"
)


def sam_env() -> dict[str, str]:
    return {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}


def sam_transform(*params: str) -> dict[str, Any]:
    answer = subprocess.run(
        [str(SAM_PYTHON), "scripts/sam_transform.py", "template.yaml", *params],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=sam_env(),
        timeout=120,
    )
    return dict(json.loads(answer.stdout))


@needs_sam
def test_transformed_template_has_one_logged_throttled_traced_stage() -> None:
    out = sam_transform()
    stages = resources_of_type(out, "AWS::ApiGateway::Stage")
    assert list(stages) == ["TokenApiv1Stage"]  # no implicit "Stage" stage
    stage = stages["TokenApiv1Stage"]["Properties"]
    assert stage["StageName"] == "v1"
    assert stage["TracingEnabled"] is True
    assert stage["AccessLogSetting"]["DestinationArn"] == {
        "Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]
    }
    assert stage["MethodSettings"][0]["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    body = resource_properties(out, "TokenApi")["Body"]
    methods = {
        (method.upper(), path): spec
        for path, ops in body["paths"].items()
        for method, spec in ops.items()
    }
    assert set(methods) == template_routes()
    for spec in methods.values():
        assert spec["security"] == [{"AWS_IAM": []}]
    statements = body["x-amazon-apigateway-policy"]["Statement"]
    assert statements[0]["Sid"] == "AllowThisAccountThroughIam"


@needs_sam
def test_transformed_resource_policy_keeps_the_lists_as_lists() -> None:
    out = sam_transform("AllowedPrincipalArns=arn:aws:iam::1:role/a,arn:aws:iam::1:role/b")
    body = resource_properties(out, "TokenApi")["Body"]
    (deny,) = [
        s["Fn::If"][1]
        for s in body["x-amazon-apigateway-policy"]["Statement"]
        if "Fn::If" in s and s["Fn::If"][0] == "HasPrincipalArns"
    ]
    assert deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"] == {
        "Fn::Split": [",", "arn:aws:iam::1:role/a,arn:aws:iam::1:role/b"]
    }


@needs_sam
def test_sam_validate_lint_accepts_the_template() -> None:
    answer = subprocess.run(
        [
            str(SAM),
            "validate",
            "--lint",
            "--template-file",
            "template.yaml",
            "--region",
            "us-east-1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=sam_env(),
        timeout=300,
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
