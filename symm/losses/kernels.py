"""Compiled CPU loops (numba) for the Symm+N-pair / Symm+angular logit node.

Why: on CPU at the paper's batch (N = 64 pairs) the Symm logit node is bound by the number of
tensor calls, not by arithmetic: building the candidates, choosing the hardest, gathering the
winners' coefficients and their backward are ~100 small kernels of a few microseconds each.
Here they are two compiled loops over the (N, N) grid, one forward and one backward, around the
unavoidable matmuls (the Gram rows forward, one or two products backward), which stay in torch.

Same arithmetic as ``symm.losses.fused.SymmNPairLogits`` (the reference the tests compare it
with): the candidate X_s[i] · X_t[j] = Σ_kl C[s,k,i] K[k,l,i,j] C[t,l,j], the first of the
largest wins, the diagonal keeps a_i · p_i where asked; the backward is the closed form through
the reflection coefficients along_s = αβ·(a·p)/max(||axis_s||², eps). The squared norms and a·p
are row sums over the points (equal points give bitwise equal values, so exact ties stay exact
and the first winner is the torch node's).

Used when numba is importable, the tensors are float32/float64 on the CPU and the hardest
candidate is chosen (hardness rank 1); ``SYMM_COMPILED_KERNELS=0`` in the environment turns it
off (everything then runs through the torch node, same values).
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

try:  # an optional speed-up: without numba the torch node is used
    import numba
except ImportError:  # pragma: no cover - numba is pinned in requirements.txt
    numba = None


def compiled_kernels_enabled() -> bool:
    """Whether the compiled loops may be used at all (numba importable, not switched off)."""
    return numba is not None and os.environ.get("SYMM_COMPILED_KERNELS", "1") != "0"


def usable(tensor: torch.Tensor, rank: int) -> bool:
    """Whether the compiled node applies to this input (CPU float tensors, hardest candidate)."""
    return (compiled_kernels_enabled() and rank == 1 and tensor.device.type == "cpu"
            and tensor.dtype in (torch.float32, torch.float64))


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True)

    # reassociation only (no NaN/inf assumptions): the row sums vectorise; a·a and a·p of equal
    # points still run the same code in the same order, so they stay bitwise equal
    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
    def _coefficients(points, alpha_beta, own, eps, mix, diag, coef):  # pragma: no cover - compiled
        """diag = [||a_j||², a_j·p_j, ||p_j||²] (row sums in one order: equal points give equal values,
        so exact ties stay exact) and coef[s, k, j] of [A, P, S1, S2] and the summed row sets of ``mix``."""
        n = points.shape[0] // 2
        for j in range(n):
            sa = points[j, 0] * 0  # accumulate in the points' precision (vectorised)
            ap = sa
            sp = sa
            for d in range(points.shape[1]):
                a = points[j, d]
                p = points[n + j, d]
                sa += a * a
                ap += a * p
                sp += p * p
            diag[0, j] = sa
            diag[1, j] = ap
            diag[2, j] = sp
            coef[0, 0, j] = 1.0
            coef[0, 1, j] = 0.0
            coef[1, 0, j] = 0.0
            coef[1, 1, j] = 1.0
            coef[2, 0, j] = alpha_beta * ap / max(sa, eps)  # S1 = reflect(P, axis A): along A
            coef[2, 1, j] = own
            coef[3, 0, j] = own
            coef[3, 1, j] = alpha_beta * ap / max(sp, eps)  # S2 = reflect(A, axis P): along P
            for r in range(mix.shape[0]):
                for k in range(2):
                    total = 0.0
                    for s in range(4):
                        total += mix[r, s] * coef[s, k, j]
                    coef[4 + r, k, j] = total

    @_jit
    def _forward(gram, coef, diag, kr, pair_rows, pair_cols, diag_mode, keep_pair, diag_rows, diag_cols, off_scale,
                 diag_scale, values, which):  # pragma: no cover - compiled
        """values[i, j] = off_scale · the largest candidate X_s[i] · X_t[j] over the pairs, which[i, j] its
        pair (the first on ties). The diagonal (× diag_scale): diag_mode 0 the same choice, 1 a_i · p_i
        (which = keep_pair), 2 the largest X_s[i] · X_t[i] over the diagonal pairs (the angular release).

        The inner loop runs over j on contiguous rows (vectorised); a NaN candidate sticks (as amax).
        """
        n = gram.shape[1] // 2
        for i in range(n):
            best = values[i]
            chosen = which[i]
            g00 = gram[i, :n]
            g01 = gram[i, n:]
            for c in range(pair_rows.shape[0]):
                s = pair_rows[c]
                t = pair_cols[c]
                c0 = coef[t, 0]
                c1 = coef[t, 1]
                if kr == 1:  # the anchors' rows: X_0[i] = a_i
                    for j in range(n):
                        value = g00[j] * c0[j] + g01[j] * c1[j]
                        if c == 0 or value > best[j] or value != value:
                            best[j] = value
                            chosen[j] = c
                else:
                    r0 = coef[s, 0, i]
                    r1 = coef[s, 1, i]
                    g10 = gram[n + i, :n]
                    g11 = gram[n + i, n:]
                    for j in range(n):
                        value = (r0 * g00[j] + r1 * g10[j]) * c0[j] + (r0 * g01[j] + r1 * g11[j]) * c1[j]
                        if c == 0 or value > best[j] or value != value:
                            best[j] = value
                            chosen[j] = c
            diagonal = best[i]
            if off_scale != 1:
                for j in range(n):
                    best[j] *= off_scale
            if diag_mode == 1:  # the original a_i · p_i
                diagonal = diag[1, i]
                chosen[i] = max(keep_pair, 0)
            elif diag_mode == 2:  # the largest of X_s[i] · X_t[i]: Gram entries [[sa, ap], [ap, sp]]
                sa = diag[0, i]
                ap = diag[1, i]
                sp = diag[2, i]
                for q in range(diag_rows.shape[0]):
                    s = diag_rows[q]
                    t = diag_cols[q]
                    r0 = coef[s, 0, i]
                    r1 = coef[s, 1, i]
                    value = (r0 * sa + r1 * ap) * coef[t, 0, i] + (r0 * ap + r1 * sp) * coef[t, 1, i]
                    if q == 0 or value > diagonal or value != value:
                        diagonal = value
                        chosen[i] = q
            best[i] = diag_scale * diagonal

    @_jit
    def _symmetrise(matrix, size):  # pragma: no cover - compiled
        """matrix[:size, :size] += its transpose, in cache-sized tiles (the diagonal doubled)."""
        tile = 32
        for start_a in range(0, size, tile):
            for start_b in range(start_a, size, tile):
                for a in range(start_a, min(start_a + tile, size)):
                    for b in range(max(start_b, a + 1), min(start_b + tile, size)):
                        total = matrix[a, b] + matrix[b, a]
                        matrix[a, b] = total
                        matrix[b, a] = total
        for a in range(size):
            matrix[a, a] += matrix[a, a]

    @_jit
    def _backward(grad, gram, coef, diag, kr, fold, alpha_beta, eps, pair_rows, pair_cols, mix, diag_mode, diag_rows,
                  diag_cols, off_scale, diag_scale, which, d_rows, d_norms):  # pragma: no cover - compiled
        """d_rows: the gradient of the Gram rows. ``fold`` (rows are real points, A or [A; P]): made
        matmul-ready, symmetrised where the Gram is symmetric in the points, with the gradients of
        ||a||², a·p (and ||p||² when kr = 2) added on its diagonal entries; d_norms (3, N, 1) =
        [2·d/d||a||², d/d(a·p), 2·d/d||p||²] holds what is not folded (all of it without ``fold``)."""
        n = gram.shape[1] // 2
        d_coef = np.zeros(coef.shape, dtype=coef.dtype)
        d_diag = np.zeros((3, n), dtype=coef.dtype)  # direct gradients of ||a_i||², a_i·p_i, ||p_i||²
        for i in range(n):
            for j in range(n):
                g = grad[i, j] * (off_scale if j != i else diag_scale)
                if j == i and diag_mode != 0:  # the diagonal is not a choice among the pairs: below
                    g = 0.0 * g
                c = which[i, j] if j != i or diag_mode == 0 else 0
                t = pair_cols[c]
                c0 = coef[t, 0, j]
                c1 = coef[t, 1, j]
                k00 = gram[i, j]
                k01 = gram[i, n + j]
                if kr == 1:  # row set: the anchors (identity coefficients, no gradient of their own)
                    d_rows[i, j] = g * c0
                    d_rows[i, n + j] = g * c1
                    d_coef[t, 0, j] += g * k00
                    d_coef[t, 1, j] += g * k01
                else:
                    s = pair_rows[c]
                    k10 = gram[n + i, j]
                    k11 = gram[n + i, n + j]
                    g0 = g * coef[s, 0, i]
                    g1 = g * coef[s, 1, i]
                    d_rows[i, j] = g0 * c0
                    d_rows[i, n + j] = g0 * c1
                    d_rows[n + i, j] = g1 * c0
                    d_rows[n + i, n + j] = g1 * c1
                    d_coef[s, 0, i] += g * (k00 * c0 + k01 * c1)
                    d_coef[s, 1, i] += g * (k10 * c0 + k11 * c1)
                    d_coef[t, 0, j] += g0 * k00 + g1 * k10
                    d_coef[t, 1, j] += g0 * k01 + g1 * k11
        for i in range(n):
            g = grad[i, i] * diag_scale
            if diag_mode == 1:
                d_diag[1, i] += g
            elif diag_mode == 2:
                q = which[i, i]
                s = diag_rows[q]
                t = diag_cols[q]
                sa = diag[0, i]
                ap = diag[1, i]
                sp = diag[2, i]
                r0 = coef[s, 0, i]
                r1 = coef[s, 1, i]
                c0 = coef[t, 0, i]
                c1 = coef[t, 1, i]
                d_coef[s, 0, i] += g * (sa * c0 + ap * c1)
                d_coef[s, 1, i] += g * (ap * c0 + sp * c1)
                d_coef[t, 0, i] += g * (r0 * sa + r1 * ap)
                d_coef[t, 1, i] += g * (r0 * ap + r1 * sp)
                d_diag[0, i] += g * r0 * c0
                d_diag[1, i] += g * (r0 * c1 + r1 * c0)
                d_diag[2, i] += g * r1 * c1
        for r in range(mix.shape[0]):  # a summed row set passes its gradient to each of its sets
            for s in range(4):
                if mix[r, s] != 0:
                    for k in range(2):
                        for j in range(n):
                            d_coef[s, k, j] += mix[r, s] * d_coef[4 + r, k, j]
        if fold:
            _symmetrise(d_rows, kr * n)  # the Gram rows are a function of the points on both sides
        for j in range(n):  # through ||a||², a·p, ||p||² (Gram diagonal entries): the coefficients and d_diag
            sa = diag[0, j]
            ap = diag[1, j]
            sp = diag[2, j]
            axis_a = max(sa, eps)
            axis_p = max(sp, eps)
            d_along_a = d_coef[2, 0, j]  # S1's coefficient on its axis a
            d_along_p = d_coef[3, 1, j]  # S2's coefficient on its axis p
            d_ap = alpha_beta * (d_along_a / axis_a + d_along_p / axis_p) + d_diag[1, j]
            d_sa = d_diag[0, j] - (d_along_a * (alpha_beta * ap / axis_a) / axis_a if sa > eps else 0.0)
            d_sp = d_diag[2, j] - (d_along_p * (alpha_beta * ap / axis_p) / axis_p if sp > eps else 0.0)
            d_norms[0, j, 0] = 2.0 * d_sa
            d_norms[1, j, 0] = d_ap
            d_norms[2, j, 0] = 2.0 * d_sp
            if fold:
                d_rows[j, j] += 2.0 * d_sa  # ||a_j||² = G[j, j]
                d_rows[j, n + j] += d_ap  # a_j · p_j = G[j, N + j] (and G[N + j, j] when kr = 2)
                d_norms[0, j, 0] = 0.0
                d_norms[1, j, 0] = 0.0
                if kr == 2:
                    d_rows[n + j, j] += d_ap
                    d_rows[n + j, n + j] += 2.0 * d_sp
                    d_norms[2, j, 0] = 0.0

    @_jit
    def _forward_all(points, gram, kr, alpha_beta, own, eps, pair_rows, pair_cols, mix, diag_mode, keep_pair, diag_rows,
                     diag_cols, off_scale, diag_scale, synthetic_pair, diag, coef, values, which):  # pragma: no cover - compiled
        """Coefficients, choice and values; returns how many off-diagonal choices involve a synthetic set."""
        _coefficients(points, alpha_beta, own, eps, mix, diag, coef)
        _forward(gram, coef, diag, kr, pair_rows, pair_cols, diag_mode, keep_pair, diag_rows, diag_cols, off_scale,
                 diag_scale, values, which)
        n = which.shape[0]
        count = 0
        for i in range(n):
            for j in range(n):
                if j != i:
                    count += synthetic_pair[which[i, j]]
        return count


_scratch = threading.local()


def _scratch_like(tensor: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer shaped like ``tensor``, kept per thread across calls.

    A fresh megabyte-sized tensor costs more in page faults than the loop that fills it (glibc
    hands large blocks back to the system when they are freed); the backward's Gram gradient is
    written in full and consumed by the matmul in the same call, so one buffer can serve them all.
    """
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < tensor.numel():
        buffer = _scratch.buffer = torch.empty(tensor.numel(), dtype=tensor.dtype)
    return buffer[: tensor.numel()].view(tensor.shape)


