"""Softmax losses over N-pair logits: N-pair (Sohn 2016) and angular (Wang 2017, N-pair form).

Embeddings are not normalised in training (as in the papers and the official release); the L2
term reg_lambda/4 · (mean ||a||² + mean ||p||²) keeps their norms in check. With Symm the
off-diagonal logit is the hardest (most similar) candidate of the selection variant; the
diagonal stays original (``keep_positive``) or, in the release's ``official`` mode, takes the
same max.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from symm.losses.base import PairLoss, check_non_negative, kth_hardest
from symm.losses import kernels, triton_kernels
from symm.losses.fused import symm_npair_logits
from symm.losses.pairs import PointSets, pair_views, split_pairs, symmetric_sets

# The release's six unordered set pairs over [A, P, S1, S2], in its list order.
OFFICIAL_SET_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
# The release's angular variant: every ordered pair of distinct sets.
OFFICIAL_ORDERED_PAIRS: tuple[tuple[int, int], ...] = tuple((s, t) for s in range(4) for t in range(4) if s != t)


def _is_synthetic(pairs: list[tuple[int, int]] | tuple[tuple[int, int], ...], which: torch.Tensor) -> torch.Tensor:
    """(N, N) 1.0 where the chosen candidate involves a synthetic set (float: cheap to gather and average)."""
    flags = torch.tensor([float(s >= 2 or t >= 2) for s, t in pairs], device=which.device)
    return torch.take(flags, which.long())


def _choose(candidates: torch.Tensor, rank: int) -> torch.Tensor:
    """Index over the first dim of the rank-th largest candidate per entry (no autograd; overwrites ``candidates``)."""
    return kth_hardest(candidates, rank, dim=0, largest=True, scratch=True)[1]


def _chosen_sets(pairs: list[tuple[int, int]], which: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(row set, column set) of the chosen pair per entry, as floats (int64 gathers on the grid are slow on CPU)."""
    table = torch.tensor(pairs, dtype=dtype, device=which.device).T.contiguous()
    flat = which.reshape(-1)
    return table[0].index_select(0, flat).view(which.shape), table[1].index_select(0, flat).view(which.shape)


