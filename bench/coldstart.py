"""Cold start as Lambda runs it: the `sam build` artifacts, read-only, no bytecode written.

Each sample is a fresh Python 3.13 interpreter (``-I -S -B``: no site-packages, no user
environment, no bytecode written) whose ``sys.path`` starts at a read-only copy of an artifact,
as ``/var/task`` is on Lambda. It times, from its first line:

- ``import token_vendor.functions.api``, with the artifact's bytecode and without it (without:
  what a pip-based ``sam build`` packaged, so every cold start compiled every module again);
- the cold start to the first token served from the DynamoDB tier: the import, building the
  clients, the secret read, the strongly consistent ``GetItem`` and the KMS ``Decrypt`` (a
  token is put in the table before the first recorded sample);
- the baseline side by side: a bare ``import boto3``, a DynamoDB client and one ``GetItem`` of
  the same item, with boto3 as a function that uses the runtime's SDK gets it (bytecode
  compiled, here the dev venv's site-packages).

Rounds are interleaved (one unrecorded round first, for the page cache and the table), each
line next to the one it is compared with, in alternating order, so that a busy moment of this
shared machine affects both alike; medians are reported, and CPU times (less distorted by
other load than wall time). We run as root, for whom mode bits do not stop a write, so the
copies are also checked to be unchanged.

``python -m bench.coldstart`` runs this section on its own (DynamoDB Local, moto server and Igni
stub included);
``make bench`` runs it inside the full benchmark. Both need ``make build`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from local.dynamodb_local import DynamoDBLocal
from local.events import load_event
from local.igni_stub import StubProcess
from local.moto_server import MotoServer
from local.stack import LocalStack, create_stack
from token_vendor.config import load_config
from token_vendor.models import cache_key

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / ".aws-sam" / "build"
API_FUNCTION = "TokenFunction"
GOAL = 1.3
MARK = "COLD-START-RESULT "
# What each fresh interpreter runs: argv = [kind, path, what, event or table, key].
CHILD = """
import json, os, sys, time
started, cpu = time.perf_counter(), time.process_time()
kind, path, what = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, path)
result = {}
if kind == "vendor":
    import token_vendor.functions.api as handler
    result["import_ms"] = (time.perf_counter() - started) * 1000.0
    result["import_cpu_ms"] = (time.process_time() - cpu) * 1000.0
    if what == "token":
        class Context:
            function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "cold-start")
            function_version = "$LATEST"
            memory_limit_in_mb = 512
            invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:cold-start"
            aws_request_id = "cold-start"
            log_group_name = log_stream_name = "cold-start"
            def get_remaining_time_in_millis(self):
                return 25000
        response = handler.lambda_handler(json.loads(sys.argv[4]), Context())
        result["total_ms"] = (time.perf_counter() - started) * 1000.0
        result["total_cpu_ms"] = (time.process_time() - cpu) * 1000.0
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        multi = {k.lower(): v for k, v in (response.get("multiValueHeaders") or {}).items()}
        result["status"] = response.get("statusCode")
        result["tier"] = headers.get("x-token-cache") or (multi.get("x-token-cache") or [None])[-1]
else:
    import boto3
    result["import_ms"] = (time.perf_counter() - started) * 1000.0
    result["import_cpu_ms"] = (time.process_time() - cpu) * 1000.0
    if what == "token":
        client = boto3.client("dynamodb")
        item = client.get_item(
            TableName=sys.argv[4], Key={"pk": {"S": sys.argv[5]}}, ConsistentRead=True
        )
        result["total_ms"] = (time.perf_counter() - started) * 1000.0
        result["total_cpu_ms"] = (time.process_time() - cpu) * 1000.0
        result["status"] = item["ResponseMetadata"]["HTTPStatusCode"]
        result["tier"] = "dynamodb" if "Item" in item else None
result["module_files"] = sorted(
    {os.path.relpath(m.__file__, path) for m in list(sys.modules.values())
     if getattr(m, "__file__", None) and m.__file__.startswith(path)}
) if os.environ.get("COLD_START_MODULES") else []
print("COLD-START-RESULT " + json.dumps(result), flush=True)
"""


def python313() -> str:
    """The runtime's interpreter: the artifacts hold cpython-313 bytecode only."""
    if sys.version_info[:2] == (3, 13):
        return sys.executable
    found = shutil.which("python3.13")
    if found is None:
        raise RuntimeError("the cold-start bench needs a Python 3.13 interpreter (python3.13)")
    return found


def artifact_dirs(build_dir: Path = BUILD_DIR) -> dict[str, Path]:
    """Each function's artifact (the directories holding a template's CodeUri)."""
    if not build_dir.is_dir():
        return {}
    return {p.name: p for p in sorted(build_dir.iterdir()) if (p / "token_vendor").is_dir()}


def _du_kib(path: Path) -> int:
    answer = subprocess.run(
        ["du", "-sk", str(path)], capture_output=True, text=True, check=True, timeout=60
    )
    return int(answer.stdout.split()[0])


