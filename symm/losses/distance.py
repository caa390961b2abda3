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

from symm.losses.base import PairLoss, check_non_negative, kth_hardest
from symm.losses.pairs import PointSets, point_matrix

INF = float("inf")


def _set_is_synthetic(n_sets: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n_sets, device=device) >= 2


def hardest_of_each_class(dist: torch.Tensor, rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """point4: (2N, N) distance from each real anchor to the rank-th closest point of each class, + synthetic flags."""
    n_sets, n = dist.shape[1], dist.shape[2]
    anchor_rows = dist[:2].permute(0, 2, 1, 3)  # (2, N, S, N): [s, i, t, j]
    values, which = kth_hardest(anchor_rows, rank, dim=2, largest=False)
    return values.reshape(2 * n, n), _set_is_synthetic(n_sets, dist.device)[which].reshape(2 * n, n)


def hardest_pair_of_classes(dist: torch.Tensor, rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """pair16: (N, N) rank-th smallest distance over u in S_i, v in S_j, + synthetic flags."""
    n_sets = dist.shape[0]
    values, which = kth_hardest(dist.flatten(0, 1), rank, dim=0, largest=False)
    synthetic = _set_is_synthetic(n_sets, dist.device)
    return values, synthetic[which // n_sets] | synthetic[which % n_sets]


def other_class_mask(n_rows_sets: int, n_cols_sets: int, n: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(n, device=device).repeat(n_rows_sets)
    cols = torch.arange(n, device=device).repeat(n_cols_sets)
    return rows[:, None] != cols[None, :]


def semihard_negatives(
    candidates: torch.Tensor, negative: torch.Tensor, positive: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """TF's rule per row: the smallest negative distance > positive, else the largest. Returns (values, column)."""
    farther = negative & (candidates > positive[:, None])
    outside, outside_col = torch.where(farther, candidates, INF).min(dim=1)
    inside, inside_col = torch.where(negative, candidates, -INF).max(dim=1)
    has_outside = farther.any(dim=1)
    return torch.where(has_outside, outside, inside), torch.where(has_outside, outside_col, inside_col)


class _DistanceLoss(PairLoss):
    normalize_by_default = True
    default_symm_mode = "point4"

    def __init__(self, *, squared: bool, **common) -> None:
        super().__init__(**common)
        self.squared = squared

    def distances(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, S, N, N) distances between point sets and (N,) positive distances D(a_i, p_i)."""
        _, _, sets = self.pairs_and_sets(embeddings, labels)
        # only pair16 needs distances from synthetic anchors; the rest start from real points
        dist = sets.distances(self.squared, rows=None if self.symm_mode == "pair16" else 2)
        return dist, torch.diagonal(dist[0, 1])


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
        dist, positive = self.distances(embeddings, labels)
        n_sets, n = dist.shape[1], dist.shape[2]
        if self.symm_mode == "pair16":
            negative, synthetic = hardest_pair_of_classes(dist, self.hardness_rank)
            off = ~torch.eye(n, dtype=torch.bool, device=dist.device)
            self.record_synthetic(synthetic[off])
            return torch.relu(positive[:, None] - negative + self.margin)[off].mean()
        anchor_positive = positive.repeat(2)  # anchors a_i then p_i
        if self.symm_mode == "point4":
            negative, synthetic = hardest_of_each_class(dist, self.hardness_rank)
            other = other_class_mask(2, 1, n, dist.device)
            self.record_synthetic(synthetic[other])
            return torch.relu(anchor_positive[:, None] - negative + self.margin)[other].mean()
        pool_sets = n_sets if self.negatives == "symm" else 2
        rows = point_matrix(dist)[: 2 * n, : pool_sets * n]
        other = other_class_mask(2, pool_sets, n, dist.device)
        if self.negatives == "none":
            return torch.relu(anchor_positive[:, None] - rows + self.margin)[other].mean()
        if self.negatives == "hardest":
            negative = torch.where(other, rows, INF).min(dim=1).values
        else:  # semihard, over the real points or (symm) the real and synthetic ones
            negative, column = semihard_negatives(rows, other, anchor_positive)
            self.record_synthetic(column >= 2 * n)
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
        dist, positive = self.distances(embeddings, labels)
        n = dist.shape[2]
        if self.symm_mode == "pair16":
            negative, synthetic = hardest_pair_of_classes(dist, self.hardness_rank)
            other = ~torch.eye(n, dtype=torch.bool, device=dist.device)
            self.record_synthetic(synthetic[other])
            per_class = torch.where(other, self.margin - negative, -INF)  # (N, N)
        else:
            if self.symm_mode == "point4":
                negative, synthetic = hardest_of_each_class(dist, self.hardness_rank)  # (2N, N)
                other = other_class_mask(2, 1, n, dist.device)
                self.record_synthetic(synthetic[other])
            else:
                negative = point_matrix(dist)[: 2 * n, : 2 * n]
                other = other_class_mask(2, 2, n, dist.device)
            scores = torch.where(other, self.margin - negative, -INF)
            per_class = torch.cat([scores[:n], scores[n:]], dim=1)  # a_i's and p_i's negatives together
        objective = torch.logsumexp(per_class, dim=1) + positive
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
        dist, positive = self.distances(embeddings, labels)
        n = dist.shape[2]
        if self.symm_mode == "pair16":
            negative, synthetic = hardest_pair_of_classes(dist, self.hardness_rank)
            other = ~torch.eye(n, dtype=torch.bool, device=dist.device)
        elif self.symm_mode == "point4":
            negative, synthetic = hardest_of_each_class(dist, self.hardness_rank)
            other = other_class_mask(2, 1, n, dist.device)
        else:
            rows = point_matrix(dist)[: 2 * n, : 2 * n]
            other = other_class_mask(2, 2, n, dist.device)
            negative, synthetic = rows, None
            if self.negatives == "hardest":
                negative = torch.where(other, rows, INF).min(dim=1, keepdim=True).values
                other = torch.ones_like(negative, dtype=torch.bool)
        if synthetic is not None:
            self.record_synthetic(synthetic[other])
        positive_term = torch.relu(positive - self.pos_margin).mean()
        negative_term = torch.relu(self.margin - negative)[other].mean()
        return positive_term + negative_term