class _LogitLoss(PairLoss):
    normalize_by_default = False
    negative_strategies = ("none", "symm")
    default_symm_mode = "official"

    def __init__(self, *, reg_lambda: float = 0.002, **common) -> None:
        super().__init__(**common)
        check_non_negative(reg_lambda=reg_lambda)
        self.reg_lambda = reg_lambda

    def plain_logits(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def symm_logits(self, sets: PointSets) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def fused_symm_logits(self, anchors: torch.Tensor, positives: torch.Tensor,
                          flags: bool = True) -> tuple[torch.Tensor, torch.Tensor | float] | None:
        """The same logits from one autograd node (``symm.losses.fused``), or None where not offered.

        The second item: the (N, N) synthetic flags, or with ``flags=False`` the off-diagonal share
        as a float where the node counted it (the training path: no flags grid to build and reduce).
        """
        return None

    def compiled_plan(self) -> tuple | None:
        """The compiled node's ``selection_plan`` for this loss's options (None: not offered)."""
        return None

    @functools.cached_property
    def _compiled_plan(self) -> tuple | None:
        return self.compiled_plan()  # the options are fixed at construction: built once per loss

    def _compiled_applies(self, tensor: torch.Tensor) -> bool:
        """Whether a compiled node serves this loss on ``tensor``'s device and precision."""
        return self._compiled_plan is not None and (triton_kernels.usable(tensor, self.hardness_rank)
                                                   or kernels.usable(tensor, self.hardness_rank))

    def _plan_logits(self, points: torch.Tensor, layout: str) -> tuple[torch.Tensor, kernels.NodeOutputs] | None:
        """(logits, the node's outputs) from the compiled node for the device — Triton kernels on CUDA,
        numba loops on the CPU — or None where none applies (the torch node then)."""
        if not self._compiled_applies(points):
            return None
        if triton_kernels.usable(points, self.hardness_rank):
            result = triton_kernels.try_plan_logits(points, layout, self._compiled_plan)
            if result is not None or not kernels.usable(points, self.hardness_rank):
                return result
        return kernels.plan_logits(points, layout, self._compiled_plan)

    def _symm_batch_logits(self, points: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The training path: (logits, Σ ||x||² of the points, with autograd) from the compiled node on the
        batch as it is, its share recorded (None: not offered)."""
        result = self._plan_logits(points, layout)
        if result is None:
            return None
        logits, outputs = result
        self.record_synthetic_share(float(outputs.share))
        return logits, outputs.squares

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        squares = None
        if self.negatives != "symm":
            anchors, positives, _ = split_pairs(embeddings, labels)
            if self.normalize:
                anchors, positives = F.normalize(anchors, dim=1), F.normalize(positives, dim=1)
            logits = self.plain_logits(anchors, positives)
            if self.normalize:
                squares = anchors.pow(2).sum() + positives.pow(2).sum()
        else:  # the whole batch in its layout: the compiled node takes it as it is
            points, layout = self.real_points(embeddings, labels)
            compiled = self._symm_batch_logits(points, layout)
            if compiled is not None:  # the node's second output is the L2 term's Σ ||x||², its gradient in the node's
                logits, squares = compiled
            else:  # the torch nodes, on views of the batch
                anchors, positives = pair_views(points, layout)
                fused = self.fused_symm_logits(anchors, positives, flags=False)
                if fused is not None:
                    logits, synthetic = fused
                else:
                    logits, synthetic = self.symm_logits(symmetric_sets(anchors, positives, **self.reflection,
                                                                        with_norms=False))
                if isinstance(synthetic, float):
                    self.record_synthetic_share(synthetic)
                else:
                    self.record_synthetic(synthetic, off_diagonal=True)
                if self.normalize:
                    squares = points.pow(2).sum()
        if squares is None:  # not normalised: every embedding is an anchor or a positive exactly once
            flat = embeddings.reshape(-1)
            squares = torch.dot(flat, flat)
        n = logits.shape[0]
        targets = torch.arange(n, device=logits.device)
        return F.cross_entropy(logits, targets) + (self.reg_lambda / (4 * n)) * squares


def _with_diagonal(logits: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """``logits`` with its diagonal replaced, in place (a fresh temporary of the caller; the same
    values and gradients as torch.where(eye, diag_embed(diagonal), logits), without 3 N×N temporaries)."""
    logits.diagonal().copy_(diagonal)
    return logits


class NPairLoss(_LogitLoss):
    """N-pair: L_ij = a_i · p_j, cross-entropy with target j = i, plus the L2 term."""

    name = "npair"
    symm_modes = ("official", "point4", "pair16")

    def candidate_count(self) -> int | None:
        return len(OFFICIAL_SET_PAIRS) if self.symm_mode == "official" else super().candidate_count()

    def plain_logits(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        return anchors @ positives.T

    def symm_pairs(self) -> list[tuple[int, int]]:
        if self.symm_mode == "official":
            return list(OFFICIAL_SET_PAIRS)
        if self.symm_mode == "point4":  # anchor a_i against the 4 points of S_j
            return [(0, t) for t in range(4)]
        return [(s, t) for s in range(4) for t in range(4)]  # pair16: all 16 cross combinations

    def compiled_plan(self) -> tuple | None:
        reflection = self.reflection
        if reflection["rescale_to_axis_norm"]:
            return None
        return kernels.selection_plan(self.symm_pairs(), self.symm_mode == "point4", self.keep_positive,
                                      reflection["alpha"], reflection["beta"], reflection["form"])

    def fused_symm_logits(self, anchors: torch.Tensor, positives: torch.Tensor,
                          flags: bool = True) -> tuple[torch.Tensor, torch.Tensor | float] | None:
        reflection = self.reflection
        if reflection["rescale_to_axis_norm"]:
            return None
        pairs = self.symm_pairs()
        logits, which, share = symm_npair_logits(anchors, positives, pairs, self.symm_mode == "point4", self.hardness_rank,
                                                 self.keep_positive, reflection["alpha"], reflection["beta"], reflection["form"])
        return logits, share if share is not None and not flags else _is_synthetic(pairs, which)

    def symm_logits(self, sets: PointSets) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = self.symm_pairs()
        anchors_only = self.symm_mode == "point4"
        with torch.no_grad():
            which = _choose(sets.candidates(pairs, anchors_only=anchors_only), self.hardness_rank)
            if self.keep_positive:  # the original a_i · p_i on the diagonal
                which.diagonal().fill_(pairs.index((0, 1)))
            rows, cols = _chosen_sets(pairs, which, sets.coef.dtype)
        logits = sets.grid_sims(rows, cols, anchors_only=anchors_only)
        return logits, _is_synthetic(pairs, which)


class AngularLoss(_LogitLoss):
    """Angular loss, N-pair form: diagonal 2(1+t)·a_i·p_i, off-diagonal 4t·(a_i+p_i)·p_j.

    t = tan²(angle); 45° (t = 1) as in the paper. ``weight`` scales the loss (the release used
    2.0 for plain angular and 1.0 with Symm). With Symm, anchors X_s and positives X_t give
    off-diagonal logits 4t·(X_s[i] + X_t[i])·X_t[j]: (X_s + X_t) is one more coefficient set.
    """

    name = "angular"
    symm_modes = ("official", "point4")

    def __init__(self, *, angle: float = 45.0, weight: float = 1.0, **common) -> None:
        super().__init__(**common)
        if not 0 < angle < 90:
            raise ValueError(f"angle must be in (0, 90) degrees, got {angle}")
        check_non_negative(weight=weight)
        self.tan_sq = math.tan(math.radians(angle)) ** 2
        self.weight = weight

    def candidate_count(self) -> int | None:
        return len(OFFICIAL_ORDERED_PAIRS) if self.symm_mode == "official" else super().candidate_count()

    def plain_logits(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        off = (4 * self.tan_sq) * ((anchors + positives) @ positives.T)
        return _with_diagonal(off, (2 * (1 + self.tan_sq)) * (anchors * positives).sum(1))

    def _row_sums(self) -> tuple[list[tuple[int, int]], list[tuple[int, ...]], list[tuple[int, int]]]:
        """(ordered set pairs (s, t), summed row sets, pairs as (index of the row sum of s and t, t))."""
        if self.symm_mode == "official":
            set_pairs = list(OFFICIAL_ORDERED_PAIRS)
            sums = sorted({tuple(sorted(pair)) for pair in set_pairs})
            return set_pairs, sums, [(sums.index(tuple(sorted((s, t)))), t) for s, t in set_pairs]
        return [(0, t) for t in range(4)], [(0, 1)], [(0, t) for t in range(4)]  # point4: (a_i + p_i) against S_j

    def compiled_plan(self) -> tuple | None:
        reflection = self.reflection
        if reflection["rescale_to_axis_norm"]:
            return None
        set_pairs, sums, pairs = self._row_sums()
        return kernels.selection_plan(pairs, False, self.keep_positive, reflection["alpha"], reflection["beta"],
                                      reflection["form"], 1e-12, tuple(sums), None if self.keep_positive else tuple(set_pairs),
                                      4 * self.tan_sq, 2 * (1 + self.tan_sq))

    def fused_symm_logits(self, anchors: torch.Tensor, positives: torch.Tensor,
                          flags: bool = True) -> tuple[torch.Tensor, torch.Tensor | float] | None:
        reflection = self.reflection
        if reflection["rescale_to_axis_norm"]:
            return None
        set_pairs, sums, pairs = self._row_sums()
        compiled = self._plan_logits(torch.cat([anchors, positives]), "blocked") if self._compiled_applies(anchors) else None
        if compiled is not None:  # the whole logit matrix in one call
            logits, outputs = compiled
            return logits, float(outputs.share) if not flags else _is_synthetic(set_pairs, torch.as_tensor(outputs.which))
        off, which, share = symm_npair_logits(anchors, positives, pairs, False, self.hardness_rank, False,
                                              reflection["alpha"], reflection["beta"], reflection["form"], 1e-12, tuple(sums))
        off = (4 * self.tan_sq) * off
        if self.keep_positive:
            diagonal = (anchors * positives).sum(1)
        else:  # official: the rank-th of the 12 diagonal candidates, with autograd (O(N))
            diagonal, diag_which = self._official_diagonal(symmetric_sets(anchors, positives, **reflection, with_norms=False),
                                                           set_pairs)
            if flags or share is None:
                which = which.clone()
                which.diagonal().copy_(diag_which)
        # the share counts off-diagonal choices only: the official diagonal's choice does not change it
        synthetic = share if share is not None and not flags else _is_synthetic(set_pairs, which)
        return _with_diagonal(off, (2 * (1 + self.tan_sq)) * diagonal), synthetic

    def _official_diagonal(self, sets: PointSets, set_pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rank-th of the diagonal candidates X_s[i] · X_t[i], and which pair it is."""
        coef = sets.coef
        kd = torch.stack([torch.stack([sets.sq_norms[0], sets.ap]), torch.stack([sets.ap, sets.sq_norms[1]])])
        rows = coef[[s for s, _ in set_pairs]]
        cols = coef[[t for _, t in set_pairs]]
        diag_candidates = torch.einsum("cki,kli,cli->ci", rows, kd, cols)
        return kth_hardest(diag_candidates, self.hardness_rank, dim=0, largest=True)

    def symm_logits(self, sets: PointSets) -> tuple[torch.Tensor, torch.Tensor]:
        set_pairs, sums, sum_pairs = self._row_sums()
        coef = sets.coef
        first = sets.extend(torch.stack([coef[list(mix)].sum(0) for mix in sums]))
        pairs = [(first + r, t) for r, t in sum_pairs]
        with torch.no_grad():
            which = _choose(sets.candidates(pairs), self.hardness_rank)
            rows, cols = _chosen_sets(pairs, which, sets.coef.dtype)
        off = (4 * self.tan_sq) * sets.grid_sims(rows, cols)
        if self.keep_positive:
            diagonal = sets.ap
        else:  # official: the rank-th of the 12 diagonal candidates X_s[i] · X_t[i]
            diagonal, diag_which = self._official_diagonal(sets, set_pairs)
            which.diagonal().copy_(diag_which)  # ``which`` is this function's own
        logits = _with_diagonal(off, (2 * (1 + self.tan_sq)) * diagonal)
        return logits, _is_synthetic(set_pairs, which)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.weight * super().forward(embeddings, labels)
