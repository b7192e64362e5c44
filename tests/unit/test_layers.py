"""The tree shows the architecture, and each layer keeps its rules (read off the source).

- the three Lambda entry points live in `functions/`, and the template's handlers name them;
- the vending policy imports no AWS or HTTP SDK (only types, under TYPE_CHECKING);
- no module-level constant is defined in two modules;
- no private attribute of Powertools, no test-only re-export (`noqa: F401`) in src/;
- no module over 400 lines;
- the entry points flush metrics once per invocation and count a cold start (Powertools counts
  it when the invocation returns: the rotation function's refusals raise, by its protocol).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from local.cfn_template import load_template, resources_of_type
from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "token_vendor"
SDKS = ("boto3", "botocore", "urllib3", "mypy_boto3_dynamodb", "mypy_boto3_kms")
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def runtime_imports(path: Path) -> set[str]:
    """Modules `path` imports when it runs (imports under `if TYPE_CHECKING:` excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_entry_points_are_the_functions_package_and_the_template_names_them() -> None:
    template = load_template(REPO_ROOT / "template.yaml")
    handlers = {
        fn["Properties"]["Handler"]
        for fn in resources_of_type(template, "AWS::Serverless::Function").values()
    }
    assert handlers == {
        "token_vendor.functions.api.lambda_handler",
        "token_vendor.functions.maintenance.lambda_handler",
        "token_vendor.functions.rotation.lambda_handler",
    }
    for handler in handlers:
        module = handler.rsplit(".", 1)[0].replace(".", "/")
        assert (REPO_ROOT / "src" / f"{module}.py").is_file(), handler


@pytest.mark.parametrize("path", sorted((PACKAGE / "vending").glob("*.py")), ids=lambda p: p.name)
def test_the_vending_policy_imports_no_sdk_and_no_adapter(path: Path) -> None:
    imported = runtime_imports(path)
    assert not {m for m in imported if m.split(".")[0] in SDKS}, path.name
    assert not {m for m in imported if m.startswith(("token_vendor.aws", "token_vendor.igni.c"))}


def test_no_module_level_constant_is_defined_in_two_modules() -> None:
    defined: dict[str, list[str]] = defaultdict(list)
    for path in modules():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.lstrip("_").isupper():
                    defined[target.id.lstrip("_")].append(str(path.relative_to(PACKAGE)))
    assert {name: where for name, where in defined.items() if len(where) > 1} == {}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small_and_use_libraries_through_their_public_api(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES
    assert "noqa: F401" not in text
    assert "app._" not in text  # the resolver's private routes
    assert "._metrics" not in text
    assert "._static_routes" not in text


@pytest.mark.parametrize(
    ("module", "event"),
    [
        ("token_vendor.functions.api", "'not an event'"),
        ("token_vendor.functions.maintenance", "{'source': 'nobody'}"),
    ],
)
def test_each_entry_point_counts_its_cold_start(module: str, event: str) -> None:
    # Given a fresh interpreter (a cold start)
    code = (
        "import importlib\n"
        "from local.lambda_context import FakeLambdaContext\n"
        f"handler = importlib.import_module('{module}').lambda_handler\n"
        "try:\n"
        f"    handler({event}, FakeLambdaContext())\n"
        "except Exception:\n"
        "    pass\n"
    )
    # When its handler runs once, on an event it refuses
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": f"{REPO_ROOT / 'src'}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    # Then Powertools' log_metrics flushed the ColdStart metric
    assert '"ColdStart"' in done.stdout, done.stdout + done.stderr
