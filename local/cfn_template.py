"""Read template.yaml with PyYAML, short-form intrinsic tags included, and resolve simple values.

``yaml.safe_load`` rejects ``!Ref`` and friends; :func:`load_template` turns each short form into
the long form CloudFormation itself uses (``!Ref X`` -> ``{"Ref": "X"}``, ``!GetAtt A.B`` ->
``{"Fn::GetAtt": ["A", "B"]}``, ``!Sub s`` -> ``{"Fn::Sub": s}``, ...), so the local stack is built
from the same definitions that get deployed instead of a copy that can drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the dev pins

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO_ROOT / "template.yaml"

Template = dict[str, Any]

# Short forms that are not "Fn::<Name>".
_NOT_FN = {"Ref": "Ref", "Condition": "Condition"}


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]  # yaml is untyped here
    """SafeLoader plus CloudFormation's ``!Tag`` short forms."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    name = tag_suffix
    key = _NOT_FN.get(name, f"Fn::{name}")
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "GetAtt":
            # "!GetAtt Res.Attr" (Attr may itself hold dots) means ["Res", "Attr"].
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - PyYAML has no other node kind
        raise yaml.constructor.ConstructorError(
            None, None, f"bad node for !{name}", node.start_mark
        )
    return {key: value}


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: Path | str = TEMPLATE_PATH) -> Template:
    """Parse a CloudFormation/SAM template; intrinsic functions come back in long form."""
    with Path(path).open(encoding="utf-8") as fh:
        # _CfnLoader only adds constructors for tags to SafeLoader: nothing can be executed.
        data = yaml.load(fh, Loader=_CfnLoader)  # noqa: S506
    if not isinstance(data, dict) or "Resources" not in data:
        raise ValueError(f"{path} is not a CloudFormation template (no Resources)")
    return cast(Template, data)


def resource(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """The whole resource (Type, Properties, Condition, ...) named ``logical_id``."""
    try:
        return cast(dict[str, Any], template["Resources"][logical_id])
    except KeyError:
        raise KeyError(f"template has no resource {logical_id!r}") from None


def resource_properties(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """The Properties of resource ``logical_id`` ({} when it has none)."""
    return cast(dict[str, Any], resource(template, logical_id).get("Properties") or {})


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


def evaluate_condition(template: Mapping[str, Any], name: str, refs: Mapping[str, Any]) -> bool:
    """Evaluate a named condition (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition)."""
    return bool(_eval_condition(template, template["Conditions"][name], refs))


def _eval_condition(template: Mapping[str, Any], expr: Any, refs: Mapping[str, Any]) -> bool:
    if isinstance(expr, dict) and len(expr) == 1:
        ((fn, args),) = expr.items()
        if fn == "Fn::Equals":
            left, right = (resolve(template, a, refs) for a in args)
            return bool(str(left) == str(right))
        if fn == "Fn::Not":
            return not _eval_condition(template, args[0], refs)
        if fn == "Fn::And":
            return all(_eval_condition(template, a, refs) for a in args)
        if fn == "Fn::Or":
            return any(_eval_condition(template, a, refs) for a in args)
        if fn == "Condition":
            return evaluate_condition(template, args, refs)
    raise ValueError(f"unsupported condition expression {expr!r}")


_SUB_VAR = re.compile(r"\$\{([^}!]+)\}")


def resolve(template: Mapping[str, Any], value: Any, refs: Mapping[str, Any]) -> Any:
    """Resolve the intrinsics the local stack needs: Ref, Sub, GetAtt, If, Join, Select, Split.

    ``refs`` maps names to values: parameters, pseudo parameters (``AWS::Region``...), logical ids
    (what ``Ref`` gives) and ``"Logical.Attr"`` (what ``GetAtt`` gives). An unknown name raises
    KeyError, so a template change that this resolver cannot follow fails loudly.
    """
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


def _ref(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> Any:
    return _lookup(refs, str(args))


def _get_att(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> Any:
    logical_id, attribute = args
    return _lookup(refs, f"{logical_id}.{attribute}")


def _sub(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> Any:
    if isinstance(args, list):
        text, local_vars = (
            args[0],
            {k: resolve(template, v, refs) for k, v in (args[1] or {}).items()},
        )
    else:
        text, local_vars = args, {}
    scope = {**refs, **local_vars}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name in scope:
            return str(scope[name])
        # "${Res.Attr}" in Fn::Sub is a GetAtt.
        return str(_lookup(scope, name))

    return _SUB_VAR.sub(replace, str(text)).replace("${!", "${")


def _if(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> Any:
    condition, if_true, if_false = args
    chosen = if_true if evaluate_condition(template, condition, refs) else if_false
    return resolve(template, chosen, refs)


def _join(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> Any:
    delimiter, items = args
    return str(delimiter).join(str(i) for i in resolve(template, items, refs))


def _select(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> Any:
    index, items = args
    return resolve(template, items, refs)[int(resolve(template, index, refs))]


def _split(template: Mapping[str, Any], args: Any, refs: Mapping[str, Any]) -> Any:
    delimiter, text = args
    return str(resolve(template, text, refs)).split(str(delimiter))


_Resolver = Callable[[Mapping[str, Any], Any, Mapping[str, Any]], Any]
_RESOLVERS: dict[str, _Resolver] = {
    "Ref": _ref,
    "Fn::GetAtt": _get_att,
    "Fn::Sub": _sub,
    "Fn::If": _if,
    "Fn::Join": _join,
    "Fn::Select": _select,
    "Fn::Split": _split,
}


def api_routes(template: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(METHOD, path) of every ``Api`` event of every serverless function, in template order."""
    routes: list[tuple[str, str]] = []
    for fn in resources_of_type(template, "AWS::Serverless::Function").values():
        for event in ((fn.get("Properties") or {}).get("Events") or {}).values():
            if isinstance(event, dict) and event.get("Type") == "Api":
                props = event.get("Properties") or {}
                routes.append((str(props["Method"]).upper(), str(props["Path"])))
    return routes
