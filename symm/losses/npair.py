"""Softmax losses over N-pair logits: N-pair (Sohn 2016) and angular (Wang 2017, N-pair form).

Embeddings are not normalised in training (as in the papers and the official release); the L2
term reg_lambda/4 · (mean ||a||² + mean ||p||²) keeps their norms in check. With Symm the
off-diagonal logit is the hardest (most similar) candidate of the selection variant; the
diagonal stays original (``keep_positive``) or, in the release's ``official`` mode, takes the
same max.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from symm.losses.base import PairLoss, check_non_negative, kth_hardest
from symm.losses.pairs import PointSets

# The release's six unordered set pairs over [A, P, S1, S2], in its list order.
OFFICIAL_SET_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
# The release's angular variant: every ordered pair of distinct sets.
OFFICIAL_ORDERED_PAIRS: tuple[tuple[int, int], ...] = tuple((s, t) for s in range(4) for t in range(4) if s != t)


def _max_with_synthetic(candidates: torch.Tensor, synthetic_flags: torch.Tensor, rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise rank-th largest over the first dim (rank 1: the max, first wins ties); which are synthetic."""
    values, which = kth_hardest(candidates, rank, dim=0, largest=True)
    return values, synthetic_flags.to(which.device)[which]


class _LogitLoss(PairLoss):
    normalize_by_default = False
    negative_strategies = ("none", "symm")
    default_symm_mode = "official"

    def __init__(self, *, reg_lambda: float = 0.002, **common) -> None:
        super().__init__(**common)
        check_non_negative(reg_lambda=reg_lambda)
        self.reg_lambda = reg_lambda

    def logits(self, sets: PointSets) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        anchors, positives, sets = self.pairs_and_sets(embeddings, labels)
        logits, synthetic = self.logits(sets)
        n = logits.shape[0]
        if synthetic is not None:
            off_diagonal = ~torch.eye(n, dtype=torch.bool, device=logits.device)
            self.record_synthetic(synthetic[off_diagonal])
        targets = torch.arange(n, device=logits.device)
        regulariser = self.reg_lambda / 4 * (anchors.pow(2).sum(1).mean() + positives.pow(2).sum(1).mean())
        return F.cross_entropy(logits, targets) + regulariser


def _with_diagonal(logits: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return torch.where(eye, torch.diag_embed(diagonal), logits)


class NPairLoss(_LogitLoss):
    """N-pair: L_ij = a_i · p_j, cross-entropy with target j = i, plus the L2 term."""

    name = "npair"
    symm_modes = ("official", "point4", "pair16")

    def candidate_count(self) -> int | None:
        return len(OFFICIAL_SET_PAIRS) if self.symm_mode == "official" else super().candidate_count()

    def logits(self, sets: PointSets) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.negatives == "none":
            return sets.block(0, 1), None
        if self.symm_mode == "official":
            candidates = torch.stack([sets.block(s, t) for s, t in OFFICIAL_SET_PAIRS])
            logits, synthetic = _max_with_synthetic(
                candidates, torch.tensor([s >= 2 or t >= 2 for s, t in OFFICIAL_SET_PAIRS]), self.hardness_rank)
        elif self.symm_mode == "point4":  # anchor a_i against the 4 points of S_j
            candidates = torch.stack([sets.block(0, t) for t in range(4)])
            logits, synthetic = _max_with_synthetic(candidates, torch.tensor([False, False, True, True]), self.hardness_rank)
        else:  # pair16: all 16 cross combinations u in S_i, v in S_j
            logits, synthetic = _max_with_synthetic(
                sets.sims.flatten(0, 1), torch.tensor([s >= 2 or t >= 2 for s in range(4) for t in range(4)]), self.hardness_rank)
        if self.keep_positive:
            logits = _with_diagonal(logits, torch.diagonal(sets.block(0, 1)))
        return logits, synthetic


class AngularLoss(_LogitLoss):
    """Angular loss, N-pair form: diagonal 2(1+t)·a_i·p_i, off-diagonal 4t·(a_i+p_i)·p_j.

    t = tan²(angle); 45° (t = 1) as in the paper. ``weight`` scales the loss (the release used
    2.0 for plain angular and 1.0 with Symm).
    """

    name = "angular"
    symm_modes = ("official", "point4")

    def candidate_count(self) -> int | None:
        return len(OFFICIAL_ORDERED_PAIRS) if self.symm_mode == "official" else super().candidate_count()

    def __init__(self, *, angle: float = 45.0, weight: float = 1.0, **common) -> None:
        super().__init__(**common)
        if not 0 < angle < 90:
            raise ValueError(f"angle must be in (0, 90) degrees, got {angle}")
        check_non_negative(weight=weight)
        self.tan_sq = math.tan(math.radians(angle)) ** 2
        self.weight = weight

    def _pair_logits(self, sets: PointSets, s: int, t: int) -> torch.Tensor:
        """Angular logits with anchors X_s and positives X_t: (X_s_i + X_t_i) · X_t_j off-diagonal."""
        off = 4 * self.tan_sq * (sets.block(s, t) + sets.block(t, t))
        return _with_diagonal(off, 2 * (1 + self.tan_sq) * torch.diagonal(sets.block(s, t)))

    def logits(self, sets: PointSets) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.negatives == "none":
            return self._pair_logits(sets, 0, 1), None
        if self.symm_mode == "official":
            candidates = torch.stack([self._pair_logits(sets, s, t) for s, t in OFFICIAL_ORDERED_PAIRS])
            logits, synthetic = _max_with_synthetic(
                candidates, torch.tensor([s >= 2 or t >= 2 for s, t in OFFICIAL_ORDERED_PAIRS]), self.hardness_rank)
        else:  # point4: (a_i + p_i) against the 4 points of S_j
            candidates = torch.stack([4 * self.tan_sq * (sets.block(0, t) + sets.block(1, t)) for t in range(4)])
            logits, synthetic = _max_with_synthetic(candidates, torch.tensor([False, False, True, True]), self.hardness_rank)
        if self.keep_positive:
            logits = _with_diagonal(logits, 2 * (1 + self.tan_sq) * torch.diagonal(sets.block(0, 1)))
        return logits, synthetic

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.weight * super().forward(embeddings, labels)
