"""Closed-form autograd nodes for the plain contrastive and batch-hard triplet losses.

Both need the positive distances D(a_i, p_i) and the distances between all 2N real points,
D = to_distance(||x_i||² + ||x_j||² − 2 x_i·x_j). Written with autograd that records ≈ 15
kernels on the (2N, 2N) grid forward (sums, clamps, sqrt, masks, relu) and replays each in
backward, plus autograd's product / norm / stack / cat nodes for the norms and the positives
and a zero-filled grid for a gather's gradient; at the paper's batch on CPU those calls cost
more than the Gram matmuls. Here each loss's ingredients are one node on the batch's points
(one (2N, d) tensor in its pair layout): the forward runs without autograd on one or two
buffers, in place, with the same arithmetic as before (the positives as ``real_sets`` and
``to_distance``); the backward is the closed form — the weights ∂loss/∂d² of the entries that
count go into one matrix M with d(points) = M · points (one matmul), or its sparse form when
each row keeps one column. The autograd forms in ``symm.losses.distance`` are the references
the tests compare against (tests/test_real_grid.py).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from symm.losses.base import kth_hardest
from symm.losses.pairs import SQRT_CLAMP, pair_views, to_distance


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


def _passes(d2: torch.Tensor, low: float) -> torch.Tensor:
    """0/1 floats, 1 where to_distance's clamp at ``low`` passes the gradient (d² ≥ low). Float
    arithmetic, as bool tensors are slow on CPU; d² − low is 0 only when d² == low: exact."""
    return torch.sub(d2, low).sign_().add_(1).clamp_max_(1)


def _pass_mask(d2: torch.Tensor, low: float) -> torch.Tensor | None:
    """``_passes`` on a grid, or None when the clamp passes everywhere (the usual case: no mask grid)."""
    return None if bool(d2.amin() >= low) else _passes(d2, low)


def _positive_distances(points: torch.Tensor, layout: str, squared: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(squared norms [A; P] (2, N), d²(a_i, p_i), D(a_i, p_i)) with ``real_sets`` and ``to_distance``'s
    arithmetic (the same values as the loss's positive term had before these nodes)."""
    anchors, positives = pair_views(points, layout)
    sq = torch.stack([anchors, positives]).pow(2).sum(-1)
    pos_d2 = sq[0] + sq[1] - 2 * (anchors * positives).sum(1)
    return sq, pos_d2, to_distance(pos_d2, squared)


def _distance_factor(d2: torch.Tensor, distance: torch.Tensor, squared: bool) -> torch.Tensor:
    """∂D/∂d² of to_distance at chosen entries: the clamp's mask, times 1/(2D) for Euclidean distances."""
    low = 0.0 if squared else SQRT_CLAMP
    factor = _passes(d2, low)
    return factor if squared else factor.div_(distance).mul_(0.5)


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
        sq, pos_d2, positive = _positive_distances(points, layout, squared)
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
            ctx.save_for_backward(points, weight, _distance_factor(pos_d2, positive, squared))
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


class HardestTripletTerms(torch.autograd.Function):
    """points (2N, d) in a pair layout -> (D(a_i, p_i) (N,), (2N,) distance from each point to its
    closest point of another class, rows [A; P]).

    The batch-hard triplet loss's two ingredients as one node, with the arithmetic of the code it
    replaces (``real_sets`` / ``to_distance`` for the positives; ``real_distances(...).gather(1,
    closest_negative(...))``, the first column of the smallest distance in [A; P] order, for the
    negatives). Backward through the chosen entries only: row i and its choice c_i exchange
    −2 w_i x (the Gram's share), the squared norms put 2 Σ w on the diagonal, a positive pair
    the same with its own weight; no (2N, 2N) gradient grid and no autograd product / norm /
    stack / cat nodes.
    """

    @staticmethod
    def forward(ctx: Any, points: torch.Tensor, layout: str, squared: bool  # type: ignore[override]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n = points.shape[0] // 2
        sq, pos_d2, positive = _positive_distances(points, layout, squared)
        blocked = points if layout == "blocked" else torch.cat(pair_views(points, layout))  # [A; P], the choice's order
        d2 = _sq_distances(blocked, sq.reshape(-1))
        dist = torch.clamp_min(d2, 0.0 if squared else SQRT_CLAMP)
        if not squared:
            dist.sqrt_()
        _same_class_entries(dist, n).fill_(float("inf"))  # never chosen: another class always exists
        negative, column = kth_hardest(dist, 1, dim=1, largest=False, scratch=True)
        if ctx.needs_input_grad[0]:
            factor = _distance_factor(d2.gather(1, column[:, None])[:, 0], negative, squared)
            ctx.save_for_backward(blocked, column, factor, _distance_factor(pos_d2, positive, squared))
            ctx.layout = layout
        return positive, negative

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_positive: torch.Tensor, d_negative: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        blocked, column, factor, pos_factor = ctx.saved_tensors
        n = blocked.shape[0] // 2
        w = d_negative * factor  # ∂loss/∂d² at (i, c_i)
        w_pair = d_positive * pos_factor  # ∂loss/∂d²(a_i, p_i)
        d_sq = w.clone().index_add_(0, column, w)
        d_sq.view(2, n).add_(w_pair)
        d_points = blocked * d_sq.mul_(2)[:, None]  # from the squared norms
        scale = w.mul_(-2)[:, None]  # dG[i, c_i] = −2 w_i
        d_points.addcmul_(blocked.index_select(0, column), scale)  # row i: −2 w_i x_{c_i}
        d_points.index_add_(0, column, blocked * scale)  # row c_i: −2 w_i x_i
        pair_scale = w_pair.mul_(-2)[:, None]
        d_points[:n].addcmul_(blocked[n:], pair_scale)
        d_points[n:].addcmul_(blocked[:n], pair_scale)
        if ctx.layout == "interleaved":  # back to the batch's row order
            d_points = d_points.view(2, n, -1).transpose(0, 1).reshape(2 * n, -1)
        return d_points, None, None


def contrastive_terms(points: torch.Tensor, layout: str, margin: float, squared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive distances (N,), mean other-class hinge) of points in a pair layout (``ContrastiveTerms``)."""
    return ContrastiveTerms.apply(points, layout, margin, squared)


def hardest_triplet_terms(points: torch.Tensor, layout: str, squared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive distances (N,), closest other-class distances (2N,)) of points in a pair layout (``HardestTripletTerms``)."""
    return HardestTripletTerms.apply(points, layout, squared)
