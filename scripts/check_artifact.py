"""Check the `sam build` artifacts: CPython 3.13 bytecode for every module, usable read-only.

Usage: python3.13 scripts/check_artifact.py [BUILD_DIR]   (default .aws-sam/build)

For each function of BUILD_DIR/template.yaml (what sam build wrote):

- every ``.py`` in its artifact has ``__pycache__/<name>.cpython-313.pyc`` beside it, of this
  interpreter's magic number and hash-based without source check (PEP 552 flags ``0b01``,
  ``--invalidation-mode unchecked-hash``), so that zipping, which changes modification times,
  cannot make it stale;
- its handler module imports from a read-only copy in a fresh interpreter with bytecode writes
  off (``-I -S -B``), every module of the artifact loaded from its bytecode (``-v`` says which
  file each code object came from), and nothing is written into the copy;
- the services its botocore keeps (scripts/prune_botocore.py) resolve the same endpoints in
  several partitions as the whole botocore of the interpreter running this check.

Exit status 1 with one line per problem; run with Python 3.13, the runtime's.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import botocore  # noqa: E402 - after the path is set
import botocore.session  # noqa: E402

from local.cfn_template import load_template  # noqa: E402

RUNTIME = (3, 13)
# Regions of several partitions, where a pruned endpoints.json would show first.
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1")
ENDPOINTS_MARK = "ENDPOINTS "
ENDPOINTS_CODE = """
if sys.argv[1]:
    import json, botocore, botocore.session
    session = botocore.session.get_session()
    found = {}
    for service in sys.argv[1].split(","):
        for region in sys.argv[2].split(","):
            meta = session.create_client(service, region_name=region).meta
            found[service + " " + region] = [meta.endpoint_url, meta.partition]
    print("ENDPOINTS " + json.dumps({"version": botocore.__version__, "endpoints": found}))
"""
TAG = "cpython-313"
UNCHECKED_HASH = 0b01
# `python -v` names the file each module's code object came from.
CODE_FROM = re.compile(r"^# code object from '?([^']+?)'?$", re.MULTILINE)


def functions(build_dir: Path) -> dict[str, str]:
    """Each built function's logical id and handler module, from the built template."""
    template = load_template(build_dir / "template.yaml")
    found: dict[str, str] = {}
    for name, res in (template.get("Resources") or {}).items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        handler = str((res.get("Properties") or {}).get("Handler", ""))
        found[name] = handler.rpartition(".")[0]
    return found


def bytecode_problems(artifact: Path) -> list[str]:
    """Every module without hash-based, unchecked 3.13 bytecode beside it."""
    problems: list[str] = []
    sources = sorted(artifact.rglob("*.py"))
    if not sources:
        return [f"{artifact}: no Python modules"]
    for source in sources:
        rel = source.relative_to(artifact)
        pyc = source.parent / "__pycache__" / f"{source.stem}.{TAG}.pyc"
        if not pyc.is_file():
            problems.append(f"{rel}: no __pycache__/{pyc.name}")
            continue
        header = pyc.read_bytes()[:16]
        if header[:4] != importlib.util.MAGIC_NUMBER:
            problems.append(f"{rel}: {pyc.name} is not this interpreter's bytecode")
            continue
        flags = int.from_bytes(header[4:8], "little")
        if flags != UNCHECKED_HASH:
            kind = {0: "timestamp-based", 0b11: "checked-hash"}.get(flags, f"flags {flags:#b}")
            problems.append(f"{rel}: {pyc.name} is {kind}, not unchecked-hash")
    return problems


def services(artifact: Path) -> list[str]:
    """The botocore services whose models the artifact keeps."""
    data = artifact / "botocore" / "data"
    return sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []


def endpoint_problems(stdout: str) -> list[str]:
    """The artifact's endpoints for its services, against this interpreter's whole botocore."""
    lines = [line for line in stdout.splitlines() if line.startswith(ENDPOINTS_MARK)]
    if not lines:
        return []
    seen = json.loads(lines[-1][len(ENDPOINTS_MARK) :])
    session = botocore.session.get_session()
    problems = []
    for name, url in seen["endpoints"].items():
        service, region = name.split(" ")
        meta = session.create_client(service, region_name=region).meta
        expected = [meta.endpoint_url, meta.partition]
        if url != expected:
            problems.append(
                f"{service} in {region}: {url} from the artifact's botocore "
                f"{seen['version']}, {expected} from botocore {botocore.__version__}"
            )
    return problems


def _listing(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def import_problems(artifact: Path, module: str) -> list[str]:
    """Import `module` as Lambda would: read-only, no bytecode written, all from bytecode."""
    with tempfile.TemporaryDirectory(prefix="igni-artifact-") as tmp:
        copy = Path(tmp) / artifact.name
        shutil.copytree(artifact, copy)
        for entry in [copy, *copy.rglob("*")]:
            entry.chmod(entry.stat().st_mode & ~0o222)
        before = _listing(copy)
        # -I ignores PYTHONPATH: put the copy first on sys.path as /var/task is on Lambda.
        done = subprocess.run(  # noqa: S603 - this interpreter, a fixed command
            [
                sys.executable,
                "-I",
                "-S",
                "-B",
                "-v",
                "-c",
                f"import sys; sys.path.insert(0, {str(copy)!r}); import {module}\n"
                + ENDPOINTS_CODE,
                ",".join(services(copy)),
                ",".join(REGIONS),
            ],
            cwd=tmp,
            env={"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            errors = [
                line
                for line in done.stderr.splitlines()
                if re.match(r"^\w+(Error|Exception)\b", line)
            ]
            return [f"import {module} failed: {(errors or ['see python -v'])[-1]}"]
        loaded = [Path(p) for p in CODE_FROM.findall(done.stderr)]
        mine = [p for p in loaded if p.is_relative_to(copy)]
        problems = [
            f"import {module}: {p.relative_to(copy)} was compiled from source"
            for p in mine
            if p.suffix == ".py"
        ]
        if not mine:
            problems.append(f"import {module}: nothing was loaded from the artifact")
        problems += endpoint_problems(done.stdout)
        written = sorted(_listing(copy) - before)
        problems += [f"import {module} wrote {w}" for w in written]
        return problems


def main(argv: list[str]) -> int:
    if sys.version_info[:2] != RUNTIME:
        print(f"run with Python {RUNTIME[0]}.{RUNTIME[1]}, the runtime's", file=sys.stderr)
        return 2
    build_dir = Path(argv[0]) if argv else ROOT / ".aws-sam" / "build"
    if not (build_dir / "template.yaml").is_file():
        print(f"{build_dir}: no built template; run make build", file=sys.stderr)
        return 2
    failed = False
    for name, module in functions(build_dir).items():
        artifact = build_dir / name
        problems = bytecode_problems(artifact) + import_problems(artifact, module)
        pyc = sum(1 for _ in artifact.rglob(f"*.{TAG}.pyc"))
        if problems:
            failed = True
            for problem in problems:
                print(f"{name}: {problem}", file=sys.stderr)
        else:
            print(f"{name}: {pyc} modules with unchecked-hash {TAG} bytecode; {module} imports")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
