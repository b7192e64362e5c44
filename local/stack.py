"""The stack's key and secret (with its resource policy, stored not enforced by moto) on a moto
server, its table on DynamoDB Local (or wherever ``dynamodb_endpoint_url`` says), and the API
function's environment, read from template.yaml rather than restated; the stack name plays
``AWS::StackName``. IAM roles, key policy, schedules and rules are not made."""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import boto3
from botocore.config import Config

from local import cfn_template as cfn
from local.cfn_template import TEMPLATE_PATH, resolve, resource_properties

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

DEFAULT_REGION = "us-east-1"
FUNCTION_TYPE = "AWS::Serverless::Function"
TABLE_ID = "TokenTable"
KEY_ID = "TokenKey"
SECRET_ID = "IgniSecret"
# What Ref AWS::NoValue gives here; dropped from lists and mappings as CloudFormation drops it.
_NO_VALUE = object()

# Local AWS calls go to loopback only: fail fast instead of botocore's 60 s and 10 attempts.
_BOTO_CONFIG = Config(
    connect_timeout=2, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
)


@functools.cache
def _client(service: Any, region: str, endpoint_url: str) -> Any:
    # moto accepts any credentials; fixed fake ones mean no real key is ever sent, even to
    # loopback, whatever the developer's environment holds. One client per endpoint: they are
    # thread-safe, and a new session decodes botocore's JSON again (tenths of a second).
    session = boto3.session.Session("testing", "testing", region_name=region)
    return session.client(service, endpoint_url=endpoint_url, config=_BOTO_CONFIG)


