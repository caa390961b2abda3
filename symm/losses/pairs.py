"""The N-pair batch contract and the similarity geometry shared by every pair-based loss.

Every label appears exactly twice: its first occurrence is the anchor, its second the positive.
The losses see the batch as point sets [A, P] (plain) or [A, P, S1, S2] (with symmetrical
synthesis; S1 = P mirrored about A, S2 = A mirrored about P), one point per class in each set.

A mirror image is a per-class linear combination of that class's anchor and positive, so every
similarity involving synthetic points is algebraic in the Gram matrix of the real points: at most
three N × N × d matmuls (A·Aᵀ, A·Pᵀ, P·Pᵀ, each computed only if needed) plus O(N²) elementwise
work per needed block, instead of materialising the reflections and multiplying 4N × 4N × d. ``symm.synthesis.reflect`` is the explicit form; tests check both agree.
"""
from __future__ import annotations

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


Coefficient = "torch.Tensor | float"


class PointSets:
    """Similarities between the batch's point sets, computed block by block on demand.

    Sets are [A, P] or [A, P, S1, S2] (S sets, N classes; set index >= 2 = synthetic). Each
    set's points are per-class combinations of the real anchor a_i and positive p_i, held as
    ``terms[s] = [(source, coefficient), ...]`` with source 0 = a, 1 = p and coefficient a scalar
    or a per-class vector. ``block(s, t)[i, j]`` = X_s[i] · X_t[j]; ``sq_norms[s, i]`` = ||X_s[i]||².
    """

    def __init__(self, real: tuple[torch.Tensor, torch.Tensor], terms: list[list[tuple[int, Coefficient]]], sq_norms: torch.Tensor) -> None:
        self.real = real  # (anchors, positives)
        self.terms = terms
        self.sq_norms = sq_norms
        self._grams: dict[tuple[int, int], torch.Tensor] = {}
        self._blocks: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def n_sets(self) -> int:
        return len(self.terms)

    @property
    def n_classes(self) -> int:
        return self.real[0].shape[0]

    def gram(self, k: int, l: int) -> torch.Tensor:
        """Real-point similarities, computed on first use: plain N-pair needs only A·Pᵀ."""
        if (k, l) not in self._grams:
            self._grams[(k, l)] = self._grams[(l, k)].T if (l, k) in self._grams else self.real[k] @ self.real[l].T
        return self._grams[(k, l)]

    def block(self, s: int, t: int) -> torch.Tensor:
        if (s, t) not in self._blocks:
            total = None
            for k, row_coef in self.terms[s]:
                for l, col_coef in self.terms[t]:
                    part = self.gram(k, l)
                    if isinstance(row_coef, torch.Tensor):
                        part = row_coef[:, None] * part
                    elif row_coef != 1:
                        part = row_coef * part
                    if isinstance(col_coef, torch.Tensor):
                        part = part * col_coef[None, :]
                    elif col_coef != 1:
                        part = part * col_coef
                    total = part if total is None else total + part
            self._blocks[(s, t)] = total
        return self._blocks[(s, t)]

    @property
    def sims(self) -> torch.Tensor:
        """All (S, S, N, N) blocks."""
        return torch.stack([torch.stack([self.block(s, t) for t in range(self.n_sets)]) for s in range(self.n_sets)])

    def distances(self, squared: bool, rows: int | None = None) -> torch.Tensor:
        """(R, S, N, N) distances from the first ``rows`` sets (default all) to every set."""
        rows = self.n_sets if rows is None else rows
        sims = torch.stack([torch.stack([self.block(s, t) for t in range(self.n_sets)]) for s in range(rows)])
        d2 = (self.sq_norms[:rows, None, :, None] + self.sq_norms[None, :, None, :] - 2 * sims).clamp_min(0)
        # the clamp keeps the gradient of sqrt finite for duplicate points (distance 0)
        return d2 if squared else d2.clamp_min(1e-12).sqrt()


def point_matrix(blocks: torch.Tensor) -> torch.Tensor:
    """(R, S, N, N) blocks -> (R·N, S·N) matrix over points; point s·N + i is set s, class i."""
    r, s, n, _ = blocks.shape
    return blocks.permute(0, 2, 1, 3).reshape(r * n, s * n)


def real_sets(anchors: torch.Tensor, positives: torch.Tensor) -> PointSets:
    sq_norms = torch.stack([anchors.pow(2).sum(1), positives.pow(2).sum(1)])
    return PointSets((anchors, positives), [[(0, 1.0)], [(1, 1.0)]], sq_norms)


def symmetric_sets(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 1.0,
    form: str = "paper",
    rescale_to_axis_norm: bool = False,
    eps: float = 1e-12,
) -> PointSets:
    """[A, P, S1, S2] with S1 = reflect(P, axes=A), S2 = reflect(A, axes=P).

    Same arithmetic as ``symm.synthesis.reflect`` (both forms, alpha, beta, the rescale),
    expressed as coefficients on the real points.
    """
    aa = anchors.pow(2).sum(1)
    pp = positives.pow(2).sum(1)
    ap = (anchors * positives).sum(1)
    # reflect(x, axis) = own * x + along * axis
    own: Coefficient = beta * (1 - alpha) if form == "paper" else -beta
    aa_safe, pp_safe = aa.clamp_min(eps), pp.clamp_min(eps)
    along_s1 = beta * alpha * ap / aa_safe  # S1 = own * p + along_s1 * a
    along_s2 = beta * alpha * ap / pp_safe  # S2 = own * a + along_s2 * p
    s1_sq = own**2 * pp + 2 * own * along_s1 * ap + along_s1**2 * aa
    s2_sq = own**2 * aa + 2 * own * along_s2 * ap + along_s2**2 * pp
    if rescale_to_axis_norm:
        scale1 = aa_safe.sqrt() / s1_sq.clamp_min(0).sqrt().clamp_min(eps)
        scale2 = pp_safe.sqrt() / s2_sq.clamp_min(0).sqrt().clamp_min(eps)
        terms = [[(0, 1.0)], [(1, 1.0)],
                 [(1, own * scale1), (0, along_s1 * scale1)], [(0, own * scale2), (1, along_s2 * scale2)]]
        s1_sq, s2_sq = s1_sq * scale1**2, s2_sq * scale2**2
    else:
        terms = [[(0, 1.0)], [(1, 1.0)], [(1, own), (0, along_s1)], [(0, own), (1, along_s2)]]
    return PointSets((anchors, positives), terms, torch.stack([aa, pp, s1_sq, s2_sq]))