def artifact_sizes(build_dir: Path = BUILD_DIR) -> dict[str, dict[str, Any]]:
    """Per function: du of the artifact, its zipped size (as sam package uploads it), files."""
    sizes: dict[str, dict[str, Any]] = {}
    for name, path in artifact_dirs(build_dir).items():
        files = [p for p in path.rglob("*") if p.is_file()]
        with tempfile.TemporaryDirectory(prefix="igni-bench-zip-") as tmp:
            archive = Path(tmp) / "artifact.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for file in files:
                    zf.write(file, file.relative_to(path))
            zipped = archive.stat().st_size
        sizes[name] = {
            "du_kib": _du_kib(path),
            "zip_kib": round(zipped / 1024),
            "files": len(files),
            "pyc_files": sum(1 for f in files if f.suffix == ".pyc"),
        }
    return sizes


def read_only_copy(source: Path, target: Path, *, bytecode: bool) -> Path:
    """A copy of `source` with every write bit removed (and without bytecode if asked)."""
    ignore = None if bytecode else shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(source, target, ignore=ignore)
    for folder, dirs, files in os.walk(target):
        for name in [*dirs, *files]:
            entry = Path(folder) / name
            entry.chmod(entry.stat().st_mode & ~0o222)
    target.chmod(target.stat().st_mode & ~0o222)
    return target


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _run(python: str, env: Mapping[str, str], args: Sequence[str], *, cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [python, "-I", "-S", "-B", "-c", CHILD, *args],
        cwd=cwd,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARK):
            answer: dict[str, Any] = json.loads(line[len(MARK) :])
            return answer
    raise RuntimeError(
        f"cold-start sample {args[:3]} failed ({done.returncode}): {done.stderr[-2000:]}"
    )


def _site_packages() -> str:
    """Where the baseline's boto3 lives: this venv's site-packages (bytecode compiled)."""
    return sysconfig.get_paths()["purelib"]


def measure(stack: LocalStack, *, repeats: int, build_dir: Path = BUILD_DIR) -> dict[str, Any]:
    """Medians of `repeats` fresh interpreters per line; see the module docstring."""
    artifacts = artifact_dirs(build_dir)
    if API_FUNCTION not in artifacts:
        return {"skipped": f"no {build_dir / API_FUNCTION}: run make build first"}
    python = python313()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PYTHON", "POWERTOOLS_", "IGNI_", "TOKEN_"))
    }
    env.update(stack.function_env())
    # Fake credentials for moto, never a developer's: no profile, no config file.
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    config = load_config(stack.function_env())
    key = cache_key(config.profiles["default"])
    event = json.dumps(load_event("get_token"))
    # Pairs run back to back, their order swapped every round, so that a busy moment of this
    # shared machine hits both lines of a pair alike.
    lines: dict[str, list[str]] = {
        "token_precompiled": ["vendor", "{compiled}", "token", event],
        "baseline": ["boto3", "{site}", "token", stack.table_name, key],
        "import_precompiled": ["vendor", "{compiled}", "import"],
        "import_boto3": ["boto3", "{site}", "import"],
        "import_as_built": ["vendor", "{plain}", "import"],
        "token_as_built": ["vendor", "{plain}", "token", event],
    }
    names = list(lines)
    pairs = [names[i : i + 2] for i in range(0, len(names), 2)]
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in lines}
    with tempfile.TemporaryDirectory(prefix="igni-bench-cold-") as tmp:
        source = artifacts[API_FUNCTION]
        paths = {
            "{compiled}": str(read_only_copy(source, Path(tmp) / "compiled", bytecode=True)),
            "{plain}": str(read_only_copy(source, Path(tmp) / "plain", bytecode=False)),
            "{site}": _site_packages(),
        }
        before = {p: _listing(Path(paths[p])) for p in ("{compiled}", "{plain}")}
        for round_index in range(repeats + 1):
            for pair in pairs:
                for name in pair if round_index % 2 else reversed(pair):
                    args = [paths.get(arg, arg) for arg in lines[name]]
                    answer = _run(python, env, args, cwd=Path(tmp))
                    if round_index:
                        samples[name].append(answer)
        written = {p: sorted(set(_listing(Path(paths[p]))) - set(before[p])) for p in before}
    result: dict[str, Any] = {"repeats": repeats, "goal": GOAL, "python": python}
    for name, answers in samples.items():
        field = "total_ms" if name.startswith(("token", "baseline")) else "import_ms"
        values = [float(a[field]) for a in answers]
        cpu = [float(a[field.replace("_ms", "_cpu_ms")]) for a in answers]
        result[name] = {
            "median_ms": round(statistics.median(values), 1),
            "samples_ms": [round(v, 1) for v in values],
            "median_cpu_ms": round(statistics.median(cpu), 1),
            "samples_cpu_ms": [round(v, 1) for v in cpu],
        }
        if field == "total_ms":
            result[name]["tiers"] = sorted({str(a.get("tier")) for a in answers})
            result[name]["statuses"] = sorted({int(a.get("status") or 0) for a in answers})
    base = result["baseline"]["median_ms"]
    result["ratio"] = round(result["token_precompiled"]["median_ms"] / base, 3)
    result["ratio_as_built"] = round(result["token_as_built"]["median_ms"] / base, 3)
    # Each round's own ratio: a busy moment of the machine slows both lines of its round.
    result["paired_ratio"] = round(
        statistics.median(
            a["total_ms"] / b["total_ms"]
            for a, b in zip(samples["token_precompiled"], samples["baseline"], strict=True)
        ),
        3,
    )
    # CPU time of the sample's process: what the machine's other load distorts least.
    result["cpu_ratio"] = round(
        result["token_precompiled"]["median_cpu_ms"] / result["baseline"]["median_cpu_ms"], 3
    )
    result["import_ratio"] = round(
        result["import_precompiled"]["median_ms"] / result["import_boto3"]["median_ms"], 3
    )
    result["written_to_artifact"] = sum(len(v) for v in written.values())
    result["sizes"] = artifact_sizes(build_dir)
    return result


