"""The compiled Symm logit node (symm.losses.kernels, numba) against the torch node it speeds up.

Reference: ``symm.losses.fused.SymmNPairLogits`` (itself checked against the autograd path,
numpy re-derivations of the release and brute-force loops in test_losses.py / test_npair.py /
test_angular_fused.py): the same logits, the same chosen set pair (first winner on ties) and
the same gradients, for every set-pair selection the losses use.
"""
import os

import numpy as np
import pytest
import torch

from symm.losses import create_loss, kernels
from symm.losses.fused import SymmNPairLogits, symm_npair_logits
from symm.losses.kernels import (CompiledSymmNPairLogits, compiled_kernels_enabled, compiled_symm_batch_logits,
                                 compiled_symm_npair_logits)
from symm.losses.npair import OFFICIAL_ORDERED_PAIRS, OFFICIAL_SET_PAIRS

pytestmark = pytest.mark.skipif(not compiled_kernels_enabled(), reason="numba not importable or switched off")

symmetric_gram = kernels._symmetric_gram


@pytest.fixture
def one_torch_thread():
    """torch on one thread, as a trial runs (the node takes BLAS syrk only there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

ANGULAR_SUMS = tuple(sorted({tuple(sorted(pair)) for pair in OFFICIAL_ORDERED_PAIRS}))
SELECTIONS = {
    "npair official": dict(pairs=list(OFFICIAL_SET_PAIRS), anchors_only=False, keep_positive=False),
    "npair official, positive kept": dict(pairs=list(OFFICIAL_SET_PAIRS), anchors_only=False, keep_positive=True),
    "npair point4": dict(pairs=[(0, t) for t in range(4)], anchors_only=True, keep_positive=True),
    # the diagonal chosen too (not a loss's default): the vectorised off-diagonal span beside the chosen diagonal entry
    "npair point4, diagonal chosen": dict(pairs=[(0, t) for t in range(4)], anchors_only=True, keep_positive=False),
    "npair pair16": dict(pairs=[(s, t) for s in range(4) for t in range(4)], anchors_only=False, keep_positive=True),
    "angular official": dict(pairs=[(ANGULAR_SUMS.index(tuple(sorted((s, t)))), t) for s, t in OFFICIAL_ORDERED_PAIRS],
                             anchors_only=False, keep_positive=False, row_mix=ANGULAR_SUMS),
    "angular point4": dict(pairs=[(0, t) for t in range(4)], anchors_only=False, keep_positive=False, row_mix=((0, 1),)),
}
REFLECTIONS = [dict(alpha=2.0, beta=1.0, form="paper"), dict(alpha=1.5, beta=0.5, form="paper"),
               dict(alpha=2.5, beta=1.5, form="official")]


def _node_args(selection: dict, alpha: float = 2.0, beta: float = 1.0, form: str = "paper") -> tuple:
    """The node's arguments after (anchors, positives) for a selection (hardness rank 1)."""
    return (selection["pairs"], selection["anchors_only"], 1, selection["keep_positive"], alpha, beta, form, 1e-12,
            selection.get("row_mix"))


def _compiled(anchors, positives, pairs, anchors_only, rank, keep_positive, *rest):
    """The compiled node called with the torch node's arguments (it takes no rank: the hardest only)."""
    assert rank == 1
    return compiled_symm_npair_logits(anchors, positives, pairs, anchors_only, keep_positive, *rest)


