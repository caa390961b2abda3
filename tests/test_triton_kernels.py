"""The Triton Symm logit node (symm.losses.triton_kernels, the CUDA path) against the compiled CPU node.

Reference: ``symm.losses.kernels.plan_logits`` (numba; itself checked against the torch node
``symm.losses.fused.SymmNPairLogits``, numpy re-derivations of the release and brute-force loops
in test_kernels.py / test_npair.py / test_angular_fused.py) and, for whole losses, the torch
node (``SYMM_COMPILED_KERNELS=0``): the same logits, chosen set pairs, synthetic share and
gradients, for every selection and reflection form the losses use.

Without a GPU the kernels run in Triton's CPU interpreter, which must be switched on before
triton is imported: ``test_in_the_interpreter`` runs this file again in a fresh process with
``TRITON_INTERPRET=1``. With CUDA (``scripts/device_check.sh`` on a lent GPU machine) the tests
run here on the device, compiled.
"""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from symm.losses import create_loss, kernels, triton_kernels

INTERPRETING = triton_kernels.interpreting()
ON_DEVICE = triton_kernels.load() and (INTERPRETING or torch.cuda.is_available())
DEVICE = "cpu" if INTERPRETING or not torch.cuda.is_available() else "cuda"
needs_device = pytest.mark.skipif(not ON_DEVICE, reason="no CUDA device and not in Triton's interpreter "
                                                       "(test_in_the_interpreter runs these)")
needs_numba = pytest.mark.skipif(not kernels.compiled_kernels_enabled(), reason="the reference (numba) is not importable")

# (loss, options): every selection, the diagonal modes, both reflection forms off the plain mirror
CONFIGS = [
    ("npair", dict(symm_mode="official")),
    ("npair", dict(symm_mode="official", keep_positive=True)),
    ("npair", dict(symm_mode="point4")),
    ("npair", dict(symm_mode="pair16")),
    ("npair", dict(symm_mode="point4", alpha=1.5, beta=0.5, form="official")),
    ("npair", dict(symm_mode="official", alpha=2.5, beta=1.5, form="paper")),
    ("angular", dict(symm_mode="official")),
    ("angular", dict(symm_mode="official", keep_positive=True)),
    ("angular", dict(symm_mode="point4")),
    ("angular", dict(symm_mode="official", alpha=1.5, beta=0.5, form="official")),
]
CONFIG_IDS = [f"{name} " + ",".join(f"{k}={v}" for k, v in options.items()) for name, options in CONFIGS]


def _plan(name: str, options: dict) -> tuple:
    return create_loss(name, negatives="symm", **options)._compiled_plan


