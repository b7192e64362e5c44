"""openapi.yaml: a valid OpenAPI 3.0 document that describes the whole contract.

The checks of real answers against it use tests/openapi_check.py; its own behaviour is tested
here on hand-made answers.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.openapi_check import (
    OPENAPI_PATH,
    assert_matches_openapi,
    load_openapi,
    response_spec,
)

CONTRACT_ERRORS = {
    400: {"invalid_request"},
    403: {"access_denied"},
    404: {"not_found", "unknown_profile"},
    405: {"method_not_allowed"},
    409: {"unknown_token"},
    429: {"refresh_rate_limited"},
    500: {"configuration_error"},
    502: {"upstream_auth_failed", "upstream_bad_response"},
    503: {"upstream_unavailable"},
}
OPERATIONS = [
    ("GET", "/token"),
    ("GET", "/token/{profile}"),
    ("POST", "/token/refresh"),
    ("POST", "/token/{profile}/refresh"),
]
TOKEN = {
    "access_token": "eyJhbGciOiJub25lIn0.e30.",
    "token_type": "Bearer",
    "expires_in": 3000,
    "expires_at": 1767225600,
}
NO_STORE = {"Cache-Control": "no-store", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_openapi()


def _walk(node: object) -> list[object]:
    found = [node]
    if isinstance(node, dict):
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


# ---------------------------------------------------------------------------- the document


def test_is_a_valid_openapi_30_document(doc: dict[str, Any]) -> None:
    # Given openapi.yaml / When validated against the OpenAPI 3.0 specification's schema
    validator_module = pytest.importorskip("openapi_spec_validator")
    validator_module.validate(doc, cls=validator_module.OpenAPIV30SpecValidator)
    # Then it is OpenAPI 3.0.x
    assert doc["openapi"].startswith("3.0.")


def test_every_ref_resolves_and_every_schema_is_valid(doc: dict[str, Any]) -> None:
    # Given every $ref and every schema of the document
    for node in _walk(doc):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            # When the reference is followed / Then it lands on something
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            assert target is not None
    for schema in doc["components"]["schemas"].values():
        # Then each schema is valid JSON Schema (draft 4, OpenAPI 3.0's dialect)
        jsonschema.Draft4Validator.check_schema(schema)


def test_describes_every_operation_of_the_contract(doc: dict[str, Any]) -> None:
    # Given the contract's four operations / Then each is in the document
    for method, path in OPERATIONS:
        assert method.lower() in doc["paths"][path], (method, path)
    get_params = {p["$ref"].rsplit("/", 1)[-1] for p in doc["paths"]["/token"]["get"]["parameters"]}
    assert get_params == {"MinTtl"}
    min_ttl = doc["components"]["parameters"]["MinTtl"]
    assert min_ttl["in"] == "query"
    assert min_ttl["schema"] == {"type": "integer", "minimum": 0}
    body = doc["components"]["requestBodies"]["Refresh"]
    assert body["required"] is True
    assert doc["components"]["schemas"]["RefreshRequest"]["required"] == ["rejected_token"]


def test_names_every_error_code_of_the_contract(doc: dict[str, Any]) -> None:
    # Given the error codes of the contract
    enum = set(doc["components"]["schemas"]["ErrorCode"]["enum"])
    # Then the document's ErrorCode lists exactly them
    assert enum == set().union(*CONTRACT_ERRORS.values())
    # And the text names each one and API Gateway's own messages
    text = " ".join(str(node) for node in _walk(doc) if isinstance(node, str))
    assert OPENAPI_PATH.is_file()
    for code in enum:
        assert code in text
    for message in (
        "Missing Authentication Token",
        "The request signature we calculated does not match",
        "Signature expired",
    ):
        assert message in text


def test_error_codes_match_the_service(doc: dict[str, Any]) -> None:
    # Given the service's error classes (src/token_vendor/errors.py, loaded on its own)
    path = Path(__file__).resolve().parents[2] / "src" / "token_vendor" / "errors.py"
    spec = importlib.util.spec_from_file_location("_vendor_errors_for_openapi", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    codes = {
        (cls.status, cls.code)
        for cls in vars(module).values()
        if isinstance(cls, type)
        and issubclass(cls, module.VendorError)
        and cls is not module.VendorError
    }
    # Then each (status, code) the service can answer is in the contract and the document
    enum = set(doc["components"]["schemas"]["ErrorCode"]["enum"])
    for status, code in codes:
        assert code in CONTRACT_ERRORS.get(status, set()), (status, code)
        assert code in enum


def test_iam_security_scheme(doc: dict[str, Any]) -> None:
    # Given the security scheme / Then it is API Gateway's SigV4 scheme, applied to everything
    scheme = doc["components"]["securitySchemes"]["sigv4"]
    assert scheme["type"] == "apiKey"
    assert scheme["in"] == "header"
    assert scheme["name"] == "Authorization"
    assert scheme["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert doc["security"] == [{"sigv4": []}]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_operation_documents_every_error_status(method: str, path: str) -> None:
    # Given an operation / Then every status of the contract that can apply is documented
    statuses = {200, 400, 403, 404, 500, 502, 503}
    if method == "POST":
        statuses |= {409, 429}
    for status in statuses:
        response_spec(method, path, status)


# ---------------------------------------------------------------------------- the checker


def test_a_token_answer_matches() -> None:
    # Given a 200 with the token and its headers / Then it matches, for every operation
    for method, path in OPERATIONS:
        assert_matches_openapi(method, path, 200, {**NO_STORE, "Pragma": "no-cache"}, dict(TOKEN))


@pytest.mark.parametrize(
    ("headers", "body", "complaint"),
    [
        (NO_STORE, TOKEN, "Pragma is required"),
        ({"Pragma": "no-cache"}, TOKEN, "Cache-Control is required"),
        ({**NO_STORE, "Pragma": "no-cache", "Cache-Control": "max-age=60"}, TOKEN, "Cache-Control"),
        ({**NO_STORE, "Pragma": "no-cache"}, {**TOKEN, "token_type": "bearer"}, "token_type"),
        ({**NO_STORE, "Pragma": "no-cache"}, {**TOKEN, "expires_in": 1.5}, "expires_in"),
        ({**NO_STORE, "Pragma": "no-cache"}, {**TOKEN, "refresh_token": "x"}, "Additional"),
        ({**NO_STORE, "Pragma": "no-cache"}, {"access_token": "x"}, "required property"),
        (
            {"Cache-Control": "no-store", "Pragma": "no-cache", "Content-Type": "text/plain"},
            TOKEN,
            "Content-Type",
        ),
    ],
)
def test_a_wrong_token_answer_is_caught(
    headers: dict[str, str], body: dict[str, object], complaint: str
) -> None:
    # Given a 200 that breaks the contract / When checked / Then the checker says where
    with pytest.raises(AssertionError, match=complaint):
        assert_matches_openapi("GET", "/token", 200, headers, body)


@pytest.mark.parametrize(
    ("method", "path", "status", "error", "extra_headers"),
    [
        ("GET", "/token", 400, "invalid_request", {}),
        ("GET", "/token", 403, "access_denied", {}),
        ("GET", "/token/{profile}", 404, "unknown_profile", {}),
        ("GET", "/token/{profile}", 404, "not_found", {}),
        ("POST", "/token/refresh", 409, "unknown_token", {}),
        ("POST", "/token/refresh", 429, "refresh_rate_limited", {"Retry-After": "30"}),
        ("GET", "/token", 500, "configuration_error", {}),
        ("GET", "/token", 502, "upstream_auth_failed", {}),
        ("GET", "/token", 502, "upstream_bad_response", {}),
        ("GET", "/token", 503, "upstream_unavailable", {"Retry-After": "5"}),
        ("DELETE", "/token", 405, "method_not_allowed", {"Allow": "GET"}),
        ("GET", "/nope", 404, "not_found", {}),
    ],
)
def test_every_contract_error_matches(
    method: str, path: str, status: int, error: str, extra_headers: dict[str, str]
) -> None:
    # Given the function's error answer / When checked / Then it matches the document
    body = {"error": error, "message": "what went wrong"}
    assert_matches_openapi(method, path, status, {**NO_STORE, **extra_headers}, body)


@pytest.mark.parametrize(
    ("status", "body", "headers", "complaint"),
    [
        (503, {"error": "upstream_unavailable", "message": "m"}, NO_STORE, "Retry-After"),
        (503, {"error": "upstream_unavailable", "message": "m"}, {"Retry-After": "1"}, "Cache"),
        (
            503,
            {"error": "upstream_unavailable", "message": "m"},
            {**NO_STORE, "Retry-After": "soon"},
            "Retry-After",
        ),
        (404, {"error": "upstream_unavailable", "message": "m"}, NO_STORE, "not one of"),
        (400, {"error": "invalid_request"}, NO_STORE, "message"),
        (400, {"error": "invalid_request", "message": "m", "detail": 1}, NO_STORE, "Additional"),
        (403, {"error": "access_denied", "message": "m"}, {}, "Cache-Control"),
        (418, {"error": "teapot", "message": "m"}, NO_STORE, "does not document status 418"),
    ],
)
def test_a_wrong_error_answer_is_caught(
    status: int, body: dict[str, object], headers: dict[str, str], complaint: str
) -> None:
    # Given an error answer that breaks the contract / When checked / Then it is caught
    with pytest.raises(AssertionError, match=complaint):
        assert_matches_openapi("GET", "/token", status, headers, body)


def test_refresh_rate_limited_needs_retry_after() -> None:
    # Given refresh_rate_limited without Retry-After / When checked / Then caught
    body = {"error": "refresh_rate_limited", "message": "too soon"}
    with pytest.raises(AssertionError, match="Retry-After"):
        assert_matches_openapi("POST", "/token/refresh", 429, NO_STORE, body)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, {"message": "Missing Authentication Token"}),
        (403, {"message": "Signature expired: 20240101T000000Z is now earlier than ..."}),
        (
            403,
            {
                "Message": "User: arn:aws:iam::1:user/a is not authorized to perform: "
                "execute-api:Invoke on resource: "
                "arn:aws:execute-api:us-east-1:********0001:x/v1/GET/token"
            },
        ),
        (429, {"message": "Too Many Requests"}),
        (502, {"message": "Internal server error"}),
        (504, {"message": "Endpoint request timed out"}),
    ],
)
def test_api_gateway_answers_match(status: int, body: dict[str, str]) -> None:
    # Given one of API Gateway's own answers (no Cache-Control) / Then it matches
    assert_matches_openapi(
        "GET", "/token", status, {"Content-Type": "application/json"}, json.loads(json.dumps(body))
    )


def test_an_undocumented_method_must_be_405() -> None:
    # Given DELETE /token answered 200 / When checked / Then caught
    with pytest.raises(AssertionError, match="only a 405"):
        assert_matches_openapi("DELETE", "/token", 200, NO_STORE, TOKEN)


def test_header_pairs_are_accepted() -> None:
    # Given headers as pairs in any case / Then they are read case-insensitively
    headers = [("cache-control", "no-store"), ("PRAGMA", "no-cache")]
    assert_matches_openapi("GET", "/token", 200, headers, TOKEN)
