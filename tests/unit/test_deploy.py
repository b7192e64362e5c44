"""`make deploy`: it builds and checks before it deploys, needs no prompt but the changeset's,
and without AWS credentials stops at once with one line (issue 20)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from local.cfn_template import load_template

REPO_ROOT = Path(__file__).resolve().parents[2]


def _make(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _no_aws(tmp_path: Path) -> dict[str, str]:
    """A shell with no AWS credentials anywhere: no variables, no files, no instance role."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true")
    return env


def test_samconfig_makes_every_deploy_unguided() -> None:
    # Given the committed samconfig.toml
    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    deploy = config["default"]["deploy"]["parameters"]
    # Then it names the stack, the capability the named roles need, the changeset confirmation,
    # the managed bucket and the cached build
    assert config["default"]["global"]["parameters"]["stack_name"] == "igni-token-vendor"
    assert deploy["capabilities"] == "CAPABILITY_NAMED_IAM"
    assert deploy["confirm_changeset"] is True
    assert deploy["resolve_s3"] is True
    assert config["default"]["build"]["parameters"]["cached"] is True
    # And its parameters are template.yaml's, with values the template allows
    parameters = load_template()["Parameters"]
    for override in deploy["parameter_overrides"]:
        name, _, value = override.partition("=")
        assert name in parameters, name
        allowed = parameters[name].get("AllowedValues")
        assert allowed is None or value in [str(v) for v in allowed], override


def test_make_deploy_builds_and_checks_before_it_deploys(tmp_path: Path) -> None:
    # When make shows what make deploy would run (a dry run checks no credentials)
    shown = _make("-n", "deploy", env=_no_aws(tmp_path))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    # Then sam build and the artifact check come before sam deploy, which takes no --guided
    assert first("sam build") < first("scripts/check_artifact.py") < first("sam deploy")
    assert "--guided" not in lines[first("sam deploy")]


def test_make_deploy_without_credentials_is_one_line_before_anything_runs(
    tmp_path: Path,
) -> None:
    # When make deploy runs in a shell without AWS credentials
    answer = _make("deploy", env=_no_aws(tmp_path))
    # Then it fails with one line that says what to set, and nothing was built
    assert answer.returncode != 0
    assert answer.stdout == ""
    (line,) = answer.stderr.strip().splitlines()
    assert "no AWS credentials" in line
    assert "AWS_PROFILE" in line


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example"}, True),
        ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, False),
        ({}, False),
    ],
)
def test_the_credential_check_follows_botocores_chain(
    env: dict[str, str], expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location(
        "aws_credentials", REPO_ROOT / "scripts" / "aws_credentials.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert module.found(os.environ) is expected
