#!/usr/bin/env bash
# Creates .venv from requirements.txt (the one place versions are pinned) when it is missing or
# the requirements changed. Sourced by run_pipeline.sh and run_tests.sh; safe to run alone.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_bin="${PYTHON:-python3}"
stamp="$repo/.venv/.requirements.sha256"
want="$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$repo/.venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$python_bin" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
  echo "bootstrap: installing pinned requirements into .venv (first time: a few minutes)..."
  start=$(date +%s)
  "$python_bin" -m venv "$repo/.venv"
  # pip's 'Location ... is ignored' lines are noise from this machine's extra index settings
  "$repo/.venv/bin/pip" install --disable-pip-version-check -q -r "$repo/requirements.txt" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  test "${PIPESTATUS[0]}" -eq 0
  echo "$want" > "$stamp"
  echo "bootstrap: done in $(( $(date +%s) - start )) s"
fi
export PATH="$repo/.venv/bin:$PATH"
export VIRTUAL_ENV="$repo/.venv"
export PYTHONDONTWRITEBYTECODE=1 DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0
