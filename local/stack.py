"""Create the function's AWS resources on an AWS endpoint (a moto server) from template.yaml.

The table's keys, billing mode, TTL and encryption, the secret's name and the function's
environment are all read from ``template.yaml`` rather than restated here, so a change to the
template changes what the local runs and the tests exercise.

Each stack gets a caller-chosen name (the tests use one per test case), which plays the part of
``AWS::StackName``: the secret is ``igni-token-vendor/<name>/default`` as the template names it,
the table ``<name>-TokenTable``.

Not reproduced: the KMS key policy and the IAM roles (moto does not enforce them, and the local
caller is not the function's role), the API, the schedules and the rotation function. The
secret's resource policy is put on the local secret as the template resolves it for this stack,
so ``get_resource_policy`` shows what a deployment would carry; moto stores it without enforcing
it (the local function reads the secret with test credentials, not its role).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from local.cfn_template import (
    TEMPLATE_PATH,
    Template,
    load_template,
    parameter_defaults,
    resolve,
    resource,
    resource_properties,
    resources_of_type,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

DEFAULT_REGION = "us-east-1"
TABLE_ID = "TokenTable"
KEY_ID = "TokenKey"
SECRET_ID = "IgniSecret"
FUNCTION_ID = "TokenFunction"
SECRET_POLICY_TYPE = "AWS::SecretsManager::ResourcePolicy"
# What Ref AWS::NoValue gives here; dropped from lists and mappings as CloudFormation drops it.
_NO_VALUE = object()

# Local AWS calls go to loopback only: fail fast instead of botocore's 60 s and 10 attempts.
_BOTO_CONFIG = Config(
    connect_timeout=2, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
)


def _session(region: str) -> boto3.session.Session:
    # moto accepts any credentials; fixed fake ones mean no real key is ever sent, even to
    # loopback, whatever the developer's environment holds.
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
    )


@dataclass(frozen=True)
class LocalStack:
    """Names and ids of one local stack, and the function environment that points at it."""

    name: str
    endpoint_url: str
    region: str
    account_id: str
    table_name: str
    table_arn: str
    kms_key_id: str
    kms_key_arn: str
    secret_name: str
    secret_arn: str
    function_name: str
    function_timeout_s: float
    function_memory_mb: int
    igni_token_url: str | None = None
    igni_workspace: str | None = None
    # The function's Environment.Variables from template.yaml, resolved against this stack.
    template_env: dict[str, str] = field(default_factory=dict)

    def function_env(self, *, keep_empty: bool = False) -> dict[str, str]:
        """Environment variables for the handler, as Lambda would set them for this stack.

        Template variables that resolve to "" (IGNI_WORKSPACE, IGNI_TOKEN_URL when not given)
        are left out unless ``keep_empty``: deployed, Lambda sets them to "", which the handler
        must treat as unset; ``keep_empty=True`` reproduces that.
        """
        env = {k: v for k, v in self.template_env.items() if keep_empty or v != ""}
        env.update(
            {
                "AWS_ENDPOINT_URL": self.endpoint_url,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
                "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.function_memory_mb),
                # No X-Ray daemon locally; Powertools' Tracer would otherwise try to emit.
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
        )
        if self.igni_token_url:
            env["IGNI_TOKEN_URL"] = self.igni_token_url
        if self.igni_workspace:
            env["IGNI_WORKSPACE"] = self.igni_workspace
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if not os.environ.get(var):
                env[var] = "testing"
        return env

    def names(self) -> dict[str, str]:
        """The ids a person or another command needs to find the stack's resources."""
        return {
            "stack_name": self.name,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "table_name": self.table_name,
            "kms_key_arn": self.kms_key_arn,
            "secret_name": self.secret_name,
            "secret_arn": self.secret_arn,
            "function_name": self.function_name,
        }

    # Typed clients on the stack's endpoint, for tests that look inside.
    def dynamodb(self) -> DynamoDBClient:
        return _session(self.region).client(
            "dynamodb", endpoint_url=self.endpoint_url, config=_BOTO_CONFIG
        )

    def kms(self) -> KMSClient:
        return _session(self.region).client(
            "kms", endpoint_url=self.endpoint_url, config=_BOTO_CONFIG
        )

    def secretsmanager(self) -> SecretsManagerClient:
        return _session(self.region).client(
            "secretsmanager", endpoint_url=self.endpoint_url, config=_BOTO_CONFIG
        )

    def put_secret_value(self, value: Mapping[str, Any] | str) -> str:
        """Store a new AWSCURRENT version of the secret (what rotation does); returns its id."""
        text = value if isinstance(value, str) else json.dumps(dict(value))
        answer = self.secretsmanager().put_secret_value(SecretId=self.secret_arn, SecretString=text)
        return answer["VersionId"]

    def delete(self) -> None:
        """Remove the table and secret and schedule the key's deletion (moto keeps it listed)."""
        self.dynamodb().delete_table(TableName=self.table_name)
        self.secretsmanager().delete_secret(
            SecretId=self.secret_arn, ForceDeleteWithoutRecovery=True
        )
        self.kms().schedule_key_deletion(KeyId=self.kms_key_id, PendingWindowInDays=7)


