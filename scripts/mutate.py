"""make mutate: mutation testing (mutmut) of the vending policy, the upstream parsing, the
refresh possession proof and the envelope's framing, with the score of each module.

TARGETS below is the one place that says what is mutated and which tests judge it: move a
module (or rename a function) and only its row changes. The run happens in a scratch copy
(build/mutation/, git-ignored) holding src/, tests/, local/ and pyproject.toml with a generated
[tool.mutmut] section, so the working tree is never touched. Each mutant runs only the tests
that reach the mutated function (mutmut records which do), with the model-based test on the
small `mutate` Hypothesis profile (tests/invariants/conftest.py).

Score of a module = caught / (mutants - equivalents), caught being killed by a test or
stopped by the time limit (a mutant that loops); the equivalents are the mutants named in
tests/mutation-equivalents.md, each with why no input can tell it apart. A module under
MIN_SCORE fails the run (exit 1).

    python scripts/mutate.py                 every target
    python scripts/mutate.py lease igni      some targets
    python scripts/mutate.py --report        the scores of the last run, without running
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"
EQUIVALENTS = ROOT / "tests" / "mutation-equivalents.md"
MIN_SCORE = 90.0


@dataclass(frozen=True)
class Target:
    """A module's source, the functions mutated (mutmut's names: `f` or `Class.method`; empty
    means every function), and the test files that judge it."""

    source: str
    functions: tuple[str, ...]
    tests: tuple[str, ...]


UNIT = "tests/unit"
MODEL = ("tests/invariants/test_vending_model.py", "tests/invariants/test_holes.py")
SERVICE_TESTS = (f"{UNIT}/test_lease.py", f"{UNIT}/test_service_decisions.py", *MODEL)
PKG = "src/token_vendor"
# module name -> what is mutated and which tests run. The one table to edit when modules move.
TARGETS: dict[str, Target] = {
    # The vending policy.
    "lease": Target(
        f"{PKG}/vending/lease.py",
        (),
        (f"{UNIT}/test_lease.py", f"{UNIT}/test_lease_timing.py", *MODEL),
    ),
    "freshness": Target(
        f"{PKG}/vending/freshness.py",
        (),
        (f"{UNIT}/test_freshness.py", f"{UNIT}/test_freshness_bounds.py", *MODEL),
    ),
    # The service's decisions: what a view of the item allows, the answer judged when made,
    # the forced-refresh limit without the table, and the fallback to the stale token.
    "decisions": Target(f"{PKG}/vending/decisions.py", (), SERVICE_TESTS),
    "answers": Target(f"{PKG}/vending/answers.py", (), SERVICE_TESTS),
    "standalone": Target(
        f"{PKG}/vending/standalone.py", ("Standalone._limit_forced",), SERVICE_TESTS
    ),
    "service": Target(f"{PKG}/vending/service.py", ("TokenService._settle",), SERVICE_TESTS),
    # The upstream parsing: token, lifetime, Retry-After, rejections; the retry backoff.
    "igni_answers": Target(
        f"{PKG}/igni/answers.py",
        (),
        (f"{UNIT}/test_igni_client.py", f"{UNIT}/test_igni_parsing.py", *MODEL),
    ),
    "igni_client": Target(
        f"{PKG}/igni/client.py",
        ("IgniClient._backoff", "_ceil"),
        (f"{UNIT}/test_igni_client.py", f"{UNIT}/test_igni_parsing.py", *MODEL),
    ),
    # The refresh possession proof.
    "models": Target(f"{PKG}/models.py", ("Record.vended", "Record.succession"), SERVICE_TESTS),
    "memory": Target(
        f"{PKG}/vending/memory.py", ("MemoryTier.vended", "MemoryTier.drop"), SERVICE_TESTS
    ),
    # The envelope encryption's framing.
    "token_cipher": Target(
        f"{PKG}/aws/token_cipher.py",
        ("unframe", "TokenCipher.encrypt", "TokenCipher._seal"),
        (f"{UNIT}/test_cipher_framing.py", f"{UNIT}/test_aws_adapters.py", MODEL[1]),
    ),
}

# mutmut's separator between a class and its method in mutant names.
_CLASS_SEP = "\u01c1"
# Caught: a test failed, or the mutant ran into the time limit (it loops: no answer would come).
CAUGHT = frozenset({"killed", "timeout"})


def _module(source: str) -> str:
    return source.removeprefix("src/").removesuffix(".py").replace("/", ".")


def _patterns(name: str) -> list[str]:
    """mutmut name globs for a target's functions."""
    target = TARGETS[name]
    module = _module(target.source)
    if not target.functions:
        return [f"{module}.*"]
    globs = []
    for function in target.functions:
        if "." in function:
            cls, method = function.split(".")
            globs.append(f"{module}.x{_CLASS_SEP}{cls}{_CLASS_SEP}{method}__mutmut_*")
        else:
            globs.append(f"{module}.x_{function}__mutmut_*")
    return globs


