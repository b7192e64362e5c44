"""The API's routes are declared once, in template.yaml; everything else is held to them.

API Gateway answers any undeclared path or method itself (403 Missing Authentication Token),
so the template is the truth. The function's resolver routes and openapi.yaml must serve and
describe exactly the routes the template declares, and nothing else lists them.
"""

from __future__ import annotations

from typing import Any

import pytest

from local.cfn_template import load_template
from tests.conftest import REPO_ROOT
from tests.openapi_check import load_openapi
from token_vendor.functions import api as handler

Route = tuple[str, str]
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def template_routes() -> set[Route]:
    """(METHOD, /path/{param}) of every Api event of every function in template.yaml."""
    template = load_template(REPO_ROOT / "template.yaml")
    routes: set[Route] = set()
    for resource in template["Resources"].values():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        for event in (resource.get("Properties", {}).get("Events") or {}).values():
            if event.get("Type") == "Api":
                routes.add((event["Properties"]["Method"].upper(), event["Properties"]["Path"]))
    return routes


def resolver_routes() -> set[Route]:
    """What the API function declares (and gives its Powertools resolver), as the template."""
    return {(method, path) for method, path, _ in handler.ROUTES}


@pytest.fixture(scope="module")
def declared() -> set[Route]:
    routes = template_routes()
    assert routes, "template.yaml declares no API route"
    return routes


def test_the_function_routes_exactly_what_the_template_declares(declared: set[Route]) -> None:
    assert resolver_routes() == declared


def test_openapi_describes_exactly_what_the_template_declares(declared: set[Route]) -> None:
    doc: dict[str, Any] = load_openapi()
    described = {
        (method.upper(), path)
        for path, operations in doc["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    assert described == declared
