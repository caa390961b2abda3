"""Distance-based losses on N-pair batches: triplet, semi-hard triplet, lifted structure, contrastive.

Anchors are the real points (each a_i and each p_i, its positive the other one). Negative
candidates depend on the strategy:
- ``none``: every real point of another class;
- ``hardest``: the closest real point of another class (batch-hard, Hermans et al. 2017);
- ``semihard``: FaceNet / TF ``triplet_semihard_loss``: the closest negative still farther than
  the positive, else the farthest negative;
- ``symm``: ``point4`` — per (anchor, other class j), the closest of S_j = {a_j, p_j, a'_j, p'_j};
  ``pair16`` — per pair of classes (i, j), the closest of the 16 pairs u in S_i, v in S_j (the
  positive stays the original a_i, p_i); ``semihard`` (triplet only) — the semi-hard rule over a
  pool holding the synthetic points of other classes too.
"""
from __future__ import annotations

import torch

from symm.losses import kernels
from symm.losses.base import PairLoss, check_non_negative, kth_hardest
from symm.losses.distance_kernels import symm_distances
from symm.losses.pairs import SQRT_CLAMP, PointSets, to_distance
from symm.losses.real_grid import contrastive_terms, hardest_triplet_terms

INF = float("inf")


def real_distances(sets: PointSets, squared: bool) -> torch.Tensor:
    """(2N, 2N) distances between the real points with autograd; point s·N + i is set s, class i."""
    sq = sets.sq_norms[:2].reshape(-1)
    gram = sets.gram.transpose(1, 2).reshape(2 * sets.n_classes, -1)  # the (2N, 2N) Gram, a view
    return to_distance((sq[:, None] + sq[None, :]) - 2 * gram, squared)


def _selected_distances(sets: PointSets, row_sets: torch.Tensor | None, col_sets: torch.Tensor, squared: bool) -> torch.Tensor:
    """D(X_r[i], X_t[j]) with autograd on the (..., N, N) grid of chosen sets (row_sets None: batch b = real set b)."""
    return to_distance(sets.grid_sq_distances(row_sets, col_sets), squared)


