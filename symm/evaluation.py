"""Zero-shot retrieval and clustering metrics for deep metric learning.

Every test-set item is a query against all *other* items (query set = reference set,
self excluded), following the protocol of Musgrave et al., "A Metric Learning Reality
Check" (ECCV 2020). Retrieval metrics are exact (no approximate index) and computed in
blocks of queries, so peak memory is O(block x N) instead of N^2; clustering metrics
come from faiss k-means and a sparse contingency table.

Public API (all scores are fractions in [0, 1]):

- :func:`evaluate` -- everything, under the stable names used in MLflow and reports:
  ``recall_at_<k>`` (one per k), ``map_at_r``, ``r_precision``, ``nmi``, ``f1`` and
  ``n_queries_excluded``;
- :func:`retrieval_metrics` -- Recall@K, MAP@R and R-Precision in one pass
  (:func:`recall_at_k` and :func:`map_at_r` are thin wrappers);
- :func:`cluster_scores` -- k-means with k = number of classes, then :func:`nmi` and
  :func:`pairwise_f1` of the assignments;
- :func:`count_lone_queries` -- items whose label occurs once (no correct answer; they are
  left out of the retrieval averages but stay in the gallery as distractors).

How retrieval is computed. Embeddings are L2-normalised (cosine and Euclidean rankings
then agree). Items are ranked by similarity, descending, ties broken by lower item index.
Only three things per query decide the metrics: the rank of its first same-label item
(Recall@K is "that rank <= K"), and the ranks of its R same-label items where they fall in
the top R (MAP@R, R-Precision). Neither needs a top-K list, so any K costs the same.

On CPU (the NumPy engine) items are grouped by class into blocks of ~510, and the
similarity matrix is computed once per pair of blocks -- half of the N x N product, since
it is symmetric -- each strip of it serving the queries along its rows and along its
columns. Per query:

1. its same-label similarities are read from its own block and sorted: the first and the
   weakest are its thresholds; everything else is a "negative";
2. rank of the first same-label item = 1 + negatives ranked before it, counted with one
   comparison pass per strip (exact ties resolved by index where they occur);
3. while its second same-label item can still reach the top R, it keeps the best R
   negatives seen so far that are at least as similar as its weakest same-label item
   (strips with many such negatives are first cut at the R-th largest of per-group
   maxima); at the end these and the same-label items are ranked together exactly.

Queries of classes too large for that per-query state (more than ~4M / N same-label
items) get their full similarity rows instead, a chunk at a time, with the same three
steps. Embeddings on a GPU use the PyTorch engine (top-k per chunk with an exact
tie-break fallback), which gives the same results. k-means runs in faiss on the CPU.

This module deliberately depends only on torch, numpy and faiss (no ray/mlflow/dvc), so
that it can be imported and tested anywhere.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    "DEFAULT_KS",
    "DEFAULT_KMEANS_NITER",
]

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)
# At most this many k-means iterations in cluster_scores / evaluate unless told otherwise
# (faiss's own default is 25; 20 is pytorch-metric-learning's and the SOP benchmark's
# reference setting, docs/benchmarks.md). faiss stops earlier once the objective is flat.
DEFAULT_KMEANS_NITER = 20

# PyTorch engine: auto chunk size keeps (chunk x N) at about this many elements.
_CHUNK_ELEMENTS = 1 << 23
# NumPy engine: rows per block of the symmetric pass (one block x N float32 strip is
# 118 MiB at N = 60k); a multiple of 255, the row granularity of the column counts.
_NP_BLOCK = 510
# NumPy engine: bound on (N x largest R) for the per-query state of the symmetric pass;
# queries with a larger R get full rows instead (R <= 69 at N = 60k, <= 980 at N = 4k).
_NP_STATE_ELEMENTS = 1 << 22
# NumPy engine, full rows: (chunk x N) similarities per chunk (128 MiB of float32).
_NP_CHUNK_ELEMENTS = 1 << 25
# NumPy engine: bound on (chunk rows x largest class in the chunk) for the table of
# same-label items; chunks of queries from very large classes get fewer rows.
_NP_POSITIVE_ELEMENTS = 1 << 22
# NumPy engine: at most this many top-R candidates are extracted at once.
_NP_CANDIDATES = 1 << 23
# NumPy engine: per-row groups whose maxima bound the R-th largest negative.
_NP_GROUPS = 128
# NumPy engine, symmetric pass: when more than this share of a tile's row queries have
# a negative >= their first same-label similarity, count `>` with a full pass instead of
# on those rows alone (column queries always use the full pass: gathering columns is slow).
_NP_DENSE_SHARE = 0.25

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


def _as_numpy_embeddings(embeddings: ArrayLike, *, normalize: bool = True) -> np.ndarray:
    """The embeddings as a 2-D NumPy array on the CPU, checked (2-D, finite).

    float64 stays float64; anything else becomes float32. With ``normalize`` the result
    is a C-contiguous copy with L2-normalised rows (zero rows stay zero, like
    ``F.normalize``: the norm is clamped at 1e-12); without it, the input's own memory
    where possible (not to be modified).
    """
    if isinstance(embeddings, torch.Tensor):
        t = embeddings.detach()
        if t.dtype != torch.float64:
            t = t.to(torch.float32)
        x = t.cpu().numpy()
    else:
        x = np.asarray(embeddings)
        if x.dtype != np.float64:
            x = x.astype(np.float32, copy=False)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    if not normalize:
        return x
    return _normalized(np.array(x, order="C", copy=True))


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


def _label_codes(labels: ArrayLike, n: int) -> np.ndarray:
    """Labels as contiguous int64 codes 0..C-1 (NumPy)."""
    y = _as_label_array(labels)
    if y.size != n:
        raise ValueError(f"got {y.size} labels for {n} embeddings")
    if y.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return np.unique(y, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _auto_chunk_size(n: int) -> int:
    return max(1, min(n, _CHUNK_ELEMENTS // max(n, 1)))


def _np_auto_chunk_size(n: int) -> int:
    return max(1, min(n, _NP_CHUNK_ELEMENTS // max(n, 1)))


@contextlib.contextmanager
def _thread_budget() -> Iterator[None]:
    """Run NumPy's BLAS and faiss with ``torch.get_num_threads()`` threads, then restore.

    The trainer sets torch's thread count to the trial's CPU budget; without this, the
    BLAS NumPy ships and faiss's OpenMP would each start one thread per core. (BLAS limits
    use threadpoolctl, a scikit-learn dependency, when installed.)
    """
    n = max(1, torch.get_num_threads())
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        blas = contextlib.nullcontext()
    else:
        blas = threadpool_limits(limits=n, user_api="blas")
    faiss_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        with blas:
            yield
    finally:
        faiss.omp_set_num_threads(faiss_threads)


def _on_cpu(embeddings: ArrayLike) -> bool:
    return not (isinstance(embeddings, torch.Tensor) and embeddings.device.type != "cpu")


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
    engine: str = "auto",
) -> RetrievalResult:
    """Recall@K, MAP@R and R-Precision in one exact, chunked pass over the queries.

    Ranking: by cosine similarity, descending; equal similarities are ordered by lower
    item index first, so results are deterministic. Any K is exact (on the numpy engine
    K = 1000 costs the same as K = 1). ``with_map=False`` skips MAP@R and R-Precision
    (they come out NaN).

    ``engine``: ``"numpy"`` (the CPU engine, see the module docstring), ``"torch"`` (runs
    on the embeddings' device: top-k per chunk), or ``"auto"`` -- torch for tensors on a
    GPU, numpy otherwise. Both give the same results.

    ``chunk_size``: queries scored together -- on the numpy engine the block height of
    the symmetric pass (default 510; classes of more than chunk_size items then take the
    full-rows path) and the rows per chunk of that path (default ~32M / N); on the torch
    engine the rows per chunk (default ~8M / N). Peak memory is O(chunk_size x N) plus one
    normalised copy of the embeddings (numpy engine at N = 60k, D = 512: ~0.4 GB).

    Similarities are computed in float32 (float64 if the embeddings are float64). On
    GPU, leave TF32 matmuls off (PyTorch's default) or near-ties may reorder. The chunk
    size does not change the results, except that a BLAS backend may round a row's
    similarities differently for different chunk shapes, which can only matter for
    near-ties at the last float bit.
    """
    ks = _check_ks(ks)
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk_size = int(chunk_size)
    if engine == "auto":
        engine = "numpy" if _on_cpu(embeddings) else "torch"
    if engine == "numpy":
        x = _as_numpy_embeddings(embeddings, normalize=False)  # normalised in position order
        codes = _label_codes(labels, x.shape[0])
        with _thread_budget():
            first, ap, rp = _retrieval_numpy(x, codes, chunk_size, with_map)
        counts = np.bincount(codes)
        r_all = counts[codes] - 1
    elif engine == "torch":
        xt = _as_embeddings(embeddings)
        yt = _as_labels(labels, xt.shape[0], xt.device)
        first, ap, rp, r_all = _retrieval_torch(xt, yt, ks, chunk_size, with_map)
    else:
        raise ValueError(f"engine must be 'auto', 'numpy' or 'torch', got {engine!r}")
    return _reduce(first, ap, rp, r_all, ks, with_map)


def _reduce(
    first: np.ndarray,
    ap: np.ndarray | None,
    rp: np.ndarray | None,
    r_all: np.ndarray,
    ks: tuple[int, ...],
    with_map: bool,
) -> RetrievalResult:
    """Per-query values -> averages over the scorable queries (fixed order: deterministic)."""
    valid = r_all > 0
    n_valid = int(valid.sum())
    nan = float("nan")
    first_v = first[valid]
    recall = {k: int((first_v <= k).sum()) / n_valid if n_valid else nan for k in ks}
    if with_map and n_valid:
        map_r = float(ap[valid].sum() / n_valid)
        r_prec = float(rp[valid].sum() / n_valid)
    else:
        map_r = r_prec = nan
    return RetrievalResult(
        recall=recall,
        map_at_r=map_r,
        r_precision=r_prec,
        n_queries=n_valid,
        n_queries_excluded=int(valid.size - n_valid),
    )


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 for k in out):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return out


# ---------------------------------------------------------------- retrieval: numpy engine
#
# Items are laid out in "positions": sorted by (large class?, class size, class, index), so
# every class is a contiguous run of positions. Queries of classes with at most r_cap other
# items go through the symmetric pass: class-aligned blocks of <= `block` positions, one
# matrix product per pair of blocks (i <= j) serving the rows of block i and, transposed,
# those of block j -- half the N x N product. Queries of larger classes (whose per-row
# state would not fit) get their full rows, a chunk of rows at a time.


@dataclass(frozen=True)
class _Layout:
    order: np.ndarray  # position -> original item index
    size: np.ndarray  # class size, per position
    class_start: np.ndarray  # first position of the item's class, per position
    n_small: int  # positions [0, n_small) use the symmetric pass (incl. lone items)
    blocks: tuple[tuple[int, int], ...]  # class-aligned blocks covering [0, n_small)


def _layout(codes: np.ndarray, block: int, r_cap: int) -> _Layout:
    n = codes.size
    counts = np.bincount(codes)
    size = counts[codes]
    big = size - 1 > r_cap
    order = np.lexsort((np.arange(n), codes, size, big))
    size_p = size[order]
    codes_p = codes[order]
    first_of_class = np.empty(counts.size, dtype=np.int64)
    first_of_class[codes_p[::-1]] = np.arange(n - 1, -1, -1)
    class_start = first_of_class[codes_p]
    n_small = int(n - big.sum())
    starts = np.flatnonzero(class_start[:n_small] == np.arange(n_small))
    starts = np.append(starts, n_small)
    blocks = []
    lo = 0
    while lo < n_small:
        hi = int(starts[np.searchsorted(starts, lo + block, side="right") - 1])
        if hi <= lo:  # a class longer than `block` (only if r_cap >= block)
            hi = int(starts[np.searchsorted(starts, lo, side="right")])
        blocks.append((lo, hi))
        lo = hi
    return _Layout(order, size_p, class_start, n_small, tuple(blocks))


def _retrieval_numpy(
    x: np.ndarray,
    codes: np.ndarray,
    chunk_size: int | None,
    with_map: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per item (original order): rank of its first same-label item, AP@R, R-Precision.

    ``x``: raw embeddings (N, D) float32/float64 (read only); ``codes``: label codes.
    Values of lone items are 0 (the caller leaves them out).
    """
    n = codes.size
    block = _NP_BLOCK if chunk_size is None else chunk_size
    rows_chunk = _np_auto_chunk_size(n) if chunk_size is None else chunk_size
    r_cap = min(block - 1, max(1, _NP_STATE_ELEMENTS // max(n, 1)))
    lay = _layout(codes, block, r_cap)
    xs = _normalized(x[lay.order])  # one copy, in position order
    first_p = np.zeros(n, dtype=np.int64)
    ap_p = np.zeros(n, dtype=np.float64)
    rp_p = np.zeros(n, dtype=np.float64)
    if n and (lay.size[: lay.n_small] > 1).any():
        _symmetric_pass(xs, lay, with_map, first_p, ap_p, rp_p)
    big_queries = np.arange(lay.n_small, n)
    if big_queries.size:
        _full_rows_pass(xs, lay, big_queries, rows_chunk, with_map, first_p, ap_p, rp_p)
    first = np.empty_like(first_p)
    first[lay.order] = first_p
    if not with_map:
        return first, None, None
    ap = np.empty_like(ap_p)
    rp = np.empty_like(rp_p)
    ap[lay.order] = ap_p
    rp[lay.order] = rp_p
    return first, ap, rp


def _normalized(x: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of ``x`` in place (a private copy); zero rows stay zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    np.maximum(norms, x.dtype.type(1e-12), out=norms)
    x /= norms[:, None]
    return x


_COUNT_BLOCK = 8 * 255  # bytes per row group summed as uint64 words without carry


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """Number of True per row of a 2-D boolean array (int64).

    A C-contiguous mask whose row length is a multiple of 8 x 255 is counted 8 bytes at
    a time: summing up to 255 uint64 words adds each byte lane (0 or 1 per word) without
    carry into the next lane, then the lanes are added up. About 5x faster than a byte
    sum; other masks take the plain route.
    """
    c, width = mask.shape
    if width % _COUNT_BLOCK or not mask.flags.c_contiguous:
        return mask.view(np.uint8).sum(axis=1, dtype=np.int64)
    words = mask.view(np.uint64).reshape(c, width // _COUNT_BLOCK, 255)
    lanes = words.sum(axis=2, dtype=np.uint64)
    return lanes.view(np.uint8).reshape(c, -1).sum(axis=1, dtype=np.int64)


def _column_counts(mask: np.ndarray) -> np.ndarray:
    """Number of True per column of a C-contiguous boolean array (int64).

    With 255 | rows and 8 | columns, rows are added 255 at a time as uint64 words (one
    byte lane per column, no carry), as in :func:`_row_counts`.
    """
    h, width = mask.shape
    if h % 255 or width % 8 or not mask.flags.c_contiguous:
        return mask.view(np.uint8).sum(axis=0, dtype=np.int64)
    words = mask.view(np.uint64).reshape(h // 255, 255, width // 8)
    lanes = words.sum(axis=1, dtype=np.uint64)
    return lanes.view(np.uint8).reshape(h // 255, width).sum(axis=0, dtype=np.int64)


class _Scratch:
    """A reusable boolean mask whose padding (outside the current view) is False.

    Each view (h, w) lays the buffer out as rows padded to a multiple of 255 and columns
    to a multiple of 8 x 255, so that :func:`_row_counts` / :func:`_column_counts` take
    their fast path on :meth:`full_rows` / :meth:`full_cols`, and flat indices into
    :meth:`full_rows` divide by :attr:`width`.
    """

    def __init__(self, rows: int, cols: int):
        self.flat = np.zeros(_pad(rows, 255) * _pad(cols, _COUNT_BLOCK), dtype=bool)
        self.h = self.width = 0
        self.grid = self.flat[:0].reshape(0, 0)

    def view(self, h: int, w: int) -> np.ndarray:
        self.h, self.width = h, _pad(w, _COUNT_BLOCK)
        self.grid = self.flat[: _pad(h, 255) * self.width].reshape(-1, self.width)
        self.grid[:h, w:] = False
        self.grid[h:] = False
        return self.grid[:h, :w]

    def full_rows(self) -> np.ndarray:
        """The current rows, full padded width (for row counts and flat indices)."""
        return self.grid[: self.h]

    def full_cols(self) -> np.ndarray:
        """Rows up to the next multiple of 255, full padded width (for column counts)."""
        return self.grid


def _pad(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


class _RowState:
    """Per-query state of the symmetric pass, indexed by position in [0, n_small).

    ``pos_sim`` / ``pos_idx``: the R same-label similarities and original indices, in
    ranking order. ``before``: negatives ranked before the first same-label item so far.
    ``store_*``: the best negatives seen so far (at most R, ranking order) among those
    that can still reach the top R; ``cut``: the similarity a new negative must reach to
    enter the store (+inf: the row needs no store -- R < 2, or its first same-label item
    is already at rank >= R, so no second one can be in the top R).
    """

    def __init__(self, lay: _Layout, dtype: np.dtype, with_map: bool):
        ns = lay.n_small
        self.r = lay.size[:ns] - 1
        width = max(1, int(self.r.max()))
        self.n = lay.order.size
        self.pos_sim = np.full((ns, width), -np.inf, dtype=dtype)
        self.pos_idx = np.full((ns, width), self.n, dtype=np.int64)
        self.s1 = np.full(ns, np.inf, dtype=dtype)  # lone rows: nothing ranks "before"
        self.p1 = np.full(ns, self.n, dtype=np.int64)
        self.before = np.zeros(ns, dtype=np.int64)
        self.with_map = with_map
        self.cut = np.full(ns, np.inf, dtype=dtype)
        self.store_sim = np.full((ns, width), -np.inf, dtype=dtype)
        self.store_idx = np.full((ns, width), self.n, dtype=np.int64)
        self.store_n = np.zeros(ns, dtype=np.int64)


def _symmetric_pass(
    xs: np.ndarray,
    lay: _Layout,
    with_map: bool,
    first: np.ndarray,
    ap: np.ndarray,
    rp: np.ndarray,
) -> None:
    """Scores of the queries at positions [0, n_small), written into first / ap / rp."""
    st = _RowState(lay, xs.dtype, with_map)
    orig = lay.order
    n = orig.size
    tallest = max(hi - lo for lo, hi in lay.blocks)
    buf = np.empty(tallest * max(tallest, n - lay.blocks[0][1]), dtype=xs.dtype)
    scratch = _Scratch(tallest, max(tallest, n))

    # 1. Diagonal blocks: same-label similarities (all inside the block) and thresholds.
    for lo, hi in lay.blocks:
        tile = buf[: (hi - lo) ** 2].reshape(hi - lo, hi - lo)
        np.matmul(xs[lo:hi], xs[lo:hi].T, out=tile)
        _take_positives(tile, lo, lay, st)
        _tile_update(tile, scratch, 0, np.arange(lo, hi), orig[lo:hi], st)

    # 2. Each block against every later position: all negatives. The strip's rows are
    # the block's queries; its columns, up to n_small, are the later blocks' queries
    # (items of large classes are columns only: their rows come from the full-rows pass).
    for lo, hi in lay.blocks:
        if hi == n:
            break
        strip = buf[: (hi - lo) * (n - hi)].reshape(hi - lo, n - hi)
        np.matmul(xs[lo:hi], xs[hi:].T, out=strip)
        _tile_update(strip, scratch, 0, np.arange(lo, hi), orig[hi:], st)
        if hi < lay.n_small:
            _tile_update(strip[:, : lay.n_small - hi], scratch, 1, np.arange(hi, lay.n_small), orig[lo:hi], st)

    # 3. Scores. Rank of the first same-label item = 1 + negatives ranked before it.
    q = np.flatnonzero(st.r > 0)
    r = st.r[q]
    f = st.before[q] + 1
    first[q] = f
    if not with_map:
        return
    hit = f <= r
    ap_q = np.where(hit, 1.0 / f, 0.0)  # the first one alone: P(rank) = 1 / rank
    rp_q = hit.astype(np.float64)
    deep = q[(r >= 2) & (f < r)]  # a second one can be in the top R: rank them exactly
    if deep.size:
        ns = st.r.size
        ap_d = np.zeros(ns)
        rp_d = np.zeros(ns)
        cand_row = np.repeat(deep, st.store_n[deep])
        slot = np.arange(cand_row.size) - np.repeat(np.cumsum(st.store_n[deep]) - st.store_n[deep], st.store_n[deep])
        _rank_together(
            cand_row,
            st.store_idx[cand_row, slot],
            st.store_sim[cand_row, slot],
            deep,
            st.r,
            st.pos_sim,
            st.pos_idx,
            ap_d,
            rp_d,
        )
        where = np.searchsorted(q, deep)
        ap_q[where] = ap_d[deep]
        rp_q[where] = rp_d[deep]
    ap[q] = ap_q / r
    rp[q] = rp_q / r


def _take_positives(tile: np.ndarray, lo: int, lay: _Layout, st: _RowState) -> None:
    """Read the same-label similarities out of a diagonal tile, then mask them (and self)."""
    m = tile.shape[0]
    pos = np.arange(lo, lo + m)
    size = lay.size[pos]
    width = int(size.max())
    slot = np.arange(width)
    members = (lay.class_start[pos] - lo)[:, None] + np.minimum(slot, size[:, None] - 1)
    rows = np.arange(m)[:, None]
    is_pos = (slot < size[:, None]) & (members != rows)
    sims = np.where(is_pos, tile[rows, members], tile.dtype.type(-np.inf))
    tile[rows, members] = -np.inf
    if width < 2:
        return
    members_orig = lay.order[members + lo]
    order = np.lexsort((members_orig, -sims), axis=-1)[:, : width - 1]
    st.pos_sim[pos, : width - 1] = np.take_along_axis(sims, order, axis=1)
    st.pos_idx[pos, : width - 1] = np.take_along_axis(members_orig, order, axis=1)
    has = st.r[pos] > 0
    st.s1[pos[has]] = st.pos_sim[pos[has], 0]
    st.p1[pos[has]] = st.pos_idx[pos[has], 0]
    if st.with_map:
        deep_ok = pos[st.r[pos] >= 2]
        st.cut[deep_ok] = st.pos_sim[deep_ok, st.r[deep_ok] - 1]  # weakest same-label item


def _tile_update(
    tile: np.ndarray,
    scratch: _Scratch,
    axis: int,
    q: np.ndarray,
    other_orig: np.ndarray,
    st: _RowState,
) -> None:
    """Update the queries ``q`` that lie along ``axis`` of ``tile`` (0: rows, 1: columns).

    ``other_orig``: original indices of the items along the other axis (all negatives of
    these queries, or masked to -inf).
    """
    h, w = tile.shape
    shape = (-1, 1) if axis == 0 else (1, -1)
    other_shape = (1, -1) if axis == 0 else (-1, 1)
    counts = _row_counts if axis == 0 else _column_counts
    mask = scratch.view(h, w)
    padded = scratch.full_rows() if axis == 0 else scratch.full_cols()

    # Negatives ranked before the first same-label item: a higher similarity, or an equal
    # one and a lower original index. Only queries with some negative >= s1 here count.
    s1 = st.s1[q].reshape(shape)
    np.greater_equal(tile, s1, out=mask)
    ge = counts(padded)[: q.size]
    some = np.flatnonzero(ge)
    dense = some.size > (_NP_DENSE_SHARE * q.size if axis == 0 else 0)
    if dense:  # many: one more full pass, exact ties checked only where they occur
        np.greater(tile, s1, out=mask)
        before = counts(padded)[: q.size]
        some = np.flatnonzero(before != ge)
        st.before[q] += before
    if some.size:
        vals = tile[some] if axis == 0 else tile[:, some]
        s1_some = s1[some] if axis == 0 else s1[:, some]
        p1 = st.p1[q[some]].reshape(shape)
        tie = (vals == s1_some) & (other_orig.reshape(other_shape) < p1)
        n_before = tie.sum(axis=1 - axis)
        if not dense:  # (the dense branch has counted `>` already)
            n_before += (vals > s1_some).sum(axis=1 - axis)
        st.before[q[some]] += n_before
    if not st.with_map:
        return

    # Top-R candidates. Rows whose first same-label item is already at rank >= R are done.
    done = q[(st.before[q] > st.r[q] - 2) & (st.cut[q] < np.inf)]
    st.cut[done] = np.inf
    cut = st.cut[q]
    if not (cut < np.inf).any():
        return
    np.greater_equal(tile, cut.reshape(shape), out=mask)
    n_cand = counts(padded)[: q.size]
    heavy = np.flatnonzero(n_cand > st.r[q] + 4)
    if heavy.size:  # too many: also cut at this tile's R-th largest group maximum
        cut[heavy] = np.maximum(cut[heavy], _tile_tau(tile, axis, heavy, st.r[q[heavy]]))
        if axis == 0:
            mask[heavy] = tile[heavy] >= cut[heavy, None]
            n_cand[heavy] = mask[heavy].sum(axis=1)
        else:
            mask[:, heavy] = tile[:, heavy] >= cut[None, heavy]
            n_cand[heavy] = mask[:, heavy].sum(axis=0)
    if not n_cand.any():
        return
    i, j = np.divmod(np.flatnonzero(scratch.full_rows()), scratch.width)
    if axis == 0:
        _store_merge(st, q[i], tile[i, j], other_orig[j])
    else:
        _store_merge(st, q[j], tile[i, j], other_orig[i])


def _tile_tau(tile: np.ndarray, axis: int, which: np.ndarray, r: np.ndarray) -> np.ndarray:
    """For queries ``which`` along ``axis``: the R-th largest of their group maxima here.

    At least R negatives in the tile are >= it, so a smaller negative ranks after R items.
    -inf where the tile has fewer than R groups.
    """
    sub = tile[which] if axis == 0 else np.ascontiguousarray(tile[:, which].T)
    width = sub.shape[1]
    gmax = _group_max(sub, min(width, max(_NP_GROUPS, 8 * int(r.max()))))
    gmax.sort(axis=1)
    g = gmax.shape[1]
    tau = np.full(which.size, -np.inf, dtype=tile.dtype)
    ok = np.flatnonzero(r <= g)
    tau[ok] = gmax[ok, g - r[ok]]
    return tau


def _store_merge(st: _RowState, row: np.ndarray, sims: np.ndarray, idx: np.ndarray) -> None:
    """Insert new candidate negatives into the rows' stores, keeping each row's best R.

    A store row is sorted by (similarity desc, index asc) and padded with (-inf, N). The rows'
    stored entries and the new candidates are sorted together once by (row, similarity desc,
    index asc) and the first R of each row written back: O(M log M) for M entries, whatever
    the number of candidates per row (large classes, as in the glyph sets, bring hundreds).
    """
    rows, new_n = np.unique(row, return_counts=True)
    old_n = st.store_n[rows]
    old_row = np.repeat(rows, old_n)
    slot = np.arange(old_row.size) - np.repeat(np.cumsum(old_n) - old_n, old_n)
    all_row = np.concatenate([old_row, row])
    all_sim = np.concatenate([st.store_sim[old_row, slot], sims])
    all_idx = np.concatenate([st.store_idx[old_row, slot], idx])
    order = np.lexsort((all_idx, -all_sim, all_row))
    all_row, all_sim, all_idx = all_row[order], all_sim[order], all_idx[order]
    rank = np.arange(all_row.size) - np.searchsorted(all_row, all_row, side="left")
    keep = rank < st.r[all_row]
    st.store_sim[rows] = -np.inf
    st.store_idx[rows] = st.n
    st.store_sim[all_row[keep], rank[keep]] = all_sim[keep]
    st.store_idx[all_row[keep], rank[keep]] = all_idx[keep]
    st.store_n[rows] = np.minimum(st.r[rows], old_n + new_n)
    full = rows[st.store_n[rows] == st.r[rows]]
    weakest_pos = st.pos_sim[full, st.r[full] - 1]
    st.cut[full] = np.maximum(weakest_pos, st.store_sim[full, st.r[full] - 1])


def _full_rows_pass(
    xs: np.ndarray,
    lay: _Layout,
    queries: np.ndarray,
    chunk: int,
    with_map: bool,
    first: np.ndarray,
    ap: np.ndarray,
    rp: np.ndarray,
) -> None:
    """Queries (positions, sorted by class size) scored from their full similarity rows."""
    n = xs.shape[0]
    rows_max = min(chunk, queries.size)
    sims_buf = np.empty((rows_max, n), dtype=xs.dtype)
    # Comparison masks: rows padded with never-written False columns to a multiple of
    # 8 x 255 bytes, so that True entries can be counted 8 bytes at a time.
    mask_buf = np.zeros((rows_max, -(-n // _COUNT_BLOCK) * _COUNT_BLOCK), dtype=bool)
    a = 0
    while a < queries.size:
        # Queries are sorted by class size: the window's last one has the largest class.
        largest = int(lay.size[queries[min(a + chunk, queries.size) - 1]])
        c = min(chunk, max(1, _NP_POSITIVE_ELEMENTS // largest))
        q = queries[a : a + c]
        a += q.size
        sims = sims_buf[: q.size]
        np.matmul(xs[q], xs.T, out=sims)
        f, p, r = _score_rows(sims, mask_buf[: q.size], q, lay, with_map)
        first[q] = f
        if with_map:
            ap[q] = p
            rp[q] = r


def _score_rows(
    sims: np.ndarray,
    mask: np.ndarray,
    q: np.ndarray,
    lay: _Layout,
    with_map: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Score one chunk of queries from their full similarity rows ``sims`` (modified).

    Returns per query the rank of the first same-label item and, with ``with_map``,
    AP@R and R-Precision. ``mask`` is scratch space: ``c`` rows of at least ``n`` columns,
    False beyond column ``n`` (see :func:`_row_counts`).
    """
    c, n = sims.shape
    view = mask[:, :n]
    neg_inf = sims.dtype.type(-np.inf)
    size = lay.size[q]  # class size; R = size - 1 >= 1
    width = int(size.max())
    slot = np.arange(width)
    # Row i's class members (positions, padded by repeating the last one), self included.
    members = lay.class_start[q][:, None] + np.minimum(slot, size[:, None] - 1)
    rows = np.arange(c)[:, None]
    is_pos = (slot < size[:, None]) & (members != q[:, None])
    pos_sim = np.where(is_pos, sims[rows, members], neg_inf)
    # What is left in each row are the negatives (other classes, lone items included).
    sims[rows, members] = neg_inf
    members = lay.order[members]  # original indices, for the tie-break
    # Same-label items in ranking order: similarity desc, then index asc; padding last.
    order = np.lexsort((members, -pos_sim), axis=-1)[:, : width - 1]
    pos_sim = np.take_along_axis(pos_sim, order, axis=1)
    pos_idx = np.take_along_axis(members, order, axis=1)

    # Rank of the first same-label item = 1 + negatives ranked before it: those with a
    # higher similarity, or an equal one and a lower index (only rows with ties check).
    s1 = pos_sim[:, :1]
    np.greater(sims, s1, out=view)
    before = _row_counts(mask)
    np.greater_equal(sims, s1, out=view)
    tied = np.flatnonzero(_row_counts(mask) != before)
    if tied.size:
        eq = sims[tied] == s1[tied]
        eq &= lay.order[None, :] < pos_idx[tied, :1]
        before[tied] += _row_counts(eq)
    first = before + 1
    if not with_map:
        return first, None, None

    r = size - 1
    hit = first <= r
    ap = np.where(hit, 1.0 / first, 0.0)  # the first one alone: P(rank) = 1 / rank
    rp = hit.astype(np.float64)
    deep = np.flatnonzero((r >= 2) & (first < r))  # a second one can still be in the top R
    if deep.size:
        ap[deep], rp[deep] = _top_r_exact(sims, mask, deep, r[deep], pos_sim, pos_idx, lay.order)
    return first, ap / r, rp / r


def _group_max(sims: np.ndarray, groups: int) -> np.ndarray:
    """Per row, the maxima of about ``groups`` contiguous column groups."""
    c, n = sims.shape
    g = -(-n // groups)  # group width
    full = n // g
    out = np.empty((c, full + (1 if n % g else 0)), dtype=sims.dtype)
    np.max(sims[:, : full * g].reshape(c, full, g), axis=2, out=out[:, :full])
    if n % g:
        np.max(sims[:, full * g :], axis=1, out=out[:, full])
    return out


def _top_r_exact(
    sims: np.ndarray,
    mask: np.ndarray,
    deep: np.ndarray,
    r: np.ndarray,
    pos_sim: np.ndarray,
    pos_idx: np.ndarray,
    orig: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """AP@R * R and R-Precision * R for rows ``deep`` (R = ``r``) by exact top-R ranking.

    ``sims`` holds negatives only (same-label entries are -inf). A negative can precede a
    same-label item within the top R only if its similarity is >= the weakest same-label
    similarity and >= tau, the R-th largest of the row's group maxima (>= R negatives are
    >= tau, so anything below tau ranks after R items). Those candidates -- about R per
    row -- and the R same-label items are sorted together by (similarity desc, index asc):
    each same-label item's position is its exact rank whenever that rank is <= R, and is
    > R otherwise. ``orig``: original index of each column.
    """
    c, n = sims.shape
    groups = min(n, max(_NP_GROUPS, 8 * int(r.max())))
    gmax = _group_max(sims if 2 * deep.size >= c else sims[deep], groups)
    if 2 * deep.size >= c:
        gmax = gmax[deep]
    gmax.sort(axis=1)
    n_groups = gmax.shape[1]
    tau = np.full(deep.size, -np.inf, dtype=sims.dtype)
    ok = np.flatnonzero(r <= n_groups)
    tau[ok] = gmax[ok, n_groups - r[ok]]
    cut = np.full(c, np.inf, dtype=sims.dtype)  # rows not in `deep` select nothing
    cut[deep] = np.maximum(tau, pos_sim[deep, r - 1])
    np.greater_equal(sims, cut[:, None], out=mask[:, :n])
    width = mask.shape[1]

    # Rows in batches so that at most ~_NP_CANDIDATES candidates are held at once.
    per_row = _row_counts(mask) if np.count_nonzero(mask) > _NP_CANDIDATES else None
    ap = np.zeros(c, dtype=np.float64)
    rp = np.zeros(c, dtype=np.float64)
    r_full = np.zeros(c, dtype=np.int64)
    r_full[deep] = r
    start = 0
    while start < c:
        stop = c
        if per_row is not None:
            cum = np.cumsum(per_row[start:])
            stop = start + max(1, int(np.searchsorted(cum, _NP_CANDIDATES, side="right")))
        flat = np.flatnonzero(mask[start:stop])
        cand_row, cand_col = np.divmod(flat, width)
        cand_row += start
        rows_here = deep[(deep >= start) & (deep < stop)]
        _rank_together(
            cand_row, orig[cand_col], sims[cand_row, cand_col], rows_here, r_full, pos_sim, pos_idx, ap, rp
        )
        start = stop
    return ap[deep], rp[deep]


def _rank_together(
    cand_row: np.ndarray,
    cand_col: np.ndarray,
    cand_sim: np.ndarray,
    rows: np.ndarray,
    r_full: np.ndarray,
    pos_sim: np.ndarray,
    pos_idx: np.ndarray,
    ap: np.ndarray,
    rp: np.ndarray,
) -> None:
    """Sort candidates and same-label items per row; add AP@R*R and RP*R into ap / rp.

    ``cand_col`` and ``pos_idx`` are original item indices (the tie-break).
    """
    if rows.size == 0:
        return
    rr = r_full[rows]
    pos_row = np.repeat(rows, rr)
    pos_slot = np.arange(pos_row.size) - np.repeat(np.cumsum(rr) - rr, rr)
    all_row = np.concatenate([cand_row, pos_row])
    all_sim = np.concatenate([cand_sim, pos_sim[pos_row, pos_slot]])
    all_idx = np.concatenate([cand_col, pos_idx[pos_row, pos_slot]])
    is_pos = np.zeros(all_row.size, dtype=bool)
    is_pos[cand_row.size :] = True
    order = np.lexsort((all_idx, -all_sim, all_row))
    sorted_row = all_row[order]
    rank = np.arange(order.size) - np.searchsorted(sorted_row, sorted_row, side="left") + 1
    keep = is_pos[order]
    row, rank = sorted_row[keep], rank[keep]
    nth = np.arange(row.size) - np.searchsorted(row, row, side="left") + 1  # i-th same-label item
    inside = rank <= r_full[row]
    ap += np.bincount(row[inside], weights=nth[inside] / rank[inside], minlength=ap.size)
    rp += np.bincount(row[inside], minlength=rp.size)


# ---------------------------------------------------------------- retrieval: torch engine


def _retrieval_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    ks: tuple[int, ...],
    chunk_size: int | None,
    with_map: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """The torch engine: per query first-positive rank, AP@R, R-Precision and R.

    Runs on ``x``'s device. Each chunk keeps only the top max(max(ks), R) ranks (topk, not
    a full sort; see :func:`_top_ranked` for ties); ``with_map=False`` limits that to
    max(ks). A first-positive rank beyond that depth is reported as depth + 1.
    """
    n = x.shape[0]
    if chunk_size is None:
        chunk_size = _auto_chunk_size(n)

    # R = number of OTHER items with the query's label; R == 0 -> lone query, excluded.
    r_all = torch.bincount(y)[y] - 1
    valid_all = r_all > 0
    k_max = max(ks)

    first = torch.zeros(n, dtype=torch.int64, device=x.device)
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
        found = rel.any(dim=1)
        first[q0:q1] = torch.where(found, rel.to(torch.int8).argmax(dim=1) + 1, depth + 1)
        if with_map:
            ap[q0:q1], rp[q0:q1] = _map_r_chunk(rel, r)

    first_np = first.cpu().numpy()
    r_np = r_all.cpu().numpy()
    if not with_map:
        return first_np, None, None, r_np
    return first_np, ap.cpu().numpy(), rp.cpu().numpy(), r_np


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


# ---------------------------------------------------------------- retrieval: wrappers


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


@dataclass(frozen=True)
class _Contingency:
    """Non-zero cells of the classes x clusters count table, with its margins."""

    cells: np.ndarray  # counts of the non-zero cells (int64)
    cell_class: np.ndarray  # class code of each cell
    cell_cluster: np.ndarray  # cluster code of each cell
    class_sizes: np.ndarray
    cluster_sizes: np.ndarray


def _contingency(labels: ArrayLike, clusters: ArrayLike) -> _Contingency:
    """Sparse contingency table in O(N log N) time and O(N) memory.

    Only non-zero cells are kept (at most N), so 11k classes x 11k clusters cost no more
    than 11 x 11 (a dense table would be 1 GB at SOP scale).
    """
    a = _as_label_array(labels)
    b = _as_label_array(clusters)
    if a.shape != b.shape:
        raise ValueError(f"labels and clusters differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("empty labels")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    ai = ai.reshape(-1).astype(np.int64)
    bi = bi.reshape(-1).astype(np.int64)
    n_b = int(bi.max()) + 1
    keys, cells = np.unique(ai * n_b + bi, return_counts=True)
    return _Contingency(
        cells=cells.astype(np.int64),
        cell_class=keys // n_b,
        cell_cluster=keys % n_b,
        class_sizes=np.bincount(ai),
        cluster_sizes=np.bincount(bi),
    )


def _pairs(n: np.ndarray) -> int:
    """Sum of C(n, 2) over an integer array, exactly (Python ints)."""
    n = n.astype(np.int64).ravel()
    return int((n * (n - 1) // 2).sum())


def pairwise_f1(labels: ArrayLike, clusters: ArrayLike) -> float:
    """Pair-counting F1 of a clustering against the class labels.

    A pair is a true positive if both items share a class and a cluster;
    precision = TP / same-cluster pairs, recall = TP / same-class pairs.
    Computed from the (sparse) contingency table, never over the N^2 pairs.
    Conventions: identical all-singleton partitions (no pairs at all) give 1.0; a
    zero precision or recall denominator otherwise gives 0.0.
    """
    table = _contingency(labels, clusters)
    tp = _pairs(table.cells)
    same_class = _pairs(table.class_sizes)
    same_cluster = _pairs(table.cluster_sizes)
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
    table = _contingency(labels, clusters)
    a = table.class_sizes.astype(np.float64)
    b = table.cluster_sizes.astype(np.float64)
    n = a.sum()
    h_a = -float(np.sum((a / n) * np.log(a / n)))
    h_b = -float(np.sum((b / n) * np.log(b / n)))
    if h_a + h_b <= 0.0:
        return 1.0
    nij = table.cells.astype(np.float64)
    ai = a[table.cell_class]
    bj = b[table.cell_cluster]
    mi = float(np.sum((nij / n) * (np.log(nij * n) - np.log(ai * bj))))
    return float(np.clip(2.0 * mi / (h_a + h_b), 0.0, 1.0))


def cluster_scores(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    seed: int = 0,
    niter: int = DEFAULT_KMEANS_NITER,
    nredo: int = 1,
) -> dict[str, Any]:
    """k-means (k = number of distinct labels) on the L2-normalised embeddings, with faiss.

    Returns {"nmi": float, "f1": float, "assignments": np.ndarray of cluster ids}.
    ``niter``: at most this many Lloyd iterations (default 20; faiss's own default is 25;
    faiss stops earlier once the objective no longer changes); ``nredo``: restarts,
    keeping the lowest objective. Seeded, so the same inputs give the same clustering.
    Each item is then assigned to its nearest final centroid (one exact pass, about the
    cost of one k-means iteration). Runs on the CPU (GPU embeddings are copied over) with
    ``torch.get_num_threads()`` threads.
    """
    if int(niter) < 1 or int(nredo) < 1:
        raise ValueError(f"niter and nredo must be >= 1, got niter={niter}, nredo={nredo}")
    x = _as_numpy_embeddings(embeddings)
    if x.dtype != np.float32:
        x = np.ascontiguousarray(x, dtype=np.float32)
    y = _as_label_array(labels)
    if y.size != x.shape[0]:
        raise ValueError(f"got {y.size} labels for {x.shape[0]} embeddings")
    k = int(np.unique(y).size)
    if k == 1:
        assignments = np.zeros(x.shape[0], dtype=np.int64)
    else:
        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=int(niter),
            nredo=int(nredo),
            seed=int(seed),
            verbose=False,
            # Only silences faiss's "please provide at least 39 x k points" warning, which
            # every SOP-like test set (~5 items per class) would print at each evaluation.
            min_points_per_centroid=1,
        )
        with _thread_budget():
            km.train(x)
            assignments = _nearest_centroid(x, km.centroids)
    return {"nmi": nmi(y, assignments), "f1": pairwise_f1(y, assignments), "assignments": assignments}


def _nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared L2; ties to the lower index).

    argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2), one chunked matrix product through
    NumPy's BLAS (on the development machine ~25% faster than faiss's flat search, whose
    bundled BLAS lacks AVX-512 kernels).
    """
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    rows = max(1, _NP_CHUNK_ELEMENTS // 2 // max(1, centroids.shape[0]))
    out = np.empty(x.shape[0], dtype=np.int64)
    buf = np.empty((min(rows, x.shape[0]), centroids.shape[0]), dtype=np.float32)
    for a in range(0, x.shape[0], rows):
        scores = buf[: min(rows, x.shape[0] - a)]
        np.matmul(x[a : a + rows], centroids.T, out=scores)
        scores -= half_norms
        out[a : a + rows] = scores.argmax(axis=1)
    return out


# ---------------------------------------------------------------------------- all-in-one


def evaluate(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    seed: int = 0,
    chunk_size: int | None = None,
    niter: int = DEFAULT_KMEANS_NITER,
    nredo: int = 1,
    progress: bool | None = False,
) -> dict[str, float]:
    """All zero-shot metrics under their stable names (fractions in [0, 1]).

    Keys: "recall_at_<k>" for each k, "map_at_r", "r_precision", "nmi", "f1",
    "n_queries_excluded" (lone-label queries left out of the retrieval scores).
    Retrieval: :func:`retrieval_metrics` (exact; GPU if the embeddings are on one).
    Clustering: :func:`cluster_scores` with ``niter`` k-means iterations (default 20,
    fewer than faiss's 25, to keep per-epoch evaluation cheap; raise ``niter`` / ``nredo``
    for final numbers if wanted) and ``seed``.
    ``progress``: a two-stage bar (retrieval, clustering); ``None`` = only on a terminal.
    """
    from symm.progress import progress_bar

    with progress_bar(total=2, desc="evaluation: retrieval", unit="stage", enabled=progress, leave=False) as bar:
        ret = retrieval_metrics(embeddings, labels, ks, chunk_size=chunk_size, with_map=True)
        bar.set_description("evaluation: k-means clustering")
        bar.update()
        clu = cluster_scores(embeddings, labels, seed=seed, niter=niter, nredo=nredo)
        bar.update()
    out: dict[str, float] = {f"recall_at_{k}": v for k, v in ret.recall.items()}
    out["map_at_r"] = ret.map_at_r
    out["r_precision"] = ret.r_precision
    out["nmi"] = float(clu["nmi"])
    out["f1"] = float(clu["f1"])
    out["n_queries_excluded"] = float(ret.n_queries_excluded)
    return out
