"""Check an HTTP answer of the token API against openapi.yaml, so the document cannot drift.

    from tests.openapi_check import assert_matches_openapi
    assert_matches_openapi("GET", "/token/{profile}", 404, response_headers, response_json)

The response object is looked up by path template, method and status; its JSON body is validated
against the documented schema with ``jsonschema`` ($refs resolved inside the document), and every
documented header is checked: present when required, and of the documented type and values. A
path or method the document does not define is checked against the document's
``x-igni-fallback-responses`` (the function's 404 not_found / 405 method_not_allowed). Where API
Gateway and the function share a status, ``x-igni-required-headers-with-error-body`` names the
headers that the function's ``{"error", ...}`` answers must carry.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

__all__ = [
    "OPENAPI_PATH",
    "assert_matches_openapi",
    "load_openapi",
    "response_spec",
    "schema_validator",
]

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi.yaml"
_DOC_URI = "urn:igni-token-vendor:openapi"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@functools.cache
def load_openapi(path: Path = OPENAPI_PATH) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    if not isinstance(doc, dict):
        raise TypeError(f"{path} is not a YAML mapping")
    return doc


def _registry(doc: Mapping[str, Any]) -> Registry[Any]:
    # OpenAPI 3.0's schema object is a dialect of JSON Schema draft 4 (no nullable used here).
    registry: Registry[Any] = Registry().with_resource(
        _DOC_URI, Resource.from_contents(doc, DRAFT4)
    )
    return registry


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _resolve(doc: Mapping[str, Any], node: Any, pointer: str) -> tuple[Any, str]:
    """Follow local $refs; return the node and its JSON pointer in the document."""
    seen = set()
    while isinstance(node, Mapping) and "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise AssertionError(f"only local $refs are supported, got {ref!r} at {pointer}")
        if ref in seen:
            raise AssertionError(f"$ref cycle at {ref}")
        seen.add(ref)
        pointer = ref[1:]
        node = doc
        for raw in ref[2:].split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise AssertionError(f"unresolvable $ref {ref}")
            node = node[part]
    return node, pointer


def response_spec(
    method: str, path_template: str, status: int, doc: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """The response object documented for this answer, and its JSON pointer."""
    doc = load_openapi() if doc is None else doc
    paths = doc["paths"]
    fallbacks = doc.get("x-igni-fallback-responses", {})
    if path_template not in paths or method.lower() not in paths[path_template]:
        kind, expected = (
            ("unknown-path", 404) if path_template not in paths else ("unknown-method", 405)
        )
        node, pointer = fallbacks.get(kind), f"/x-igni-fallback-responses/{kind}"
        if node is None or status != expected:
            raise AssertionError(
                f"{method} {path_template} is not a documented operation; "
                f"only a {expected} is expected for it, got {status}"
            )
    else:
        responses = paths[path_template][method.lower()]["responses"]
        base = f"/paths/{_escape(path_template)}/{method.lower()}/responses"
        for key in (str(status), f"{status // 100}XX", "default"):
            if key in responses:
                node, pointer = responses[key], f"{base}/{_escape(key)}"
                break
        else:
            raise AssertionError(
                f"{method} {path_template} does not document status {status} "
                f"(documented: {sorted(responses)})"
            )
    resolved, pointer = _resolve(doc, node, pointer)
    if not isinstance(resolved, dict):
        raise TypeError(f"response at {pointer} is not an object")
    return resolved, pointer


def schema_validator(pointer: str, doc: Mapping[str, Any] | None = None) -> jsonschema.Validator:
    """A validator for the schema at this JSON pointer of the document, $refs resolved."""
    doc = load_openapi() if doc is None else doc
    return jsonschema.Draft4Validator({"$ref": f"{_DOC_URI}#{pointer}"}, registry=_registry(doc))


def _header_map(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k).lower(): str(v) for k, v in items}


def _header_value(raw: str, schema: Mapping[str, Any]) -> object:
    if schema.get("type") == "integer":
        try:
            return int(raw.strip())
        except ValueError:
            return raw
    return raw


def assert_matches_openapi(
    method: str,
    path_template: str,
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body_json: object,
    *,
    doc: Mapping[str, Any] | None = None,
) -> None:
    """Raise AssertionError unless this answer is what openapi.yaml documents.

    ``path_template`` is the document's path (``/token/{profile}``), without the stage.
    ``headers`` are the response's headers (any case); ``body_json`` its parsed JSON body.
    """
    doc = load_openapi() if doc is None else doc
    response, pointer = response_spec(method, path_template, status, doc)
    where = f"{method} {path_template} -> {status}"
    lowered = _header_map(headers)

    content = response.get("content")
    if content:
        if "application/json" not in content:
            raise AssertionError(f"{where}: only application/json bodies are supported")
        content_type = lowered.get("content-type")
        if content_type is not None and not content_type.startswith("application/json"):
            raise AssertionError(f"{where}: Content-Type {content_type!r}, not application/json")
        validator = schema_validator(f"{pointer}/content/application~1json/schema", doc)
        errors = sorted(validator.iter_errors(body_json), key=lambda e: list(e.path))
        if errors:
            details = "; ".join(
                f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}" for e in errors
            )
            raise AssertionError(f"{where}: body {body_json!r} does not match: {details}")

    from_function = isinstance(body_json, Mapping) and "error" in body_json
    extra_required = set(response.get("x-igni-required-headers-with-error-body", []))
    for name, header_node in response.get("headers", {}).items():
        header, header_pointer = _resolve(doc, header_node, f"{pointer}/headers/{_escape(name)}")
        required = bool(header.get("required")) or (from_function and name in extra_required)
        raw = lowered.get(name.lower())
        if raw is None:
            if required:
                raise AssertionError(f"{where}: header {name} is required and missing")
            continue
        schema = header.get("schema", {})
        value = _header_value(raw, _resolve(doc, schema, header_pointer + "/schema")[0])
        validator = schema_validator(f"{header_pointer}/schema", doc)
        errors = list(validator.iter_errors(value))
        if errors:
            raise AssertionError(f"{where}: header {name}: {raw!r}: {errors[0].message}")
