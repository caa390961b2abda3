"""Closed-form autograd nodes on the (2N, 2N) distances between the real points.

The plain contrastive and batch-hard triplet losses need every distance between the 2N real
points [A; P] (row s·N + i is set s, class i), D = to_distance(||x_i||² + ||x_j||² − 2 x_i·x_j).
Written with autograd that records about 15 kernels on the grid forward (sums, clamps, sqrt,
masks, relu) and replays each in backward, plus a zero-filled grid for a gather's gradient;
at the paper's batch on CPU those calls cost more than the Gram matmuls. Here the forward
runs without autograd on one or two buffers, in place, and the backward is the closed form:
a weight W[i, j] = ∂loss/∂d²[i, j] per entry gives d(sq)_i = Σ_j W_ij + W_ji and
d(points) = −2 (W + Wᵀ) · points — one matmul, or its sparse form when each row keeps one
column. The squared norms come in as an input (the positive term shares them), so values
and their gradient paths stay those of ``real_distances``; the autograd forms in
``symm.losses.distance`` are the references the tests compare against.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from symm.losses.base import kth_hardest
from symm.losses.pairs import pair_views, to_distance

SQRT_CLAMP = 1e-12  # as ``to_distance``: squared distances below this get no gradient through sqrt


def _same_class_entries(grid: torch.Tensor, n: int, layout: str = "blocked") -> torch.Tensor:
    """View [s, t, i] of the entries (point s of class i, point t of class i) of a contiguous
    (2N, 2N) grid: a point against itself and its pair. One strided view, no mask grid.
    ``layout``: the rows' order, "blocked" ([A; P]: point s of class i is row s·N + i) or
    "interleaved" (row 2i + s)."""
    if layout == "interleaved":
        return grid.as_strided((2, 2, n), (2 * n, 1, 4 * n + 2), grid.storage_offset())
    return grid.as_strided((2, 2, n), (2 * n * n, n, 2 * n + 1), grid.storage_offset())


def _sq_distances(points: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """(sq_i + sq_j) − 2 x_i·x_j into one fresh (2N, 2N) buffer (the Gram is accumulated into it)."""
    return torch.add(sq[:, None], sq[None, :]).addmm_(points, points.T, alpha=-2)


def _pass_mask(d2: torch.Tensor, low: float) -> torch.Tensor | None:
    """0/1 floats, 1 where to_distance's clamp at ``low`` passes the gradient (d² ≥ low); None
    when it passes everywhere (the usual case: then no mask grid is built). Float arithmetic,
    as bool grids are slow on CPU; d² − low is 0 only when d² == low, so the sign is exact."""
    if bool(d2.amin() >= low):
        return None
    return torch.sub(d2, low).sign_().add_(1).clamp_max_(1)


class ContrastiveTerms(torch.autograd.Function):
    """points (2N, d) in a pair layout -> (D(a_i, p_i) (N,), mean over other-class entries of [margin − D]₊).

    The all-pairs contrastive loss's two ingredients as one node: the positive distances with
    ``real_sets`` / ``to_distance``'s arithmetic (the same values), and the negative term of
    ``masked_mean(relu(margin − real_distances), other_class_mask)``. Backward in closed form,
    everything into one (2N, 2N) matrix M with d(points) = M · points (one matmul): the negative
    weights W = ∂loss/∂d² give −2 (W + Wᵀ) off the same-class entries and 2·Σ_j (W_ij + W_ji) on
    the diagonal (from ||x_i||²); a positive pair's weight w_i adds 2 w_i on both diagonal
    entries and −2 w_i on the pair's two entries. No gradient flows through autograd's
    product / norm / stack / cat nodes, which at the paper's batch cost more than the matmul.
    """

    @staticmethod
    def forward(ctx: Any, points: torch.Tensor, layout: str, margin: float, squared: bool  # type: ignore[override]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n = points.shape[0] // 2
        count = 4 * n * n - 4 * n  # every point has exactly two same-class entries: itself and its pair
        low = 0.0 if squared else SQRT_CLAMP
        anchors, positives = pair_views(points, layout)
        sq = torch.stack([anchors, positives]).pow(2).sum(-1)  # as real_sets (the same values)
        pos_d2 = sq[0] + sq[1] - 2 * (anchors * positives).sum(1)
        positive = to_distance(pos_d2, squared)
        d2 = _sq_distances(points, sq.T.reshape(-1) if layout == "interleaved" else sq.reshape(-1))
        _same_class_entries(d2, n, layout).fill_(float("inf"))  # D = inf there: the hinge is 0, so is W
        passes = _pass_mask(d2, low)
        dist = d2.clamp_min_(0.0) if squared else d2.clamp_min_(SQRT_CLAMP).sqrt_()
        hinge = torch.rsub(dist, margin).clamp_min_(0.0)
        negative = hinge.sum() / count
        if ctx.needs_input_grad[0]:
            # −2 W / g (dG = −2W): the backward needs only W + Wᵀ
            weight = hinge.sign_()  # relu passes where the hinge is > 0 (hinge >= 0 here)
            if squared:
                weight.mul_(2.0 / count)
            else:
                weight.div_(dist).mul_(1.0 / count)  # d sqrt(x)/dx = 1/(2D): the 2 cancels the −2
            if passes is not None:
                weight.mul_(passes)
            pos_factor = torch.sub(pos_d2, low).sign_().add_(1).clamp_max_(1)  # the clamp's gradient mask
            if not squared:
                pos_factor.div_(positive).mul_(0.5)
            ctx.save_for_backward(points, weight, pos_factor)
            ctx.layout = layout
        return positive, negative

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_positive: torch.Tensor, d_negative: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        points, weight, pos_factor = ctx.saved_tensors
        n = points.shape[0] // 2
        m = torch.add(weight, weight.T).mul_(d_negative)  # −2 (W + Wᵀ); 0 on the same-class entries
        diagonal = m.sum(1).neg_()  # 2 Σ_j (W_ij + W_ji): the squared norms' share, in row order
        diagonal = diagonal.view(n, 2).T if ctx.layout == "interleaved" else diagonal.view(2, n)  # [s, i]
        two_w = d_positive.mul(pos_factor).mul_(2)  # 2 ∂loss/∂d²(a_i, p_i)
        same = _same_class_entries(m, n, ctx.layout)
        torch.add(diagonal[0], two_w, out=same[0, 0])
        torch.add(diagonal[1], two_w, out=same[1, 1])
        torch.neg(two_w, out=same[0, 1])
        same[1, 0].copy_(same[0, 1])
        return m @ points, None, None, None


class ClosestOtherClass(torch.autograd.Function):
    """(points (2N, d), sq (2N,)) -> (2N,) distance from each point to its closest point of another class.

    ``real_distances(...).gather(1, closest_negative(...))`` as one node: the choice (the first
    column of the smallest distance, as there) and the values without autograd; backward
    through the 2N chosen entries only (two row gathers, no (2N, 2N) gradient grid).
    """

    @staticmethod
    def forward(ctx: Any, points: torch.Tensor, sq: torch.Tensor, squared: bool) -> torch.Tensor:  # type: ignore[override]
        n = points.shape[0] // 2
        d2 = _sq_distances(points, sq)
        low = 0.0 if squared else SQRT_CLAMP
        dist = torch.clamp_min(d2, low)
        if not squared:
            dist.sqrt_()
        _same_class_entries(dist, n).fill_(float("inf"))  # never chosen: another class always exists
        value, column = kth_hardest(dist, 1, dim=1, largest=False, scratch=True)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            chosen_d2 = d2.gather(1, column[:, None])[:, 0]
            factor = torch.sub(chosen_d2, low).sign_().add_(1).clamp_max_(1)  # the clamp's gradient mask
            if not squared:
                factor.div_(value).mul_(0.5)  # d sqrt(x)/dx = 1/(2D)
            ctx.save_for_backward(points, column, factor)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        points, column, factor = ctx.saved_tensors
        w = grad * factor  # ∂loss/∂d² at (i, column_i)
        d_points = d_sq = None
        if ctx.needs_input_grad[0]:  # dG[i, c_i] = −2 w_i: row i gets −2 w_i x_c, row c_i gets −2 w_i x_i
            scale = (-2 * w)[:, None]
            d_points = points.index_select(0, column).mul_(scale)
            d_points.index_add_(0, column, points * scale)
        if ctx.needs_input_grad[1]:
            d_sq = w.clone().index_add_(0, column, w)
        return d_points, d_sq, None


def contrastive_terms(points: torch.Tensor, layout: str, margin: float, squared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive distances (N,), mean other-class hinge) of points in a pair layout (``ContrastiveTerms``)."""
    return ContrastiveTerms.apply(points, layout, margin, squared)


def closest_other_class(points: torch.Tensor, sq: torch.Tensor, squared: bool) -> torch.Tensor:
    """(2N,) distance to each real point's closest point of another class (``ClosestOtherClass``)."""
    return ClosestOtherClass.apply(points, sq, squared)