def _random_points(seed: int, n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    anchors, positives = torch.randn(2, n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return anchors, positives


def _assert_same_choice(which, ref_which):
    """The chosen set pair agrees off the diagonal (exact ties: the first wins in both nodes).

    On the diagonal a_i · S1_i and p_i · S2_i are the same function, (αβ + own)·a_i·p_i, for
    every reflection (and equal a_i · p_i for α = 2, β = 1): which of them wins is float
    rounding in either node; the values and gradients (compared by the callers) are the same.
    """
    off = ~torch.eye(which.shape[0], dtype=torch.bool)
    assert torch.equal(which[off].long(), ref_which[off].long())


def _both_nodes(anchors, positives, selection, reflection, weights):
    results = []
    for node in (_compiled, SymmNPairLogits.apply):
        a, p = anchors.detach().clone().requires_grad_(), positives.detach().clone().requires_grad_()
        values, which = node(a, p, *_node_args(selection, **reflection))[:2]
        grads = torch.autograd.grad((values * weights).sum(), (a, p))
        results.append((values, which, grads))
    return results


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@pytest.mark.parametrize("reflection", REFLECTIONS, ids=["paper", "alpha1.5-beta0.5", "official-form"])
@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_node_equals_the_torch_node(name, reflection, seed):
    g = torch.Generator().manual_seed(seed)
    n, dim = 9, 6
    anchors = torch.randn(n, dim, generator=g, dtype=torch.float64)
    positives = torch.randn(n, dim, generator=g, dtype=torch.float64)
    weights = torch.randn(n, n, generator=g, dtype=torch.float64)
    (values, which, grads), (ref_values, ref_which, ref_grads) = _both_nodes(anchors, positives, SELECTIONS[name], reflection, weights)
    torch.testing.assert_close(values, ref_values)
    _assert_same_choice(which, ref_which)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref)


def _batch(anchors: torch.Tensor, positives: torch.Tensor, layout: str) -> torch.Tensor:
    return torch.stack([anchors, positives], 1).reshape(-1, anchors.shape[1]) if layout == "interleaved" else \
        torch.cat([anchors, positives])


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
@pytest.mark.parametrize("reflection", REFLECTIONS[::2], ids=["paper", "official-form"])
@pytest.mark.parametrize("dim", [7, 24], ids=["d<N: batch reordered", "d>=2N: Gram reordered"])
@pytest.mark.parametrize("gram", ["syrk", "matmul"])
def test_compiled_node_on_the_batch_equals_the_torch_node_on_its_pairs(name, layout, reflection, dim, gram, monkeypatch,
                                                                       one_torch_thread):
    # the node takes the whole batch in its layout (an interleaved one is reordered in the loops,
    # or, where d < kr·N, as a blocked copy); reference: the torch node on the (anchor, positive)
    # rows split out of it, its gradients put back in the batch's row order. Both ways to the
    # (2N, 2N) Gram of the selections whose rows are [A; P]: BLAS syrk's lower triangle (mirrored
    # in the loops) and a torch matmul
    monkeypatch.setenv("SYMM_BLAS_SYRK", "1" if gram == "syrk" else "0")
    used = []
    monkeypatch.setattr(kernels, "_symmetric_gram", lambda x: used.append(1) or symmetric_gram(x))
    g = torch.Generator().manual_seed(11)
    n = 10
    anchors = torch.randn(n, dim, generator=g, dtype=torch.float64)
    positives = torch.randn(n, dim, generator=g, dtype=torch.float64)
    weights = torch.randn(n, n, generator=g, dtype=torch.float64)
    selection = SELECTIONS[name]
    args = _node_args(selection, **reflection)
    points = _batch(anchors, positives, layout).requires_grad_()
    values, which, share = compiled_symm_batch_logits(points, layout, args[0], args[1], *args[3:])
    (grad,) = torch.autograd.grad((values * weights).sum(), points)
    a, p = anchors.clone().requires_grad_(), positives.clone().requires_grad_()
    ref_values, ref_which = SymmNPairLogits.apply(a, p, *args)
    ref_grads = torch.autograd.grad((ref_values * weights).sum(), (a, p))
    torch.testing.assert_close(values, ref_values)
    _assert_same_choice(which, ref_which)
    torch.testing.assert_close(grad, _batch(*ref_grads, layout))
    assert share == _compiled(anchors, positives, *args)[2]
    rows_are_both_sets = not selection["anchors_only"] and selection.get("row_mix") != ((0, 1),)
    assert bool(used) == rows_are_both_sets  # asked for by every selection with rows [A; P], and only by them
    if gram == "syrk" and rows_are_both_sets:
        assert symmetric_gram(points.detach()) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows, dim", [(6, 9), (40, 3), (130, 70)])
def test_symmetric_gram_is_the_lower_triangle_of_the_gram(dtype, rows, dim, one_torch_thread):
    # reference: numpy's float64 matmul of the same points
    points = torch.randn(rows, dim, generator=torch.Generator().manual_seed(rows), dtype=dtype)
    lower = symmetric_gram(points)
    assert lower.dtype == points.numpy().dtype and lower.shape == (rows, rows)
    full = points.double().numpy() @ points.double().numpy().T
    tril = np.tril_indices(rows)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(lower[tril], full[tril], rtol=tolerance, atol=tolerance * dim)


def test_symmetric_gram_is_not_used_where_it_cannot_or_must_not_be(monkeypatch, one_torch_thread):
    points = torch.randn(8, 5)
    assert symmetric_gram(points.T.contiguous().T) is None  # not C-contiguous: the node takes the matmul
    assert symmetric_gram(points.half()) is None
    monkeypatch.setenv("SYMM_BLAS_SYRK", "0")
    assert not kernels.symmetric_gram_enabled() and symmetric_gram(points) is None


def test_symmetric_gram_is_used_only_where_torch_runs_one_thread(one_torch_thread):
    # with more torch threads, SciPy's BLAS threads and torch's spinning OpenMP threads fight for
    # the cores: the node takes the torch matmul there
    assert symmetric_gram(torch.randn(8, 5)) is not None
    torch.set_num_threads(2)
    assert symmetric_gram(torch.randn(8, 5)) is None


def test_gram_as_matmul_switches_syrk_off_and_restores_the_setting(monkeypatch):
    monkeypatch.setenv("SYMM_BLAS_SYRK", "1")
    with kernels.gram_as_matmul():
        assert not kernels.symmetric_gram_enabled()
    assert kernels.symmetric_gram_enabled()
    monkeypatch.delenv("SYMM_BLAS_SYRK")
    with kernels.gram_as_matmul():
        assert not kernels.symmetric_gram_enabled()
    assert "SYMM_BLAS_SYRK" not in os.environ


def test_flop_count_of_symm_npair_official_includes_the_gram_done_by_syrk(one_torch_thread):
    # reference: the node's products written out — forward the (2N, 2N) Gram, backward one
    # (2N, 2N) × (2N, d) product: 2 · (2N)²d FLOPs each
    from symm.analysis.cost import flops
    n, dim = 8, 16
    loss = create_loss("npair", negatives="symm", symm_mode="official")
    x = torch.randn(2 * n, dim, requires_grad=True)
    labels = torch.arange(n).repeat_interleave(2)
    assert symmetric_gram(x.detach()) is not None  # one thread: the node would take syrk here
    assert flops(lambda: loss(x, labels).backward()) == 2 * 2 * (2 * n) ** 2 * dim


def test_symmetric_gram_runs_scipys_blas_on_one_thread_and_restores_its_setting(monkeypatch, one_torch_thread):
    controllers = kernels._scipy_blas_controllers()
    assert controllers, "threadpoolctl found no BLAS library under SciPy's installation"
    seen = []
    real = kernels._syrk[torch.float32]
    monkeypatch.setitem(kernels._syrk, torch.float32,
                        lambda *args, **kw: seen.append([lib.num_threads for lib in controllers]) or real(*args, **kw))
    blas_threads = [lib.num_threads for lib in controllers]
    try:
        for lib in controllers:
            lib.set_num_threads(3)
        assert symmetric_gram(torch.randn(16, 4)) is not None
        assert seen == [[1] * len(controllers)]
        assert [lib.num_threads for lib in controllers] == [3] * len(controllers)
    finally:
        for lib, threads in zip(controllers, blas_threads):
            lib.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@pytest.mark.parametrize("dim", [4, 12])
def test_compiled_node_on_an_interleaved_batch_passes_gradcheck(name, dim):
    points = torch.randn(10, dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64, requires_grad=True)
    args = _node_args(SELECTIONS[name])
    assert torch.autograd.gradcheck(lambda x: compiled_symm_batch_logits(x, "interleaved", args[0], args[1], *args[3:])[0],
                                    (points,))


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
@pytest.mark.parametrize("dim", [5, 24], ids=["large", "small"])
@pytest.mark.parametrize("strides", ["column slice", "column-major"])
def test_compiled_node_on_a_non_contiguous_batch_equals_it_on_a_contiguous_copy(name, layout, dim, strides,
                                                                                 one_torch_thread):
    # a batch that is a view (a model's output sliced, or transposed) takes the same paths as its
    # contiguous copy; reference: the node on that copy
    g = torch.Generator().manual_seed(dim)
    wide = torch.randn(20, dim + 3, generator=g, dtype=torch.float64)
    batch = wide[:, :dim] if strides == "column slice" else wide[:, :dim].T.contiguous().T
    assert not batch.is_contiguous()
    weights = torch.randn(10, 10, generator=g, dtype=torch.float64)
    args = _node_args(SELECTIONS[name])
    results = []
    for points in (batch.clone().requires_grad_(), batch.contiguous().requires_grad_()):
        values, which, share = compiled_symm_batch_logits(points, layout, args[0], args[1], *args[3:])
        (grad,) = torch.autograd.grad((values * weights).sum(), points)
        results.append((values, which, share, grad))
    (values, which, share, grad), (ref_values, ref_which, ref_share, ref_grad) = results
    torch.testing.assert_close(values, ref_values)
    _assert_same_choice(which, ref_which)  # (the copy may take syrk, the view the matmul: other rounding)
    assert share == ref_share
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("name", ["npair official", "npair point4", "angular point4"])
@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
def test_compiled_node_second_output_is_the_sum_of_squared_norms(name, layout):
    """Σ ||x||² (the losses' L2 term) from the node, against torch's sum and, with the logits, gradcheck."""
    selection = SELECTIONS[name]
    plan = kernels.selection_plan(selection["pairs"], selection["anchors_only"], selection["keep_positive"], 2.0, 1.0,
                                  "paper", row_mix=selection.get("row_mix"))
    points = torch.randn(12, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _, outputs = kernels.plan_logits(points, layout, plan)
    torch.testing.assert_close(outputs.squares, points.detach().pow(2).sum())

    def combined(x):
        values, out = kernels.plan_logits(x, layout, plan)
        return (values * weights).sum() + 0.7 * out.squares

    assert torch.autograd.gradcheck(combined, (points,))


def test_compiled_node_names_an_unknown_layout():
    with pytest.raises(ValueError, match="layout must be 'interleaved' or 'blocked'"):
        compiled_symm_batch_logits(torch.randn(8, 3), "shuffled", [(0, 1)], True, True, 2.0, 1.0, "paper")


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_counted_synthetic_share_equals_the_share_of_the_flags(name):
    # reference: an explicit loop over the off-diagonal choices of the torch node
    n = 12
    anchors, positives = _random_points(4, n, 6)
    selection = SELECTIONS[name]
    args = _node_args(selection)
    _, _, share = _compiled(anchors, positives, *args)
    _, which = SymmNPairLogits.apply(anchors, positives, *args)
    mix = selection.get("row_mix")
    synthetic = 0
    for i in range(n):
        for j in range(n):
            if i != j:
                s, t = selection["pairs"][int(which[i, j])]
                sets = (t, *mix[s]) if mix is not None else (s, t)
                synthetic += max(sets) >= 2
    assert 0 < synthetic < n * (n - 1)
    assert share == pytest.approx(synthetic / (n * (n - 1)))


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_compiled_node_in_float32_matches_float64(name):
    anchors, positives = _random_points(3, 16, 12)
    selection = SELECTIONS[name]
    exact = _compiled(anchors, positives, *_node_args(selection))[0]
    single = _compiled(anchors.float(), positives.float(), *_node_args(selection))[0]
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_compiled_node_passes_gradcheck(name):
    g = torch.Generator().manual_seed(5)
    n, dim = 5, 4
    anchors = torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    positives = torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    selection = SELECTIONS[name]

    def logits(a, p):
        return _compiled(a, p, *_node_args(selection))[0]

    assert torch.autograd.gradcheck(logits, (anchors, positives))


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_duplicates_and_zero_norm_points_tie_and_stay_finite(name):
    # a_j = p_j makes A, P and both mirror images coincide (exact ties: the first set pair wins,
    # as in the torch node); a zero embedding has a zero-norm axis (eps clamp, finite gradient)
    g = torch.Generator().manual_seed(7)
    n, dim = 6, 5
    anchors = torch.randn(n, dim, generator=g, dtype=torch.float64)
    positives = torch.randn(n, dim, generator=g, dtype=torch.float64)
    positives[1] = anchors[1]
    anchors[2] = 0.0
    positives[3] = 0.0
    weights = torch.randn(n, n, generator=g, dtype=torch.float64)
    (values, which, grads), (ref_values, ref_which, ref_grads) = _both_nodes(
        anchors, positives, SELECTIONS[name], REFLECTIONS[0], weights)
    torch.testing.assert_close(values, ref_values)
    _assert_same_choice(which, ref_which)
    for grad, ref in zip(grads, ref_grads):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, ref)


def test_a_nan_input_gives_a_nan_logit_not_an_error():
    anchors = torch.randn(4, 3, dtype=torch.float64)
    positives = torch.randn(4, 3, dtype=torch.float64)
    anchors[0, 0] = float("nan")
    values, which, _ = _compiled(anchors, positives, list(OFFICIAL_SET_PAIRS), False, 1, True, 2.0, 1.0, "paper", 1e-12, None)
    assert torch.isnan(values[0]).all()
    assert (which >= 0).all() and (which < len(OFFICIAL_SET_PAIRS)).all()


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@pytest.mark.parametrize("large", [False, True], ids=["small batch", "large batch"])
def test_a_nan_candidate_sticks_where_the_torch_node_has_one(name, large):
    """A NaN in one positive reaches the logits where the torch node's do (its column, through every
    candidate's Gram terms, and its own row where it is a row point). Reference: the torch node's
    NaN pattern. The sticking of a NaN among finite candidates is tested on the loop below."""
    selection = SELECTIONS[name]
    anchors, positives = _random_points(3, 6, 3 if large else 16)
    positives[2, 1] = float("nan")
    values, _, _ = _compiled(anchors, positives, *_node_args(selection))
    ref_values = SymmNPairLogits.apply(anchors, positives, *_node_args(selection))[0]
    assert torch.isnan(values[:, 2]).any()
    assert torch.equal(torch.isnan(values), torch.isnan(ref_values))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_four_candidate_pass_equals_an_explicit_loop_with_nans_and_ties(dtype):
    """``kernels._four_candidates`` (one pass over four column sets) against an explicit loop with the
    four-pass semantics: candidate c replaces the best so far if it is larger or NaN (a NaN
    sticks, as torch.amax), so ties keep the first. NaN coefficients only in later sets, ties
    between sets, columns permuted by ``pair_cols``."""
    rng = np.random.default_rng(0)
    n = 37
    g00, g01 = rng.standard_normal((2, n)).astype(dtype)
    coef = rng.standard_normal((6, 2, n)).astype(dtype)
    coef[3, 0, 5] = np.nan  # later candidates NaN while the first is finite
    coef[4, 1, 7] = np.nan
    coef[2, 1, 9] = np.nan  # the first candidate NaN
    coef[4, :, 11] = coef[2, :, 11]  # an exact tie between two sets
    pair_cols = np.array([2, 4, 3, 5], dtype=np.int64)
    best = np.empty(n, dtype=dtype)
    chosen = np.empty(n, dtype=np.int8)
    kernels._four_candidates(g00, g01, coef, pair_cols, best, chosen)
    for j in range(n):
        top, pick = None, -1
        for c, t in enumerate(pair_cols):
            value = g00[j] * coef[t, 0, j] + g01[j] * coef[t, 1, j]
            if c == 0 or value > top or np.isnan(value):
                top, pick = value, c
        assert chosen[j] == pick, j
        assert best[j] == top or (np.isnan(best[j]) and np.isnan(top)), j
    assert np.isnan(best[[5, 7, 9]]).all() and chosen[11] == 0


def test_dispatch_uses_the_compiled_node_only_where_it_applies(monkeypatch):
    calls = []
    for node in (CompiledSymmNPairLogits, SymmNPairLogits):
        monkeypatch.setattr(node, "apply", (lambda original, name: lambda *args: calls.append(name) or original(*args))(
            node.apply, node.__name__))
    anchors, positives = torch.randn(2, 4, 3)
    pairs = [(0, t) for t in range(4)]
    symm_npair_logits(anchors, positives, pairs, True, 1, True, 2.0, 1.0, "paper")
    symm_npair_logits(anchors, positives, pairs, True, 2, True, 2.0, 1.0, "paper")  # k-th hardest: torch node
    symm_npair_logits(anchors.half(), positives.half(), pairs, True, 1, True, 2.0, 1.0, "paper")  # half: torch node
    monkeypatch.setenv("SYMM_COMPILED_KERNELS", "0")
    symm_npair_logits(anchors, positives, pairs, True, 1, True, 2.0, 1.0, "paper")
    assert calls == ["CompiledSymmNPairLogits", "SymmNPairLogits", "SymmNPairLogits", "SymmNPairLogits"]


@pytest.mark.parametrize("loss_name, mode", [("npair", "official"), ("npair", "point4"), ("angular", "point4")])
@pytest.mark.parametrize("layout", ["interleaved", "blocked", "shuffled"])
def test_losses_hand_the_batch_to_the_compiled_node_as_it_is(monkeypatch, loss_name, mode, layout):
    # the training path: the sampler layouts reach the node as the batch tensor itself (no split,
    # cat or copy in between), another order as one blocked copy; the share is recorded
    seen = []
    original = CompiledSymmNPairLogits.apply
    monkeypatch.setattr(CompiledSymmNPairLogits, "apply",
                        lambda points, interleaved, *rest: seen.append((points, interleaved)) or original(points, interleaved, *rest))
    n = 6
    labels = torch.arange(n).repeat_interleave(2) if layout == "interleaved" else torch.arange(n).repeat(2)
    if layout == "shuffled":
        labels = labels[torch.randperm(2 * n, generator=torch.Generator().manual_seed(0))]
    embeddings = torch.randn(2 * n, 64, requires_grad=True)
    loss = create_loss(loss_name, negatives="symm", symm_mode=mode)
    loss(embeddings, labels).backward()
    (points, interleaved), = seen
    assert (points is embeddings) == (layout != "shuffled")
    assert interleaved == (layout == "interleaved")
    assert 0 <= loss.last_stats["synthetic_share"] <= 1 and torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("loss_name, mode", [("npair", "official"), ("npair", "point4"), ("npair", "pair16"),
                                             ("angular", "official"), ("angular", "point4")])
@pytest.mark.parametrize("options", [{}, {"reg_lambda": 0.5}, {"reg_lambda": 0.5, "normalize": True}],
                         ids=["defaults", "strong L2 term", "normalised"])
@pytest.mark.parametrize("layout", ["interleaved", "shuffled"])
def test_losses_are_the_same_with_the_compiled_node_switched_off(monkeypatch, loss_name, mode, options, layout):
    # the L2 term comes from the compiled node's second output (its gradient inside the node's):
    # a strong one, on normalised points too, and on a shuffled batch (the node gets a blocked copy)
    g = torch.Generator().manual_seed(2)
    embeddings = torch.randn(16, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(8).repeat_interleave(2)
    if layout == "shuffled":
        order = torch.randperm(16, generator=g)
        embeddings, labels = embeddings[order], labels[order]
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv("SYMM_COMPILED_KERNELS", switch)
        emb = embeddings.clone().requires_grad_()
        loss = create_loss(loss_name, negatives="symm", symm_mode=mode, **options)
        value = loss(emb, labels)
        value.backward()
        results.append((value.detach(), emb.grad, loss.last_stats["synthetic_share"]))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][2] == pytest.approx(results[1][2], rel=1e-6)  # the torch path averages float32 flags


@pytest.mark.parametrize("mode", ["official", "point4"])
def test_compiled_angular_logits_pass_gradcheck(mode, monkeypatch):
    # the angular loss's whole logit matrix in one compiled call (the official diagonal included)
    monkeypatch.setenv("SYMM_COMPILED_KERNELS", "1")
    loss = create_loss("angular", negatives="symm", symm_mode=mode)
    anchors, positives = (x.requires_grad_() for x in _random_points(6, 5, 4))
    assert torch.autograd.gradcheck(lambda a, p: loss.fused_symm_logits(a, p)[0], (anchors, positives))


@pytest.mark.parametrize("size", [1, 5, 8, 21, 64, 130])
def test_symmetrise_adds_the_transpose_in_place_and_leaves_the_rest(size):
    # reference: numpy's m + m.T on the leading (size, size) block of a wider matrix
    matrix = np.random.default_rng(size).standard_normal((size + 3, size + 5)).astype(np.float32)
    expected = matrix.copy()
    block = expected[:size, :size]
    expected[:size, :size] = block + block.T
    kernels._symmetrise(matrix, size)
    np.testing.assert_array_equal(matrix, expected)


@pytest.mark.parametrize("size", [1, 5, 8, 21, 64, 130])
def test_mirror_fills_the_upper_triangle_from_the_lower(size):
    # reference: numpy's tril of the input plus its strict tril transposed
    matrix = np.random.default_rng(size).standard_normal((size, size)).astype(np.float32)
    expected = np.tril(matrix) + np.tril(matrix, -1).T
    kernels._mirror_lower(matrix)
    np.testing.assert_array_equal(matrix, expected)


@pytest.mark.parametrize("mode", ["official", "point4"])
def test_memory_held_for_backward_counts_the_compiled_nodes_arrays(mode):
    """symm.analysis.cost counts what the node keeps for backward on ctx (its Gram, coefficients,
    choice: NumPy arrays, unseen by saved-tensor hooks) — reference: the arrays' own sizes."""
    from symm.analysis.cost import saved_for_backward_bytes
    n, dim = 16, 8
    embeddings = torch.randn(2 * n, dim, requires_grad=True)
    labels = torch.arange(n).repeat_interleave(2)
    loss = create_loss("npair", negatives="symm", symm_mode=mode)
    _, held = saved_for_backward_bytes(lambda: loss(embeddings, labels))
    gram_bytes = (2 * n if mode == "official" else n) * 2 * n * 4
    assert held >= gram_bytes + n * n + 2 * n * dim * 4  # Gram rows, the int8 choice, the batch