def _points(seed: int, n: int, dim: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(2 * n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _run(node, points: torch.Tensor, layout: str, plan: tuple, weights: torch.Tensor):
    x = points.clone().requires_grad_(True)
    values, outputs = node(x, layout, plan)
    ((values * weights).sum() + 0.3 * outputs.squares).backward()  # the node's second output (the L2 term's) too
    return (values.detach().cpu(), torch.as_tensor(outputs.which).cpu(), float(outputs.share), x.grad.cpu(),
            outputs.squares.detach().cpu())


def _compare(points: torch.Tensor, layout: str, plan: tuple, seed: int, atol: float = 1e-10) -> None:
    n = points.shape[0] // 2
    weights = torch.randn(n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=points.dtype)
    expected = _run(kernels.plan_logits, points, layout, plan, weights)
    got = _run(triton_kernels.plan_logits, points.to(DEVICE), layout, plan, weights.to(DEVICE))
    torch.testing.assert_close(got[0], expected[0], atol=atol, rtol=atol)
    off = ~torch.eye(n, dtype=torch.bool)
    # off the diagonal the choice is the same; on it, N-pair official has exact mathematical ties
    # (a·S1 = a·p: a reflection about a keeps the product with a), broken by rounding either way
    assert torch.equal(got[1][off], expected[1][off])
    assert got[2] == pytest.approx(expected[2], abs=1e-12)
    torch.testing.assert_close(got[3], expected[3], atol=atol, rtol=atol)
    torch.testing.assert_close(got[4], expected[4], atol=atol, rtol=atol)
    torch.testing.assert_close(expected[4], points.pow(2).sum(), atol=atol, rtol=atol)  # Σ ||x||², by torch


@needs_device
@needs_numba
@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
@pytest.mark.parametrize("name, options", CONFIGS, ids=CONFIG_IDS)
def test_node_equals_the_compiled_cpu_node(name, options, layout):
    plan = _plan(name, options)
    for seed, (n, dim) in enumerate([(7, 5), (9, 24), (2, 3)]):  # d < N, d > 2N, the smallest batch
        _compare(_points(seed, n, dim), layout, plan, seed)


@needs_device
@needs_numba
@pytest.mark.parametrize("name, options", CONFIGS[:4] + CONFIGS[6:9], ids=CONFIG_IDS[:4] + CONFIG_IDS[6:9])
def test_rows_longer_than_one_block(name, options, monkeypatch):
    """A grid row spread over several programs' blocks (a batch of more than 256 classes on a GPU)."""
    monkeypatch.setattr(triton_kernels, "_MAX_BLOCK", 4)
    _compare(_points(3, 11, 6), "interleaved", _plan(name, options), 3)


@needs_device
@needs_numba
@pytest.mark.parametrize("name, options", [CONFIGS[0], CONFIGS[2], CONFIGS[6]], ids=[CONFIG_IDS[0], CONFIG_IDS[2], CONFIG_IDS[6]])
def test_zero_norm_and_duplicate_points(name, options):
    """A zero embedding (the eps guard) and a positive equal to its anchor (exact ties): same as the reference."""
    points = _points(5, 6, 8)
    points[2] = 0.0  # anchor of class 1 (interleaved)
    points[5] = points[4]  # class 2: p = a
    _compare(points, "interleaved", _plan(name, options), 5)


@needs_device
@needs_numba
def test_float32_close_to_the_reference():
    points = _points(7, 16, 32, dtype=torch.float32)
    _compare(points, "interleaved", _plan("npair", dict(symm_mode="official")), 7, atol=1e-4)


@needs_device
@pytest.mark.parametrize("name, options", CONFIGS, ids=CONFIG_IDS)
def test_whole_loss_equals_the_torch_node(name, options, monkeypatch):
    """The loss as training calls it (the Triton node) against the same loss on the torch node."""
    embeddings = _points(11, 10, 12).to(DEVICE)
    labels = torch.arange(10, device=DEVICE).repeat_interleave(2)
    loss = create_loss(name, negatives="symm", **options)
    assert triton_kernels.usable(embeddings, loss.hardness_rank)
    x = embeddings.clone().requires_grad_(True)
    value = loss(x, labels)
    value.backward()
    share = loss.last_stats["synthetic_share"]
    monkeypatch.setenv("SYMM_COMPILED_KERNELS", "0")
    y = embeddings.clone().requires_grad_(True)
    reference = loss(y, labels)
    reference.backward()
    torch.testing.assert_close(value.detach(), reference.detach())
    torch.testing.assert_close(x.grad, y.grad)
    assert share == pytest.approx(loss.last_stats["synthetic_share"], rel=1e-6)


@needs_device
def test_a_failing_kernel_falls_back_to_the_torch_node(monkeypatch):
    """A compile or launch error (an older Triton on some GPU machine): one warning, then the torch node."""
    monkeypatch.setattr(triton_kernels, "_failed", [])

    def broken(*args):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(triton_kernels, "plan_logits", broken)
    embeddings = _points(13, 6, 4).to(DEVICE)
    labels = torch.arange(6, device=DEVICE).repeat_interleave(2)
    loss = create_loss("npair", negatives="symm", symm_mode="official")
    with pytest.warns(RuntimeWarning, match="no kernel for this GPU"):
        value = loss(embeddings, labels)
    assert not triton_kernels.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        again = loss(embeddings, labels)
    monkeypatch.setenv("SYMM_COMPILED_KERNELS", "0")
    torch.testing.assert_close(value, loss(embeddings, labels))
    torch.testing.assert_close(again, value)


@needs_device
def test_a_failing_backward_kernel_is_caught_before_training_needs_it(monkeypatch):
    """The first call runs the node's backward once on a copy: a backward kernel that cannot compile
    falls back at the forward (one warning), instead of failing inside the step's loss.backward()."""
    monkeypatch.setattr(triton_kernels, "_failed", [])
    monkeypatch.setattr(triton_kernels, "_checked", {})

    def broken(ctx, *grads):
        raise RuntimeError("backward kernel does not compile here")

    monkeypatch.setattr(triton_kernels.TritonSymmNPairLogits, "backward", staticmethod(broken))
    embeddings = _points(17, 6, 4).to(DEVICE).requires_grad_(True)
    labels = torch.arange(6, device=DEVICE).repeat_interleave(2)
    loss = create_loss("npair", negatives="symm", symm_mode="point4")
    with pytest.warns(RuntimeWarning, match="backward kernel does not compile here"):
        value = loss(embeddings, labels)
    value.backward()  # the torch node's backward: the step goes on
    assert torch.isfinite(embeddings.grad).all() and not triton_kernels.available()


@needs_device
def test_the_first_call_check_runs_once_per_shape(monkeypatch):
    monkeypatch.setattr(triton_kernels, "_checked", {})
    calls = []
    original = triton_kernels.plan_logits
    monkeypatch.setattr(triton_kernels, "plan_logits", lambda *args: calls.append(args[0].shape) or original(*args))
    loss = create_loss("npair", negatives="symm", symm_mode="official")
    for n in (5, 5, 7):
        embeddings = _points(n, n, 3).to(DEVICE).requires_grad_(True)
        loss(embeddings, torch.arange(n, device=DEVICE).repeat_interleave(2)).backward()
    assert [tuple(shape) for shape in calls] == [(10, 3), (10, 3), (10, 3), (14, 3), (14, 3)]


@pytest.mark.skipif(not triton_kernels.load(), reason="triton not importable")
def test_cpu_tensors_are_refused_outside_the_interpreter():
    if INTERPRETING:
        pytest.skip("the interpreter takes CPU tensors")
    plan = _plan("npair", dict(symm_mode="official"))
    with pytest.raises(ValueError, match="CUDA tensors"):
        triton_kernels.plan_logits(_points(0, 3, 2), "interleaved", plan)
    assert not triton_kernels.usable(_points(0, 3, 2), 1)


@needs_device
def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout must be"):
        triton_kernels.plan_logits(_points(0, 3, 2).to(DEVICE), "shuffled", _plan("npair", dict(symm_mode="point4")))


@pytest.mark.skipif(ON_DEVICE or not triton_kernels.load(), reason="the tests above run in this process")
def test_in_the_interpreter():
    """This file again, in Triton's CPU interpreter (it is read when triton is imported: a fresh process)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                            cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def _compile_cases() -> list[tuple[str, str, dict]]:
    cases = [("fp32", "coefficients", dict(BLOCK_J=64, BLOCK_D=64)), ("fp64", "coefficients", dict(BLOCK_J=64, BLOCK_D=64))]
    for dtype in ("fp32", "fp64"):
        for diag_mode in (0, 1, 2):
            for kr in (1, 2):
                cases.append((dtype, "forward", dict(KR=kr, DIAG_MODE=diag_mode, BLOCK_J=64)))
                cases.append((dtype, "finish", dict(KR=kr, DIAG_MODE=diag_mode, BLOCK_J=64)))
            for kr, row_sum in ((1, False), (1, True), (2, False)):
                cases.append((dtype, "backward", dict(KR=kr, ROW_SUM=row_sum, DIAG_MODE=diag_mode, BLOCK_J=256)))
    return cases


# pointer arguments of each kernel that are not the points' precision (the rest: the points' dtype; scalars: int32)
_POINTER_TYPES = {"pair_rows_ptr": "*i32", "pair_cols_ptr": "*i32", "diag_rows_ptr": "*i32", "diag_cols_ptr": "*i32",
                  "synthetic_ptr": "*i32", "count_ptr": "*i32", "which_ptr": "*i8"}
_KERNEL_INDEX = {"coefficients": 0, "forward": 1, "backward": 2, "finish": 3}


@pytest.mark.skipif(not triton_kernels.load() or INTERPRETING, reason="needs triton's compiler (not the interpreter)")
@pytest.mark.parametrize("dtype, kernel, constexprs", _compile_cases(),
                         ids=[f"{d}-{k}-" + "-".join(f"{a}{b}" for a, b in c.items()) for d, k, c in _compile_cases()])
def test_kernels_compile_for_a_hopper_gpu(dtype, kernel, constexprs):
    """Every kernel variant through Triton's whole compiler (to PTX and a cubin for sm_90, the H200
    class), which needs no GPU: what the interpreter cannot check (types, loop-carried values)."""
    compiler = pytest.importorskip("triton.compiler")
    backend = pytest.importorskip("triton.backends.compiler")
    fn = triton_kernels._kernels()[_KERNEL_INDEX[kernel]]
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = _POINTER_TYPES.get(name, f"*{dtype}")
        else:
            signature[name] = "i32"
    source = compiler.ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    compiled = triton_kernels.triton.compile(source, target=backend.GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"] and ".entry" in compiled.asm["ptx"]


@pytest.mark.skipif(not INTERPRETING, reason="bench.gpu_launches counts in Triton's interpreter")
def test_launch_count_bench_sees_both_gpu_paths():
    """bench/gpu_launches.py: the Triton path launches its 4 kernels and far fewer aten kernels than the torch node."""
    from bench.gpu_launches import count
    aten, launched, names = count("npair", "official", "Triton node", 8, 16)
    torch_aten, torch_launched, _ = count("npair", "official", "torch node", 8, 16)
    base_aten, base_launched, base_names = count("npair", None, "base", 8, 16)
    assert (launched, torch_launched, base_launched) == (4, 0, 0)
    assert aten + launched < torch_aten / 2
    assert sum(base_names[m] for m in ("aten::mm", "aten::addmm", "aten::matmul")) == 3  # A·Pᵀ and its two gradients
    assert os.environ.get("SYMM_COMPILED_KERNELS") is None  # restored
