"""The N-pair batch contract shared by the pair-based losses.

Every label appears exactly twice: its first occurrence is the anchor, its second the positive.
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
