"""Recall@1 of synthetic points used as queries against the original embeddings.

Which synthetic points: the test items of each class are split into disjoint pairs (x_k, x_l)
(seeded shuffle within the class, consecutive items; an odd item out is left unpaired). Each pair
gives the two mirror images the loss would make if (x_k, x_l) were an anchor/positive pair:
x'_k = x_k mirrored about x_l and x'_l = x_l mirrored about x_k (``symm.synthesis.reflect``; the
plain mirror at alpha=2, beta=1), labelled with their source class. A synthetic query searches the
original embeddings by cosine similarity (as ``symm.evaluation``: L2-normalised, ties to the lower
index) with both of its sources excluded: x'_k is as similar to its axis x_l as x_k is, so keeping
the sources would make the retrieval trivial. Two reference scores for the originals: the usual
Recall@1 (self excluded) and, like for like, paired originals with self and partner excluded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from symm.synthesis import reflect


def mirror_pairs(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(M, 2) indices of disjoint same-class pairs covering every class with >= 2 items."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    pairs = []
    for cls in torch.unique(labels):
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        usable = len(members) - len(members) % 2
        pairs.append(members[:usable].reshape(-1, 2))
    return torch.cat(pairs) if pairs else torch.empty(0, 2, dtype=torch.long)


def synthetic_points(
    embeddings: torch.Tensor, pairs: torch.Tensor, alpha: float = 2.0, beta: float = 1.0, form: str = "paper"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(2M, d) mirror images [x'_k for each pair, then x'_l] and (2M, 2) their (point, axis) sources."""
    k, l = pairs[:, 0], pairs[:, 1]
    points = torch.cat([
        reflect(embeddings[k], embeddings[l], alpha=alpha, beta=beta, form=form),
        reflect(embeddings[l], embeddings[k], alpha=alpha, beta=beta, form=form),
    ])
    return points, torch.cat([pairs, pairs.flip(1)])


@torch.no_grad()
def query_recall_at_1(
    queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor, gallery_labels: torch.Tensor,
    exclude: torch.Tensor, chunk_size: int = 2048,
) -> float:
    """Share of queries whose most cosine-similar gallery item (``exclude[q]`` left out) has its label."""
    if len(queries) == 0:
        raise ValueError("no queries: every class needs at least 2 items to make a mirror pair")
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    hits = 0
    for start in range(0, len(q), chunk_size):
        sims = q[start : start + chunk_size] @ g.T
        rows = torch.arange(len(sims))[:, None].expand_as(exclude[start : start + chunk_size])
        sims[rows, exclude[start : start + chunk_size]] = -torch.inf
        nearest = sims.argmax(dim=1)  # first maximum: ties go to the lower index
        hits += int((gallery_labels[nearest] == query_labels[start : start + chunk_size]).sum())
    return hits / len(q)


def synthetic_label_scores(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0, **reflection) -> dict[str, float]:
    """Synthetic-query Recall@1 beside the originals' own (see the module docstring for definitions)."""
    embeddings, labels = embeddings.detach().cpu().float(), labels.cpu()
    pairs = mirror_pairs(labels, seed)
    points, sources = synthetic_points(embeddings, pairs, **reflection)
    source_labels = labels[sources[:, 0]]
    everyone = torch.arange(len(labels))
    paired = pairs.flatten()
    partners = pairs.flip(1).flatten()
    return {
        "synthetic_recall_at_1": query_recall_at_1(points, source_labels, embeddings, labels, sources),
        "original_recall_at_1": query_recall_at_1(embeddings, labels, embeddings, labels, everyone[:, None]),
        "original_recall_at_1_partner_excluded": query_recall_at_1(
            embeddings[paired], labels[paired], embeddings, labels, torch.stack([paired, partners], 1)),
        "n_synthetic": float(len(points)),
    }
