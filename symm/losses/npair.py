"""N-pair loss (Sohn 2016), plain and with symmetrical synthesis (method.md §3.1, §4)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from symm.losses.pairs import split_pairs
from symm.synthesis import Form, reflect

SymmMode = Literal["official", "point4", "pair16"]
Negatives = Literal["none", "symm"]

# The official release's six unordered set pairs, in its list order, over sets [A, P, S1, S2]
# (S1 = P mirrored about A, S2 = A mirrored about P). Index 0 is the only all-real pair.
OFFICIAL_SET_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def symmetric_sets(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 1.0,
    form: Form = "paper",
    rescale_to_axis_norm: bool = False,
) -> torch.Tensor:
    """Stack [A, P, S1, S2] into (4, N, D): the real pairs and their mirror images."""
    kwargs = dict(alpha=alpha, beta=beta, form=form, rescale_to_axis_norm=rescale_to_axis_norm)
    mirrored_positives = reflect(positives, anchors, **kwargs)  # S1: P mirrored about A
    mirrored_anchors = reflect(anchors, positives, **kwargs)  # S2: A mirrored about P
    return torch.stack([anchors, positives, mirrored_positives, mirrored_anchors])


def symm_similarity(
    sets: torch.Tensor, mode: SymmMode
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest similarity between classes i and j under a selection variant.

    Returns (sims (N, N), synthetic (N, N) bool: whether the selected entry involves a mirror
    image). Hardest = most similar, as the logits of N-pair are similarities.
    """
    if mode == "official":
        candidates = torch.stack([sets[s] @ sets[t].T for s, t in OFFICIAL_SET_PAIRS])
        sims, which = candidates.max(dim=0)
        return sims, which != 0
    if mode == "point4":
        # anchor a_i against the 4 points of class j: S_j = {a_j, p_j, S1_j, S2_j}
        candidates = torch.einsum("nd,tmd->tnm", sets[0], sets)
        sims, which = candidates.max(dim=0)
        return sims, which >= 2
    if mode == "pair16":
        # all 16 cross combinations u in S_i, v in S_j
        candidates = torch.einsum("snd,tmd->stnm", sets, sets).flatten(0, 1)
        sims, which = candidates.max(dim=0)
        source, target = which // 4, which % 4
        return sims, (source >= 2) | (target >= 2)
    raise ValueError(f"unknown symm_mode {mode!r}; use 'official', 'point4' or 'pair16'")


class NPairLoss(nn.Module):
    """Softmax cross-entropy over L_ij = a_i·p_j with target j = i, plus an L2 term.

    Embeddings are not normalised (as in Sohn 2016 and the official release); the L2 term
    reg_lambda/4 · (mean ||a||² + mean ||p||²) keeps their norms in check.
    With ``negatives="symm"`` the off-diagonal logit is the hardest similarity between the two
    classes' real and mirrored points (``symm_mode``); the diagonal stays a_i·p_i when
    ``keep_positive`` (the paper) or takes the same max (the official release, its default).
    """

    def __init__(
        self,
        *,
        negatives: Negatives = "none",
        reg_lambda: float = 0.002,
        symm_mode: SymmMode = "official",
        keep_positive: bool | None = None,
        alpha: float = 2.0,
        beta: float = 1.0,
        form: Form = "paper",
        rescale_to_axis_norm: bool = False,
    ) -> None:
        super().__init__()
        if negatives not in ("none", "symm"):
            raise ValueError(f"npair supports negatives 'none' or 'symm', got {negatives!r}")
        if symm_mode not in ("official", "point4", "pair16"):
            raise ValueError(f"unknown symm_mode {symm_mode!r}; use 'official', 'point4' or 'pair16'")
        if reg_lambda < 0:
            raise ValueError(f"reg_lambda must be >= 0, got {reg_lambda}")
        if form not in ("paper", "official"):
            raise ValueError(f"unknown reflection form {form!r}; use 'paper' or 'official'")
        self.negatives = negatives
        self.reg_lambda = reg_lambda
        self.symm_mode = symm_mode
        self.keep_positive = (symm_mode != "official") if keep_positive is None else keep_positive
        self.reflection = dict(alpha=alpha, beta=beta, form=form, rescale_to_axis_norm=rescale_to_axis_norm)
        self.last_stats: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        anchors, positives, _ = split_pairs(embeddings, labels)
        if self.negatives == "none":
            logits = anchors @ positives.T
        else:
            sets = symmetric_sets(anchors, positives, **self.reflection)
            logits, synthetic = symm_similarity(sets, self.symm_mode)
            if self.keep_positive:
                logits = logits.clone()
                diagonal = torch.arange(logits.shape[0], device=logits.device)
                logits[diagonal, diagonal] = (anchors * positives).sum(dim=1)
            off_diagonal = ~torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
            self.last_stats = {"synthetic_share": synthetic[off_diagonal].float().mean().item()}
        targets = torch.arange(logits.shape[0], device=logits.device)
        loss = F.cross_entropy(logits, targets)
        regulariser = self.reg_lambda / 4 * (anchors.pow(2).sum(1).mean() + positives.pow(2).sum(1).mean())
        return loss + regulariser
