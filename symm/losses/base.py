"""Options shared by every pair-based loss: negative strategy, Symm variant, reflection form."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from symm.losses.pairs import PointSets, l2_normalize, pair_layout, pair_views, real_sets, split_pairs, symmetric_sets

NEGATIVE_STRATEGIES = ("none", "hardest", "semihard", "symm")


class PairLoss(nn.Module):
    """Base of the losses called as ``loss(embeddings, labels)`` on N-pair batches.

    Subclasses declare which negative strategies and Symm selection variants they define;
    anything else is a ValueError naming the supported choices. Losses using synthetic
    negatives put the share of selected negatives that are synthetic in ``last_stats``.
    """

    name: ClassVar[str]
    negative_strategies: ClassVar[tuple[str, ...]]
    symm_modes: ClassVar[tuple[str, ...]] = ()
    default_symm_mode: ClassVar[str | None] = None
    normalize_by_default: ClassVar[bool]
    diagonal_may_be_synthetic: ClassVar[bool] = False  # logit losses in the release's 'official' mode

    def __init__(
        self,
        *,
        negatives: str = "none",
        symm_mode: str | None = None,
        keep_positive: bool | None = None,
        alpha: float = 2.0,
        beta: float = 1.0,
        form: str = "paper",
        rescale_to_axis_norm: bool = False,
        normalize: bool | None = None,
        hardness_rank: int = 1,
    ) -> None:
        super().__init__()
        if negatives not in NEGATIVE_STRATEGIES:
            raise ValueError(f"unknown negatives {negatives!r}; choose from {list(NEGATIVE_STRATEGIES)}")
        if negatives not in self.negative_strategies:
            raise ValueError(
                f"loss {self.name!r} does not define negatives={negatives!r}; supported: {list(self.negative_strategies)}"
            )
        if symm_mode is not None and negatives != "symm":
            raise ValueError(f"symm_mode={symm_mode!r} only applies with negatives='symm' (got negatives={negatives!r})")
        mode = symm_mode or self.default_symm_mode
        if negatives == "symm" and mode not in self.symm_modes:
            raise ValueError(f"unknown symm_mode {symm_mode!r} for loss {self.name!r}; supported: {list(self.symm_modes)}")
        if form not in ("paper", "official"):
            raise ValueError(f"unknown reflection form {form!r}; use 'paper' or 'official'")
        if beta <= 0:
            raise ValueError(f"beta must be > 0 (it scales the synthetic point's norm), got {beta}")
        official = negatives == "symm" and mode == "official"
        if keep_positive is False and not official:
            raise ValueError("keep_positive=False (a synthetic positive logit) exists only in symm_mode='official'")
        self.negatives = negatives
        self.symm_mode = mode if negatives == "symm" else None
        self.hardness_rank = self._check_hardness_rank(hardness_rank)
        self.keep_positive = (not official) if keep_positive is None else keep_positive
        self.reflection = dict(alpha=alpha, beta=beta, form=form, rescale_to_axis_norm=rescale_to_axis_norm)
        self.normalize = self.normalize_by_default if normalize is None else normalize
        self.last_stats: dict[str, float] = {}

    def candidate_count(self) -> int | None:
        """How many candidates the Symm selection ranks per entry (None: not a ranked choice)."""
        return {"point4": 4, "pair16": 16}.get(self.symm_mode or "")

    def _check_hardness_rank(self, rank: int) -> int:
        """k of 'the k-th hardest candidate' (1 = the hardest): the paper's level-of-hardness analysis."""
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"hardness_rank must be an integer >= 1, got {rank!r}")
        if rank == 1:
            return rank
        count = self.candidate_count()
        if count is None:
            raise ValueError(
                f"hardness_rank={rank} needs negatives='symm' with a ranked selection (point4, pair16"
                f"{', official' if 'official' in self.symm_modes else ''}); loss {self.name!r} with "
                f"negatives={self.negatives!r}, symm_mode={self.symm_mode!r} picks no k-th candidate: use hardness_rank=1"
            )
        if not 1 <= rank <= count:
            raise ValueError(
                f"hardness_rank must be in 1..{count} for symm_mode={self.symm_mode!r} ({count} candidates), got {rank}"
            )
        return rank

    def normalized_pairs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchors, positives), normalised if the loss normalises (views of one normalised batch where possible)."""
        layout = _batch_layout(embeddings, labels)
        if layout is not None and self.normalize:  # the sampler layouts: normalise all rows at once, then split (views)
            return pair_views(l2_normalize(embeddings), layout)
        anchors, positives, _ = split_pairs(embeddings, labels)
        if self.normalize:
            anchors, positives = l2_normalize(anchors), l2_normalize(positives)
        return anchors, positives

    def pairs_and_sets(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, PointSets]:
        anchors, positives = self.normalized_pairs(embeddings, labels)
        if self.negatives == "symm":
            return anchors, positives, symmetric_sets(anchors, positives, **self.reflection)
        return anchors, positives, real_sets(anchors, positives)

    def real_points(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, str]:
        """All 2N real points as one (2N, d) tensor and its ``pair_layout`` ("interleaved" / "blocked").

        The sampler layouts keep the batch as it is; any other order is split and put in the
        blocked layout [A; P]. Normalised as ``pairs_and_sets`` does (row-wise: the same values),
        for nodes that take the whole batch at once (no views, cat or gather between them and it).
        """
        layout = _batch_layout(embeddings, labels)
        if layout is None:
            anchors, positives, _ = split_pairs(embeddings, labels)
            embeddings, layout = torch.cat([anchors, positives]), "blocked"
        return (l2_normalize(embeddings) if self.normalize else embeddings), layout

    def record_synthetic(self, synthetic: torch.Tensor, off_diagonal: bool = False) -> None:
        """Log the share of selected negatives that are synthetic (the paper's ratio curve).

        ``off_diagonal``: ``synthetic`` is (..., N, N) and only off-diagonal entries are negatives.
        """
        if self.negatives != "symm":
            return
        flags = synthetic.float()
        if off_diagonal:
            n = flags.shape[-1]
            share = (flags.sum() - flags.diagonal(dim1=-2, dim2=-1).sum()) / (flags.numel() // n * (n - 1))
        else:
            share = flags.mean() if flags.numel() else torch.zeros(())
        self.last_stats = {"synthetic_share": share.item()}

    def record_synthetic_share(self, share: float) -> None:
        """Log an off-diagonal synthetic share already counted (by the compiled Symm logit node)."""
        if self.negatives == "symm":
            self.last_stats = {"synthetic_share": share}

    def extra_repr(self) -> str:
        return f"negatives={self.negatives!r}, symm_mode={self.symm_mode!r}, normalize={self.normalize}"


def _batch_layout(embeddings: torch.Tensor, labels: torch.Tensor) -> str | None:
    """``pair_layout`` of a well-formed batch, None otherwise (``split_pairs`` then checks and explains)."""
    return pair_layout(labels) if embeddings.dim() == 2 and labels.shape == embeddings.shape[:1] else None


def _first_best(candidates: torch.Tensor, dim: int, largest: bool, scratch: bool = False,
                float_index: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """max / min with the first winning index, in float arithmetic only.

    torch's CPU ``max(dim)`` with indices, ``argmax`` and integer/bool reductions are scalar
    loops, 30-200x slower than the vectorised ``amax``: the index is the smallest k among the
    winners, found as amin over k + count·sign(gap). ``scratch``: ``candidates`` may be
    overwritten (no full-size temporary: on CPU each fresh one costs page faults that dwarf
    the arithmetic). ``float_index``: return the index as floats (exact small integers).
    """
    best = candidates.amax(dim, keepdim=True) if largest else candidates.amin(dim, keepdim=True)
    if scratch:  # gap >= 0, 0 at the winners
        gap = candidates.sub_(best).neg_() if largest else candidates.sub_(best)
    else:
        gap = best - candidates if largest else candidates - best
    count = candidates.shape[dim]
    shape = [1] * candidates.dim()
    shape[dim] = count
    order = torch.arange(count, dtype=candidates.dtype, device=candidates.device).view(shape)
    which = gap.sign_().mul_(count).add_(order).amin(dim).nan_to_num_(0.0)  # a NaN input gives index 0 (and a NaN loss), not an error
    return best.squeeze(dim), which if float_index else which.long()


def kth_hardest(candidates: torch.Tensor, rank: int, dim: int, largest: bool, scratch: bool = False,
                float_index: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the rank-th hardest along ``dim``: largest similarity or smallest distance.

    rank 1 is the max / min (first index wins ties); otherwise ``kthvalue`` (ties between equal
    values may resolve to either index; the value is the same). ``scratch`` / ``float_index``:
    as ``_first_best`` (rank 1 only; other ranks ignore ``scratch``).
    """
    if rank == 1:
        return _first_best(candidates, dim, largest, scratch, float_index)
    if largest:
        values, which = (-candidates).kthvalue(rank, dim=dim)
        values = -values
    else:
        values, which = candidates.kthvalue(rank, dim=dim)
    return values, which.to(candidates.dtype) if float_index else which


def check_non_negative(**values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")


def check_positive(**values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key} must be > 0, got {value}")
