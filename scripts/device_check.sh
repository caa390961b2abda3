#!/usr/bin/env bash
# The GPU checks in one command, for a lent GPU machine (no network there; its own torch):
# tests/test_cuda.py (every loss on CUDA equals the CPU, one trial on the GPU),
# tests/test_triton_kernels.py (the Triton node compiled on the device against the CPU loops) and
# the loss-overhead bench on the GPU. Logs go to $OUT (the device tool brings them back).
#
#   here, where pip works:     scripts/device_check.sh fetch   # the missing wheels into .whl/ (git-ignored locally)
#   on the GPU machine:        scripts/device_check.sh run     # with .whl carried along
#
# The GPU image has torch, numpy, numba, scipy, scikit-learn, PyYAML and tqdm; it lacks
# pytorch-metric-learning (the bench's reference rows), faiss-cpu (evaluation) and pydantic
# (symm.config, with pydantic-core, annotated-types, typing-inspection, typing-extensions): the
# versions pinned in requirements.txt and, for pydantic's own needs, those of this .venv.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-run}" in
  fetch)
    set -e
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    [ -x .venv/bin/python ] || { echo "run scripts/bootstrap.sh first (the versions come from .venv)" >&2; exit 1; }
    wanted="$(grep -oE '^(pytorch-metric-learning|faiss-cpu|pydantic)==[0-9.]+' requirements.txt)
$(.venv/bin/python -m pip freeze 2>/dev/null | grep -iE '^(pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions)==')"
    rm -rf .whl
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl $wanted
    ls -l .whl
    ;;
  run)
    out="${OUT:-/tmp/device_check}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
      python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
    } | tee "$out/gpu.txt"
    status=0
    python3 -m pytest -q -rs tests/test_cuda.py tests/test_triton_kernels.py 2>&1 | tee "$out/test_cuda.log" || status=1
    python3 -m bench.loss_overhead --device cuda --repeats 50 2>&1 | tee "$out/loss_overhead_cuda.md" || status=1
    exit "$status"
    ;;
  *)
    echo "usage: scripts/device_check.sh fetch|run" >&2
    exit 2
    ;;
esac
