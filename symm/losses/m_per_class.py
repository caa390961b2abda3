"""m-per-class batches (MLRC's 8 classes × 4 images) for the losses defined on N-pair batches.

Every loss here, and Symm itself, is defined on pairs: each class contributes one anchor and one
positive, and symmetrical synthesis mirrors a negative class's pair about each other. A batch
with m images per class (m even) is therefore read as m/2 N-pair sub-batches: sub-batch k takes
the (2k+1)-th and (2k+2)-th image of every class, in batch order, as that class's anchor and
positive. The loss of the batch is the mean of the sub-batches' losses, and logged statistics
(the synthetic share) are their means.

One rule for every loss keeps the comparison fair: each method sees the same pairs and the same
negatives (every class of the batch, one pair each). The price, against losses that take any m
natively (PML's triplet with all positives), is that an anchor's negatives are the other classes'
pair in its own sub-batch only. A plain N-pair batch (m = 2) is one sub-batch: the loss is called
unchanged.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def pair_sub_batches(labels: torch.Tensor) -> list[torch.Tensor]:
    """Batch indices of each N-pair sub-batch, interleaved [a_1, p_1, a_2, p_2, ...].

    Classes appear in the order of their first image in the batch; every label must occur the
    same even number of times (a ValueError names what is wrong otherwise).
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    unique, first, counts = _first_occurrence(labels)
    m = int(counts[0]) if counts.numel() else 0
    if counts.numel() < 2:
        raise ValueError(f"a batch needs at least 2 classes to have negatives, got {counts.numel()}")
    if bool((counts != m).any()):
        uneven = {int(c): int(n) for c, n in zip(unique.tolist(), counts.tolist()) if n != m}
        raise ValueError(
            f"every class must have the same number of images in a batch: the first has {m}, these differ "
            f"{dict(list(uneven.items())[:5])}; use an m-per-class sampler (train.images_per_class)"
        )
    if m < 2 or m % 2:
        raise ValueError(
            f"{m} images per class cannot be split into (anchor, positive) pairs: set train.images_per_class "
            "to an even number (2 for N-pair batches, 4 for MLRC's 8 x 4)"
        )
    order = torch.argsort(first)  # classes by first appearance
    # positions of each class's images in batch order: (classes, m)
    by_label = torch.argsort(labels, stable=True).view(len(unique), m)[order]
    return [by_label[:, 2 * k : 2 * k + 2].reshape(-1) for k in range(m // 2)]


def _first_occurrence(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    unique, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    positions = torch.arange(labels.shape[0], device=labels.device)
    first = torch.full_like(unique, labels.shape[0]).scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first, counts


def mean_over_pair_sub_batches(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    embeddings: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of an m-per-class batch (mean over its N-pair sub-batches) and its mean stats.

    ``loss`` is a pair loss (``loss(embeddings, labels)``, ``last_stats`` optional). On an N-pair
    batch this is ``loss(embeddings, labels)`` itself.
    """
    sub_batches = pair_sub_batches(labels)
    if len(sub_batches) == 1:  # already an N-pair batch: the loss's own layout and fast path
        value = loss(embeddings, labels)
        return value, dict(getattr(loss, "last_stats", {}))
    values: list[torch.Tensor] = []
    stats: dict[str, list[float]] = {}
    for index in sub_batches:
        values.append(loss(embeddings[index], labels[index]))
        for key, stat in getattr(loss, "last_stats", {}).items():
            stats.setdefault(key, []).append(stat)
    return torch.stack(values).mean(), {key: sum(v) / len(v) for key, v in stats.items()}
