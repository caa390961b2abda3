"""Zero-shot retrieval and clustering metrics for deep metric learning.

Every test-set item is a query against all *other* items (query set = reference set,
self excluded), following the protocol of Musgrave et al., "A Metric Learning Reality
Check" (ECCV 2020). Retrieval metrics are exact and computed in chunks of queries, so
peak memory is O(chunk x N) instead of N^2 and large test sets fit on one GPU.

The metric names returned by :func:`evaluate` are the stable names used in MLflow and
reports: ``recall_at_1``, ``recall_at_2``, ... (one per k), ``map_at_r``, ``r_precision``,
``nmi``, ``f1`` and ``n_queries_excluded``. All scores are fractions in [0, 1].

This module deliberately depends only on torch, numpy and faiss (no ray/mlflow/dvc), so
that it can be imported and tested anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "RetrievalResult",
    "retrieval_metrics",
    "recall_at_k",
    "map_at_r",
    "count_lone_queries",
    "pairwise_f1",
    "nmi",
    "cluster_scores",
    "evaluate",
]

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)
# Auto chunk size keeps (chunk x N) at about this many elements (~ a few hundred MB
# of temporaries: similarities, masks, and the sort needed by MAP@R).
_CHUNK_ELEMENTS = 1 << 23

ArrayLike = Any  # torch.Tensor | np.ndarray | sequence


# ----------------------------------------------------------------------------- inputs


def _as_embeddings(embeddings: ArrayLike) -> torch.Tensor:
    """2-D floating tensor on the embeddings' own device, L2-normalised per row.

    float64 stays float64 (exactness in tests); anything else becomes float32.
    Normalising makes cosine and Euclidean rankings identical.
    """
    x = embeddings if isinstance(embeddings, torch.Tensor) else torch.as_tensor(np.asarray(embeddings))
    x = x.detach()
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("embeddings contain NaN or inf")
    return F.normalize(x, p=2, dim=1)


def _as_labels(labels: ArrayLike, n: int, device: torch.device) -> torch.Tensor:
    """Labels as contiguous int64 codes 0..C-1 on ``device`` (any hashable-int labels)."""
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    y = y.detach().reshape(-1)
    if y.numel() != n:
        raise ValueError(f"got {y.numel()} labels for {n} embeddings")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    _, codes = torch.unique(y.to(device), return_inverse=True)
    return codes.to(torch.int64)


def _as_label_array(labels: ArrayLike) -> np.ndarray:
    """Any label container -> 1-D numpy array (for the contingency-table metrics)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).reshape(-1)


def _auto_chunk_size(n: int) -> int:
    return max(1, min(n, _CHUNK_ELEMENTS // max(n, 1)))


# -------------------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class RetrievalResult:
    """Result of one exact retrieval pass (query set = reference set, self excluded).

    Scores average over the ``n_queries`` scored queries; ``n_queries_excluded``
    lone-label queries (no other item of their class) have no correct answer and are
    left out of every average. With no scorable query all scores are NaN.
    """

    recall: dict[int, float]
    map_at_r: float
    r_precision: float
    n_queries: int
    n_queries_excluded: int


def retrieval_metrics(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    chunk_size: int | None = None,
    with_map: bool = True,
) -> RetrievalResult:
    """Recall@K, MAP@R and R-Precision in one exact, chunked pass over the queries.

    Ranking: by cosine similarity, descending; equal similarities are ordered by lower
    item index first, so results are deterministic. The pass runs on the embeddings'
    device; ``chunk_size`` queries are scored at a time (default: about 8M similarity
    entries per chunk). Each chunk keeps only the top max(max(ks), R) ranks (topk, not
    a full sort); ``with_map=False`` limits that to max(ks).

    Similarities are computed in float32 (float64 if the embeddings are float64). On
    GPU, leave TF32 matmuls off (PyTorch's default) or near-ties may reorder. The chunk
    size does not change the results, except that a BLAS backend may round a row's
    similarities differently for different chunk shapes, which can only matter for
    near-ties at the last float bit.
    """
    ks = _check_ks(ks)
    x = _as_embeddings(embeddings)
    n = x.shape[0]
    y = _as_labels(labels, n, x.device)
    if chunk_size is None:
        chunk_size = _auto_chunk_size(n)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)

    # R = number of OTHER items with the query's label; R == 0 -> lone query, excluded.
    r_all = torch.bincount(y)[y] - 1
    valid_all = r_all > 0
    n_valid = int(valid_all.sum())
    k_max = max(ks)

    # Per-query values, reduced once at the end (same order whatever the chunking).
    hits = torch.zeros((len(ks), n), dtype=torch.bool, device=x.device)
    ap = torch.zeros(n, dtype=torch.float64, device=x.device)
    rp = torch.zeros(n, dtype=torch.float64, device=x.device)

    for q0 in range(0, n, chunk_size):
        q1 = min(n, q0 + chunk_size)
        valid = valid_all[q0:q1]
        if not bool(valid.any()):
            continue
        r = r_all[q0:q1]
        sims = x[q0:q1] @ x.T  # (c, N)
        rows = torch.arange(q1 - q0, device=x.device)
        sims[rows, rows + q0] = float("-inf")  # self is never retrieved (sorts last)
        # Only the first L ranks matter: max(K) for recall, R for MAP@R / R-Precision.
        depth = min(n - 1, max(k_max, int(r[valid].max()) if with_map else 0))
        order = _top_ranked(sims, depth, r if with_map else None, k_max)  # (c, depth)
        rel = y[order] == y[q0:q1, None]  # (c, depth): same label at rank i?
        for j, k in enumerate(ks):
            hits[j, q0:q1] = rel[:, :k].any(dim=1)
        if with_map:
            ap[q0:q1], rp[q0:q1] = _map_r_chunk(rel, r)

    nan = float("nan")
    recall = {}
    for j, k in enumerate(ks):
        recall[k] = int((hits[j] & valid_all).sum()) / n_valid if n_valid else nan
    if with_map and n_valid:
        map_r = float(ap[valid_all].sum() / n_valid)
        r_prec = float(rp[valid_all].sum() / n_valid)
    else:
        map_r = r_prec = nan
    return RetrievalResult(
        recall=recall,
        map_at_r=map_r,
        r_precision=r_prec,
        n_queries=n_valid,
        n_queries_excluded=n - n_valid,
    )


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 for k in out):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return out