def hardest_of_each_class(sets: PointSets, squared: bool, rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """point4: (2N, N) distance from each real anchor to the rank-th closest point of each class, + synthetic flags.

    Chosen without autograd on all 4 candidates (squared distances rank alike), then only the
    chosen distances are recomputed with autograd.
    """
    n_sets, n = sets.n_sets, sets.n_classes
    pairs = [(r, t) for r in range(2) for t in range(n_sets)]
    with torch.no_grad():
        sq = sets.sq_norms.detach()
        cands = sets.candidates(pairs).view(2, n_sets, n, n)  # [r, t, i, j]
        d2 = cands.mul_(-2).add_(sq[None, :, None, :])  # in place; + ||X_r[i]||², the same for every t
        which = kth_hardest(d2, rank, dim=1, largest=False, scratch=True, float_index=True)[1]  # (2, N, N)
    values = _selected_distances(sets, None, which, squared)  # rows: a_i for batch 0, p_i for batch 1
    return values.reshape(2 * n, n), (which >= 2).reshape(2 * n, n)


def hardest_pair_of_classes(sets: PointSets, squared: bool, rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """pair16: (N, N) rank-th smallest distance over u in S_i, v in S_j, + synthetic flags."""
    n_sets = sets.n_sets
    pairs = [(r, t) for r in range(n_sets) for t in range(n_sets)]
    with torch.no_grad():
        sq = sets.sq_norms.detach()
        d2 = sets.candidates(pairs).mul_(-2).add_(sq.repeat_interleave(n_sets, 0)[:, :, None]).add_(sq.repeat(n_sets, 1)[:, None, :])
        which = kth_hardest(d2, rank, dim=0, largest=False, scratch=True, float_index=True)[1]
        rows = torch.div(which, n_sets, rounding_mode="floor")  # float arithmetic: exact for these small integers
        cols = which - n_sets * rows
    synthetic = ((rows >= 2) | (cols >= 2)).float()
    return _selected_distances(sets, rows, cols, squared), synthetic


def pool_distances(sets: PointSets, squared: bool) -> torch.Tensor:
    """(2N, S·N) distances from the real points to every point, without autograd (for choosing)."""
    n_sets, n = sets.n_sets, sets.n_classes
    with torch.no_grad():
        cands = sets.candidates([(r, t) for r in range(2) for t in range(n_sets)]).view(2, n_sets, n, n)
        sq = sets.sq_norms.detach()
        pool = cands.new_empty(2, n, n_sets, n)  # written once, in the (2N, S·N) layout (no full-size temporaries)
        d2 = torch.mul(cands, -2, out=pool.permute(0, 2, 1, 3)).add_(sq[:2, None, :, None]).add_(sq[None, :, None, :])
        d2.clamp_min_(0)
        if not squared:  # as to_distance
            d2.clamp_min_(SQRT_CLAMP).sqrt_()
        return pool.view(2 * n, n_sets * n)


def point_distances(sets: PointSets, rows: torch.Tensor, cols: torch.Tensor, squared: bool) -> torch.Tensor:
    """Distances with autograd between points given by index into the (2N, S·N) pool layout."""
    n = sets.n_classes
    row_sets, row_classes, col_sets, col_classes = rows // n, rows % n, cols // n, cols % n
    sq = sets.sq_norms[row_sets, row_classes] + sets.sq_norms[col_sets, col_classes]
    return to_distance(sq - 2 * sets.point_sims(row_sets, row_classes, col_sets, col_classes), squared)


def other_class_mask(n_rows_sets: int, n_cols_sets: int, n: int, device: torch.device,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """(R·N, C·N) mask of the entries whose row and column classes differ; with ``dtype`` as 0/1 floats."""
    if dtype is not None:  # float arithmetic: bool grids are slow on CPU
        rows = torch.arange(n, device=device, dtype=dtype).repeat(n_rows_sets)
        cols = torch.arange(n, device=device, dtype=dtype).repeat(n_cols_sets)
        return (rows[:, None] - cols[None, :]).abs_().clamp_max_(1)
    rows = torch.arange(n, device=device).repeat(n_rows_sets)
    cols = torch.arange(n, device=device).repeat(n_cols_sets)
    return rows[:, None] != cols[None, :]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the entries where ``mask`` is set, as a product with a float mask (boolean indexing is slow)."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum()


def closest_negative(distances: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per row, the first column of the smallest distance among the negatives (0/1 float mask), as
    ``torch.where(negative, distances, inf).argmin(1)`` but in float arithmetic (faster on CPU)."""
    big = distances.amax() + 1  # distances are >= 0
    pushed = (1 - negative).mul_(big).add_(distances)  # d on negatives, d + big elsewhere
    return kth_hardest(pushed, 1, dim=1, largest=False, scratch=True)[1]


def semihard_negatives(candidates: torch.Tensor, negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """TF's rule per row: the column of the smallest negative distance > positive, else of the largest.

    Float arithmetic only (on CPU ``where``, bool ``any`` and ``argmin`` are scalar loops): entries
    that do not qualify are pushed past every distance by ``big`` (> the largest distance; the
    qualifying ones keep their exact value), and the first winner is found as in ``kth_hardest``
    (the first index, as ``argmin`` / ``argmax``). ``negative`` may be a bool or a 0/1 float mask.
    """
    weights = negative if negative.is_floating_point() else negative.to(candidates.dtype)
    big = candidates.amax() + 1  # distances are >= 0
    farther = (candidates - positive[:, None]).sign_().clamp_min_(0).mul_(weights)  # 1: a negative farther than the positive
    has_farther = farther.amax(1)
    outside = farther.neg_().add_(1).mul_(big).add_(candidates)  # d where farther, d + big elsewhere
    outside_col = kth_hardest(outside, 1, dim=1, largest=False, scratch=True)[1]
    inside = (weights - 1).mul_(big).addcmul_(candidates, weights)  # d on negatives, -big elsewhere
    inside_col = kth_hardest(inside, 1, dim=1, largest=True, scratch=True)[1]
    return torch.where(has_farther > 0, outside_col, inside_col)


class _DistanceLoss(PairLoss):
    normalize_by_default = True
    default_symm_mode = "point4"

    def __init__(self, *, squared: bool, **common) -> None:
        super().__init__(**common)
        self.squared = squared

    def geometry(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[PointSets, torch.Tensor]:
        """The point sets and the (N,) positive distances D(a_i, p_i)."""
        _, _, sets = self.pairs_and_sets(embeddings, labels)
        sq = sets.sq_norms
        return sets, to_distance(sq[0] + sq[1] - 2 * sets.ap, self.squared)

    def symm_negatives(self, sets: PointSets, float_mask: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """point4 / pair16: (negatives, mask of the entries that count (0/1 floats or bool), synthetic flags)."""
        n = sets.n_classes
        dtype = sets.coef.dtype if float_mask else None
        if self.symm_mode == "pair16":
            negative, synthetic = hardest_pair_of_classes(sets, self.squared, self.hardness_rank)
            other = other_class_mask(1, 1, n, negative.device, dtype)
        else:
            negative, synthetic = hardest_of_each_class(sets, self.squared, self.hardness_rank)
            other = other_class_mask(2, 1, n, negative.device, dtype)
        self.record_synthetic(synthetic.view(-1, n, n), off_diagonal=True)
        return negative, other, synthetic

    def compiled_symm(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """point4 / pair16 through the compiled node where it applies (``kernels.usable``, no axis-norm
        rescale), else None: (negatives, +inf on the same-class entries; positive distances; how many
        negatives count). Records the synthetic share as ``symm_negatives`` does."""
        if (self.negatives != "symm" or self.symm_mode not in ("point4", "pair16")
                or self.reflection["rescale_to_axis_norm"] or not kernels.usable(embeddings, self.hardness_rank)):
            return None
        anchors, positives = self.normalized_pairs(embeddings, labels)
        reflection = self.reflection
        negative, positive, share = symm_distances(anchors, positives, self.symm_mode == "pair16", self.squared,
                                                   reflection["alpha"], reflection["beta"], reflection["form"])
        self.record_synthetic_share(share)
        return negative, positive, negative.shape[0] * (negative.shape[1] - 1)


class TripletLoss(_DistanceLoss):
    """mean [D(a,p) − D(a,n) + margin]₊; squared Euclidean on L2-normalised embeddings by default."""

    name = "triplet"
    negative_strategies = ("none", "hardest", "semihard", "symm")
    symm_modes = ("point4", "pair16", "semihard")

    def __init__(self, *, margin: float = 0.2, squared: bool = True, **common) -> None:
        super().__init__(squared=squared, **common)
        check_non_negative(margin=margin)
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.negatives == "hardest":  # one node: choice, values and a sparse backward (symm.losses.real_grid)
            positive, negative = hardest_triplet_terms(*self.real_points(embeddings, labels), self.squared)
            return torch.relu(positive.repeat(2) - negative + self.margin).mean()
        compiled = self.compiled_symm(embeddings, labels)
        if compiled is not None:  # the same-class entries are +inf: their hinge is 0
            negative, positive, count = compiled
            anchor_positive = positive[:, None] if self.symm_mode == "pair16" else positive.repeat(2)[:, None]
            return torch.relu(anchor_positive - negative + self.margin).sum() / count
        sets, positive = self.geometry(embeddings, labels)
        n = sets.n_classes
        if self.symm_mode in ("point4", "pair16"):
            negative, other, _ = self.symm_negatives(sets)
            anchor_positive = positive[:, None] if self.symm_mode == "pair16" else positive.repeat(2)[:, None]
            return masked_mean(torch.relu(anchor_positive - negative + self.margin), other)
        anchor_positive = positive.repeat(2)  # anchors a_i then p_i
        if self.negatives == "symm":  # semi-hard over the real and synthetic points
            pool = pool_distances(sets, self.squared)
            other = other_class_mask(2, sets.n_sets, n, pool.device, pool.dtype)
            column = semihard_negatives(pool, other, anchor_positive.detach())
            self.record_synthetic(column >= 2 * n)
            negative = point_distances(sets, torch.arange(2 * n, device=pool.device), column, self.squared)
            return torch.relu(anchor_positive - negative + self.margin).mean()
        rows = real_distances(sets, self.squared)
        other = other_class_mask(2, 2, n, rows.device, rows.dtype)
        if self.negatives == "none":
            return masked_mean(torch.relu(anchor_positive[:, None] - rows + self.margin), other)
        column = semihard_negatives(rows.detach(), other, anchor_positive.detach())  # semihard over the real points
        negative = rows.gather(1, column[:, None])[:, 0]
        return torch.relu(anchor_positive - negative + self.margin).mean()


class SemiHardTripletLoss(TripletLoss):
    """Triplet† — TF ``triplet_semihard_loss`` conventions: squared distances, margin 1.0.

    ``negatives="symm"`` puts the synthetic points in the semi-hard pool (Symm+Triplet†).
    """

    name = "semihard_triplet"
    negative_strategies = ("none", "symm")
    symm_modes = ("semihard",)
    default_symm_mode = "semihard"

    def __init__(self, *, margin: float = 1.0, negatives: str = "none", **common) -> None:
        if negatives not in self.negative_strategies:
            raise ValueError(f"loss 'semihard_triplet' supports negatives 'none' or 'symm', got {negatives!r}")
        super().__init__(margin=margin, negatives=negatives, **common)
        if self.negatives == "none":
            self.negatives = "semihard"


class LiftedStructureLoss(_DistanceLoss):
    """Lifted structure (Oh Song 2016), TF-contrib form, on raw (un-normalised) embeddings.

    J_i = log(Σ_{k∈N(a_i)} exp(m − D(a_i,k)) + Σ_{l∈N(p_i)} exp(m − D(p_i,l))) + D(a_i,p_i);
    loss = mean_i [J_i]₊² / 2, Euclidean (not squared) distances. With Symm, each negative class
    contributes its hardest candidate (point4: per anchor side; pair16: once per class pair).
    """

    name = "lifted"
    negative_strategies = ("none", "symm")
    symm_modes = ("point4", "pair16")
    normalize_by_default = False

    def __init__(self, *, margin: float = 1.0, squared: bool = False, **common) -> None:
        super().__init__(squared=squared, **common)
        check_non_negative(margin=margin)
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        compiled = self.compiled_symm(embeddings, labels)
        if compiled is not None:  # +inf on the same-class entries: their score is already -inf
            negative, positive, _ = compiled
            n = positive.shape[0]
            scores = self.margin - negative
        else:
            sets, positive = self.geometry(embeddings, labels)
            n = sets.n_classes
            if self.negatives == "symm":
                negative, other, _ = self.symm_negatives(sets, float_mask=False)  # bool: where(..., -inf) below
            else:
                negative = real_distances(sets, self.squared)
                other = other_class_mask(2, 2, n, negative.device)
            scores = torch.where(other, self.margin - negative, -INF)
        if self.symm_mode != "pair16":  # a_i's and p_i's negatives together
            scores = scores.view(2, n, -1).transpose(0, 1).reshape(n, -1)
        objective = torch.logsumexp(scores, dim=1) + positive
        return (torch.relu(objective) ** 2).mean() / 2


class ContrastiveLoss(_DistanceLoss):
    """mean [D(a,p) − pos_margin]₊ + mean [margin − D(a,n)]₊ (Hadsell 2006; PML's form).

    Euclidean (not squared) distances on L2-normalised embeddings by default.
    """

    name = "contrastive"
    negative_strategies = ("none", "hardest", "symm")
    symm_modes = ("point4", "pair16")

    def __init__(self, *, margin: float = 0.5, pos_margin: float = 0.0, squared: bool = False, **common) -> None:
        super().__init__(squared=squared, **common)
        check_non_negative(margin=margin, pos_margin=pos_margin)
        self.margin = margin
        self.pos_margin = pos_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.negatives == "none":  # one node with a closed-form backward (symm.losses.real_grid)
            positive, negative_term = contrastive_terms(*self.real_points(embeddings, labels), self.margin, self.squared)
            return torch.relu(positive - self.pos_margin).mean() + negative_term
        compiled = self.compiled_symm(embeddings, labels)
        if compiled is not None:  # the same-class entries are +inf: their hinge is 0
            negative, positive, count = compiled
            return torch.relu(positive - self.pos_margin).mean() + torch.relu(self.margin - negative).sum() / count
        sets, positive = self.geometry(embeddings, labels)
        n = sets.n_classes
        positive_term = torch.relu(positive - self.pos_margin).mean()
        if self.negatives == "symm":
            negative, other, _ = self.symm_negatives(sets)
            return positive_term + masked_mean(torch.relu(self.margin - negative), other)
        rows = real_distances(sets, self.squared)
        other = other_class_mask(2, 2, n, rows.device, rows.dtype)
        column = closest_negative(rows.detach(), other)  # hardest
        return positive_term + torch.relu(self.margin - rows.gather(1, column[:, None])).mean()
