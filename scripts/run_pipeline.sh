#!/usr/bin/env bash
# README command one: set up the environment and run the whole pipeline (dvc repro).
# Extra arguments go to `dvc repro` (e.g. a stage name, or --force).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/bootstrap.sh
start=$(date +%s)
dvc repro "$@"
echo
echo "Pipeline finished in $(( $(date +%s) - start )) s."
echo "Report:    $repo/reports/results.md  (pictures: reports/comparison.png, reports/curves.png)"
uri="${MLFLOW_TRACKING_URI:-sqlite:///$repo/mlflow.db}"
echo "MLflow UI: $repo/.venv/bin/mlflow ui --backend-store-uri $uri --port 5000   then open http://127.0.0.1:5000"