def render_markdown(cold: Mapping[str, Any]) -> list[str]:
    """The report's cold-start section, as markdown lines."""
    if "skipped" in cold:
        return ["", f"Cold start: skipped ({cold['skipped']})."]
    rows = (
        ("import_as_built", "`import token_vendor.functions.api`, artifact without bytecode"),
        ("import_precompiled", "`import token_vendor.functions.api`, artifact as built (bytecode)"),
        ("import_boto3", "`import boto3` (bytecode compiled)"),
        ("token_as_built", "cold start to the first DynamoDB-tier token, without bytecode"),
        ("token_precompiled", "**cold start to the first DynamoDB-tier token, as built**"),
        ("baseline", "**bare `import boto3` + DynamoDB client + one `GetItem`**"),
    )
    verdict = "met" if cold["ratio"] <= cold["goal"] else "NOT met"
    lines = [
        "",
        f"Cold start on the `sam build` artifact of {API_FUNCTION} (fresh `python3.13 -I -S -B` "
        f"per sample, read-only copy, median of {cold['repeats']}, interleaved):",
        "",
        "| what | median (ms) | CPU median (ms) | samples (ms) | answered by |",
        "|---|---:|---:|---|---|",
    ]
    for name, label in rows:
        row = cold[name]
        tiers = ", ".join(row.get("tiers", [])) or "-"
        samples = ", ".join(f"{v:.0f}" for v in row["samples_ms"])
        lines.append(
            f"| {label} | {row['median_ms']:.0f} | {row['median_cpu_ms']:.0f} | {samples} "
            f"| {tiers} |"
        )
    lines += [
        "",
        f"first DynamoDB-tier token ÷ bare boto3 = **{cold['ratio']:.2f}** (goal ≤ "
        f"{cold['goal']}: {verdict}); median of the rounds' own ratios "
        f"{cold['paired_ratio']:.2f}; in CPU time {cold['cpu_ratio']:.2f}; without the "
        "artifact's bytecode "
        f"{cold['ratio_as_built']:.2f}. Import alone ÷ `import boto3` = "
        f"{cold['import_ratio']:.2f}. Files written into the artifact copies: "
        f"{cold['written_to_artifact']}.",
        "",
        "| artifact | du (KiB) | zipped (KiB) | files | .pyc |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, size in cold["sizes"].items():
        lines.append(
            f"| {name} | {size['du_kib']} | {size['zip_kib']} | {size['files']} "
            f"| {size['pyc_files']} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.coldstart",
        description="Cold start of the built artifact vs bare boto3 (needs make build).",
    )
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters per line")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats >= 1")
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    workdir = Path(tempfile.mkdtemp(prefix="igni-bench-cold-"))
    moto = MotoServer(log_path=workdir / "moto-server.log")
    dynamodb = DynamoDBLocal(log_path=workdir / "dynamodb-local.log")
    stub: StubProcess | None = None
    try:
        dynamodb.launch()
        endpoint = moto.start()
        stub = StubProcess({"bench-cold": "bench-cold-secret-0123456789"}, lifetime=3600)
        stack = create_stack(
            "bench-cold",
            endpoint_url=endpoint,
            dynamodb_endpoint_url=dynamodb.wait(),
            secret_value={"client_id": stub.client_id, "client_secret": stub.client_secret},
            igni_token_url=stub.token_url,
        )
        cold = measure(stack, repeats=args.repeats)
    finally:
        if stub is not None:
            stub.stop()
        moto.stop()
        dynamodb.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(render_markdown(cold)).lstrip("\n"))
    if args.json:
        args.json.write_text(json.dumps(cold, indent=2) + "\n", encoding="utf-8")
    return 0 if "skipped" not in cold else 1


if __name__ == "__main__":
    sys.exit(main())