def _table_request(props: Mapping[str, Any], table_name: str) -> dict[str, Any]:
    """CreateTable arguments from the AWS::DynamoDB::Table Properties (already resolved)."""
    request: dict[str, Any] = {
        "TableName": table_name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if request["BillingMode"] == "PROVISIONED":
        request["ProvisionedThroughput"] = props["ProvisionedThroughput"]
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if props.get(key):
            request[key] = props[key]
    sse = props.get("SSESpecification")
    if sse and sse.get("SSEEnabled"):
        # CloudFormation says SSEEnabled where the API says Enabled.
        request["SSESpecification"] = {"Enabled": True, "SSEType": sse.get("SSEType", "KMS")}
        if sse.get("KMSMasterKeyId"):
            request["SSESpecification"]["KMSMasterKeyId"] = sse["KMSMasterKeyId"]
    stream = props.get("StreamSpecification")
    if stream:
        request["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": stream["StreamViewType"],
        }
    return request


def _without_no_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_without_no_value(v) for v in value if v is not _NO_VALUE]
    if isinstance(value, dict):
        return {k: _without_no_value(v) for k, v in value.items() if v is not _NO_VALUE}
    return value


def _put_secret_policies(
    sm: SecretsManagerClient, template: Template, refs: Mapping[str, Any], secret_arn: str
) -> None:
    """Put each of the template's resource policies on the stack's secret (the one it names)."""
    for policy in resources_of_type(template, SECRET_POLICY_TYPE).values():
        props = _without_no_value(resolve(template, policy.get("Properties") or {}, refs))
        if props.get("SecretId") != secret_arn:
            continue
        sm.put_resource_policy(
            SecretId=secret_arn,
            ResourcePolicy=json.dumps(props["ResourcePolicy"]),
            BlockPublicPolicy=bool(props.get("BlockPublicPolicy", False)),
        )