def _prepare(names: list[str]) -> None:
    """A fresh scratch copy whose pyproject.toml mutates the chosen targets only."""
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for folder in ("src", "tests", "local"):
        shutil.copytree(ROOT / folder, WORK / folder, ignore=ignore)
    tests = sorted({test for name in names for test in TARGETS[name].tests})
    config = {
        "source_paths": ["src"],
        "only_mutate": sorted({TARGETS[name].source for name in names}),
        "also_copy": ["local"],
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
        "pytest_add_cli_args_test_selection": tests,
        "use_git_change_detection": False,
        # A mutant that loops (on the injected clock nothing ever times out) is stopped soon.
        "timeout_multiplier": 3.0,
        "timeout_constant": 2.0,
    }
    lines = ["", "[tool.mutmut]"] + [
        f"{key} = {json.dumps(value)}" for key, value in config.items()
    ]
    text = (ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n"
    (WORK / "pyproject.toml").write_text(text)


def _run(names: list[str], children: int) -> int:
    env = dict(os.environ, HYPOTHESIS_PROFILE="mutate", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    patterns = [glob for name in names for glob in _patterns(name)]
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *patterns]
    return subprocess.run(command, cwd=WORK, env=env, check=False).returncode  # noqa: S603


def _results() -> dict[str, str]:
    """Each mutant's status from mutmut's meta files."""
    from mutmut.stats import status_by_exit_code  # noqa: PLC0415 (only the venv has it)

    statuses: dict[str, str] = {}
    for meta in (WORK / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        for key, code in data.get("exit_code_by_key", {}).items():
            statuses[key] = status_by_exit_code[code]
    return statuses


def equivalents() -> dict[str, str]:
    """Mutant name -> why it is equivalent, from the lines "- `name`: why" of the file."""
    found: dict[str, str] = {}
    for line in EQUIVALENTS.read_text().splitlines():
        match = re.match(r"- `([^`]+__mutmut_\d+)`:?\s*(.*)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def report(names: list[str]) -> bool:
    statuses = _results()
    known = equivalents()
    ok = True
    header = ("module", "mutants", "caught", "timeout", "alive", "equiv", "raw", "score")
    print("\n" + "".join(f"{h:<14}" if i == 0 else f"{h:>9}" for i, h in enumerate(header)))
    survivors: list[str] = []
    for name in names:
        mine = {
            key: status
            for key, status in statuses.items()
            if any(fnmatch.fnmatchcase(key, glob) for glob in _patterns(name))
        }
        killed = sum(status in CAUGHT for status in mine.values())
        timeouts = sum(status == "timeout" for status in mine.values())
        living = {key for key, status in mine.items() if status not in CAUGHT}
        equivalent = living & set(known)
        alive = sorted(living - equivalent)
        total = len(mine)
        raw = 100.0 * killed / total if total else 0.0
        counted = total - len(equivalent)
        score = 100.0 * killed / counted if counted else 100.0
        ok = ok and score >= MIN_SCORE and total > 0
        print(
            f"{name:<14}{total:>9}{killed:>9}{timeouts:>9}{len(living):>9}{len(equivalent):>9}"
            f"{raw:>8.1f}%{score:>8.1f}%"
        )
        survivors += [f"  {key} ({mine[key]})" for key in alive]
        if not total:
            survivors.append(
                f"  {name}: no mutants ran (has its row's source or a function moved?)"
            )
    if survivors:
        print("\nnot caught, and not listed in tests/mutation-equivalents.md (mutmut show NAME):")
        print("\n".join(survivors))
    print(f"\nscore = caught / (mutants - equivalents); each module needs {MIN_SCORE:.0f} %")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"some of: {' '.join(TARGETS)}")
    parser.add_argument("--report", action="store_true", help="report the last run only")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    names = list(args.targets) or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {' '.join(TARGETS)}")
    if not args.report:
        started = time.monotonic()
        _prepare(names)
        code = _run(names, args.children)
        print(f"\nmutation run: {time.monotonic() - started:.0f} s")
        if code != 0:
            # e.g. the tests fail without any mutant: there is no score to give.
            print(f"mutmut failed (exit {code}); see its output above", file=sys.stderr)
            return code
    return 0 if report(names) else 1


if __name__ == "__main__":
    sys.exit(main())
