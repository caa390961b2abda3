"""Without numba the library still works: every Symm loss falls back to its torch path.

Reference: the same losses with the compiled loops switched off in this process
(SYMM_COMPILED_KERNELS=0), whose values the torch path must reproduce in a process where
``import numba`` fails.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from symm.losses import create_loss

REPO = Path(__file__).resolve().parents[1]
CASES = [("npair", "official"), ("npair", "point4"), ("angular", "official"), ("triplet", "point4"),
         ("contrastive", "pair16"), ("lifted", "point4")]
SCRIPT = """
import json, torch
from symm.losses import create_loss, kernels
assert not kernels.compiled_kernels_enabled()
emb = torch.randn(16, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
labels = torch.arange(8).repeat_interleave(2)
out = {}
for name, mode in %r:
    loss = create_loss(name, negatives="symm", symm_mode=mode)
    x = emb.clone().requires_grad_()
    value = loss(x, labels)
    value.backward()
    out[name + " " + mode] = [value.item(), x.grad.abs().sum().item(), loss.last_stats["synthetic_share"]]
print(json.dumps(out))
"""


def test_symm_losses_run_on_the_torch_path_when_numba_cannot_be_imported(tmp_path, monkeypatch):
    (tmp_path / "numba.py").write_text("raise ImportError('numba blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", SCRIPT % (CASES,)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    without_numba = json.loads(done.stdout.strip().splitlines()[-1])
    monkeypatch.setenv("SYMM_COMPILED_KERNELS", "0")
    emb = torch.randn(16, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.arange(8).repeat_interleave(2)
    for name, mode in CASES:
        loss = create_loss(name, negatives="symm", symm_mode=mode)
        x = emb.clone().requires_grad_()
        value = loss(x, labels)
        value.backward()
        expected = [value.item(), x.grad.abs().sum().item(), loss.last_stats["synthetic_share"]]
        assert without_numba[f"{name} {mode}"] == pytest.approx(expected, rel=1e-9)
