"""Compiled CPU loops (numba) for the Symm+N-pair / Symm+angular logit node.

Why: on CPU at the paper's batch (N = 64 pairs) the Symm logit node is bound by the number of
tensor calls, not by arithmetic: building the candidates, choosing the hardest, gathering the
winners' coefficients and their backward are ~100 small kernels of a few microseconds each.
Here they are two compiled loops over the (N, N) grid, one forward and one backward, around the
unavoidable matmuls (the Gram rows forward, one or two products backward), which stay in torch —
except the (2N, 2N) Gram of the selections whose rows are [A; P] (N-pair ``official`` / ``pair16``,
angular ``official``): it is symmetric, and BLAS syrk (through SciPy; torch has none) computes one
triangle, half the multiply-adds of a matmul, where torch runs one thread (``SYMM_BLAS_SYRK=0``: a
torch matmul instead).

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

import contextlib
import functools
import os
import threading
from typing import Any
from unittest import mock

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
    def _coefficients(points, interleaved, alpha_beta, own, eps, mix, diag, coef):  # pragma: no cover - compiled
        """diag = [||a_j||², a_j·p_j, ||p_j||²] (row sums in one order: equal points give equal values,
        so exact ties stay exact) and coef[s, k, j] of [A, P, S1, S2] and the summed row sets of ``mix``.
        ``points``: the (2N, d) batch in its pair layout, C-contiguous (rows of a strided view do not
        vectorise: 28 against 5 µs at N = 64, d = 512)."""
        n = points.shape[0] // 2
        step, half = (2, 1) if interleaved else (1, n)
        for j in range(n):
            anchor = points[j * step]
            positive = points[j * step + half]
            sa = anchor[0] * 0  # accumulate in the points' precision (vectorised)
            ap = sa
            sp = sa
            for d in range(points.shape[1]):
                a = anchor[d]
                p = positive[d]
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

    @numba.njit(cache=True, nogil=True, inline="always")
    def _four_candidates(g00, g01, coef, pair_cols, best, chosen):  # pragma: no cover - compiled
        """``_forward``'s choice for one row set against four column sets in one pass over the row: the
        same candidates and the same order of comparisons as four passes, with the Gram rows read
        once and best / chosen written once (the choice loop alone 51-52 against 33 µs for N-pair, 62 against
        43 µs for angular, N = 256, d = 128; the same values, bit for bit)."""
        a0 = coef[pair_cols[0], 0]
        b0 = coef[pair_cols[0], 1]
        a1 = coef[pair_cols[1], 0]
        b1 = coef[pair_cols[1], 1]
        a2 = coef[pair_cols[2], 0]
        b2 = coef[pair_cols[2], 1]
        a3 = coef[pair_cols[3], 0]
        b3 = coef[pair_cols[3], 1]
        for j in range(g00.shape[0]):
            x = g00[j]
            y = g01[j]
            top = x * a0[j] + y * b0[j]
            pick = 0
            value = x * a1[j] + y * b1[j]
            replace = value > top or value != value  # a NaN candidate sticks, as in the passes
            top = value if replace else top
            pick = 1 if replace else pick
            value = x * a2[j] + y * b2[j]
            replace = value > top or value != value
            top = value if replace else top
            pick = 2 if replace else pick
            value = x * a3[j] + y * b3[j]
            replace = value > top or value != value
            top = value if replace else top
            pick = 3 if replace else pick
            best[j] = top
            chosen[j] = pick

    @_jit
    def _forward(gram, coef, diag, kr, pair_rows, pair_cols, diag_mode, keep_pair, diag_rows, diag_cols, off_scale,
                 diag_scale, values, which):  # pragma: no cover - compiled
        """values[i, j] = off_scale · the largest candidate X_s[i] · X_t[j] over the pairs, which[i, j] its
        pair (the first on ties). The diagonal (× diag_scale): diag_mode 0 the same choice, 1 a_i · p_i
        (which = keep_pair), 2 the largest X_s[i] · X_t[i] over the diagonal pairs (the angular release).

        The inner loop runs over j on contiguous rows (vectorised); a NaN candidate sticks (as amax).
        """
        n = gram.shape[1] // 2
        one_pass = kr == 1 and pair_rows.shape[0] == 4  # one row set, four column sets (``point4``)
        for i in range(n):
            best = values[i]
            chosen = which[i]
            g00 = gram[i, :n]
            g01 = gram[i, n:]
            if one_pass:
                _four_candidates(g00, g01, coef, pair_cols, best, chosen)
            for c in range(0 if one_pass else pair_rows.shape[0]):  # one pass per set pair
                s = pair_rows[c]
                t = pair_cols[c]
                c0 = coef[t, 0]
                c1 = coef[t, 1]
                # the first pair writes; later ones replace in select form (a conditional store
                # does not vectorise; selects of best and chosen do)
                if kr == 1:  # the anchors' rows: X_0[i] = a_i
                    if c == 0:
                        for j in range(n):
                            best[j] = g00[j] * c0[j] + g01[j] * c1[j]
                            chosen[j] = 0
                    else:
                        for j in range(n):
                            value = g00[j] * c0[j] + g01[j] * c1[j]
                            previous = best[j]
                            replace = value > previous or value != value
                            best[j] = value if replace else previous
                            chosen[j] = c if replace else chosen[j]
                else:
                    r0 = coef[s, 0, i]
                    r1 = coef[s, 1, i]
                    g10 = gram[n + i, :n]
                    g11 = gram[n + i, n:]
                    if c == 0:
                        for j in range(n):
                            best[j] = (r0 * g00[j] + r1 * g10[j]) * c0[j] + (r0 * g01[j] + r1 * g11[j]) * c1[j]
                            chosen[j] = 0
                    else:
                        for j in range(n):
                            value = (r0 * g00[j] + r1 * g10[j]) * c0[j] + (r0 * g01[j] + r1 * g11[j]) * c1[j]
                            previous = best[j]
                            replace = value > previous or value != value
                            best[j] = value if replace else previous
                            chosen[j] = c if replace else chosen[j]
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
        """matrix[:size, :size] += its transpose (the diagonal doubled), in 8×8 tiles.

        Small tiles keep both blocks of a pair in cache (32×32 ones: 349 against 65 µs at 512 × 512)."""
        full = size - size % 8
        for a0 in range(0, full, 8):
            for b0 in range(a0, full, 8):
                for a in range(a0, a0 + 8):
                    for b in range(b0, b0 + 8):  # fixed trip count: unrolled
                        if b > a:
                            total = matrix[a, b] + matrix[b, a]
                            matrix[a, b] = total
                            matrix[b, a] = total
        for a in range(size):  # the last size % 8 columns
            for b in range(max(a + 1, full), size):
                total = matrix[a, b] + matrix[b, a]
                matrix[a, b] = total
                matrix[b, a] = total
        for a in range(size):
            matrix[a, a] += matrix[a, a]

    @numba.njit(cache=True, nogil=True, inline="always")
    def _chosen_column(t, coef, k, j):  # pragma: no cover - compiled
        """coef[t, k, j] for t < 4 as selects over values loaded unconditionally (vectorisable; a
        gather through the choice is not)."""
        v0 = coef[0, k, j]
        v1 = coef[1, k, j]
        v2 = coef[2, k, j]
        v3 = coef[3, k, j]
        return v3 if t == 3 else (v2 if t == 2 else (v1 if t == 1 else v0))

    @numba.njit(cache=True, nogil=True, inline="always")
    def _columns_span(grad, gram, coef, which, i, lo, hi, scale, matrix, d_along):  # pragma: no cover - compiled
        """``_backward``'s rows A / a_i + p_i with blocked Gram columns, for the off-diagonal columns
        lo <= j < hi, where pair c's column set is c (c < 4): the chosen set's coefficients as selects
        (``_chosen_column``) instead of a gather through ``which``, in passes that each write one
        array, so that LLVM vectorises them (the whole backward loop 144 against 260 µs at N = 256,
        d = 128). The same products as the general loop: the same values (adding nothing where the
        general loop adds a zero weight's product)."""
        n = gram.shape[1] // 2
        grad_row = grad[i]
        chosen = which[i]
        out = matrix[i]
        for j in range(lo, hi):
            out[j] = (grad_row[j] * scale) * _chosen_column(chosen[j], coef, 0, j)
        for j in range(lo, hi):
            out[n + j] = (grad_row[j] * scale) * _chosen_column(chosen[j], coef, 1, j)
        zero = scale - scale
        gram_row = gram[i]
        along_a = d_along[0]
        along_p = d_along[1]
        for j in range(lo, hi):
            t = chosen[j]
            g = grad_row[j] * scale
            along_a[j] += g * gram_row[j] if t == 2 else zero  # S1's coefficient on a (set 2)
        for j in range(lo, hi):
            t = chosen[j]
            g = grad_row[j] * scale
            along_p[j] += g * gram_row[n + j] if t == 3 else zero  # S2's coefficient on p (set 3)

    @_jit
    def _backward(grad, gram, coef, diag, kr, row_sum, one_sided, interleaved, alpha_beta, eps, pair_rows, pair_cols, mix,
                  diag_mode, diag_rows, diag_cols, off_scale, diag_scale, which, sq_grad, matrix):  # pragma: no cover - compiled
        """The batch's gradient as matrices for one or two products (below), from the gradient of the
        Gram rows (blocked: rows A, [A; P] or the sums a_i + p_i when ``row_sum``; columns [A; P])
        and of ||a||², a·p, ||p||² through the reflection coefficients (``one_sided``, rows a_i + p_i:
        only that gradient, in matrix[:N]). ``sq_grad``: the gradient of the node's other output, the
        sum of every point's squared norm (the losses' L2 term), joins d||a||² and d||p||².
        Returns d_norms (3, N): 2·d/d||a||², d/d(a·p), 2·d/d||p||²."""
        n = gram.shape[1] // 2
        step, half = (2, 1) if interleaved else (1, n)  # point (l, j) is batch row j·step + l·half
        # the Gram rows' gradient goes straight into ``matrix``, columns in the Gram's order (the
        # batch's, or blocked): rows A into R = matrix[:N] (and, interleaved, the A·Pᵀ part again into
        # Q = matrix[N:, :N]); otherwise into the batch row of the Gram row's point (for a_i + p_i:
        # the anchor's, copied below)
        # Only two coefficients depend on the points: S1's along a (coef[2, 0]) and S2's along p
        # (coef[3, 1]); a summed row set (4 + r) carries them with its weights mix[r, 2], mix[r, 3].
        # The loop accumulates their gradients straight into d_along, each entry weighted by its
        # sets' share: no read-modify-write scattered over the set index (the loop over two row sets
        # is still scalar: LLVM does not vectorise it; 354 against 446 µs at N = 256, d = 128, N-pair
        # ``official``; one row set's loop is ``_columns_span``)
        n_pairs = pair_rows.shape[0]
        weight = np.zeros((2, coef.shape[0]), dtype=coef.dtype)
        weight[0, 2] = 1.0
        weight[1, 3] = 1.0
        for r in range(mix.shape[0]):
            weight[0, 4 + r] = mix[r, 2]
            weight[1, 4 + r] = mix[r, 3]
        column_weight = np.empty((2, n_pairs), dtype=coef.dtype)
        row_weight = np.empty((2, n_pairs), dtype=coef.dtype)
        for c in range(n_pairs):
            for k in range(2):
                column_weight[k, c] = weight[k, pair_cols[c]]
                row_weight[k, c] = weight[k, pair_rows[c]]
        row_coef = np.empty((2, n_pairs), dtype=coef.dtype)
        zero = off_scale - off_scale  # in the scales' precision (the points': see the caller)
        d_along = np.zeros((2, n), dtype=coef.dtype)  # gradients of S1's along-a and S2's along-p coefficients
        d_diag = np.zeros((3, n), dtype=coef.dtype)  # direct gradients of ||a_i||², a_i·p_i, ||p_i||²
        row = step if row_sum else 1  # rows A: R's row i; rows a_i + p_i: the anchor's batch row
        q_copy = interleaved and not row_sum
        # rows A or a_i + p_i against the column sets t = c (every plan of one row set: point4 of
        # both losses): the off-diagonal entries in select form, vectorised (``_columns_span``)
        # (blocked Gram columns only: with the batch's interleaved order the strided stores made it 2-3%
        # slower per loss at N = 64, d = 512, the general loop stays there)
        identity_columns = kr == 1 and not interleaved and n_pairs <= 4 and coef.shape[0] >= 4
        for c in range(n_pairs):
            identity_columns = identity_columns and pair_cols[c] == c
        for i in range(n):
            first, last = 0, n
            if identity_columns:  # the off-diagonal columns here, the diagonal entry below
                _columns_span(grad, gram, coef, which, i, 0, i, off_scale, matrix, d_along)
                _columns_span(grad, gram, coef, which, i, i + 1, n, off_scale, matrix, d_along)
                first, last = i, i + 1
            if kr == 1:  # row set: the anchors or a_i + p_i (no coefficients of their own)
                for j in range(first, last):
                    on_diagonal = j == i
                    g = grad[i, j] * (diag_scale if on_diagonal else off_scale)
                    g = zero * g if on_diagonal and diag_mode != 0 else g  # not a choice: below
                    c = 0 if on_diagonal and diag_mode != 0 else which[i, j]
                    t = pair_cols[c]
                    c0 = coef[t, 0, j]
                    c1 = coef[t, 1, j]
                    matrix[i * row, j * step] = g * c0
                    matrix[i * row, j * step + half] = g * c1
                    if q_copy:  # Q: R's A·Pᵀ columns are strided there
                        matrix[n + i, j] = g * c1
                    d_along[0, j] += column_weight[0, c] * (g * gram[i, j])
                    d_along[1, j] += column_weight[1, c] * (g * gram[i, n + j])
            else:
                for c in range(n_pairs):
                    row_coef[0, c] = coef[pair_rows[c], 0, i]
                    row_coef[1, c] = coef[pair_rows[c], 1, i]
                ra = i * step
                rp = ra + half
                row_a = zero
                row_p = zero
                for j in range(n):
                    on_diagonal = j == i
                    g = grad[i, j] * (diag_scale if on_diagonal else off_scale)
                    g = zero * g if on_diagonal and diag_mode != 0 else g
                    c = 0 if on_diagonal and diag_mode != 0 else which[i, j]
                    t = pair_cols[c]
                    c0 = coef[t, 0, j]
                    c1 = coef[t, 1, j]
                    k00 = gram[i, j]
                    k01 = gram[i, n + j]
                    k10 = gram[n + i, j]
                    k11 = gram[n + i, n + j]
                    g0 = g * row_coef[0, c]
                    g1 = g * row_coef[1, c]
                    ca = j * step
                    cp = ca + half
                    matrix[ra, ca] = g0 * c0
                    matrix[ra, cp] = g0 * c1
                    matrix[rp, ca] = g1 * c0
                    matrix[rp, cp] = g1 * c1
                    row_a += row_weight[0, c] * (g * (k00 * c0 + k01 * c1))
                    row_p += row_weight[1, c] * (g * (k10 * c0 + k11 * c1))
                    d_along[0, j] += column_weight[0, c] * (g0 * k00 + g1 * k10)
                    d_along[1, j] += column_weight[1, c] * (g0 * k01 + g1 * k11)
                d_along[0, i] += row_a
                d_along[1, i] += row_p
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
                d_along[0, i] += weight[0, s] * (g * (sa * c0 + ap * c1)) + weight[0, t] * (g * (r0 * sa + r1 * ap))
                d_along[1, i] += weight[1, s] * (g * (ap * c0 + sp * c1)) + weight[1, t] * (g * (r0 * ap + r1 * sp))
                d_diag[0, i] += g * r0 * c0
                d_diag[1, i] += g * (r0 * c1 + r1 * c0)
                d_diag[2, i] += g * r1 * c1
        d_norms = np.empty((3, n), dtype=coef.dtype)  # [2·d/d||a||², d/d(a·p), 2·d/d||p||²]
        for j in range(n):  # through ||a||², a·p, ||p||²: the coefficients and d_diag
            sa = diag[0, j]
            ap = diag[1, j]
            sp = diag[2, j]
            axis_a = max(sa, eps)
            axis_p = max(sp, eps)
            d_along_a = d_along[0, j]  # S1's coefficient on its axis a
            d_along_p = d_along[1, j]  # S2's coefficient on its axis p
            d_ap = alpha_beta * (d_along_a / axis_a + d_along_p / axis_p) + d_diag[1, j]
            d_sa = d_diag[0, j] - (d_along_a * (alpha_beta * ap / axis_a) / axis_a if sa > eps else 0.0)
            d_sp = d_diag[2, j] - (d_along_p * (alpha_beta * ap / axis_p) / axis_p if sp > eps else 0.0)
            d_norms[0, j] = 2.0 * (d_sa + sq_grad)
            d_norms[1, j] = d_ap
            d_norms[2, j] = 2.0 * (d_sp + sq_grad)
        if kr == 1 and not row_sum:  # rows A: d(A) = R · batch, d(P) = Qᵀ · A + ||p||²'s part
            _symmetrise(matrix[:, 0::2] if interleaved else matrix, n)  # R's A·Aᵀ part (the diagonal doubled)
            for i in range(n):
                matrix[i, i * step] += d_norms[0, i]
                matrix[i, i * step + half] += d_norms[1, i]  # a·p's gradient, in R and in Q
                if interleaved:
                    matrix[n + i, i] += d_norms[1, i]
            return d_norms
        if row_sum and one_sided:  # left as the (N, 2N) gradient of the Gram rows, for two products
            return d_norms
        if row_sum:  # the row a_i + p_i: the positive's batch row gets the same gradient
            for i in range(n):
                for c in range(2 * n):
                    matrix[i * step + half, c] = matrix[i * step, c]
        _symmetrise(matrix, 2 * n)
        for j in range(n):
            a = j * step
            p = a + half
            matrix[a, a] += d_norms[0, j]
            matrix[a, p] += d_norms[1, j]
            matrix[p, a] += d_norms[1, j]
            matrix[p, p] += d_norms[2, j]
        return d_norms

    @_jit
    def _mirror_lower(matrix):  # pragma: no cover - compiled
        """The upper triangle of a square matrix from its lower one.

        In 8×8 tiles through a small buffer: both the reads and the writes run along rows (a
        plain element-wise transpose reads down columns, 2.5× slower at 512 × 512)."""
        size = matrix.shape[0]
        tile = np.empty((8, 8), dtype=matrix.dtype)
        full = size - size % 8
        for a0 in range(0, full, 8):
            for a in range(a0, a0 + 8):  # the diagonal tile
                for b in range(a + 1, a0 + 8):
                    matrix[a, b] = matrix[b, a]
            for b0 in range(a0 + 8, full, 8):
                for r in range(8):
                    for c in range(8):
                        tile[c, r] = matrix[b0 + r, a0 + c]
                for r in range(8):
                    for c in range(8):
                        matrix[a0 + r, b0 + c] = tile[r, c]
        for a in range(size):  # the last size % 8 columns
            for b in range(max(a + 1, full), size):
                matrix[a, b] = matrix[b, a]

    @_jit
    def _forward_all(points, gram_rows, lower_only, interleaved, gram_interleaved, kr, alpha_beta, own, eps,
                     pair_rows, pair_cols, mix, diag_mode, keep_pair, diag_rows, diag_cols, off_scale, diag_scale,
                     synthetic_pair):  # pragma: no cover - compiled
        """Coefficients, choice and values from the batch ``points`` (2N, d) in its layout and its Gram
        rows (columns, and rows when kr = 2, in the batch's order where ``gram_interleaved``, else
        blocked [A; P]; ``lower_only``: the (2N, 2N) Gram's lower triangle, as BLAS syrk writes it).
        Returns (how many off-diagonal choices involve a synthetic set, the Gram rows blocked
        by point set, coef, diag, values, which)."""
        n = points.shape[0] // 2
        if lower_only:
            _mirror_lower(gram_rows)
        if gram_interleaved:
            gram = np.empty((kr * n, 2 * n), dtype=gram_rows.dtype)  # columns [A; P] (rows too when kr = 2)
            for k in range(kr):
                for i in range(n):
                    source = gram_rows[2 * i + k] if kr == 2 else gram_rows[i]
                    for l in range(2):
                        for j in range(n):
                            gram[k * n + i, l * n + j] = source[2 * j + l]
        else:
            gram = gram_rows
        coef = np.empty((4 + mix.shape[0], 2, n), dtype=points.dtype)
        diag = np.empty((3, n), dtype=points.dtype)
        values = np.empty((n, n), dtype=points.dtype)
        which = np.empty((n, n), dtype=np.int8)  # at most 16 set pairs
        _coefficients(points, interleaved, alpha_beta, own, eps, mix, diag, coef)
        _forward(gram, coef, diag, kr, pair_rows, pair_cols, diag_mode, keep_pair, diag_rows, diag_cols, off_scale,
                 diag_scale, values, which)
        synthetic_bits = 0  # bit c: pair c involves a synthetic set (a shift vectorises, a gather does not)
        for c in range(synthetic_pair.shape[0]):
            synthetic_bits |= synthetic_pair[c] << c
        count = 0
        for i in range(n):
            chosen = which[i]
            row_count = 0
            for j in range(n):
                row_count += (synthetic_bits >> chosen[j]) & 1
            count += row_count - ((synthetic_bits >> chosen[i]) & 1)  # off the diagonal
        return count, gram, coef, diag, values, which


def symmetric_gram_enabled() -> bool:
    """Whether the (2N, 2N) Gram may come from BLAS syrk (SciPy's BLAS; ``SYMM_BLAS_SYRK=0`` turns it off)."""
    return _syrk is not None and os.environ.get("SYMM_BLAS_SYRK", "1") != "0"


def gram_as_matmul() -> contextlib.AbstractContextManager:
    """Within: the Gram is a torch matmul (what torch's FLOP counter and profiler can see)."""
    return mock.patch.dict(os.environ, {"SYMM_BLAS_SYRK": "0"})


def _scipy_blas_controllers() -> list:
    """threadpoolctl's controllers of the BLAS library SciPy's wrappers call (none where it is not found)."""
    global _blas_controllers
    if _blas_controllers is None:
        _blas_controllers = []
        try:
            import scipy
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - both come with scikit-learn
            return _blas_controllers
        root = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
        scipy_dirs = (os.path.join(root, "scipy.libs"), os.path.dirname(os.path.abspath(scipy.__file__)))
        _blas_controllers = [lib for lib in ThreadpoolController().lib_controllers
                             if lib.user_api == "blas" and os.path.abspath(lib.filepath).startswith(scipy_dirs)]
    return _blas_controllers


def _symmetric_gram(points: torch.Tensor) -> np.ndarray | None:
    """points · pointsᵀ's lower triangle (C order) from BLAS syrk, or None where syrk is not used.

    torch has no syrk: its matmul computes both triangles. Used where torch runs one thread (a
    trial's default, ``cpus_per_trial: 1``), with SciPy's BLAS held to one thread for the call
    (restored after). With more torch threads the matmul is used: SciPy's BLAS threads and
    torch's OpenMP threads, which keep spinning after each op, then fight for the same cores
    (Symm+N-pair ``official``'s loss took 8 ms instead of 0.4 ms with 2 threads of each on 2
    cores, and one syrk thread beside two torch threads was still slower than the matmul).
    """
    if not symmetric_gram_enabled() or not points.is_contiguous() or torch.get_num_threads() != 1:
        return None
    routine = _syrk.get(points.dtype)
    if routine is None:
        return None
    size = points.shape[0]
    out = np.empty((size, size), dtype=np.float32 if points.dtype == torch.float32 else np.float64)
    changed = [(lib, lib.num_threads) for lib in _scipy_blas_controllers() if lib.num_threads != 1]
    try:
        for lib, _ in changed:
            lib.set_num_threads(1)
        # a C-order (2N, d) array is the Fortran-order (d, 2N) matrix X: syrk "T" gives Xᵀ·X, written
        # into the Fortran view of ``out`` (its upper triangle, the C-order lower one); the wrapper
        # returns that view (or a copy, were it ever unable to write in place)
        result = routine(1.0, points.numpy().T, trans=1, c=out.T, overwrite_c=1)
    finally:
        for lib, previous in changed:
            lib.set_num_threads(previous)
    return result.T


try:  # BLAS syrk through SciPy (a scikit-learn dependency); without it the Gram is a torch matmul
    from scipy.linalg.blas import dsyrk as _dsyrk, ssyrk as _ssyrk
    _syrk: dict | None = {torch.float32: _ssyrk, torch.float64: _dsyrk}
except ImportError:  # pragma: no cover - scipy is pinned in requirements.txt
    _syrk = None
_blas_controllers: list | None = None
_scratch = threading.local()


def _scratch_like(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised (rows, cols) buffer, kept per thread across calls.

    A fresh megabyte-sized tensor costs more in page faults than the loop that fills it (glibc
    hands large blocks back to the system when they are freed); the backward's gradient matrix is
    written in full and consumed by the matmul in the same call, so one buffer can serve them all.
    """
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < rows * cols:
        buffer = _scratch.buffer = torch.empty(rows * cols, dtype=dtype)
    return buffer[: rows * cols].view(rows, cols)


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
    NumPy grid), the share of off-diagonal choices that involve a synthetic set, and ``squares``,
    Σ ||x||² over the batch (a differentiable output of the node: the losses' L2 term).

    A side channel instead of extra autograd outputs for the first two: non-differentiable outputs
    cost the node more bookkeeping per call than its whole choice loop.
    """

    __slots__ = ("which", "share", "squares")


class CompiledSymmNPairLogits(torch.autograd.Function):
    """``SymmNPairLogits`` with the grid work in compiled loops; same values and gradients (rank 1).

    Called through ``compiled_symm_batch_logits`` (which builds the plan and reads the outputs) on
    the whole batch in its pair layout: no split, cat or stack between the batch and the node; one
    product forward (the Gram rows; BLAS syrk for rows [A; P]; two on the batch's views for rows A
    or a_i + p_i in a large batch) and, backward, d(batch) = M · batch with M built by the loop (two
    or three products where the rows are A, or a_i + p_i in a large batch, written into the batch's
    rows). An interleaved batch is copied to blocked order only where the rows are [A; P] and the
    batch is large (syrk then reads one contiguous matrix and the (2N, 2N) Gram needs no reorder).
    The synthetic share is counted in the loop (the flags grid and its reduction cost more than
    the count on CPU). Extra options for the angular loss (its whole logit matrix in the same
    call): ``diag_pairs``, the diagonal as the largest X_s[i] · X_t[i] over these set pairs (the
    release's ``official``), and the scales of the off-diagonal and diagonal logits. With
    ``row_mix``, ``keep_positive`` puts a_i · p_i on the diagonal (the torch node leaves the
    diagonal to the caller there).
    """

    @staticmethod
    def forward(ctx: Any, points: torch.Tensor, interleaved: bool, plan: tuple,  # type: ignore[override]
                outputs: NodeOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        row_kind, pair_rows, pair_cols, mix, diag_mode, keep_pair, diag_rows, diag_cols, synthetic_pair, consts = plan
        alpha_beta, own, eps, off_scale, diag_scale = consts
        points = points.detach()
        n = points.shape[0] // 2
        # a large batch: the (kr·N, 2N) Gram rows are more than the (2N, d) batch: the loops then do not
        # reorder an interleaved batch's Gram rows (below), and rows a_i + p_i take two backward
        # products instead of a (2N, 2N) gradient matrix
        large = (2 if row_kind == 2 else 1) * n > points.shape[1]
        anchors, positives = (points[0::2], points[1::2]) if interleaved else (points[:n], points[n:])
        sums, reordered = None, False
        if row_kind == 2:  # rows [A; P]: the Gram is symmetric, BLAS syrk computes its lower triangle
            if interleaved and large:  # a blocked copy (its Gram blocked too), not the Gram rows reordered
                points, interleaved, reordered = torch.cat([anchors, positives]), False, True
            gram_rows = _symmetric_gram(points)
            lower_only = gram_rows is not None
            if not lower_only:
                gram_rows = (points @ points.T).numpy()  # (2N, 2N)
            gram_interleaved = interleaved
        elif large:  # rows A or a_i + p_i: columns [A; P] from two products on the views
            lower_only, gram_interleaved = False, False
            rows = anchors if row_kind == 0 else anchors + positives
            sums = None if row_kind == 0 else rows
            gram_rows = np.empty((n, 2 * n), dtype=points.numpy().dtype)
            gram_view = torch.from_numpy(gram_rows)
            torch.mm(rows, anchors.T, out=gram_view[:, :n])
            torch.mm(rows, positives.T, out=gram_view[:, n:])
        else:  # small: one product, columns in the batch's order (reordered in the loops)
            lower_only, gram_interleaved = False, interleaved
            gram_rows = ((anchors if row_kind == 0 else anchors + positives) @ points.T).numpy()  # (N, 2N)
        count, gram, coef, diag, values, which = _forward_all(
            points.numpy(), gram_rows, lower_only, interleaved, gram_interleaved, 2 if row_kind == 2 else 1,
            alpha_beta, own, eps, pair_rows, pair_cols, mix, diag_mode, keep_pair, diag_rows, diag_cols, off_scale,
            diag_scale, synthetic_pair)
        outputs.which = which
        outputs.share = count / (n * (n - 1))
        ctx.kept = (points, interleaved, reordered, gram_interleaved, large, sums, gram, coef, diag, which, plan)
        # the second output: Σ ||x||² over the batch (the losses' L2 term) from the row sums already
        # taken; its gradient joins the node's own, so the loss needs no dot product node, nor a
        # fresh (2N, d) gradient and a sum of the two in backward
        return torch.from_numpy(values), torch.from_numpy(diag[0::2].sum(keepdims=True)).view(())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, grad_squares: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        points, interleaved, reordered, gram_interleaved, large, sums, gram, coef, diag, which, plan = ctx.kept
        row_kind, pair_rows, pair_cols, mix, diag_mode, _, diag_rows, diag_cols, _, consts = plan
        alpha_beta, _, eps, off_scale, diag_scale = consts
        size = points.shape[0]
        n = size // 2
        matrix = _scratch_like(size, size, points.dtype)  # written in full, consumed by the products below
        # rows a_i + p_i in a large batch: two products on the Gram rows' gradient D instead of
        # building and symmetrising the (2N, 2N) matrix (same multiply-adds, a quarter of the passes)
        one_sided = row_kind == 1 and large
        d_norms = _backward(grad.contiguous().numpy(), gram, coef, diag, 2 if row_kind == 2 else 1, row_kind == 1, one_sided,
                            gram_interleaved, alpha_beta, eps, pair_rows, pair_cols, mix, diag_mode, diag_rows, diag_cols,
                            gram.dtype.type(off_scale), gram.dtype.type(diag_scale), which,
                            gram.dtype.type(grad_squares.item()), matrix.numpy())
        d_points = torch.empty(size, points.shape[1], dtype=points.dtype)  # in the caller's layout
        d_anchors, d_positives = (d_points[0::2], d_points[1::2]) if interleaved or reordered else (d_points[:n], d_points[n:])
        anchors, positives = (points[0::2], points[1::2]) if interleaved else (points[:n], points[n:])
        if reordered:  # rows [A; P] of a blocked copy: d(batch) = M · batch, each half straight to its rows
            torch.mm(matrix[:n], points, out=d_anchors)
            torch.mm(matrix[n:], points, out=d_positives)
            return d_points, None, None, None
        if row_kind == 2 or (row_kind == 1 and not one_sided):  # d(batch) = M · batch
            torch.mm(matrix, points, out=d_points)
            return d_points, None, None, None
        # blocked Gram rows (A, or a_i + p_i when large) with their gradient D = matrix[:N]; products on
        # the batch's views (one call on [A; P] where the batch is blocked)
        d_gram = matrix[:n]
        if row_kind == 0:  # d(A) = D · [A; P] (D's A·Aᵀ part symmetrised), d(P) = D's A·Pᵀ partᵀ · A
            if gram_interleaved:  # columns in the batch's order: one product each, Q = D's A·Pᵀ part
                torch.mm(d_gram, points, out=d_anchors)
                torch.mm(matrix[n:, :n].T, anchors, out=d_positives)
            else:
                _mm_pairs(d_gram, points, anchors, positives, interleaved, d_anchors)
                torch.mm(d_gram[:, n:].T, anchors, out=d_positives)
            d_positives.addcmul_(positives, torch.from_numpy(d_norms[2])[:, None])
            return d_points, None, None, None
        # rows a_i + p_i: d(A) = D · [A; P] + D's A partᵀ · (A + P) + norms, d(P) likewise
        d_sums = torch.empty(n, points.shape[1], dtype=points.dtype)
        _mm_pairs(d_gram, points, anchors, positives, interleaved, d_sums)
        torch.mm(d_gram[:, :n].T, sums, out=d_anchors)
        torch.mm(d_gram[:, n:].T, sums, out=d_positives)
        norms = torch.from_numpy(d_norms)[:, :, None]
        d_anchors.add_(d_sums).addcmul_(anchors, norms[0]).addcmul_(positives, norms[1])
        d_positives.add_(d_sums).addcmul_(positives, norms[2]).addcmul_(anchors, norms[1])
        return d_points, None, None, None


def _mm_pairs(d_gram: torch.Tensor, points: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor,
              interleaved: bool, out: torch.Tensor) -> None:
    """out = d_gram · [A; P]: one product on a blocked batch, two on an interleaved one's views (BLAS
    reads the strided rows in place: no copy of the batch)."""
    if interleaved:
        n = anchors.shape[0]
        torch.mm(d_gram[:, :n], anchors, out=out)
        out.addmm_(d_gram[:, n:], positives)
    else:
        torch.mm(d_gram, points, out=out)


def selection_plan(pairs: list[tuple[int, int]], anchors_only: bool, keep_positive: bool, alpha: float, beta: float,
                   form: str, eps: float = 1e-12, row_mix: tuple[tuple[int, ...], ...] | None = None,
                   diag_pairs: tuple[tuple[int, int], ...] | None = None, off_scale: float = 1.0,
                   diag_scale: float = 1.0) -> tuple:
    """The compiled node's plan for a selection (``compiled_symm_batch_logits``'s options): a loss
    whose options are fixed builds it once and calls ``plan_logits``."""
    own = beta * (1 - alpha) if form == "paper" else -beta
    return _plan(tuple(pairs), anchors_only, keep_positive, row_mix, diag_pairs, (alpha * beta, own, eps, off_scale, diag_scale))


def plan_logits(points: torch.Tensor, layout: str, plan: tuple) -> tuple[torch.Tensor, NodeOutputs]:
    """(logits, the node's other outputs: ``which`` (int8 NumPy grid), ``share`` and ``squares``, the
    sum of the points' squared norms with autograd) for a ``selection_plan``."""
    if layout not in ("interleaved", "blocked"):
        raise ValueError(f"layout must be 'interleaved' or 'blocked', got {layout!r}")
    outputs = NodeOutputs()
    values, outputs.squares = CompiledSymmNPairLogits.apply(points, layout == "interleaved", plan, outputs)
    return values, outputs


def compiled_symm_batch_logits(points: torch.Tensor, layout: str, pairs: list[tuple[int, int]], anchors_only: bool,
                               keep_positive: bool, alpha: float, beta: float, form: str, eps: float = 1e-12,
                               row_mix: tuple[tuple[int, ...], ...] | None = None,
                               diag_pairs: tuple[tuple[int, int], ...] | None = None, off_scale: float = 1.0,
                               diag_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(logits, chosen set pair per entry (int8), synthetic share of the off-diagonal choices) from the
    compiled node, on the whole batch ``points`` (2N, d) in a ``pair_layout`` ("interleaved" or
    "blocked"): ``SymmNPairLogits``'s call (hardest candidate only) plus the angular options above."""
    plan = selection_plan(pairs, anchors_only, keep_positive, alpha, beta, form, eps, row_mix, diag_pairs, off_scale,
                          diag_scale)
    values, outputs = plan_logits(points, layout, plan)
    return values, torch.from_numpy(outputs.which), outputs.share


def compiled_symm_npair_logits(anchors: torch.Tensor, positives: torch.Tensor, pairs: list[tuple[int, int]],
                               anchors_only: bool, keep_positive: bool, alpha: float, beta: float, form: str,
                               eps: float = 1e-12, row_mix: tuple[tuple[int, ...], ...] | None = None,
                               diag_pairs: tuple[tuple[int, int], ...] | None = None, off_scale: float = 1.0,
                               diag_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``compiled_symm_batch_logits`` on separate anchors and positives (joined in the blocked layout)."""
    return compiled_symm_batch_logits(torch.cat([anchors, positives]), "blocked", pairs, anchors_only, keep_positive,
                                      alpha, beta, form, eps, row_mix, diag_pairs, off_scale, diag_scale)