@functools.lru_cache(maxsize=64)
def _plan(pairs: tuple[tuple[int, int], ...], anchors_only: bool, keep_positive: bool,
          row_mix: tuple[tuple[int, ...], ...] | None, diag_pairs: tuple[tuple[int, int], ...] | None,
          consts: tuple[float, float, float, float, float]) -> tuple:
    """The selection as arrays for the loops, once per selection: (kind of rows, row set per pair, column set
    per pair, summed-row-set membership, diagonal mode, index of (A, P) or -1, diagonal pairs' row
    and column sets, 1 where a pair involves a synthetic set, ``consts``: αβ, the reflected point's
    own coefficient, eps, off-diagonal and diagonal scales)."""
    synthetic = [int(t >= 2 or (s >= 2 if row_mix is None else max(row_mix[s]) >= 2)) for s, t in pairs]
    mix = np.zeros((0 if row_mix is None else len(row_mix), 4), dtype=np.float64)
    if row_mix is not None:  # row r of a pair is the sum of the sets row_mix[r] (the angular loss's X_s + X_t)
        anchors_only = False
        pairs = tuple((4 + r, t) for r, t in pairs)
        for r, sets in enumerate(row_mix):
            mix[r, list(sets)] = 1.0
    if anchors_only and any(s != 0 for s, _ in pairs):
        raise ValueError("anchors_only needs every pair's row set to be the anchors (set 0)")
    # rows: 0 = the anchors (kr = 1), 1 = the one summed row set a_i + p_i (kr = 1: its Gram rows
    # are (A + P)·[A; P]ᵀ, half the 2N×2N Gram), 2 = [A; P] (kr = 2)
    rows = 0 if anchors_only else 1 if row_mix == ((0, 1),) and {s for s, _ in pairs} == {4} else 2
    diag_mode = 2 if diag_pairs else 1 if keep_positive else 0
    diag_pairs = diag_pairs or ()
    return (rows, np.array([s for s, _ in pairs], dtype=np.int64),
            np.array([t for _, t in pairs], dtype=np.int64), mix, diag_mode, pairs.index((0, 1)) if (0, 1) in pairs else -1,
            np.array([s for s, _ in diag_pairs], dtype=np.int64), np.array([t for _, t in diag_pairs], dtype=np.int64),
            np.array(synthetic, dtype=np.int64), consts)