def _top_ranked(
    sims: torch.Tensor, depth: int, r: torch.Tensor | None, k_max: int
) -> torch.Tensor:
    """Indices of each row's first ``depth`` items, by similarity desc, then index asc.

    Exact and deterministic, without a full sort: take the top ``depth + 1`` with topk,
    then order that small set by (similarity desc, index asc) with two stable sorts.
    This is the exact ranking unless a group of equal similarities straddles the
    cut (then topk may have kept an arbitrary subset of the group); the rows where
    that can matter, i.e. where the item at the row's last needed rank ties with the
    first item beyond the cut, are re-ranked with a full stable sort instead.
    """
    n = sims.shape[1]
    ktop = depth + 1  # <= n; with ktop == n the extra item is self at -inf
    vals, idx = torch.topk(sims, ktop, dim=1, largest=True, sorted=True)
    by_idx = torch.sort(idx, dim=1, stable=True).indices
    idx, vals = idx.gather(1, by_idx), vals.gather(1, by_idx)
    by_val = torch.sort(-vals, dim=1, stable=True).indices
    idx, vals = idx.gather(1, by_val), vals.gather(1, by_val)

    # Last rank (1-based) each row needs: max(K) for recall, also R for MAP@R.
    need = torch.full((sims.shape[0],), min(k_max, depth), device=sims.device, dtype=torch.int64)
    if r is not None:
        need = torch.maximum(need, r.clamp(max=depth))
    need = need.clamp(min=1)
    at_need = vals.gather(1, (need - 1)[:, None]).squeeze(1)
    straddle = at_need == vals[:, -1]
    if bool(straddle.any()):
        rows = torch.nonzero(straddle).squeeze(1)
        full = torch.sort(-sims[rows], dim=1, stable=True).indices[:, :ktop]
        idx[rows] = full
    return idx[:, :depth]