@dataclass(frozen=True)
class LocalStack:
    """Names and ids of one local stack, and the function environment that points at it."""

    name: str
    endpoint_url: str
    region: str
    account_id: str
    table_name: str
    kms_key_id: str
    kms_key_arn: str
    secret_name: str
    secret_arn: str
    function_name: str
    function_timeout_s: float
    function_memory_mb: int
    igni_token_url: str | None = None
    igni_workspace: str | None = None
    # DynamoDB's endpoint (AWS_ENDPOINT_URL_DYNAMODB for the function); None: endpoint_url's.
    dynamodb_endpoint_url: str | None = None
    # The API function's Environment.Variables from template.yaml, resolved against this stack.
    template_env: dict[str, str] = field(default_factory=dict)
    # The other functions' (MaintenanceFunction, RotationFunction), by logical id.
    other_envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def function_env(
        self, function_id: str | None = None, *, keep_empty: bool = False
    ) -> dict[str, str]:
        """The environment Lambda gives the API function (or ``function_id``, a logical id of
        template.yaml); variables that resolve to "" are left out unless ``keep_empty``
        (deployed, they are "", which the handlers take as unset)."""
        variables = self.template_env if function_id is None else self.other_envs[function_id]
        name = self.function_name if function_id is None else f"{self.name}-{function_id}"
        env = {k: v for k, v in variables.items() if keep_empty or v != ""}
        env |= {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": self.region}
        if self.dynamodb_endpoint_url:  # botocore prefers it to AWS_ENDPOINT_URL for DynamoDB
            env["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynamodb_endpoint_url
        env |= {"AWS_REGION": self.region, "AWS_LAMBDA_FUNCTION_NAME": name}
        env |= {"AWS_LAMBDA_FUNCTION_VERSION": "$LATEST"}
        env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = str(self.function_memory_mb)
        env["POWERTOOLS_TRACE_DISABLED"] = "true"  # No X-Ray daemon to emit to.
        igni = {"IGNI_TOKEN_URL": self.igni_token_url, "IGNI_WORKSPACE": self.igni_workspace}
        env |= {k: v for k, v in igni.items() if v}
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        env |= {k: "testing" for k in keys if not os.environ.get(k)}
        return env

    def names(self) -> dict[str, str]:
        """The ids a person or another command needs to find the stack's resources."""
        names = ["endpoint_url", "dynamodb_endpoint_url", "region", "table_name"]
        names += ["kms_key_arn", "secret_name"]
        names += ["secret_arn", "function_name"]
        return {"stack_name": self.name} | {name: getattr(self, name) for name in names}

    # Typed clients on the stack's endpoint, for tests that look inside.
    def dynamodb(self) -> DynamoDBClient:
        endpoint = self.dynamodb_endpoint_url or self.endpoint_url
        return cast("DynamoDBClient", _client("dynamodb", self.region, endpoint))

    def kms(self) -> KMSClient:
        return cast("KMSClient", _client("kms", self.region, self.endpoint_url))

    def secretsmanager(self) -> SecretsManagerClient:
        return cast(
            "SecretsManagerClient", _client("secretsmanager", self.region, self.endpoint_url)
        )

    def put_secret_value(self, value: Mapping[str, Any] | str) -> str:
        """Store a new AWSCURRENT version of the secret (what rotation does); returns its id."""
        text = value if isinstance(value, str) else json.dumps(dict(value))
        answer = self.secretsmanager().put_secret_value(SecretId=self.secret_arn, SecretString=text)
        return answer["VersionId"]


def _without_no_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_without_no_value(v) for v in value if v is not _NO_VALUE]
    if isinstance(value, dict):
        return {k: _without_no_value(v) for k, v in value.items() if v is not _NO_VALUE}
    return value


def create_stack(
    name: str,
    *,
    endpoint_url: str,
    secret_value: Mapping[str, Any] | str,
    dynamodb_endpoint_url: str | None = None,
    region: str = DEFAULT_REGION,
    igni_token_url: str | None = None,
    igni_workspace: str | None = None,
    template_path: Path | str = TEMPLATE_PATH,
    parameters: Mapping[str, Any] | None = None,
) -> LocalStack:
    """Create the KMS key, the table (with TTL) and the secret of stack ``name``: its SecretString
    is ``secret_value`` (a mapping is JSON-encoded); ``igni_token_url`` and ``igni_workspace``
    fill the template's IgniTokenUrl and IgniWorkspace parameters, ``parameters`` others. The
    key and secret go to ``endpoint_url``, the table to ``dynamodb_endpoint_url`` (default: the
    same)."""
    template = cfn.load_template(template_path)
    kms, sm, ddb = (
        _client(service, region, url)
        for service, url in (
            ("kms", endpoint_url),
            ("secretsmanager", endpoint_url),
            ("dynamodb", dynamodb_endpoint_url or endpoint_url),
        )
    )
    tags = [{"Key": "aws:cloudformation:stack-name", "Value": name}]
    refs: dict[str, Any] = {
        **cfn.parameter_defaults(template),
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
        Tags=[{"TagKey": t["Key"], "TagValue": t["Value"]} for t in tags],
    )["KeyMetadata"]
    if key_props.get("EnableKeyRotation"):
        kms.enable_key_rotation(KeyId=key["KeyId"])
    account_id = key["Arn"].split(":")[4]
    refs |= {"AWS::AccountId": account_id, KEY_ID: key["KeyId"], f"{KEY_ID}.Arn": key["Arn"]}
    refs[f"{KEY_ID}.KeyId"] = key["KeyId"]

    table_name = f"{name}-{TABLE_ID}"
    props = resolve(template, resource_properties(template, TABLE_ID), refs)
    request = {k: props[k] for k in ("KeySchema", "AttributeDefinitions", "BillingMode")}
    request |= {
        k: props[k] for k in ("ProvisionedThroughput", "GlobalSecondaryIndexes") if k in props
    }
    sse = props.get("SSESpecification") or {}
    if sse.get("SSEEnabled"):  # CloudFormation's SSEEnabled is the API's Enabled.
        request["SSESpecification"] = {"Enabled": True, "SSEType": sse.get("SSEType", "KMS")}
        if sse.get("KMSMasterKeyId"):
            request["SSESpecification"]["KMSMasterKeyId"] = sse["KMSMasterKeyId"]
    table = ddb.create_table(TableName=table_name, **request)["TableDescription"]
    ttl = props.get("TimeToLiveSpecification") or {}
    if ttl.get("Enabled"):
        spec = {"AttributeName": ttl["AttributeName"], "Enabled": True}
        ddb.update_time_to_live(TableName=table_name, TimeToLiveSpecification=spec)
    refs |= {TABLE_ID: table_name, f"{TABLE_ID}.Arn": table["TableArn"]}

    props = resolve(template, resource_properties(template, SECRET_ID), refs)
    secret_name = str(props.get("Name") or f"igni-token-vendor/{name}/default")
    text = secret_value if isinstance(secret_value, str) else json.dumps(secret_value)
    extra = {k: str(props[k]) for k in ("Description", "KmsKeyId") if props.get(k)}
    secret = sm.create_secret(Name=secret_name, SecretString=text, Tags=tags, **extra)
    # The template's Ref to the secret (IGNI_SECRET_ID) is its ARN.
    refs |= {SECRET_ID: secret["ARN"], f"{SECRET_ID}.Id": secret["ARN"]}
    for policy in cfn.resources_of_type(template, "AWS::SecretsManager::ResourcePolicy").values():
        props = _without_no_value(resolve(template, policy.get("Properties") or {}, refs))
        if props.get("SecretId") == secret["ARN"]:
            document, block = json.dumps(props["ResourcePolicy"]), props.get("BlockPublicPolicy")
            sm.put_resource_policy(
                SecretId=secret["ARN"], ResourcePolicy=document, BlockPublicPolicy=bool(block)
            )

    # Each function's environment (over Globals', as SAM merges them), resolved; the API's first.
    function_id = cfn.api_function(template)
    functions = [function_id]
    functions += [f for f in cfn.resources_of_type(template, FUNCTION_TYPE) if f != function_id]
    refs |= {f: f"{name}-{f}" for f in functions}
    function = cfn.function_properties(template, function_id)
    envs = {f: _environment(template, f, refs) for f in functions}
    return LocalStack(
        name=name,
        endpoint_url=endpoint_url,
        region=region,
        account_id=account_id,
        table_name=table_name,
        kms_key_id=key["KeyId"],
        kms_key_arn=key["Arn"],
        secret_name=secret_name,
        secret_arn=secret["ARN"],
        function_name=refs[function_id],
        function_timeout_s=float(function.get("Timeout", 3)),
        function_memory_mb=int(function.get("MemorySize", 128)),
        igni_token_url=igni_token_url,
        igni_workspace=igni_workspace,
        dynamodb_endpoint_url=dynamodb_endpoint_url,
        template_env=envs.pop(function_id),
        other_envs=envs,
    )


def _environment(template: Mapping[str, Any], function_id: str, refs: Any) -> dict[str, str]:
    """The Environment.Variables of a function, over Globals', resolved against ``refs``."""
    variables = cfn.function_properties(template, function_id)["Environment"]["Variables"]
    env: dict[str, str] = {}
    for var, value in variables.items():
        try:
            resolved = resolve(template, value, refs)
        except (KeyError, ValueError):
            message = f"local stack: cannot resolve {var} of {function_id}; extend its refs"
            warnings.warn(message, stacklevel=3)
            continue
        env[var] = str(resolved).lower() if isinstance(resolved, bool) else str(resolved)
    return env
