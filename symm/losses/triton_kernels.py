"""Triton kernels for the Symm+N-pair / Symm+angular logit node on CUDA.

Why: on a GPU at the paper's batch (N = 64 pairs) the torch node (``symm.losses.fused``) is ~100
small kernels forward and backward, each a launch of a few microseconds, against ~17 for plain
N-pair: the loss is bound by launches, not arithmetic. Here the grid work is four kernels —
coefficients, the choice (forward), the entries' gradient (backward) and the gradient through
the reflection coefficients — around the matmuls, which stay in torch (cuBLAS).

The same plan (``kernels.selection_plan``) and the same arithmetic as the compiled CPU loops in
``symm.losses.kernels``: the candidate X_s[i] · X_t[j] = Σ_kl C[s,k,i] K[k,l,i,j] C[t,l,j] from
the Gram rows K and the reflection coefficients C, the first of the largest wins (a NaN sticks),
the diagonal as the plan says. Unlike the CPU loops, the backward always ends in one product,
d(batch) = (M + Mᵀ) · batch with M (2N, 2N) (for rows A or a_i + p_i that is a quarter more
multiply-adds than the CPU's products: on a GPU at these sizes launches, not arithmetic, set the
time), and the sums over the grid that feed the coefficients' gradient are written per entry and
summed in a fixed order (deterministic; no atomics).

Used for CUDA float tensors with hardness rank 1 when Triton is importable
(``SYMM_COMPILED_KERNELS=0`` turns it off together with the CPU loops). On the CPU the kernels
run in Triton's interpreter (``TRITON_INTERPRET=1`` before triton is imported; NumPy underneath):
that is how the tests check them against the compiled CPU node on a machine without a GPU.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from symm.losses import kernels

# triton ships with torch's CUDA wheels; imported on first use (a CPU-only run never pays for it)
triton: Any = None
tl: Any = None
_import_tried = False
_MAX_BLOCK = 256  # lanes per program over a row's columns (a row of a larger grid is several blocks)
_failed: list[str] = []  # a compile / launch error on this machine: the torch node from then on


def load() -> bool:
    """Import triton (once); whether it is importable. Without it the torch node runs on the GPU."""
    global triton, tl, _import_tried
    if not _import_tried:
        _import_tried = True
        try:
            import triton as triton_module
            import triton.language as language
        except ImportError:  # pragma: no cover - a torch build without triton
            return False
        triton, tl = triton_module, language
    return triton is not None


def available() -> bool:
    """Whether the Triton kernels can run at all (not switched off, not failed here, importable)."""
    return os.environ.get("SYMM_COMPILED_KERNELS", "1") != "0" and not _failed and load()


def usable(tensor: torch.Tensor, rank: int) -> bool:
    """Whether the Triton node applies: CUDA (or, in Triton's interpreter, CPU) float32/float64, hardest candidate."""
    return (rank == 1 and (tensor.device.type == "cuda" or interpreting())
            and tensor.dtype in (torch.float32, torch.float64) and available())


# The kernels' sources: plain functions, compiled by ``_kernels`` (``tl`` is read then, not at import).

def _coefficients_kernel(points_ptr, consts_ptr, mix_ptr, diag_ptr, coef_ptr, n, dim, n_mix, step, half,
                         BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # pragma: no cover - on CUDA
    """diag = [||a_j||², a_j·p_j, ||p_j||²] and coef[s, k, j] of [A, P, S1, S2] and the summed sets.
    The batch in its pair layout: a_j is row j·step, p_j row j·step + half.

    The three row sums run the same reduction on the same kind of tiles, so equal points give
    bitwise equal values (exact ties stay exact)."""
    j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    valid = j < n
    alpha_beta = tl.load(consts_ptr)
    own = tl.load(consts_ptr + 1)
    eps = tl.load(consts_ptr + 2)
    sa = tl.zeros((BLOCK_J,), dtype=alpha_beta.dtype)
    ap = tl.zeros((BLOCK_J,), dtype=alpha_beta.dtype)
    sp = tl.zeros((BLOCK_J,), dtype=alpha_beta.dtype)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (d < dim)[None, :]
        a = tl.load(points_ptr + (j * step)[:, None] * dim + d[None, :], mask=mask, other=0.0)
        p = tl.load(points_ptr + (j * step + half)[:, None] * dim + d[None, :], mask=mask, other=0.0)
        sa += tl.sum(a * a, axis=1)
        ap += tl.sum(a * p, axis=1)
        sp += tl.sum(p * p, axis=1)
    tl.store(diag_ptr + j, sa, mask=valid)
    tl.store(diag_ptr + n + j, ap, mask=valid)
    tl.store(diag_ptr + 2 * n + j, sp, mask=valid)
    one = tl.full((BLOCK_J,), 1.0, dtype=sa.dtype)
    zero = tl.zeros((BLOCK_J,), dtype=sa.dtype)
    own_v = zero + own
    s1_along = alpha_beta * ap / tl.maximum(sa, eps)  # S1 = reflect(P, axis A): along A
    s2_along = alpha_beta * ap / tl.maximum(sp, eps)  # S2 = reflect(A, axis P): along P
    tl.store(coef_ptr + 0 * n + j, one, mask=valid)
    tl.store(coef_ptr + 1 * n + j, zero, mask=valid)
    tl.store(coef_ptr + 2 * n + j, zero, mask=valid)
    tl.store(coef_ptr + 3 * n + j, one, mask=valid)
    tl.store(coef_ptr + 4 * n + j, s1_along, mask=valid)
    tl.store(coef_ptr + 5 * n + j, own_v, mask=valid)
    tl.store(coef_ptr + 6 * n + j, own_v, mask=valid)
    tl.store(coef_ptr + 7 * n + j, s2_along, mask=valid)
    for r in range(n_mix):  # a summed row set: Σ_s mix[r, s] · coef[s]
        m0 = tl.load(mix_ptr + 4 * r)
        m1 = tl.load(mix_ptr + 4 * r + 1)
        m2 = tl.load(mix_ptr + 4 * r + 2)
        m3 = tl.load(mix_ptr + 4 * r + 3)
        tl.store(coef_ptr + (8 + 2 * r) * n + j, m0 + m2 * s1_along + m3 * own_v, mask=valid)
        tl.store(coef_ptr + (9 + 2 * r) * n + j, m1 + m2 * own_v + m3 * s2_along, mask=valid)

def _forward_kernel(gram_ptr, coef_ptr, diag_ptr, consts_ptr, pair_rows_ptr, pair_cols_ptr, diag_rows_ptr,
                    diag_cols_ptr, synthetic_ptr, values_ptr, which_ptr, count_ptr, n, n_pairs, n_diag, keep_pair, step,
                    half, KR: tl.constexpr, DIAG_MODE: tl.constexpr, BLOCK_J: tl.constexpr):  # pragma: no cover - on CUDA
    """Row i of the grid: values = off_scale · the largest candidate (first on ties; a NaN sticks),
    which = its pair; the diagonal × diag_scale: mode 0 the same choice, 1 a_i · p_i, 2 the
    largest X_s[i] · X_t[i] over the diagonal pairs. count[i]: off-diagonal synthetic choices.
    The Gram's columns (and its rows where KR = 2) in the batch's order: point (l, j) at j·step + l·half."""
    i = tl.program_id(0)
    width = 2 * n
    row_a = i * width if KR == 1 else (i * step) * width  # the Gram rows of a_i (or a_i + p_i) and p_i
    row_p = (i * step + half) * width
    off_scale = tl.load(consts_ptr + 3)
    diag_scale = tl.load(consts_ptr + 4)
    ap_i = tl.load(diag_ptr + n + i)
    diag_value = ap_i
    diag_pair = i * 0  # an int32 scalar (a loop-carried value keeps its type)
    if DIAG_MODE == 1:
        diag_pair = tl.maximum(diag_pair + keep_pair, 0)
    if DIAG_MODE == 2:  # Gram entries [[sa, ap], [ap, sp]] of the class's own points
        sa = tl.load(diag_ptr + i)
        sp = tl.load(diag_ptr + 2 * n + i)
        for q in range(n_diag):
            s = tl.load(diag_rows_ptr + q)
            t = tl.load(diag_cols_ptr + q)
            r0 = tl.load(coef_ptr + (2 * s) * n + i)
            r1 = tl.load(coef_ptr + (2 * s + 1) * n + i)
            value = (r0 * sa + r1 * ap_i) * tl.load(coef_ptr + (2 * t) * n + i) \
                + (r0 * ap_i + r1 * sp) * tl.load(coef_ptr + (2 * t + 1) * n + i)
            take = (q == 0) | (value > diag_value) | (value != value)
            diag_value = tl.where(take, value, diag_value)
            diag_pair = tl.where(take, q, diag_pair)
    count = tl.zeros((BLOCK_J,), dtype=tl.int32)
    for j0 in range(0, n, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        valid = j < n
        column_a = j * step
        column_p = column_a + half
        g00 = tl.load(gram_ptr + row_a + column_a, mask=valid, other=0.0)
        g01 = tl.load(gram_ptr + row_a + column_p, mask=valid, other=0.0)
        g10 = g00
        g11 = g01
        if KR == 2:
            g10 = tl.load(gram_ptr + row_p + column_a, mask=valid, other=0.0)
            g11 = tl.load(gram_ptr + row_p + column_p, mask=valid, other=0.0)
        best = tl.zeros_like(g00)
        chosen = tl.zeros((BLOCK_J,), dtype=tl.int32)
        for c in range(n_pairs):
            t = tl.load(pair_cols_ptr + c)
            c0 = tl.load(coef_ptr + (2 * t) * n + j, mask=valid, other=0.0)
            c1 = tl.load(coef_ptr + (2 * t + 1) * n + j, mask=valid, other=0.0)
            if KR == 1:  # the rows' own points (the anchors, or a_i + p_i): no coefficients
                value = g00 * c0 + g01 * c1
            else:
                s = tl.load(pair_rows_ptr + c)
                r0 = tl.load(coef_ptr + (2 * s) * n + i)
                r1 = tl.load(coef_ptr + (2 * s + 1) * n + i)
                value = (r0 * g00 + r1 * g10) * c0 + (r0 * g01 + r1 * g11) * c1
            take = (c == 0) | (value > best) | (value != value)
            best = tl.where(take, value, best)
            chosen = tl.where(take, c, chosen)
        on_diagonal = j == i
        off = valid & (j != i)
        count += tl.load(synthetic_ptr + chosen, mask=off, other=0).to(tl.int32)
        out = off_scale * best
        if DIAG_MODE == 0:
            out = tl.where(on_diagonal, diag_scale * best, out)
        else:
            out = tl.where(on_diagonal, diag_scale * diag_value, out)
            chosen = tl.where(on_diagonal, diag_pair, chosen)
        tl.store(values_ptr + i * n + j, out, mask=valid)
        tl.store(which_ptr + i * n + j, chosen.to(tl.int8), mask=valid)
    tl.store(count_ptr + i, tl.sum(count, axis=0))

def _backward_kernel(grad_ptr, gram_ptr, coef_ptr, consts_ptr, pair_rows_ptr, pair_cols_ptr, weights_ptr, which_ptr,
                     matrix_ptr, column_part_ptr, row_part_ptr, n, n_pairs, step, half,
                     KR: tl.constexpr, ROW_SUM: tl.constexpr, DIAG_MODE: tl.constexpr,
                     BLOCK_J: tl.constexpr):  # pragma: no cover - on CUDA
    """Row i: the logits' gradient as a (2N, 2N) matrix M in the batch's order, d(batch) = (M + Mᵀ) ·
    batch: rows a_i and p_i get the Gram rows' gradient (KR = 1: the anchors' rows in a_i's, zeros
    in p_i's, or the same in both where the rows are a_i + p_i, ROW_SUM), and each entry's share
    of the gradients of the two point-dependent coefficients (S1's along a, S2's along p):
    column_part[k, i, j] for the column's class j, row_part[k, i] summed for the row's class i.
    ``weights``: (4, P) the column set's and the row set's weight of each coefficient per pair."""
    i = tl.program_id(0)
    width = 2 * n
    out_a = (i * step) * width  # M's rows of a_i and p_i
    out_p = (i * step + half) * width
    row_a_gram = i * width if KR == 1 else out_a  # the Gram rows: (N, 2N) where KR = 1, else (2N, 2N) like M
    row_p_gram = out_p
    off_scale = tl.load(consts_ptr + 3)
    diag_scale = tl.load(consts_ptr + 4)
    row_a = tl.zeros((BLOCK_J,), dtype=off_scale.dtype)
    row_p = tl.zeros((BLOCK_J,), dtype=off_scale.dtype)
    for j0 in range(0, n, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        valid = j < n
        on_diagonal = j == i
        g = tl.load(grad_ptr + i * n + j, mask=valid, other=0.0)
        g = g * tl.where(on_diagonal, diag_scale, off_scale)
        c = tl.load(which_ptr + i * n + j, mask=valid, other=0).to(tl.int32)
        if DIAG_MODE != 0:  # the diagonal is not a choice of the grid: its gradient comes in the finish kernel
            g = tl.where(on_diagonal, g * 0.0, g)
            c = tl.where(on_diagonal, 0, c)
        t = tl.load(pair_cols_ptr + c, mask=valid, other=0)
        c0 = tl.load(coef_ptr + (2 * t) * n + j, mask=valid, other=0.0)
        c1 = tl.load(coef_ptr + (2 * t + 1) * n + j, mask=valid, other=0.0)
        column_a = tl.load(weights_ptr + c, mask=valid, other=0.0)
        column_p = tl.load(weights_ptr + n_pairs + c, mask=valid, other=0.0)
        col_a = j * step
        col_p = col_a + half
        k00 = tl.load(gram_ptr + row_a_gram + col_a, mask=valid, other=0.0)
        k01 = tl.load(gram_ptr + row_a_gram + col_p, mask=valid, other=0.0)
        if KR == 1:
            m0 = g * c0
            m1 = g * c1
            tl.store(matrix_ptr + out_a + col_a, m0, mask=valid)
            tl.store(matrix_ptr + out_a + col_p, m1, mask=valid)
            if ROW_SUM:  # the row a_i + p_i: p_i's row of M is a_i's
                tl.store(matrix_ptr + out_p + col_a, m0, mask=valid)
                tl.store(matrix_ptr + out_p + col_p, m1, mask=valid)
            else:
                tl.store(matrix_ptr + out_p + col_a, tl.zeros_like(m0), mask=valid)
                tl.store(matrix_ptr + out_p + col_p, tl.zeros_like(m1), mask=valid)
            tl.store(column_part_ptr + i * n + j, column_a * (g * k00), mask=valid)
            tl.store(column_part_ptr + n * n + i * n + j, column_p * (g * k01), mask=valid)
        else:
            s = tl.load(pair_rows_ptr + c, mask=valid, other=0)
            r0 = tl.load(coef_ptr + (2 * s) * n + i, mask=valid, other=0.0)
            r1 = tl.load(coef_ptr + (2 * s + 1) * n + i, mask=valid, other=0.0)
            row_weight_a = tl.load(weights_ptr + 2 * n_pairs + c, mask=valid, other=0.0)
            row_weight_p = tl.load(weights_ptr + 3 * n_pairs + c, mask=valid, other=0.0)
            k10 = tl.load(gram_ptr + row_p_gram + col_a, mask=valid, other=0.0)
            k11 = tl.load(gram_ptr + row_p_gram + col_p, mask=valid, other=0.0)
            g0 = g * r0
            g1 = g * r1
            tl.store(matrix_ptr + out_a + col_a, g0 * c0, mask=valid)
            tl.store(matrix_ptr + out_a + col_p, g0 * c1, mask=valid)
            tl.store(matrix_ptr + out_p + col_a, g1 * c0, mask=valid)
            tl.store(matrix_ptr + out_p + col_p, g1 * c1, mask=valid)
            row_a += tl.where(valid, row_weight_a * (g * (k00 * c0 + k01 * c1)), 0.0)
            row_p += tl.where(valid, row_weight_p * (g * (k10 * c0 + k11 * c1)), 0.0)
            tl.store(column_part_ptr + i * n + j, column_a * (g0 * k00 + g1 * k10), mask=valid)
            tl.store(column_part_ptr + n * n + i * n + j, column_p * (g0 * k01 + g1 * k11), mask=valid)
    if KR == 2:
        tl.store(row_part_ptr + i, tl.sum(row_a, axis=0))
        tl.store(row_part_ptr + n + i, tl.sum(row_p, axis=0))

def _finish_kernel(grad_ptr, coef_ptr, diag_ptr, consts_ptr, diag_rows_ptr, diag_cols_ptr, set_weights_ptr, which_ptr,
                   column_part_ptr, row_part_ptr, sq_grad_ptr, matrix_ptr, n, n_sets, step, half,
                   KR: tl.constexpr, DIAG_MODE: tl.constexpr, BLOCK_J: tl.constexpr):  # pragma: no cover - on CUDA
    """The gradients of ||a_j||², a_j·p_j and ||p_j||² — the diagonal's own and the coefficients'
    (d_along: the grid's shares, summed here in a fixed order) through along = αβ·(a·p)/max(||axis||², eps)
    — added to M's entries (a_j, a_j), (a_j, p_j), (p_j, p_j), halved where M + Mᵀ doubles them, so
    the one product d(batch) = (M + Mᵀ) · batch carries them. ``set_weights``: (2, S) each set's
    weight of S1's along-a and S2's along-p coefficient. ``sq_grad``: the gradient of the node's
    second output, Σ ||x||² (the losses' L2 term), which joins those of ||a_j||² and ||p_j||²."""
    j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    valid = j < n
    alpha_beta = tl.load(consts_ptr)
    eps = tl.load(consts_ptr + 2)
    diag_scale = tl.load(consts_ptr + 4)
    sa = tl.load(diag_ptr + j, mask=valid, other=1.0)
    ap = tl.load(diag_ptr + n + j, mask=valid, other=0.0)
    sp = tl.load(diag_ptr + 2 * n + j, mask=valid, other=1.0)
    d_along_a = tl.zeros_like(sa)
    d_along_p = tl.zeros_like(sa)
    for r in range(n):  # the grid's shares, row by row (deterministic: no atomics)
        d_along_a += tl.load(column_part_ptr + r * n + j, mask=valid, other=0.0)
        d_along_p += tl.load(column_part_ptr + n * n + r * n + j, mask=valid, other=0.0)
    if KR == 2:
        d_along_a += tl.load(row_part_ptr + j, mask=valid, other=0.0)
        d_along_p += tl.load(row_part_ptr + n + j, mask=valid, other=0.0)
    sq_grad = tl.load(sq_grad_ptr)
    d_sa = tl.zeros_like(sa) + sq_grad
    d_ap = tl.zeros_like(sa)
    d_sp = tl.zeros_like(sa) + sq_grad
    g = tl.load(grad_ptr + j * n + j, mask=valid, other=0.0) * diag_scale
    if DIAG_MODE == 1:  # the original a_i · p_i
        d_ap += g
    if DIAG_MODE == 2:  # the chosen X_s[i] · X_t[i]
        q = tl.load(which_ptr + j * n + j, mask=valid, other=0).to(tl.int32)
        s = tl.load(diag_rows_ptr + q, mask=valid, other=0)
        t = tl.load(diag_cols_ptr + q, mask=valid, other=0)
        r0 = tl.load(coef_ptr + (2 * s) * n + j, mask=valid, other=0.0)
        r1 = tl.load(coef_ptr + (2 * s + 1) * n + j, mask=valid, other=0.0)
        c0 = tl.load(coef_ptr + (2 * t) * n + j, mask=valid, other=0.0)
        c1 = tl.load(coef_ptr + (2 * t + 1) * n + j, mask=valid, other=0.0)
        weight_s_a = tl.load(set_weights_ptr + s, mask=valid, other=0.0)
        weight_t_a = tl.load(set_weights_ptr + t, mask=valid, other=0.0)
        weight_s_p = tl.load(set_weights_ptr + n_sets + s, mask=valid, other=0.0)
        weight_t_p = tl.load(set_weights_ptr + n_sets + t, mask=valid, other=0.0)
        d_along_a += weight_s_a * (g * (sa * c0 + ap * c1)) + weight_t_a * (g * (r0 * sa + r1 * ap))
        d_along_p += weight_s_p * (g * (ap * c0 + sp * c1)) + weight_t_p * (g * (r0 * ap + r1 * sp))
        d_sa += g * r0 * c0
        d_ap += g * (r0 * c1 + r1 * c0)
        d_sp += g * r1 * c1
    axis_a = tl.maximum(sa, eps)
    axis_p = tl.maximum(sp, eps)
    d_ap = alpha_beta * (d_along_a / axis_a + d_along_p / axis_p) + d_ap
    d_sa = d_sa - tl.where(sa > eps, d_along_a * (alpha_beta * ap / axis_a) / axis_a, 0.0)
    d_sp = d_sp - tl.where(sp > eps, d_along_p * (alpha_beta * ap / axis_p) / axis_p, 0.0)
    # d(||a||²) · 2a, d(a·p) · p and d(||p||²) · 2p: M[a, a] += d_sa and M[p, p] += d_sp (doubled by
    # M + Mᵀ), M[a, p] += d_ap (and M + Mᵀ puts it at [p, a] too)
    width = 2 * n
    a = j * step
    p = a + half
    entry = matrix_ptr + a * width + a
    tl.store(entry, tl.load(entry, mask=valid, other=0.0) + d_sa, mask=valid)
    entry = matrix_ptr + a * width + p
    tl.store(entry, tl.load(entry, mask=valid, other=0.0) + d_ap, mask=valid)
    entry = matrix_ptr + p * width + p
    tl.store(entry, tl.load(entry, mask=valid, other=0.0) + d_sp, mask=valid)

_KERNEL_SOURCES = (_coefficients_kernel, _forward_kernel, _backward_kernel, _finish_kernel)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` when triton is
    imported): then the node takes CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple:
    """The four kernels (``triton.jit``: compiled for the GPU, or interpreted, see ``interpreting``)."""
    load()
    return tuple(triton.jit(fn) for fn in _KERNEL_SOURCES)


_device_plans: dict[tuple, tuple] = {}


def _device_plan(plan: tuple, device: torch.device, dtype: torch.dtype) -> tuple:
    """The plan's arrays as tensors on the device (once per plan, device and precision; every array
    at least one element long: a launch is not given a null pointer)."""
    key = (id(plan), device, dtype)
    cached = _device_plans.get(key)
    if cached is not None and cached[0] is plan:
        return cached[1]
    row_kind, pair_rows, pair_cols, mix, diag_mode, keep_pair, diag_rows, diag_cols, synthetic_pair, consts = plan
    n_sets = 4 + mix.shape[0]
    set_weights = torch.zeros(2, n_sets, dtype=torch.float64)  # weight of S1's along-a / S2's along-p per set
    set_weights[0, 2] = 1.0
    set_weights[1, 3] = 1.0
    for r in range(mix.shape[0]):
        set_weights[0, 4 + r] = float(mix[r, 2])
        set_weights[1, 4 + r] = float(mix[r, 3])
    rows = torch.as_tensor(pair_rows)
    cols = torch.as_tensor(pair_cols)
    weights = torch.cat([set_weights[:, cols], set_weights[:, rows]])  # (4, P): column a/p, row a/p

    def on(array: Any, kind: torch.dtype) -> torch.Tensor:
        tensor = torch.as_tensor(array).reshape(-1)
        if tensor.numel() == 0:
            tensor = torch.zeros(1, dtype=tensor.dtype)
        return tensor.to(device=device, dtype=kind).contiguous()

    int_plan = [on(x, torch.int32) for x in (pair_rows, pair_cols, diag_rows, diag_cols, synthetic_pair)]
    result = (*int_plan, on(weights, dtype), on(set_weights, dtype), on(mix, dtype),
              on(torch.tensor(consts, dtype=torch.float64), dtype), n_sets)
    _device_plans[key] = (plan, result)
    return result


def _block(n: int) -> int:
    return min(triton.next_power_of_2(max(n, 2)), _MAX_BLOCK)


class _DeviceShare:
    """The synthetic share as a count on the device, read (one sync) when converted with ``float``."""

    __slots__ = ("count", "total")

    def __init__(self, count: torch.Tensor, total: int) -> None:
        self.count, self.total = count, total

    def __float__(self) -> float:
        return float(self.count) / self.total


class TritonSymmNPairLogits(torch.autograd.Function):
    """``kernels.CompiledSymmNPairLogits`` for CUDA (or Triton's interpreter): same plan, values, choice
    and gradients, on the batch in its pair layout (no reorder). Forward: the Gram rows (one cuBLAS
    product), the coefficients and the choice; backward: the entries' gradient as one (2N, 2N)
    matrix M in the batch's order, the coefficients' gradient folded into it, then
    d(batch) = (M + Mᵀ) · batch — four kernels and a matmul each way, whatever the selection."""

    @staticmethod
    def forward(ctx: Any, points: torch.Tensor, interleaved: bool, plan: tuple,  # type: ignore[override]
                outputs: kernels.NodeOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        row_kind, _, _, mix, diag_mode, keep_pair, *_ = plan
        pair_rows, pair_cols, diag_rows, diag_cols, synthetic, weights, set_weights, mix_t, consts, n_sets = \
            _device_plan(plan, points.device, points.dtype)
        coefficients, forward_kernel, _, _ = _kernels()
        points = points.detach().contiguous()
        n, dim = points.shape[0] // 2, points.shape[1]
        step, half = (2, 1) if interleaved else (1, n)
        anchors, positives = (points[0::2], points[1::2]) if interleaved else (points[:n], points[n:])
        rows = points if row_kind == 2 else anchors if row_kind == 0 else anchors + positives
        gram = rows @ points.T  # (2N or N, 2N), in the batch's order
        diag = torch.empty(3, n, dtype=points.dtype, device=points.device)
        coef = torch.empty(n_sets, 2, n, dtype=points.dtype, device=points.device)
        block = _block(n)
        coefficients[(triton.cdiv(n, min(block, 64)),)](points, consts, mix_t, diag, coef, n, dim, mix.shape[0], step,
                                                        half, BLOCK_J=min(block, 64), BLOCK_D=64)
        values = torch.empty(n, n, dtype=points.dtype, device=points.device)
        which = torch.empty(n, n, dtype=torch.int8, device=points.device)
        count = torch.empty(n, dtype=torch.int32, device=points.device)
        forward_kernel[(n,)](gram, coef, diag, consts, pair_rows, pair_cols, diag_rows, diag_cols, synthetic, values,
                             which, count, n, len(plan[1]), len(plan[6]), keep_pair, step, half,
                             KR=2 if row_kind == 2 else 1, DIAG_MODE=diag_mode, BLOCK_J=block)
        outputs.which = which
        outputs.share = _DeviceShare(count.sum(), n * (n - 1))  # no sync here
        ctx.kept = (points, interleaved, gram, coef, diag, which, plan)
        return values, diag[0::2].sum()  # and Σ ||x||² (the losses' L2 term), from the row sums already taken

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, grad_squares: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        points, interleaved, gram, coef, diag, which, plan = ctx.kept
        row_kind, diag_mode = plan[0], plan[4]
        pair_rows, pair_cols, diag_rows, diag_cols, _, weights, set_weights, _, consts, n_sets = \
            _device_plan(plan, points.device, points.dtype)
        _, _, backward_kernel, finish_kernel = _kernels()
        n = points.shape[0] // 2
        step, half = (2, 1) if interleaved else (1, n)
        grad = grad.contiguous()
        matrix = torch.empty(2 * n, 2 * n, dtype=points.dtype, device=points.device)  # written in full
        column_part = torch.empty(2, n, n, dtype=points.dtype, device=points.device)
        row_part = torch.empty(2, n, dtype=points.dtype, device=points.device)  # written (and read) where kr = 2
        block = _block(n)
        backward_kernel[(n,)](grad, gram, coef, consts, pair_rows, pair_cols, weights, which, matrix, column_part, row_part,
                              n, len(plan[1]), step, half, KR=2 if row_kind == 2 else 1, ROW_SUM=row_kind == 1,
                              DIAG_MODE=diag_mode, BLOCK_J=block)
        finish_kernel[(triton.cdiv(n, block),)](grad, coef, diag, consts, diag_rows, diag_cols, set_weights, which,
                                                column_part, row_part, grad_squares.reshape(1), matrix, n, n_sets,
                                                step, half,
                                                KR=2 if row_kind == 2 else 1, DIAG_MODE=diag_mode, BLOCK_J=block)
        return (matrix + matrix.T) @ points, None, None, None


def plan_logits(points: torch.Tensor, layout: str, plan: tuple) -> tuple[torch.Tensor, kernels.NodeOutputs]:
    """(logits, outputs: ``which`` (int8 tensor on the device), ``share`` (read with ``float``) and
    ``squares``, Σ ||x||² with autograd) for a ``kernels.selection_plan``, on CUDA (or CPU tensors in
    Triton's interpreter)."""
    if not load():
        raise RuntimeError("the Triton node needs the triton package (it ships with torch's CUDA wheels)")
    if points.device.type != "cuda" and not interpreting():
        raise ValueError(f"the Triton node runs on CUDA tensors (got {points.device.type}); on the CPU use "
                         "symm.losses.kernels.plan_logits, or set TRITON_INTERPRET=1 before importing triton")
    if layout not in ("interleaved", "blocked"):
        raise ValueError(f"layout must be 'interleaved' or 'blocked', got {layout!r}")
    outputs = kernels.NodeOutputs()
    # Triton launches on the current CUDA device: make it the tensor's (backward runs on autograd's
    # device thread for that device)
    with torch.cuda.device(points.device) if points.is_cuda else contextlib.nullcontext():
        values, outputs.squares = TritonSymmNPairLogits.apply(points, layout == "interleaved", plan, outputs)
    return values, outputs


_checked: dict[tuple, tuple] = {}  # (id(plan), shape, dtype, device, layout) -> the plan, whose kernels compiled and ran here


def try_plan_logits(points: torch.Tensor, layout: str, plan: tuple) -> tuple[torch.Tensor, kernels.NodeOutputs] | None:
    """``plan_logits`` on CUDA, or None (the caller's torch node) if Triton cannot compile or launch
    here — said once, as a warning: a GPU run keeps going on the slower path instead of failing.

    The first call for a plan and batch shape also runs the node's backward once on a detached
    copy (the same kernel variants), so a backward kernel that fails to compile is caught here,
    not in the training step's ``loss.backward()``."""
    key = (id(plan), tuple(points.shape), points.dtype, points.device, layout)
    try:
        if _checked.get(key) is not plan:  # the plan itself, not another one at a reused id
            probe = points.detach().clone().requires_grad_(True)
            values, outputs = plan_logits(probe, layout, plan)
            torch.autograd.backward([values, outputs.squares], [torch.ones_like(values), torch.ones_like(outputs.squares)])
            _checked[key] = plan
        return plan_logits(points, layout, plan)
    except Exception as error:  # noqa: BLE001 - any compiler/driver failure: fall back, say why
        _failed.append(f"{type(error).__name__}: {error}")
        warnings.warn(f"Triton kernels for the Symm logit node failed on this machine ({_failed[-1]}); using the "
                      "torch node from now on (slower on a GPU; same values). Set SYMM_COMPILED_KERNELS=0 to skip them.",
                      RuntimeWarning, stacklevel=2)
        return None
