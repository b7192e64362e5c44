"""Print template.yaml as CloudFormation sees it after the SAM transform, as JSON.

Run with the SAM venv's Python (aws-sam-cli brings the translator):

    .venv-sam/bin/python scripts/sam_transform.py [template.yaml] [Param=Value ...]

Parameters not given take their defaults, as in a deployment. Nothing is uploaded and no AWS
credentials are needed: CodeUri is replaced by a placeholder S3 URI (what ``sam package``
would write) and the region defaults to us-east-1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from samtranslator.translator.transform import transform  # type: ignore[import-not-found]
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-not-found]

PLACEHOLDER_CODE_URI = "s3://placeholder-bucket/placeholder-key.zip"


class _NoManagedPolicies:
    """The functions use explicit roles, so no SAM policy template needs the managed-policy map."""

    def load(self) -> dict[str, str]:
        return {}


def main(argv: list[str]) -> int:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    path = "template.yaml"
    parameters: dict[str, Any] = {}
    for arg in argv:
        if "=" in arg:
            name, value = arg.split("=", 1)
            parameters[name] = value
        else:
            path = arg
    with open(path, encoding="utf-8") as fh:
        template = yaml_parse(fh.read())
    globals_fn = template.setdefault("Globals", {}).setdefault("Function", {})
    if "CodeUri" in globals_fn:
        globals_fn["CodeUri"] = PLACEHOLDER_CODE_URI
    for res in template.get("Resources", {}).values():
        props = res.get("Properties") or {}
        if res.get("Type") == "AWS::Serverless::Function" and "CodeUri" in props:
            props["CodeUri"] = PLACEHOLDER_CODE_URI
    out = transform(template, parameters, _NoManagedPolicies())
    json.dump(out, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
