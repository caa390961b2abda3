"""The N-pair batch contract and the similarity geometry shared by every pair-based loss.

Every label appears exactly twice: its first occurrence is the anchor, its second the positive.
The losses see the batch as point sets [A, P] (plain) or [A, P, S1, S2] (with symmetrical
synthesis; S1 = P mirrored about A, S2 = A mirrored about P), one point per class in each set.

A mirror image is a per-class linear combination of that class's anchor and positive, so every
similarity involving synthetic points is algebraic in the Gram matrix of the real points: one
(2N × 2N) matmul plus O(N²) elementwise work, instead of materialising the reflections and
multiplying 4N × 4N × d. ``symm.synthesis.reflect`` is the explicit form; tests check both agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def split_pairs(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (anchors, positives, pair_labels), classes ordered by the anchor's position."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D (batch, dim), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per embedding: got {tuple(labels.shape)} for "
            f"{embeddings.shape[0]} embeddings"
        )
    unique, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if bool((counts != 2).any()):
        bad = int((counts != 2).nonzero()[0, 0])
        raise ValueError(
            f"label {unique[bad].item()} appears {counts[bad].item()} times; pair-based losses need every "
            "label exactly twice (first = anchor, second = positive): use an N-pair batch sampler"
        )
    if unique.numel() < 2:
        raise ValueError("a pair-based loss needs at least 2 classes in the batch to have negatives")
    grouped = torch.sort(inverse, stable=True).indices  # [c0 first, c0 second, c1 first, ...]
    anchors, positives = grouped[0::2], grouped[1::2]
    by_position = torch.argsort(anchors)
    anchors, positives = anchors[by_position], positives[by_position]
    return embeddings[anchors], embeddings[positives], labels[anchors]


@dataclass
class PointSets:
    """Similarities between the batch's point sets.

    ``sims[s, t, i, j]`` = X_s[i] · X_t[j] with sets [A, P] or [A, P, S1, S2] (S sets, N
    classes); ``sq_norms[s, i]`` = ||X_s[i]||². Points of set index >= 2 are synthetic.
    """

    sims: torch.Tensor
    sq_norms: torch.Tensor

    @property
    def n_sets(self) -> int:
        return self.sims.shape[0]

    @property
    def n_classes(self) -> int:
        return self.sims.shape[2]

    def sq_distances(self) -> torch.Tensor:
        """(S, S, N, N) squared Euclidean distances, clamped at 0 against rounding."""
        d2 = self.sq_norms[:, None, :, None] + self.sq_norms[None, :, None, :] - 2 * self.sims
        return d2.clamp_min(0)

    def distances(self, squared: bool) -> torch.Tensor:
        d2 = self.sq_distances()
        # the clamp keeps the gradient of sqrt finite for duplicate points (distance 0)
        return d2 if squared else d2.clamp_min(1e-12).sqrt()


def point_matrix(blocks: torch.Tensor) -> torch.Tensor:
    """(S, S, N, N) blocks -> (S·N, S·N) matrix over points; point s·N + i is set s, class i."""
    s, _, n, _ = blocks.shape
    return blocks.permute(0, 2, 1, 3).reshape(s * n, s * n)


def gram_blocks(anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """(2, 2, N, N): [[A·Aᵀ, A·Pᵀ], [P·Aᵀ, P·Pᵀ]] from one matmul."""
    n = anchors.shape[0]
    points = torch.cat([anchors, positives])
    return (points @ points.T).view(2, n, 2, n).permute(0, 2, 1, 3)


def real_sets(anchors: torch.Tensor, positives: torch.Tensor) -> PointSets:
    gram = gram_blocks(anchors, positives)
    sq_norms = torch.stack([anchors.pow(2).sum(1), positives.pow(2).sum(1)])
    return PointSets(gram, sq_norms)


def symmetric_sets(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 1.0,
    form: str = "paper",
    rescale_to_axis_norm: bool = False,
    eps: float = 1e-12,
) -> PointSets:
    """[A, P, S1, S2] similarities, S1 = reflect(P, axes=A), S2 = reflect(A, axes=P).

    Same arithmetic as ``symm.synthesis.reflect`` (both forms, alpha, beta, the rescale),
    expressed as coefficients on the real points.
    """
    gram = gram_blocks(anchors, positives)
    aa = torch.diagonal(gram[0, 0])
    pp = torch.diagonal(gram[1, 1])
    ap = torch.diagonal(gram[0, 1])
    # reflect(x, axis) = own * x + along * axis
    own = beta * (1 - alpha) if form == "paper" else -beta
    aa_safe, pp_safe = aa.clamp_min(eps), pp.clamp_min(eps)
    along_s1 = beta * alpha * ap / aa_safe  # S1 = own * p + along_s1 * a
    along_s2 = beta * alpha * ap / pp_safe  # S2 = own * a + along_s2 * p
    ones, zeros = torch.ones_like(aa), torch.zeros_like(aa)
    s1_a, s1_p = along_s1, own * ones
    s2_a, s2_p = own * ones, along_s2
    if rescale_to_axis_norm:
        s1_sq = s1_a**2 * aa + 2 * s1_a * s1_p * ap + s1_p**2 * pp
        s2_sq = s2_a**2 * aa + 2 * s2_a * s2_p * ap + s2_p**2 * pp
        scale1 = aa_safe.sqrt() / s1_sq.clamp_min(0).sqrt().clamp_min(eps)
        scale2 = pp_safe.sqrt() / s2_sq.clamp_min(0).sqrt().clamp_min(eps)
        s1_a, s1_p, s2_a, s2_p = s1_a * scale1, s1_p * scale1, s2_a * scale2, s2_p * scale2
    # coefficients (set, real source [a, p], class)
    coef = torch.stack([
        torch.stack([ones, zeros]), torch.stack([zeros, ones]),
        torch.stack([s1_a, s1_p]), torch.stack([s2_a, s2_p]),
    ])
    sims = torch.einsum("ski,tlj,klij->stij", coef, coef, gram)
    diag = torch.stack([torch.stack([aa, ap]), torch.stack([ap, pp])])  # (2, 2, N)
    sq_norms = torch.einsum("ski,sli,kli->si", coef, coef, diag)
    return PointSets(sims, sq_norms)
