"""Tests for symm.evaluation.

Each test names its reference: brute-force numpy (full N x N similarity and explicit
Python loops), pytorch-metric-learning's AccuracyCalculator, sklearn's NMI, an
explicit O(N^2) pair loop, or a hand-built case whose answer is known.

Retrieval has two engines (numpy: CPU; torch: GPU tensors); the brute-force tests run
both, the torch one on the CPU.
"""
from __future__ import annotations

import ast
import functools
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from symm import evaluation as ev

KS = (1, 2, 4, 8)
ENGINES = ("numpy", "torch")


# ---------------------------------------------------------------- brute-force reference


def brute_force_retrieval(x: np.ndarray, y: np.ndarray, ks=KS) -> dict:
    """Reference: full N x N cosine similarity in float64 and explicit per-query loops.

    Ranking of the other items: similarity descending, then lower index first.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    n = len(y)
    hits = {k: 0 for k in ks}
    aps, rps, excluded = [], [], 0
    for q in range(n):
        others = [j for j in range(n) if j != q]
        ranked = sorted(others, key=lambda j: (-sims[q, j], j))
        rel = [bool(y[j] == y[q]) for j in ranked]
        r = sum(rel)
        if r == 0:
            excluded += 1
            continue
        for k in ks:
            hits[k] += any(rel[:k])
        rps.append(sum(rel[:r]) / r)
        ap = 0.0
        for i in range(r):  # i is 0-based, rank i + 1
            if rel[i]:
                ap += sum(rel[: i + 1]) / (i + 1)
        aps.append(ap / r)
    m = n - excluded
    return {
        "recall": {k: hits[k] / m for k in ks},
        "map_at_r": float(np.mean(aps)),
        "r_precision": float(np.mean(rps)),
        "excluded": excluded,
    }


def assert_matches_brute(x, y, ks=KS, **kwargs):
    ref = brute_force_retrieval(x, y, ks)
    res = ev.retrieval_metrics(x, y, ks, **kwargs)
    assert res.recall == pytest.approx(ref["recall"], abs=1e-12)
    assert res.map_at_r == pytest.approx(ref["map_at_r"], abs=1e-12)
    assert res.r_precision == pytest.approx(ref["r_precision"], abs=1e-12)
    assert res.n_queries_excluded == ref["excluded"]
    return res


def random_set(seed: int, n: int, d: int, n_classes: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    centers = rng.normal(size=(n_classes, d))
    x = centers[y] * 0.7 + rng.normal(size=(n, d))
    return x.astype(np.float32), y


def tie_set(seed: int, n: int = 48, n_classes: int = 5):
    """Many exact ties: rows drawn from the 16 unit vectors in {-1/2, +1/2}^4.

    All norms are exactly 1 and all dot products are exact multiples of 1/4, so float
    rounding cannot break (or create) ties in either implementation.
    """
    rng = np.random.default_rng(seed)
    protos = np.array(list(itertools.product([-0.5, 0.5], repeat=4)), dtype=np.float32)
    x = protos[rng.integers(0, len(protos), size=n)]
    y = rng.integers(0, n_classes, size=n)
    return x, y


# ---------------------------------------------------------------- retrieval vs brute force


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed,n,d,c", [(0, 60, 8, 6), (1, 97, 16, 12), (2, 40, 3, 20)])
def test_retrieval_matches_brute_force(seed, n, d, c, engine):
    # Reference: brute-force numpy loops. (2, 40, 3, 20) has lone labels too.
    x, y = random_set(seed, n, d, c)
    assert_matches_brute(x, y, ks=(1, 2, 3, 4, 8, 16, 1000), engine=engine)


def test_wrappers_match_brute_force():
    # Reference: brute-force numpy loops, through the public single-metric functions.
    x, y = random_set(3, 70, 8, 7)
    ref = brute_force_retrieval(x, y)
    assert ev.recall_at_k(x, y, KS) == pytest.approx(ref["recall"], abs=1e-12)
    m, rp = ev.map_at_r(x, y)
    assert m == pytest.approx(ref["map_at_r"], abs=1e-12)
    assert rp == pytest.approx(ref["r_precision"], abs=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_exact_ties_match_brute_force_tie_break(seed, chunk_size, engine):
    # Reference: brute-force numpy loops with the same (similarity desc, index asc)
    # tie-break, on a set full of duplicate embeddings (torch engine: exercises both the
    # topk fast path and the full-sort fallback for ties straddling the cut; numpy
    # engine: the index tie-break of the first-positive count and of the top-R ranking).
    x, y = tie_set(seed)
    assert_matches_brute(x, y, ks=(1, 2, 3, 4, 8, 30), chunk_size=chunk_size, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_tie_break_prefers_lower_index(engine):
    # Reference: hand-built case. For query 0, items 1 and 2 are identical (exact tie at
    # similarity 0); the lower index (1) must rank first, so its label decides recall@1.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    # Item 1 has the wrong label: q0 misses at rank 1; q2 (ranking [1, 0]) misses too;
    # q1 is a lone label and is excluded. A higher-index tie-break would give q0 a hit.
    res = ev.retrieval_metrics(x, np.array([0, 1, 0]), (1, 2), engine=engine)
    assert res.recall == {1: 0.0, 2: 1.0}
    assert res.map_at_r == 0.0
    assert res.n_queries_excluded == 1
    # Item 1 has the right label: q0 hits at rank 1; q1 (ranking [2, 0]) misses at 1.
    res = ev.retrieval_metrics(x, np.array([0, 0, 1]), (1, 2), engine=engine)
    assert res.recall == {1: 0.5, 2: 1.0}
    assert res.map_at_r == 0.5
    assert res.r_precision == 0.5


def varied_set(seed: int):
    """Small random set with a varied class structure, ties or not (for the fuzz test).

    Class layouts: many small classes, one class holding about half the items, three
    classes, or equal blocks; embeddings either Gaussian (float64 or float32) or the
    exact-arithmetic tie prototypes of :func:`tie_set`.
    """
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 120))
    layout = rng.integers(0, 4)
    if layout == 0:
        y = rng.integers(0, max(1, n // 4), size=n)
    elif layout == 1:
        y = np.where(rng.random(n) < 0.5, 0, rng.integers(1, n, size=n))
    elif layout == 2:
        y = rng.integers(0, 3, size=n)
    else:
        y = np.arange(n) // int(rng.integers(1, 6))
    d = int(rng.integers(1, 8))
    if rng.random() < 0.5:
        protos = np.array(list(itertools.product([-0.5, 0.5], repeat=4)), dtype=np.float32)
        x = protos[rng.integers(0, len(protos), size=n)]
    else:
        x = rng.normal(size=(n, d))
        if rng.random() < 0.5:
            x = x.astype(np.float32)
    return x, y


# Internal budgets of the numpy engine, shrunk so that small sets run every path: many
# tiles in the symmetric pass (both directions, stores filling and full, the group-max
# cut), queries of "large" classes on full rows, candidate batches, short chunks.
NUMPY_LIMITS = {
    "default": {},
    "small_tiles": {"_NP_BLOCK": 4, "_NP_GROUPS": 2},
    "mixed": {
        "_NP_BLOCK": 9,
        "_NP_GROUPS": 3,
        "_NP_STATE_ELEMENTS": 150,
        "_NP_CANDIDATES": 5,
        "_NP_POSITIVE_ELEMENTS": 7,
    },
    "full_rows": {"_NP_STATE_ELEMENTS": 1, "_NP_CANDIDATES": 5, "_NP_GROUPS": 2},
    "small_tiles_dense": {"_NP_BLOCK": 5, "_NP_GROUPS": 2, "_NP_DENSE_SHARE": 0.0},
    "small_tiles_sparse": {"_NP_BLOCK": 6, "_NP_GROUPS": 2, "_NP_DENSE_SHARE": 2.0},
}


@functools.lru_cache(maxsize=None)
def varied_case(seed: int):
    """(x, y, brute-force reference) of :func:`varied_set`, or None without any pair."""
    x, y = varied_set(seed)
    if np.unique(y, return_counts=True)[1].max() < 2:
        return None
    return x, y, brute_force_retrieval(x, y, FUZZ_KS)


FUZZ_KS = (1, 2, 3, 5, 10, 1000)


@pytest.mark.parametrize(
    "engine,limits,n_sets",
    [("torch", "default", 60)] + [("numpy", name, 200) for name in NUMPY_LIMITS],
)
def test_fuzz_matches_brute_force(engine, limits, n_sets, monkeypatch):
    # Reference: brute-force numpy loops, on up to 200 sets with varied class layouts
    # (lone items, one class of ~N/2, 3 classes), with and without exact ties, K up to
    # 1000 > N, three chunk sizes.
    for name, value in NUMPY_LIMITS[limits].items():
        monkeypatch.setattr(ev, name, value)
    for seed in range(n_sets):
        case = varied_case(seed)
        if case is None:
            continue
        x, y, ref = case
        for chunk_size in (None, 3, 7):
            res = ev.retrieval_metrics(x, y, FUZZ_KS, chunk_size=chunk_size, engine=engine)
            where = f"seed {seed}, chunk_size {chunk_size}"
            assert res.recall == pytest.approx(ref["recall"], abs=1e-12), where
            assert res.map_at_r == pytest.approx(ref["map_at_r"], abs=1e-12), where
            assert res.r_precision == pytest.approx(ref["r_precision"], abs=1e-12), where
            assert res.n_queries_excluded == ref["excluded"], where


@pytest.mark.parametrize("engine", ENGINES)
def test_all_identical_embeddings(engine):
    # Reference: brute-force loops; every similarity ties, so ranking is by index alone.
    y = np.random.default_rng(13).integers(0, 6, size=40)
    x = np.ones((40, 5), dtype=np.float32)
    assert_matches_brute(x, y, ks=(1, 2, 5, 39), engine=engine)


def test_engines_agree_on_larger_set():
    # Reference: the torch engine (top-k based) against the numpy engine (counting based)
    # on 1,500 float64 points in 300 classes of 1-9 items: identical recall, MAP@R, RP.
    rng = np.random.default_rng(14)
    y = np.repeat(np.arange(300), rng.integers(1, 10, size=300))
    x = rng.normal(size=(300, 16))[y] * 0.5 + rng.normal(size=(y.size, 16))
    a = ev.retrieval_metrics(x, y, (1, 10, 100, 1000), engine="numpy")
    b = ev.retrieval_metrics(torch.from_numpy(x), torch.from_numpy(y), (1, 10, 100, 1000), engine="torch")
    assert a.recall == b.recall
    assert a.map_at_r == pytest.approx(b.map_at_r, abs=1e-12)
    assert a.r_precision == pytest.approx(b.r_precision, abs=1e-12)
    assert a.n_queries_excluded == b.n_queries_excluded > 0


def test_unknown_engine_rejected():
    # Reference: the documented engines.
    x, y = random_set(15, 10, 4, 2)
    with pytest.raises(ValueError, match="engine"):
        ev.retrieval_metrics(x, y, engine="faiss")


def test_row_counts_fast_path_matches_plain_sum():
    # Reference: numpy's plain per-row sum of a boolean array.
    rng = np.random.default_rng(16)
    width = 3 * ev._COUNT_BLOCK
    for density in (0.0, 0.01, 0.5, 1.0):
        mask = rng.random((7, width)) < density
        assert mask.flags.c_contiguous and width % ev._COUNT_BLOCK == 0
        np.testing.assert_array_equal(ev._row_counts(mask), mask.sum(axis=1))
        np.testing.assert_array_equal(ev._row_counts(mask[:, :1000]), mask[:, :1000].sum(axis=1))


# ---------------------------------------------------------------- vs pytorch-metric-learning


@pytest.mark.parametrize("seed,n,d,c", [(10, 150, 16, 10), (11, 120, 8, 40)])
def test_matches_pml_accuracy_calculator(seed, n, d, c):
    # Reference: pytorch_metric_learning's AccuracyCalculator.
    # Configuration: query = reference (get_accuracy without `reference`, so PML sets
    # ref_includes_query=True and drops each query's own index from its neighbours);
    # k="max_bin_count" so each query sees at least R neighbours (a smaller int k makes
    # its MAP@R / R-Precision wrong). Its default kNN is faiss IndexFlatL2 on the raw
    # embeddings, so we hand it L2-normalised ones (then L2 and cosine rankings agree).
    # PML also drops lone-label queries and averages per query (avg_of_avgs=False).
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = random_set(seed, n, d, c)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
    )
    pml = calc.get_accuracy(torch.from_numpy(xn), torch.from_numpy(y))
    res = ev.retrieval_metrics(x, y, (1,))
    assert res.recall[1] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert res.map_at_r == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert res.r_precision == pytest.approx(pml["r_precision"], abs=1e-9)


# ---------------------------------------------------------------- chunking, devices, inputs


def test_chunk_size_does_not_change_results():
    # Reference: the same computation with chunk sizes 1, 7, N and the automatic one.
    x, y = random_set(4, 83, 12, 9)
    y[:3] = [100, 101, 102]  # a few lone labels too
    base = ev.retrieval_metrics(x, y, KS, chunk_size=len(y))
    for chunk in (1, 7, None):
        res = ev.retrieval_metrics(x, y, KS, chunk_size=chunk)
        assert res.recall == base.recall
        assert res.map_at_r == pytest.approx(base.map_at_r, abs=1e-12)
        assert res.r_precision == pytest.approx(base.r_precision, abs=1e-12)
        assert res.n_queries_excluded == base.n_queries_excluded == 3
    a = ev.evaluate(x, y, chunk_size=1)
    b = ev.evaluate(x, y, chunk_size=7)
    assert a == pytest.approx(b, abs=1e-12)


def test_torch_and_numpy_inputs_agree():
    # Reference: numpy float32 input vs torch float32 / float64 tensors of the same data.
    x, y = random_set(5, 64, 8, 8)
    a = ev.retrieval_metrics(x, y)
    b = ev.retrieval_metrics(torch.from_numpy(x), torch.from_numpy(y))
    c = ev.retrieval_metrics(torch.from_numpy(x).double(), y.tolist())
    for r in (b, c):
        assert r.recall == a.recall
        assert r.map_at_r == pytest.approx(a.map_at_r, abs=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    # Reference: the CPU computation (float64 on both, so rankings cannot differ).
    x, y = random_set(6, 300, 32, 20)
    xt = torch.from_numpy(x).double()
    cpu = ev.retrieval_metrics(xt, torch.from_numpy(y), chunk_size=64)
    gpu = ev.retrieval_metrics(xt.cuda(), torch.from_numpy(y).cuda(), chunk_size=64)
    assert gpu.recall == cpu.recall
    assert gpu.map_at_r == pytest.approx(cpu.map_at_r, abs=1e-12)
    assert gpu.r_precision == pytest.approx(cpu.r_precision, abs=1e-12)
    out = ev.evaluate(xt.cuda(), torch.from_numpy(y).cuda())
    assert out["recall_at_1"] == cpu.recall[1]


# ---------------------------------------------------------------- lone labels


@pytest.mark.parametrize("engine", ENGINES)
def test_lone_label_queries_excluded_and_counted(engine):
    # Reference: brute-force loops (which skip queries with R = 0), plus the count by hand.
    x, y = random_set(7, 50, 8, 5)
    y = y.copy()
    y[[3, 17, 31, 44]] = [900, 901, 902, 903]  # four singletons; still retrievable distractors
    res = assert_matches_brute(x, y, engine=engine)
    assert res.n_queries_excluded == 4
    assert res.n_queries == 46
    assert ev.count_lone_queries(y) == 4
    assert ev.evaluate(x, y)["n_queries_excluded"] == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_all_lone_gives_nan(engine):
    # Reference: definition (no scorable query -> undefined scores).
    x, y = random_set(8, 10, 4, 2)
    res = ev.retrieval_metrics(x, np.arange(10), engine=engine)
    assert res.n_queries_excluded == 10
    assert math.isnan(res.recall[1]) and math.isnan(res.map_at_r)


# ---------------------------------------------------------------- clustering metrics


def brute_pairwise_f1(labels, clusters) -> float:
    """Reference: explicit O(N^2) loop over all pairs."""
    tp = same_cluster = same_class = 0
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            sc = labels[i] == labels[j]
            sk = clusters[i] == clusters[j]
            tp += sc and sk
            same_class += sc
            same_cluster += sk
    p, r = tp / same_cluster, tp / same_class
    return 2 * p * r / (p + r)


@pytest.mark.parametrize("seed,n,a,b", [(0, 200, 7, 7), (1, 150, 3, 12), (2, 90, 20, 4)])
def test_nmi_matches_sklearn(seed, n, a, b):
    # Reference: sklearn.metrics.normalized_mutual_info_score, arithmetic average.
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, a, size=n) * 13 - 40  # non-contiguous, negative ids
    clusters = np.where(rng.random(n) < 0.6, labels % b, rng.integers(0, b, size=n))
    expected = normalized_mutual_info_score(labels, clusters, average_method="arithmetic")
    assert ev.nmi(labels, clusters) == pytest.approx(expected, abs=1e-10)
    assert ev.nmi(torch.from_numpy(labels), torch.from_numpy(clusters)) == pytest.approx(
        expected, abs=1e-10
    )


def test_nmi_on_kmeans_assignments_matches_sklearn():
    # Reference: sklearn NMI on the very assignments cluster_scores produced.
    from sklearn.metrics import normalized_mutual_info_score

    x, y = random_set(9, 200, 16, 8)
    out = ev.cluster_scores(x, y, seed=0)
    expected = normalized_mutual_info_score(y, out["assignments"], average_method="arithmetic")
    assert out["nmi"] == pytest.approx(expected, abs=1e-10)
    assert out["f1"] == pytest.approx(brute_pairwise_f1(y, out["assignments"]), abs=1e-12)


@pytest.mark.parametrize("seed,n,a,b", [(3, 120, 6, 6), (4, 80, 2, 9), (5, 100, 15, 3)])
def test_pairwise_f1_matches_pair_loop(seed, n, a, b):
    # Reference: explicit O(N^2) loop over pairs.
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, a, size=n)
    clusters = np.where(rng.random(n) < 0.5, labels % b, rng.integers(0, b, size=n)) + 1000
    assert ev.pairwise_f1(labels, clusters) == pytest.approx(
        brute_pairwise_f1(labels, clusters), abs=1e-12
    )


def test_sparse_contingency_many_classes_matches_sklearn():
    # Reference: sklearn's NMI and an O(N^2) pair loop, with 400 classes x 350 clusters
    # over 1,200 items (most contingency cells empty: the sparse table's case).
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(17)
    labels = rng.integers(0, 400, size=1200)
    clusters = np.where(rng.random(1200) < 0.7, labels % 350, rng.integers(0, 350, size=1200))
    expected = normalized_mutual_info_score(labels, clusters, average_method="arithmetic")
    assert ev.nmi(labels, clusters) == pytest.approx(expected, abs=1e-10)
    assert ev.pairwise_f1(labels, clusters) == pytest.approx(brute_pairwise_f1(labels, clusters), abs=1e-12)


def test_cluster_scores_is_plain_faiss_kmeans(capfd):
    # Reference: faiss.Kmeans called directly (same k, seed, niter, nredo) and faiss's own
    # nearest-centroid search: the same assignments (ours: one NumPy matrix product).
    # Also: no faiss "please provide at least ... training points" warning, which 60
    # points in 20 classes would trigger.
    import faiss

    x, y = random_set(18, 60, 8, 20)
    xn = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)
    for niter, nredo in ((5, 1), (ev.DEFAULT_KMEANS_NITER, 2)):
        km = faiss.Kmeans(8, len(np.unique(y)), niter=niter, nredo=nredo, seed=4, verbose=False)
        km.train(xn)
        _, ref = km.index.search(xn, 1)
        capfd.readouterr()
        out = ev.cluster_scores(x, y, seed=4, niter=niter, nredo=nredo)
        assert "WARNING" not in capfd.readouterr().err
        np.testing.assert_array_equal(out["assignments"], ref.reshape(-1))


def test_nearest_centroid_matches_brute_force():
    # Reference: full float64 distance matrix and argmin (lowest index on ties), on
    # random points and on exact duplicates of centroids (ties).
    rng = np.random.default_rng(20)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    c = rng.normal(size=(37, 16)).astype(np.float32)
    c[5] = c[3]  # two identical centroids: x nearest to them must pick 3
    x[:10] = c[3]
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(ev._nearest_centroid(x, c), d.argmin(axis=1))


def test_thread_budget_follows_torch_and_is_restored():
    # Reference: torch.get_num_threads() (the trainer's per-trial CPU budget) and the
    # faiss / BLAS thread counts before the call; results do not depend on threads.
    import faiss
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    x, y = random_set(21, 200, 16, 10)
    before_faiss, before_blas = faiss.omp_get_max_threads(), blas_threads()
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with ev._thread_budget():
            assert faiss.omp_get_max_threads() == 1
            assert set(blas_threads()) == {1}
        one = ev.evaluate(x, y, seed=1)
    finally:
        torch.set_num_threads(torch_threads)
    assert faiss.omp_get_max_threads() == before_faiss
    assert blas_threads() == before_blas
    assert ev.evaluate(x, y, seed=1) == one


def test_kmeans_options_validated_and_defaulted():
    # Reference: the documented defaults (20 iterations, 1 run) and option checks.
    import inspect

    assert ev.DEFAULT_KMEANS_NITER == 20
    for fn in (ev.cluster_scores, ev.evaluate):
        params = inspect.signature(fn).parameters
        assert params["niter"].default == ev.DEFAULT_KMEANS_NITER
        assert params["nredo"].default == 1
    x, y = random_set(19, 30, 4, 3)
    with pytest.raises(ValueError, match="niter"):
        ev.cluster_scores(x, y, niter=0)
    with pytest.raises(ValueError, match="nredo"):
        ev.cluster_scores(x, y, nredo=0)


def test_perfect_clustering_scores_one():
    # Reference: definition; a relabelled copy of the classes is a perfect clustering.
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 9, size=300)
    clusters = (labels * 7 + 3) % 11  # injective relabelling
    assert ev.nmi(labels, clusters) == pytest.approx(1.0, abs=1e-12)
    assert ev.pairwise_f1(labels, clusters) == pytest.approx(1.0, abs=1e-12)


def well_separated_blobs(seed=0, n_classes=6, per_class=20, d=16):
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[:n_classes] * 10.0
    y = np.repeat(np.arange(n_classes), per_class)
    x = centers[y] + rng.normal(scale=0.05, size=(len(y), d))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


def test_well_separated_blobs_are_perfect():
    # Reference: definition; tight, orthogonal blobs -> perfect retrieval and clustering.
    x, y = well_separated_blobs()
    out = ev.evaluate(x, y, ks=(1, 2, 4, 8))
    for key in ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "map_at_r", "r_precision"):
        assert out[key] == pytest.approx(1.0, abs=1e-12), key
    out = ev.cluster_scores(x, y, seed=0, nredo=3)
    assert out["nmi"] == pytest.approx(1.0, abs=1e-12)
    assert out["f1"] == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- evaluate / determinism


def test_evaluate_names_ranges_and_determinism():
    # Reference: the stable metric names used in MLflow and reports; repeat runs.
    x, y = random_set(12, 120, 16, 10)
    y = y.copy()
    y[0] = 12345  # one lone label
    out = ev.evaluate(torch.from_numpy(x), y, ks=(1, 5), seed=3)
    assert list(out) == [
        "recall_at_1", "recall_at_5", "map_at_r", "r_precision", "nmi", "f1", "n_queries_excluded"
    ]
    assert out["n_queries_excluded"] == 1
    for k, v in out.items():
        assert isinstance(v, float), k
        if k != "n_queries_excluded":
            assert 0.0 <= v <= 1.0, k
    assert ev.evaluate(torch.from_numpy(x), y, ks=(1, 5), seed=3) == out
    a = ev.cluster_scores(x, y, seed=3)["assignments"]
    b = ev.cluster_scores(x, y, seed=3)["assignments"]
    np.testing.assert_array_equal(a, b)


def test_module_does_not_import_orchestration_libraries():
    # Reference: the module's own import statements (ray/mlflow/dvc must stay out).
    tree = ast.parse(Path(ev.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"ray", "mlflow", "dvc"}


# ---------------------------------------------------------------- the SOP-scale benchmark


def test_bench_class_sizes_are_sop_shaped():
    # Reference: SOP's test split -- 60,502 items in 11,316 classes of 2-12 items.
    from bench.evaluation import class_sizes

    sizes = class_sizes(60_502, 11_316, 2, 12, np.random.default_rng(0))
    assert sizes.sum() == 60_502 and sizes.size == 11_316
    assert sizes.min() == 2 and sizes.max() == 12
    assert np.bincount(sizes)[2] > np.bincount(sizes)[12]  # skewed to small, like SOP


def test_bench_writes_only_its_own_docs_section(tmp_path):
    # Reference: a hand-written docs/benchmarks.md with sections by others before and
    # after ours; rewriting ours twice must leave theirs byte-identical.
    from bench.evaluation import SECTION, write_section

    path = tmp_path / "benchmarks.md"
    before = "# Benchmarks\n\n## Loss cost\n\nkeep me\n\n"
    after = "## Data throughput\n\nkeep me too\n"
    path.write_text(before + f"{SECTION}\n\nold\n\n" + after)
    write_section(f"{SECTION}\n\nfirst\n", path)
    write_section(f"{SECTION}\n\nsecond\n", path)
    assert path.read_text() == before + f"{SECTION}\n\nsecond\n\n" + after
    appended = tmp_path / "others.md"
    appended.write_text(before + after)
    write_section(f"{SECTION}\n\nnew\n", appended)
    assert appended.read_text() == before + after + f"\n{SECTION}\n\nnew\n"
    fresh = tmp_path / "new.md"
    write_section(f"{SECTION}\n\nx\n", fresh)
    assert fresh.read_text().startswith("# Benchmarks\n\n" + SECTION)
