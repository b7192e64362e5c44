#!/usr/bin/env bash
# Security and template scans (make scan): cfn-lint, checkov, bandit, pip-audit.
#
# cfn-lint, bandit and pip-audit come from the dev venv ($VENV, default .venv: make venv).
# checkov lives in its own venv ($SCAN_VENV, default .venv-scan), created here on first use
# from requirements-scan.txt: its dependencies conflict with the project's pins.
#
# Every scan runs even if an earlier one fails; the exit status is non-zero if any failed.
# Skipped checkov checks are listed in template.yaml itself (Metadata: checkov: skip), each with
# its reason. checkov runs offline (--skip-download): it would otherwise try to fetch guideline
# links from its vendor's API.
#
# STRICT_AUDIT=1 also fails the run when a pinned package could not be audited (see
# scripts/audit_deps.py: on these machines PyPI's per-release API does not answer).
set -uo pipefail

cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
SCAN_VENV=${SCAN_VENV:-.venv-scan}
SCAN_REQUIREMENTS=requirements-scan.txt
DEV_LOCK=requirements-dev.lock
TEMPLATE=template.yaml

# The Lambda runtime's Python when there is one (as the Makefile picks it).
if [ -z "${PYTHON_BOOT:-}" ]; then
    if PYENV_VERSION=3.13.0 python3.13 -c '' >/dev/null 2>&1; then
        PYTHON_BOOT="env PYENV_VERSION=3.13.0 python3.13"
    elif python3.13 -c '' >/dev/null 2>&1; then
        PYTHON_BOOT=python3.13
    else
        PYTHON_BOOT=python3
    fi
fi

for tool in cfn-lint bandit pip-audit; do
    if [ ! -x "$VENV/bin/$tool" ]; then
        echo "scan: $VENV/bin/$tool is missing; run make venv first" >&2
        exit 2
    fi
done

# (Re)build the checkov venv when requirements-scan.txt changes.
stamp="$SCAN_VENV/.installed-$(sha256sum "$SCAN_REQUIREMENTS" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    if [ ! -x "$SCAN_VENV/bin/python" ]; then
        echo "scan: creating $SCAN_VENV with $PYTHON_BOOT"
        $PYTHON_BOOT -m venv "$SCAN_VENV" || exit 2
    fi
    echo "scan: installing $(grep -v '^#' "$SCAN_REQUIREMENTS" | xargs) into $SCAN_VENV"
    if ! "$SCAN_VENV/bin/python" -m pip install --quiet -r "$SCAN_REQUIREMENTS" \
        >"$SCAN_VENV/pip-install.log" 2>&1; then
        cat "$SCAN_VENV/pip-install.log" >&2
        exit 2
    fi
    rm -f "$SCAN_VENV"/.installed-*
    touch "$stamp"
fi

failed=()
run() {
    local name=$1
    shift
    echo "==> $name: $*"
    if "$@"; then
        echo "    $name: ok"
    else
        echo "    $name: FAILED" >&2
        failed+=("$name")
    fi
}

run cfn-lint "$VENV/bin/cfn-lint" "$TEMPLATE"
run checkov env BC_SKIP_MAPPING=TRUE "$SCAN_VENV/bin/checkov" \
    --file "$TEMPLATE" --framework cloudformation \
    --quiet --compact --skip-download
run bandit "$VENV/bin/bandit" -r src -q
audit_files=(src/requirements.txt)
[ -f "$DEV_LOCK" ] && audit_files+=("$DEV_LOCK")
audit_args=()
[ "${STRICT_AUDIT:-0}" = 1 ] && audit_args+=(--strict)
run pip-audit "$VENV/bin/python" scripts/audit_deps.py "${audit_args[@]}" "${audit_files[@]}"

if [ ${#failed[@]} -gt 0 ]; then
    echo "scan: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "scan: all clean"