def _function_env(
    template: Template, refs: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """Resolve the function's Environment.Variables; returns (env, {name: unresolved})."""
    variables = (resource_properties(template, FUNCTION_ID).get("Environment") or {}).get(
        "Variables"
    ) or {}
    env: dict[str, str] = {}
    unresolved: dict[str, Any] = {}
    for name, value in variables.items():
        try:
            resolved = resolve(template, value, refs)
        except (KeyError, ValueError):
            unresolved[name] = value
            continue
        env[name] = str(resolved).lower() if isinstance(resolved, bool) else str(resolved)
    return env, unresolved


def create_stack(
    name: str,
    *,
    endpoint_url: str,
    secret_value: Mapping[str, Any] | str,
    region: str = DEFAULT_REGION,
    igni_token_url: str | None = None,
    igni_workspace: str | None = None,
    template_path: Path | str = TEMPLATE_PATH,
    parameters: Mapping[str, Any] | None = None,
) -> LocalStack:
    """Create the table (with TTL), the KMS key and the secret for stack ``name``.

    ``secret_value`` becomes the secret's SecretString (a mapping is JSON-encoded), e.g.
    ``{"client_id": "...", "client_secret": "...", "workspace": "..."}``. ``igni_token_url`` and
    ``igni_workspace`` fill the template's IgniTokenUrl and IgniWorkspace parameters;
    ``parameters`` other template parameters by name (e.g. ``{"IgniAudience": "..."}``).
    """
    template = load_template(template_path)
    session = _session(region)
    kms = session.client("kms", endpoint_url=endpoint_url, config=_BOTO_CONFIG)
    ddb = session.client("dynamodb", endpoint_url=endpoint_url, config=_BOTO_CONFIG)
    sm = session.client("secretsmanager", endpoint_url=endpoint_url, config=_BOTO_CONFIG)

    refs: dict[str, Any] = {
        **parameter_defaults(template),
        **(parameters or {}),
        "IgniWorkspace": igni_workspace or "",
        "IgniTokenUrl": igni_token_url or "",
        "AWS::StackName": name,
        "AWS::Region": region,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::NoValue": _NO_VALUE,
    }

    key_props = resource_properties(template, KEY_ID)
    key = kms.create_key(
        Description=str(key_props.get("Description", f"{name} {KEY_ID}")),
        KeyUsage="ENCRYPT_DECRYPT",
        Tags=[{"TagKey": "aws:cloudformation:stack-name", "TagValue": name}],
    )["KeyMetadata"]
    if key_props.get("EnableKeyRotation"):
        kms.enable_key_rotation(KeyId=key["KeyId"])
    account_id = key["Arn"].split(":")[4]
    refs.update(
        {
            "AWS::AccountId": account_id,
            KEY_ID: key["KeyId"],
            f"{KEY_ID}.Arn": key["Arn"],
            f"{KEY_ID}.KeyId": key["KeyId"],
        }
    )

    table_name = f"{name}-{TABLE_ID}"
    table_props = resolve(template, resource_properties(template, TABLE_ID), refs)
    table = ddb.create_table(**_table_request(table_props, table_name))["TableDescription"]
    ttl = table_props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        ddb.update_time_to_live(
            TableName=table_name,
            TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
        )
    refs.update({TABLE_ID: table_name, f"{TABLE_ID}.Arn": table["TableArn"]})

    secret_props = resolve(template, resource_properties(template, SECRET_ID), refs)
    secret_name = str(secret_props.get("Name") or f"igni-token-vendor/{name}/default")
    secret_string = secret_value if isinstance(secret_value, str) else json.dumps(secret_value)
    secret_args: dict[str, Any] = {
        "Name": secret_name,
        "SecretString": secret_string,
        "Tags": [{"Key": "aws:cloudformation:stack-name", "Value": name}],
    }
    if secret_props.get("Description"):
        secret_args["Description"] = str(secret_props["Description"])
    if secret_props.get("KmsKeyId"):
        secret_args["KmsKeyId"] = str(secret_props["KmsKeyId"])
    secret = sm.create_secret(**secret_args)
    # The template's Ref to the secret (IGNI_SECRET_ID) is its ARN.
    refs.update({SECRET_ID: secret["ARN"], f"{SECRET_ID}.Id": secret["ARN"]})
    _put_secret_policies(sm, template, refs, secret["ARN"])

    function_name = f"{name}-{FUNCTION_ID}"
    refs[FUNCTION_ID] = function_name
    env, unresolved = _function_env(template, refs)
    if unresolved:
        warnings.warn(
            f"local stack: could not resolve {sorted(unresolved)} of {FUNCTION_ID}'s environment "
            "from template.yaml; extend local/stack.py's refs",
            stacklevel=2,
        )
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    function = resource(template, FUNCTION_ID).get("Properties") or {}
    return LocalStack(
        name=name,
        endpoint_url=endpoint_url,
        region=region,
        account_id=account_id,
        table_name=table_name,
        table_arn=table["TableArn"],
        kms_key_id=key["KeyId"],
        kms_key_arn=key["Arn"],
        secret_name=secret_name,
        secret_arn=secret["ARN"],
        function_name=function_name,
        function_timeout_s=float(function.get("Timeout", globals_fn.get("Timeout", 3))),
        function_memory_mb=int(function.get("MemorySize", globals_fn.get("MemorySize", 128))),
        igni_token_url=igni_token_url,
        igni_workspace=igni_workspace,
        template_env=env,
    )
