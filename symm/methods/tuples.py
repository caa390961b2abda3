"""The tuples generator methods work on, built from an N-pair batch (every label exactly twice).

Points are ordered [a_0 .. a_{N-1}, p_0 .. p_{N-1}] (anchors, then positives; class i = point
i mod N). Triplets are every (u, v, w): u any point, v its same-class partner, w any point of
another class — the set the project's plain ``triplet`` loss averages over.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from symm.losses import split_pairs


def pair_order(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch indices of the anchors and positives (class order of ``split_pairs``), and labels."""
    index = torch.arange(labels.shape[0], device=labels.device)[:, None]
    anchors, positives, pair_labels = split_pairs(index, labels)
    return torch.cat([anchors[:, 0], positives[:, 0]]), pair_labels


def triplet_indices(n_classes: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, v, w) indices into the 2N points for every triplet, u-major, w ascending."""
    points = torch.arange(2 * n_classes, device=device)
    other = (points[:, None] % n_classes) != (points[None, :] % n_classes)
    u, w = other.nonzero(as_tuple=True)
    return u, (u + n_classes) % (2 * n_classes), w


def sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).pow(2).sum(-1)


def triplet_hinge(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, *, margin: float, normalize: bool, squared: bool) -> torch.Tensor:
    """mean [D(u,v) − D(u,w) + margin]₊ with the conventions of the project's ``triplet`` loss."""
    if normalize:
        u, v, w = F.normalize(u, dim=-1), F.normalize(v, dim=-1), F.normalize(w, dim=-1)
    pos, neg = sq_dist(u, v), sq_dist(u, w)
    if not squared:
        pos, neg = pos.clamp_min(1e-12).sqrt(), neg.clamp_min(1e-12).sqrt()
    return torch.relu(pos - neg + margin).mean()


def npair_rows(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits a_i · c_ij with target j = i; ``candidates`` is (N, N, d)."""
    logits = torch.einsum("id,ijd->ij", anchors, candidates)
    return F.cross_entropy(logits, torch.arange(anchors.shape[0], device=anchors.device))
