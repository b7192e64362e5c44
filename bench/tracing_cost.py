"""What the Powertools Tracer (and the X-Ray SDK under it) adds to the token function's cold start.

    python -m bench.tracing_cost [--repeats 7] [--markdown FILE] [--json FILE]

Run it with an interpreter that has pip (it builds its own packages): docs/observability.md.

Builds two Lambda-like package directories with ``pip install --target`` from
src/requirements.txt plus ``aws-xray-sdk``: one with bytecode (what a build that runs
``compileall`` ships) and one without (what ``sam build``'s pip builder ships, compiled at every
cold start since /var/task is read-only). The function's own package is copied into each.

Then, in fresh interpreters (``-S``: the package directory and the standard library only, as in
Lambda), each variant ``--repeats`` times after one unrecorded round, interleaved:

- ``none``: ``import token_vendor.functions.api``, what the function does at init today;
- ``tracer``: the same, then ``Tracer(service=...)``: Powertools' default, which loads the
  X-Ray SDK and patches every library it supports;
- ``tracer-botocore``: the same with ``patch_modules=("botocore",)``, the cheapest useful Tracer.

Each interpreter times the handler's import and, separately, the Tracer's import and
construction after it: the Tracer's cost is measured inside the same process, not as the
difference of two noisy imports. ``LAMBDA_TASK_ROOT`` is set so that the Tracer believes it runs
in Lambda (elsewhere it disables itself and never loads the SDK). The figures are medians of CPU
time (user + system): on a shared machine the wall clock mostly measures the neighbours, and an
init is CPU-bound work. Wall-clock medians are reported too, and the modules loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The version moto already pulls into the dev lock, so both venvs agree.
XRAY_SDK = "aws-xray-sdk==2.15.0"
SERVICE = "igni-token-vendor"

VARIANTS: Mapping[str, str] = {
    "none": "",
    "tracer": f"from aws_lambda_powertools import Tracer\nTracer(service={SERVICE!r})\n",
    "tracer-botocore": (
        "from aws_lambda_powertools import Tracer\n"
        f"Tracer(service={SERVICE!r}, patch_modules=('botocore',))\n"
    ),
}

CODE = (
    "import json, sys, time\n"
    "def clocks():\n"
    "    return time.process_time() * 1000.0, time.perf_counter() * 1000.0\n"
    "cpu0, wall0 = clocks()\n"
    "import token_vendor.functions.api\n"
    "cpu1, wall1 = clocks()\n"
    "modules = len(sys.modules)\n"
    "{extra}"
    "cpu2, wall2 = clocks()\n"
    "print(json.dumps({{\n"
    "    'handler_cpu': cpu1 - cpu0, 'handler_wall': wall1 - wall0,\n"
    "    'tracer_cpu': cpu2 - cpu1, 'tracer_wall': wall2 - wall1,\n"
    "    'tracer_modules': len(sys.modules) - modules,\n"
    "    'xray': 'aws_xray_sdk' in sys.modules,\n"
    "}}))\n"
)
FIGURES = ("handler_cpu", "handler_wall", "tracer_cpu", "tracer_wall", "tracer_modules")


def build_package(target: Path, *, bytecode: bool) -> None:
    """A Lambda-like package: the pinned dependencies, the X-Ray SDK and token_vendor."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(target),
        "-r",
        str(ROOT / "src" / "requirements.txt"),
        XRAY_SDK,
    ]
    if not bytecode:
        command.append("--no-compile")
    subprocess.run(command, check=True, timeout=600)
    shutil.copytree(
        ROOT / "src" / "token_vendor",
        target / "token_vendor",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    if bytecode:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(target / "token_vendor")],
            check=True,
            timeout=120,
        )
    elif any(target.rglob("*.pyc")):
        raise RuntimeError(f"{target} should hold no bytecode")


def run_once(package: Path, variant: str) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(package),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LAMBDA_TASK_ROOT": str(package),
        "AWS_LAMBDA_FUNCTION_NAME": "bench-tracing",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": SERVICE,
    }
    done = subprocess.run(
        [sys.executable, "-S", "-c", CODE.format(extra=VARIANTS[variant])],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if answer["xray"] != (variant != "none"):
        raise RuntimeError(f"{variant}: the X-Ray SDK was {'' if answer['xray'] else 'not '}loaded")
    return answer


def measure(package: Path, repeats: int) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    # One unrecorded round (page cache), then interleaved so a busy moment hits all alike.
    for index in range(repeats + 1):
        for variant in VARIANTS:
            answer = run_once(package, variant)
            if index:
                samples[variant].append(answer)
    return {
        variant: {
            **{
                figure: round(statistics.median(float(s[figure]) for s in rows), 1)
                for figure in FIGURES
            },
            "tracer_cpu_samples": [round(float(s["tracer_cpu"]), 1) for s in rows],
        }
        for variant, rows in samples.items()
    }


def render(results: Mapping[str, Mapping[str, Mapping[str, Any]]], repeats: int) -> str:
    lines = [
        f"Medians of {repeats} fresh interpreters (Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores), ms: CPU time (wall clock in brackets).",
        "",
        "| dependencies | variant | import token_vendor.functions.api | then Tracer() "
        "| modules the Tracer adds |",
        "|---|---|---:|---:|---:|",
    ]
    for mode, rows in results.items():
        for variant, row in rows.items():
            tracer = "-" if variant == "none" else f"+{row['tracer_cpu']} (+{row['tracer_wall']})"
            lines.append(
                f"| {mode} | {variant} | {row['handler_cpu']} ({row['handler_wall']}) "
                f"| {tracer} | {int(row['tracer_modules'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="igni-bench-tracing-") as tmp:
        for mode, bytecode in (("with bytecode", True), ("from source", False)):
            package = Path(tmp) / ("bytecode" if bytecode else "source")
            print(f"building the package {mode} in {package}", file=sys.stderr)
            build_package(package, bytecode=bytecode)
            print(f"measuring {mode}: {args.repeats} rounds", file=sys.stderr)
            results[mode] = measure(package, args.repeats)
    markdown = render(results, args.repeats)
    print(markdown)
    if args.markdown:
        args.markdown.write_text(markdown, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