def _map_r_chunk(rel: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query AP@R and R-Precision (Musgrave et al. 2020) from the ranked relevance.

    ``rel[q, i]`` says whether rank i+1 of query q has the query's label; only ranks
    1..R of each query count. Rows with R == 0 come out as 0 (the caller drops them).
    """
    depth = rel.shape[1]
    i = torch.arange(1, depth + 1, device=rel.device, dtype=torch.float64)
    relf = (rel & (i[None, :] <= r[:, None])).to(torch.float64)
    precision_at_i = relf.cumsum(dim=1) / i  # P(i)
    rf = r.to(torch.float64).clamp(min=1)
    return (precision_at_i * relf).sum(dim=1) / rf, relf.sum(dim=1) / rf


def recall_at_k(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Recall@K: fraction of queries with a same-label item among their K nearest others.

    Exact and chunked (see :func:`retrieval_metrics`); lone-label queries are excluded
    (count them with :func:`count_lone_queries`).
    """
    return retrieval_metrics(embeddings, labels, ks, chunk_size=chunk_size, with_map=False).recall


def map_at_r(
    embeddings: ArrayLike, labels: ArrayLike, *, chunk_size: int | None = None
) -> tuple[float, float]:
    """(MAP@R, R-Precision) of Musgrave et al. (ECCV 2020).

    R = number of other items with the query's label; R-Precision = same-label items in
    the top R / R; MAP@R = (1/R) sum_{i<=R} P(i) rel(i). Lone-label queries excluded.
    """
    res = retrieval_metrics(embeddings, labels, (1,), chunk_size=chunk_size, with_map=True)
    return res.map_at_r, res.r_precision


def count_lone_queries(labels: ArrayLike) -> int:
    """Number of items whose label occurs only once: they are excluded from retrieval scores."""
    _, counts = np.unique(_as_label_array(labels), return_counts=True)
    return int((counts == 1).sum())


# ------------------------------------------------------------------------- clustering


def _contingency(labels: ArrayLike, clusters: ArrayLike) -> np.ndarray:
    """Dense (classes x clusters) count table, built in O(N + classes x clusters)."""
    a = _as_label_array(labels)
    b = _as_label_array(clusters)
    if a.shape != b.shape:
        raise ValueError(f"labels and clusters differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("empty labels")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    n_a = int(ai.max()) + 1
    n_b = int(bi.max()) + 1
    flat = ai.reshape(-1).astype(np.int64) * n_b + bi.reshape(-1)
    return np.bincount(flat, minlength=n_a * n_b).reshape(n_a, n_b)


def _pairs(n: np.ndarray) -> int:
    """Sum of C(n, 2) over an integer array, exactly (Python ints)."""
    n = n.astype(np.int64).ravel()
    return int((n * (n - 1) // 2).sum())


def pairwise_f1(labels: ArrayLike, clusters: ArrayLike) -> float:
    """Pair-counting F1 of a clustering against the class labels.

    A pair is a true positive if both items share a class and a cluster;
    precision = TP / same-cluster pairs, recall = TP / same-class pairs.
    Computed from the contingency table, never over the N^2 pairs.
    Conventions: identical all-singleton partitions (no pairs at all) give 1.0; a
    zero precision or recall denominator otherwise gives 0.0.
    """
    table = _contingency(labels, clusters)
    tp = _pairs(table)
    same_class = _pairs(table.sum(axis=1))
    same_cluster = _pairs(table.sum(axis=0))
    if same_class == 0 and same_cluster == 0:
        return 1.0
    if tp == 0:
        return 0.0
    precision = tp / same_cluster
    recall = tp / same_class
    return 2.0 * precision * recall / (precision + recall)


def nmi(labels: ArrayLike, clusters: ArrayLike) -> float:
    """Normalised mutual information 2 I(Omega; C) / (H(Omega) + H(C)), natural log.

    Arithmetic-mean normalisation (sklearn's ``average_method="arithmetic"``). If both
    partitions have zero entropy (a single class and a single cluster) the result is 1.0.
    """
    table = _contingency(labels, clusters).astype(np.float64)
    n = table.sum()
    a = table.sum(axis=1)
    b = table.sum(axis=0)
    h_a = -float(np.sum((a / n) * np.log(a / n)))
    h_b = -float(np.sum((b / n) * np.log(b / n)))
    if h_a + h_b <= 0.0:
        return 1.0
    i, j = np.nonzero(table)
    nij = table[i, j]
    mi = float(np.sum((nij / n) * (np.log(nij * n) - np.log(a[i] * b[j]))))
    return float(np.clip(2.0 * mi / (h_a + h_b), 0.0, 1.0))


def cluster_scores(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 1,
) -> dict[str, Any]:
    """k-means (k = number of distinct labels) on the L2-normalised embeddings, with faiss.

    Returns {"nmi": float, "f1": float, "assignments": np.ndarray of cluster ids}.
    Seeded, so the same inputs give the same clustering.
    """
    x = _as_embeddings(embeddings).to(torch.float32).cpu().numpy()
    x = np.ascontiguousarray(x)
    y = _as_label_array(labels)
    if y.size != x.shape[0]:
        raise ValueError(f"got {y.size} labels for {x.shape[0]} embeddings")
    k = int(np.unique(y).size)
    if k == 1:
        assignments = np.zeros(x.shape[0], dtype=np.int64)
    else:
        km = faiss.Kmeans(
            x.shape[1], k, niter=int(niter), nredo=int(nredo), seed=int(seed), verbose=False
        )
        km.train(x)
        _, assign = km.index.search(x, 1)
        assignments = assign.reshape(-1).astype(np.int64)
    return {"nmi": nmi(y, assignments), "f1": pairwise_f1(y, assignments), "assignments": assignments}


# ---------------------------------------------------------------------------- all-in-one


def evaluate(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    seed: int = 0,
    chunk_size: int | None = None,
    niter: int = 25,
    nredo: int = 1,
) -> dict[str, float]:
    """All zero-shot metrics under their stable names (fractions in [0, 1]).

    Keys: "recall_at_<k>" for each k, "map_at_r", "r_precision", "nmi", "f1",
    "n_queries_excluded" (lone-label queries left out of the retrieval scores).
    """
    ret = retrieval_metrics(embeddings, labels, ks, chunk_size=chunk_size, with_map=True)
    clu = cluster_scores(embeddings, labels, seed=seed, niter=niter, nredo=nredo)
    out: dict[str, float] = {f"recall_at_{k}": v for k, v in ret.recall.items()}
    out["map_at_r"] = ret.map_at_r
    out["r_precision"] = ret.r_precision
    out["nmi"] = float(clu["nmi"])
    out["f1"] = float(clu["f1"])
    out["n_queries_excluded"] = float(ret.n_queries_excluded)
    return out
