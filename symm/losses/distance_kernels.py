"""Compiled CPU loops (numba) for the Symm distance selections ``point4`` and ``pair16``.

Why: at the paper's batch on CPU the torch path of a Symm distance loss is bound by the number
of tensor calls: the coefficients node, the candidate grids, the first-winner choice, the
recomputation of the chosen distances (``GridSims``), the clamps / sqrt, the flags grid and
their backward are dozens of small kernels, many with fresh full-size temporaries. Here they are one
node: a compiled forward loop (choice, chosen distances, positive distances, synthetic share)
and a compiled backward loop (the closed form into one (2N, 2N) Gram gradient) around the
matmuls (the Gram forward, one product backward), which stay in torch. The pattern and two
helpers (the reflection coefficients, the Gram gradient's symmetrisation) are those of
``symm.losses.kernels``; they are called from Python here, not from the compiled loops, so a
change in that module cannot leave a stale compiled copy in this one's numba cache.

Same arithmetic and choice as ``symm.losses.distance.hardest_of_each_class`` /
``hardest_pair_of_classes`` (the references the tests compare against): the candidate squared
distance ||X_s[i]||² + ||X_t[j]||² − 2 X_s[i] · X_t[j] with X · X = Σ_kl C[s,k,i] K[k,l,i,j] C[t,l,j],
in the points' precision and in the torch path's order (exact ties stay exact, the first
candidate wins); then ``to_distance``'s clamps (squared: clamp_min(0); Euclidean: clamp_min(1e-12)
then sqrt), whose gradients pass only strictly above the clamp, as autograd's. One tie is
exact only here: for a_j = p_j the mirror images S1_j, S2_j coincide, but the torch path's
``addcmul`` (a fused multiply-add) rounds their candidates differently, so there rounding picks
one of them and here the first (S1) wins; both are the same distance. The synthetic
points' squared norms are ``_SymmCoefficients``'s: ||S1||² = own²·||p||² + along₁·(2·own·a·p +
along₁·||a||²), ||S2||² the same with a and p swapped, along_s = αβ·(a·p)/max(||axis_s||², eps).

The same-class entries (a class against itself: no negatives) are +inf and get no gradient, so
the losses need no mask: a hinge of −inf is 0, ``margin − inf`` is lifted structure's −inf score.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from symm.losses import kernels
from symm.losses.kernels import numba
from symm.losses.pairs import SQRT_CLAMP
_NO_ROW_MIX = np.zeros((0, 4), dtype=np.float64)  # the coefficients helper's summed row sets: none here

if numba is not None:
    _jit = numba.njit(cache=True, nogil=True)

    @_jit
    def _clamped(d2, low, squared):  # pragma: no cover - compiled
        """``to_distance`` of one squared distance: clamp_min(low) (NaN stays NaN), sqrt if not squared."""
        clamped = low if d2 <= low else d2
        return clamped if squared else np.sqrt(clamped)

    @_jit
    def _slope(d2, low, squared):  # pragma: no cover - compiled
        """∂ to_distance / ∂ d² (autograd's clamp passes strictly above ``low``)."""
        if not d2 > low:
            return 0.0
        return 1.0 if squared else 0.5 / np.sqrt(d2)

    @_jit
    def _synthetic_norms(diag, coef, own, sq):  # pragma: no cover - compiled
        """sq = [||a||², ||p||², ||S1||², ||S2||²] per class, in ``_SymmCoefficients``'s order of operations."""
        for j in range(diag.shape[1]):
            sa, ap, sp = diag[0, j], diag[1, j], diag[2, j]
            along_a, along_p = coef[2, 0, j], coef[3, 1, j]
            sq[0, j] = sa
            sq[1, j] = sp
            sq[2, j] = own * own * sp + along_a * (2 * own * ap + along_a * sa)
            sq[3, j] = own * own * sa + along_p * (2 * own * ap + along_p * sp)

    @_jit
    def _synthetic(c, pair16):  # pragma: no cover - compiled
        """Whether choice c involves a synthetic set (point4: the set t = c; pair16: c = 4·s + t)."""
        return (c // 4 >= 2 or c % 4 >= 2) if pair16 else c >= 2

    @_jit
    def _finish_row(best, chosen, i, low, squared, pair16):  # pragma: no cover - compiled
        """Chosen squared distances -> distances in place, the same-class entry i -> +inf; returns how
        many of the row's other-class choices involve a synthetic set."""
        count = 0
        for j in range(best.shape[0]):
            best[j] = _clamped(best[j], low, squared)
            count += _synthetic(chosen[j], pair16)
        best[i] = np.inf
        return count - _synthetic(chosen[i], pair16)

    @_jit
    def _point4_forward(gram, coef, sq, low, squared, values, which):  # pragma: no cover - compiled
        """values[r·N + i, j] = D(X_r[i], closest of class j's 4 points), which = that set (first on ties).

        Chosen on ||X_t[j]||² − 2 X_r[i] · X_t[j] (the row's own norm is the same for every t), as the torch path.
        """
        n = coef.shape[2]
        count = 0
        for row in range(2 * n):
            g0 = gram[row, :n]
            g1 = gram[row, n:]
            best = values[row]
            chosen = which[row]
            for t in range(4):
                c0, c1, st = coef[t, 0], coef[t, 1], sq[t]
                for j in range(n):
                    cand = g0[j] * c0[j] + g1[j] * c1[j]
                    value = st[j] - (cand + cand)
                    if t == 0 or value < best[j] or value != value:
                        best[j] = value
                        chosen[j] = t
            own_sq = sq[row // n, row % n]
            for j in range(n):
                best[j] = best[j] + own_sq
            count += _finish_row(best, chosen, row % n, low, squared, False)
        return count

    @_jit
    def _pair16_forward(gram, coef, sq, low, squared, values, which):  # pragma: no cover - compiled
        """values[i, j] = the smallest D(u, v), u in S_i, v in S_j; which = 4·s + t of that pair (first on ties)."""
        n = coef.shape[2]
        terms = np.empty((2, n), dtype=values.dtype)  # Σ_k r_k K[k, l, i, :] for the row set: l = 0, 1
        count = 0
        for i in range(n):
            best = values[i]
            chosen = which[i]
            for s in range(4):
                r0, r1, row_sq = coef[s, 0, i], coef[s, 1, i], sq[s, i]
                for j in range(n):
                    terms[0, j] = r0 * gram[i, j] + r1 * gram[n + i, j]
                    terms[1, j] = r0 * gram[i, n + j] + r1 * gram[n + i, n + j]
                for t in range(4):
                    c = 4 * s + t
                    c0, c1, st = coef[t, 0], coef[t, 1], sq[t]
                    for j in range(n):
                        cand = terms[0, j] * c0[j] + terms[1, j] * c1[j]
                        value = (row_sq - (cand + cand)) + st[j]
                        if c == 0 or value < best[j] or value != value:
                            best[j] = value
                            chosen[j] = c
            count += _finish_row(best, chosen, i, low, squared, True)
        return count

    @_jit
    def _positives(diag, low, squared, positive):  # pragma: no cover - compiled
        """D(a_i, p_i) from ||a||² + ||p||² − 2 a·p (as the torch path's positives)."""
        for i in range(diag.shape[1]):
            positive[i] = _clamped(diag[0, i] + diag[2, i] - 2 * diag[1, i], low, squared)

    @_jit
    def _point4_backward(grad, gram, coef, sq, low, squared, which, d_rows, d_sq, d_coef):  # pragma: no cover - compiled
        """d_rows = ∂loss/∂K (unsymmetrised, every entry written), d_sq / d_coef accumulated, per chosen entry."""
        n = coef.shape[2]
        for row in range(2 * n):
            i = row % n
            own_sq = sq[row // n, i]
            for j in range(n):
                t = which[row, j]
                c0, c1 = coef[t, 0, j], coef[t, 1, j]
                g0, g1 = gram[row, j], gram[row, n + j]
                w = 0.0
                if j != i:  # the same-class entry is +inf: no gradient
                    cand = g0 * c0 + g1 * c1
                    w = grad[row, j] * _slope((sq[t, j] - (cand + cand)) + own_sq, low, squared)
                d_rows[row, j] = -2 * w * c0
                d_rows[row, n + j] = -2 * w * c1
                d_sq[row // n, i] += w
                d_sq[t, j] += w
                d_coef[t, 0, j] -= 2 * w * g0
                d_coef[t, 1, j] -= 2 * w * g1

    @_jit
    def _pair16_backward(grad, gram, coef, sq, low, squared, which, d_rows, d_sq, d_coef):  # pragma: no cover - compiled
        """As ``_point4_backward`` for pair16: both sides' coefficients get gradient."""
        n = coef.shape[2]
        for i in range(n):
            for j in range(n):
                c = which[i, j]
                s, t = c // 4, c % 4
                r0, r1, c0, c1 = coef[s, 0, i], coef[s, 1, i], coef[t, 0, j], coef[t, 1, j]
                k00, k01, k10, k11 = gram[i, j], gram[i, n + j], gram[n + i, j], gram[n + i, n + j]
                h0 = r0 * k00 + r1 * k10
                h1 = r0 * k01 + r1 * k11
                w = 0.0
                if j != i:
                    cand = h0 * c0 + h1 * c1
                    w = grad[i, j] * _slope((sq[s, i] - (cand + cand)) + sq[t, j], low, squared)
                m = -2 * w
                d_rows[i, j] = m * r0 * c0
                d_rows[i, n + j] = m * r0 * c1
                d_rows[n + i, j] = m * r1 * c0
                d_rows[n + i, n + j] = m * r1 * c1
                d_coef[s, 0, i] += m * (k00 * c0 + k01 * c1)
                d_coef[s, 1, i] += m * (k10 * c0 + k11 * c1)
                d_coef[t, 0, j] += m * h0
                d_coef[t, 1, j] += m * h1
                d_sq[s, i] += w
                d_sq[t, j] += w

    @_jit
    def _through_norms(d_sq, d_coef, d_positive, diag, coef, own, alpha_beta, eps, low, squared, d_rows):  # pragma: no cover - compiled
        """The gradients of the squared norms, the reflection coefficients and the positive distances,
        through ||a_j||², a_j·p_j, ||p_j||², onto the Gram gradient's entries (before symmetrising:
        K[j, j] once, K[j, N + j] once)."""
        n = diag.shape[1]
        for j in range(n):
            sa, ap, sp = diag[0, j], diag[1, j], diag[2, j]
            along_a, along_p = coef[2, 0, j], coef[3, 1, j]
            w = d_positive[j] * _slope(sa + sp - 2 * ap, low, squared)  # d² = ||a||² + ||p||² − 2 a·p
            d_sa = d_sq[0, j] + w
            d_sp = d_sq[1, j] + w
            d_ap = -2 * w
            g1, g2 = d_sq[2, j], d_sq[3, j]  # ||S1||², ||S2||²
            d_along_a = d_coef[2, 0, j] + g1 * (2 * own * ap + 2 * along_a * sa)
            d_along_p = d_coef[3, 1, j] + g2 * (2 * own * ap + 2 * along_p * sp)
            d_ap += 2 * own * (g1 * along_a + g2 * along_p)
            d_sa += g1 * along_a * along_a + g2 * own * own
            d_sp += g2 * along_p * along_p + g1 * own * own
            axis_a, axis_p = max(sa, eps), max(sp, eps)
            d_ap += alpha_beta * (d_along_a / axis_a + d_along_p / axis_p)
            if sa >= eps:  # the axis clamp, as ``_SymmCoefficients``
                d_sa -= d_along_a * along_a / axis_a
            if sp >= eps:
                d_sp -= d_along_p * along_p / axis_p
            d_rows[j, j] += d_sa
            d_rows[n + j, n + j] += d_sp
            d_rows[j, n + j] += d_ap

    @_jit
    def _forward_all(gram, coef, diag, own, low, squared, pair16, sq, values, which, positive):  # pragma: no cover - compiled
        """Synthetic norms, positive distances and the selection in one call; returns the synthetic count."""
        _synthetic_norms(diag, coef, own, sq)
        _positives(diag, low, squared, positive)
        if pair16:
            return _pair16_forward(gram, coef, sq, low, squared, values, which)
        return _point4_forward(gram, coef, sq, low, squared, values, which)

    @_jit
    def _backward_all(d_values, d_positive, gram, coef, diag, sq, own, alpha_beta, eps, low, squared, pair16, which,
                      d_rows):  # pragma: no cover - compiled
        """The whole backward but the symmetrisation: the grid, then the chain through the norms."""
        n = diag.shape[1]
        d_sq = np.zeros((4, n))
        d_coef = np.zeros((4, 2, n))
        if pair16:
            _pair16_backward(d_values, gram, coef, sq, low, squared, which, d_rows, d_sq, d_coef)
        else:
            _point4_backward(d_values, gram, coef, sq, low, squared, which, d_rows, d_sq, d_coef)
        _through_norms(d_sq, d_coef, d_positive, diag, coef, own, alpha_beta, eps, low, squared, d_rows)


class CompiledSymmDistances(torch.autograd.Function):
    """(anchors, positives) -> (Symm negatives, positive distances D(a_i, p_i), choice, synthetic share), one node.

    ``pair16`` False (point4): negatives (2N, N), row r·N + i = real point r of class i (a_i, then
    p_i), column j = the closest of class j's points {a_j, p_j, S1_j, S2_j}; True: (N, N), the
    smallest distance over the 16 pairs of S_i × S_j. +inf on the same-class entries. The choice
    (int8, the negatives' shape, no gradient): the set t (point4) or 4·s + t (pair16). The share
    (0-d float64, no gradient): of the other-class choices, those involving a synthetic point.
    Hardest candidate only (hardness rank 1); ``rescale_to_axis_norm`` is not handled here.

    Per call: one cat, one matmul and two compiled calls forward; two compiled calls and one matmul backward.
    """

    @staticmethod
    def forward(ctx: Any, anchors: torch.Tensor, positives: torch.Tensor, pair16: bool, squared: bool,  # type: ignore[override]
                alpha: float, beta: float, form: str, eps: float = 1e-12
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = anchors.shape[0]
        points = torch.cat([anchors, positives])
        gram = points @ points.T  # (2N, 2N)
        coef, diag, sq = gram.new_empty(4, 2, n), gram.new_empty(3, n), gram.new_empty(4, n)
        values = gram.new_empty(n if pair16 else 2 * n, n)
        which = torch.empty(values.shape, dtype=torch.int8)  # at most 16 set pairs
        positive = gram.new_empty(n)
        own = beta * (1 - alpha) if form == "paper" else -beta
        low = points.numpy().dtype.type(0.0 if squared else SQRT_CLAMP)  # the clamp in the points' precision
        arrays = (gram.numpy(), coef.numpy(), diag.numpy(), sq.numpy())
        point_rows = points.numpy()
        kernels._coefficients(point_rows, False, alpha * beta, own, eps, _NO_ROW_MIX, arrays[2], arrays[1])
        count = _forward_all(arrays[0], arrays[1], arrays[2], own, low, squared, pair16, arrays[3], values.numpy(),
                             which.numpy(), positive.numpy())
        share = torch.tensor(count / (values.shape[0] * (n - 1)), dtype=torch.float64)
        ctx.kept = (points, gram, arrays, which.numpy(), pair16, squared, low, own, alpha * beta, eps)
        ctx.mark_non_differentiable(which, share)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for ``which``, ``share`` (or an unused output)
        return values, positive, which, share

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_values: torch.Tensor | None, d_positive: torch.Tensor | None,  # type: ignore[override]
                 *_: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        if d_values is None and d_positive is None:
            return (None,) * 8
        points, gram_tensor, (gram, coef, diag, sq), which, pair16, squared, low, own, alpha_beta, eps = ctx.kept
        n = diag.shape[1]
        d_rows = kernels._scratch_like(*gram_tensor.shape, gram_tensor.dtype)  # every entry written below
        if d_values is None:  # only the positives were used
            d_values = torch.zeros(which.shape, dtype=gram_tensor.dtype)
        if d_positive is None:
            d_positive = torch.zeros(n, dtype=gram_tensor.dtype)
        _backward_all(d_values.contiguous().numpy(), d_positive.contiguous().numpy(), gram, coef, diag, sq, own, alpha_beta,
                      eps, low, squared, pair16, which, d_rows.numpy())
        kernels._symmetrise(d_rows.numpy(), 2 * n)  # K = points · pointsᵀ: dpoints = (dK + dKᵀ) · points
        d_points = d_rows @ points
        return d_points[:n], d_points[n:], None, None, None, None, None, None


def symm_distances(anchors: torch.Tensor, positives: torch.Tensor, pair16: bool, squared: bool, alpha: float, beta: float,
                   form: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(negatives with +inf on the same-class entries, positive distances, synthetic share) from
    ``CompiledSymmDistances`` (the caller checks ``symm.losses.kernels.usable``)."""
    negatives, positive, _, share = CompiledSymmDistances.apply(anchors, positives, pair16, squared, alpha, beta, form)
    return negatives, positive, share.item()
