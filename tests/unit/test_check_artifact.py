"""scripts/check_artifact.py: what CI accepts as a precompiled, read-only-loadable artifact."""

from __future__ import annotations

import compileall
import importlib.util
import py_compile
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    sys.version_info[:2] != (3, 13), reason="the artifacts hold Python 3.13 bytecode"
)


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_artifact", REPO_ROOT / "scripts" / "check_artifact.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def artifact(tmp_path: Path, mode: py_compile.PycInvalidationMode | None) -> Path:
    """A two-module package, compiled in `mode` (None: no bytecode)."""
    root = tmp_path / "Fn"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "handler.py").write_text("import json\nVALUE = json.dumps(1)\n")
    if mode is not None:
        assert compileall.compile_dir(root, quiet=1, invalidation_mode=mode)
    return root


def test_unchecked_hash_bytecode_passes_and_imports_from_bytecode(
    check: ModuleType, tmp_path: Path
) -> None:
    # Given an artifact compiled as the Makefile compiles it
    root = artifact(tmp_path, py_compile.PycInvalidationMode.UNCHECKED_HASH)
    # Then every module has its bytecode, and the handler imports read-only from it
    assert check.bytecode_problems(root) == []
    assert check.import_problems(root, "pkg.handler") == []


def test_timestamp_bytecode_is_refused(check: ModuleType, tmp_path: Path) -> None:
    # Given pip's kind of bytecode, which zipping's modification times can make stale
    root = artifact(tmp_path, py_compile.PycInvalidationMode.TIMESTAMP)
    # Then each module is reported
    problems = check.bytecode_problems(root)
    assert len(problems) == 2
    assert all("timestamp-based, not unchecked-hash" in p for p in problems)


def test_missing_bytecode_is_refused_and_seen_compiled_at_import(
    check: ModuleType, tmp_path: Path
) -> None:
    # Given an artifact as a pip-based sam build made it: no bytecode
    root = artifact(tmp_path, None)
    # Then both checks report it: no .pyc, and the import compiled from source
    assert len(check.bytecode_problems(root)) == 2
    problems = check.import_problems(root, "pkg.handler")
    assert "import pkg.handler: pkg/handler.py was compiled from source" in problems
