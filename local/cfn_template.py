"""template.yaml read with cfn-lint's loader (short forms become CloudFormation's long forms), and
the intrinsics the local stack resolves: it is built from what gets deployed, not from a copy."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
CACHE_DIR = REPO_ROOT / ".local-state" / "templates"

Template = dict[str, Any]
Route = tuple[str, str]  # (METHOD or ANY, resource path such as /token/{profile})


def load_template(path: Path | str = TEMPLATE_PATH) -> Template:
    """Parse a CloudFormation/SAM template; intrinsic functions come back in long form."""
    raw = Path(path).read_bytes()
    # cfn-lint imports sympy and networkx (about 2 s): parse once per template content.
    cache = CACHE_DIR / f"{hashlib.sha256(raw).hexdigest()[:32]}.json"
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        from cfnlint.decode.cfn_yaml import loads  # type: ignore[import-untyped]

        data = json.loads(json.dumps(loads(raw.decode("utf-8"), str(path))))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(cache)
    if not isinstance(data, dict) or "Resources" not in data:
        raise ValueError(f"{path} is not a CloudFormation template (no Resources)")
    return cast(Template, data)


def resource(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """The whole resource (Type, Properties, Condition, ...) named ``logical_id``."""
    return cast(dict[str, Any], template["Resources"][logical_id])


def resource_properties(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """The Properties of resource ``logical_id`` ({} when it has none)."""
    return cast(dict[str, Any], resource(template, logical_id).get("Properties") or {})


def function_properties(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """A function's Properties over the template's Globals.Function, as SAM merges them: its
    own keys win, and its Environment.Variables are laid over the Globals' ones."""
    globals_fn: dict[str, Any] = (template.get("Globals") or {}).get("Function") or {}
    own = resource_properties(template, logical_id)
    variables = {
        **((globals_fn.get("Environment") or {}).get("Variables") or {}),
        **((own.get("Environment") or {}).get("Variables") or {}),
    }
    return {**globals_fn, **own, "Environment": {"Variables": variables}}


def resources_of_type(template: Mapping[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    """Every resource of a given Type, by logical id, in template order."""
    return {
        logical_id: res
        for logical_id, res in template["Resources"].items()
        if isinstance(res, dict) and res.get("Type") == type_name
    }


def parameter_defaults(template: Mapping[str, Any]) -> dict[str, Any]:
    """Each parameter's Default (parameters without one are left out)."""
    return {
        name: spec["Default"]
        for name, spec in (template.get("Parameters") or {}).items()
        if isinstance(spec, dict) and "Default" in spec
    }


def _api_events(function: Mapping[str, Any]) -> list[dict[str, Any]]:
    events = ((function.get("Properties") or {}).get("Events") or {}).values()
    return [e.get("Properties") or {} for e in events if e.get("Type") == "Api"]


def api_routes(template: Mapping[str, Any]) -> list[Route]:
    """(METHOD, path) of every ``Api`` event of every serverless function: what the API declares."""
    return [
        (str(props["Method"]).upper(), str(props["Path"]))
        for fn in resources_of_type(template, "AWS::Serverless::Function").values()
        for props in _api_events(fn)
    ]


def api_function(template: Mapping[str, Any]) -> str:
    """The logical id of the function behind the API (the one with ``Api`` events)."""
    for logical_id, fn in resources_of_type(template, "AWS::Serverless::Function").items():
        if _api_events(fn):
            return logical_id
    raise ValueError("template has no function with Api events")


def evaluate_condition(template: Mapping[str, Any], name: Any, refs: Mapping[str, Any]) -> bool:
    """Evaluate a named condition, or (not a name) a condition expression: Fn::Equals, Fn::Not,
    Fn::And, Fn::Or, Condition."""
    expr = template["Conditions"][name] if isinstance(name, str) else name
    value = resolve(template, expr, refs)
    if not isinstance(value, bool):
        raise ValueError(f"unsupported condition expression {expr!r}")  # noqa: TRY004
    return value


def resolve(template: Mapping[str, Any], value: Any, refs: Mapping[str, Any]) -> Any:
    """Resolve Ref, Sub, GetAtt, If, Join, Select and Split with ``refs``: parameters, pseudo
    parameters, logical ids (Ref) and ``"Logical.Attr"`` (GetAtt). An unknown name is a KeyError,
    so a template change this resolver cannot follow fails loudly."""
    if isinstance(value, list):
        return [resolve(template, v, refs) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        return {k: resolve(template, v, refs) for k, v in value.items()}
    ((fn, args),) = value.items()
    handler = _RESOLVERS.get(fn)
    if handler is None:
        return {fn: resolve(template, args, refs)}
    return handler(template, args, refs)


def _lookup(refs: Mapping[str, Any], name: str) -> Any:
    if name not in refs:
        raise KeyError(f"no value for {name!r} when resolving the template")
    return refs[name]


_SUB_VAR = re.compile(r"\$\{([^}!]+)\}")


def _sub(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> str:
    text, local_vars = (args[0], args[1] or {}) if isinstance(args, list) else (args, {})
    scope = {**refs, **{k: resolve(template, v, refs) for k, v in local_vars.items()}}
    # "${Res.Attr}" is a GetAtt, found under "Res.Attr" like any other name.
    replaced = _SUB_VAR.sub(lambda m: str(_lookup(scope, m.group(1).strip())), str(text))
    return replaced.replace("${!", "${")


def _if(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> Any:
    condition, if_true, if_false = args
    chosen = if_true if evaluate_condition(template, condition, refs) else if_false
    return resolve(template, chosen, refs)


_Resolver = Callable[[Mapping[str, Any], Any, Mapping[str, Any]], Any]
_RESOLVERS: dict[str, _Resolver] = {
    "Ref": lambda t, args, refs: _lookup(refs, str(args)),
    "Fn::GetAtt": lambda t, args, refs: _lookup(refs, f"{args[0]}.{args[1]}"),
    "Fn::Sub": _sub,
    "Fn::If": _if,
    "Fn::Join": lambda t, args, refs: str(args[0]).join(str(i) for i in resolve(t, args[1], refs)),
    "Fn::Select": lambda t, args, refs: resolve(t, args[1], refs)[int(resolve(t, args[0], refs))],
    "Fn::Split": lambda t, args, refs: str(resolve(t, args[1], refs)).split(str(args[0])),
    # Conditions: only in the template's Conditions and the first argument of Fn::If.
    "Fn::Equals": lambda t, args, refs: len({str(resolve(t, a, refs)) for a in args}) == 1,
    "Fn::Not": lambda t, args, refs: not evaluate_condition(t, args[0], refs),
    "Fn::And": lambda t, args, refs: all(evaluate_condition(t, a, refs) for a in args),
    "Fn::Or": lambda t, args, refs: any(evaluate_condition(t, a, refs) for a in args),
    "Condition": evaluate_condition,
}