class NodeOutputs:
    """What the compiled node hands back besides the logits: the chosen set pair per entry (int8
    NumPy grid) and the share of off-diagonal choices that involve a synthetic set.

    A side channel instead of extra autograd outputs: non-differentiable outputs cost the node
    more bookkeeping per call than its whole choice loop.
    """

    __slots__ = ("which", "share")


class CompiledSymmNPairLogits(torch.autograd.Function):
    """``SymmNPairLogits`` with the grid work in compiled loops; same values and gradients (rank 1).

    Called through ``compiled_symm_npair_logits`` (which builds the plan and reads the outputs).
    The synthetic share is counted in the loop (the flags grid and its reduction cost more than
    the count on CPU). Extra options for the angular loss (its whole logit matrix in the same
    call): ``diag_pairs``, the diagonal as the largest X_s[i] · X_t[i] over these set pairs (the
    release's ``official``), and the scales of the off-diagonal and diagonal logits. With
    ``row_mix``, ``keep_positive`` puts a_i · p_i on the diagonal (the torch node leaves the
    diagonal to the caller there).

    Per call: one cat and one matmul forward, one compiled loop each way, one or two matmuls backward;
    the compiled loops work on NumPy views of the tensors (no copies), kept on ``ctx`` for backward.
    """

    @staticmethod
    def forward(ctx: Any, anchors: torch.Tensor, positives: torch.Tensor, plan: tuple,  # type: ignore[override]
                outputs: NodeOutputs) -> torch.Tensor:
        row_kind, pair_rows, pair_cols, mix, diag_mode, keep_pair, diag_rows, diag_cols, synthetic_pair, consts = plan
        alpha_beta, own, eps, off_scale, diag_scale = consts
        n = anchors.shape[0]
        points = torch.cat([anchors, positives])
        rows = points[:n] if row_kind == 0 else points if row_kind == 2 else anchors + positives
        gram_rows = rows @ points.T  # (kr·N, 2N)
        values = torch.empty(n, n, dtype=points.dtype)
        arrays = (points.numpy(), gram_rows.numpy())
        dtype = arrays[0].dtype
        coef = np.empty((4 + mix.shape[0], 2, n), dtype=dtype)
        diag = np.empty((3, n), dtype=dtype)
        which = np.empty((n, n), dtype=np.int8)  # at most 16 set pairs
        count = _forward_all(arrays[0], arrays[1], 2 if row_kind == 2 else 1, alpha_beta, own, eps, pair_rows, pair_cols,
                             mix, diag_mode, keep_pair, diag_rows, diag_cols, off_scale, diag_scale, synthetic_pair, diag,
                             coef, values.numpy(), which)
        outputs.which = which
        outputs.share = count / (n * (n - 1))
        ctx.kept = (points, rows, gram_rows, arrays[1], coef, diag, which, plan)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        points, rows, gram_rows, gram, coef, diag, which, plan = ctx.kept
        row_kind, pair_rows, pair_cols, mix, diag_mode, _, diag_rows, diag_cols, _, consts = plan
        alpha_beta, _, eps, off_scale, diag_scale = consts
        n = diag.shape[1]
        d_rows = _scratch_like(gram_rows)
        d_norms = np.empty((3, n, 1), dtype=coef.dtype)
        _backward(grad.contiguous().numpy(), gram, coef, diag, 2 if row_kind == 2 else 1, row_kind != 1, alpha_beta, eps,
                  pair_rows, pair_cols, mix, diag_mode, diag_rows, diag_cols, off_scale, diag_scale, which, d_rows.numpy(),
                  d_norms)
        if row_kind == 2:  # d_rows is the symmetrised (2N, 2N) gradient of points · pointsᵀ
            d_points = d_rows @ points
            return d_points[:n], d_points[n:], None, None
        anchors, positives = points[:n], points[n:]
        norms = torch.from_numpy(d_norms)
        if row_kind == 0:  # gram_rows = A · [A; P]ᵀ: the A·Aᵀ block symmetrised, A·Pᵀ as is
            return d_rows @ points, (d_rows[:, n:].T @ anchors).addcmul_(positives, norms[2]), None, None
        # gram_rows = (A + P) · [A; P]ᵀ; the norms' and a·p's gradients are not on it
        d_sums = d_rows @ points
        d_points = d_rows.T @ rows
        d_anchors = d_points[:n].add_(d_sums).addcmul_(anchors, norms[0]).addcmul_(positives, norms[1])
        d_positives = d_points[n:].add_(d_sums).addcmul_(positives, norms[2]).addcmul_(anchors, norms[1])
        return d_anchors, d_positives, None, None


def compiled_symm_npair_logits(anchors: torch.Tensor, positives: torch.Tensor, pairs: list[tuple[int, int]],
                               anchors_only: bool, keep_positive: bool, alpha: float, beta: float, form: str,
                               eps: float = 1e-12, row_mix: tuple[tuple[int, ...], ...] | None = None,
                               diag_pairs: tuple[tuple[int, int], ...] | None = None, off_scale: float = 1.0,
                               diag_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(logits, chosen set pair per entry (int8), synthetic share of the off-diagonal choices) from the
    compiled node: ``SymmNPairLogits``'s call (hardest candidate only) plus the angular options above."""
    own = beta * (1 - alpha) if form == "paper" else -beta
    plan = _plan(tuple(pairs), anchors_only, keep_positive, row_mix, diag_pairs,
                 (alpha * beta, own, eps, off_scale, diag_scale))
    outputs = NodeOutputs()
    values = CompiledSymmNPairLogits.apply(anchors, positives, plan, outputs)
    return values, torch.from_numpy(outputs.which), outputs.share
