#!/usr/bin/env bash
# README command two: set up the environment and run the test suite. CI (.ci/run) calls this.
# Extra arguments go to pytest (e.g. -k npair, or -m "not e2e").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/bootstrap.sh
python -m pytest tests -q "$@"
