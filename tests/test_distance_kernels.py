"""The compiled Symm distance node (symm.losses.distance_kernels, numba) against the torch path it speeds up.

Reference: ``hardest_of_each_class`` / ``hardest_pair_of_classes`` on ``symmetric_sets`` and the
positives of ``_DistanceLoss.geometry`` (themselves checked against brute-force loops and
explicit reflections in test_losses.py): the same distances, the same chosen set (first
winner on ties, read from the torch path's own choice), the same synthetic share and the same
gradients, for both selections, squared and Euclidean distances and every reflection option
the losses accept. The same-class entries are no negatives: the node puts +inf there, so they
are left out of the comparisons (their torch values are distances of a point to itself, 0 up
to rounding).
"""
import pytest
import torch

from symm.losses import create_loss, distance
from symm.losses.distance_kernels import CompiledSymmDistances
from symm.losses.kernels import compiled_kernels_enabled
from symm.losses.pairs import symmetric_sets, to_distance

pytestmark = pytest.mark.skipif(not compiled_kernels_enabled(), reason="numba not importable or switched off")

REFLECTIONS = [dict(alpha=2.0, beta=1.0, form="paper"), dict(alpha=1.5, beta=0.5, form="paper"),
               dict(alpha=1.0, beta=2.0, form="paper"), dict(alpha=2.5, beta=1.5, form="official")]
REFLECTION_IDS = ["paper", "alpha1.5-beta0.5", "alpha1-own0", "official-form"]
MODES = ["point4", "pair16"]


def _points(seed: int, n: int = 9, dim: int = 6, duplicate: bool = False, zero_norm: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 anchors and positives; ``duplicate``: a_1 = p_1 (exact ties); ``zero_norm``: a_2 = 0 and
    p_3 = 0 (zero-norm axes: the eps clamp)."""
    g = torch.Generator().manual_seed(seed)
    anchors, positives = torch.randn(2, n, dim, generator=g, dtype=torch.float64)
    if duplicate:
        positives[1] = anchors[1]
    if zero_norm:
        anchors[2] = 0.0
        positives[3] = 0.0
    return anchors, positives


def _off_class(mode: str, n: int) -> torch.Tensor:
    """The negatives' entries (the row's class differs from the column's) in the node's layout."""
    return ~torch.eye(n, dtype=torch.bool).repeat(2 if mode == "point4" else 1, 1)


def _torch_path(anchors, positives, mode, squared, reflection, monkeypatch):
    """(negatives, positives, choice in the node's encoding, synthetic flags) from the torch path."""
    chosen = {}

    def recording(sets, row_sets, col_sets, squared):
        chosen["rows"], chosen["cols"] = row_sets, col_sets
        return selected(sets, row_sets, col_sets, squared)

    selected = distance._selected_distances
    monkeypatch.setattr(distance, "_selected_distances", recording)
    sets = symmetric_sets(anchors, positives, **reflection)
    n = anchors.shape[0]
    if mode == "point4":
        values, flags = distance.hardest_of_each_class(sets, squared)
        which = chosen["cols"].reshape(2 * n, n)
    else:
        values, flags = distance.hardest_pair_of_classes(sets, squared)
        which = 4 * chosen["rows"] + chosen["cols"]
    monkeypatch.setattr(distance, "_selected_distances", selected)
    positive = to_distance(sets.sq_norms[0] + sets.sq_norms[1] - 2 * sets.ap, squared)
    return values, positive, which.long(), flags.bool()


def _compiled(anchors, positives, mode, squared, reflection):
    values, positive, which, share = CompiledSymmDistances.apply(anchors, positives, mode == "pair16", squared,
                                                                 reflection["alpha"], reflection["beta"], reflection["form"])
    return values, positive, which.long(), share


def _grads(values, positive, anchors, positives, off, weights, pos_weights):
    """Gradients of a weighted sum over the negatives (the same-class entries left out) and the positives."""
    total = (torch.where(off, values, 0.0) * weights).sum() + (positive * pos_weights).sum()
    return torch.autograd.grad(total, (anchors, positives))


def _mirror_ties_as_one(which: torch.Tensor, mode: str, classes: list[int]) -> torch.Tensor:
    """The choice with S2 counted as S1 for these classes (where a_j = p_j makes them the same point).

    A tie that is exact only in exact arithmetic: the torch path's candidates use ``addcmul``,
    which rounds once (a fused multiply-add) for one of the two mirror images and twice for the
    other, so rounding picks one of them; the node computes both alike, the first (S1) wins.
    """
    if mode == "point4":
        rows, cols = torch.zeros_like(which), which.clone()
    else:
        rows, cols = which // 4, which % 4
    for j in classes:
        cols[:, j][cols[:, j] == 3] = 2
        if mode == "pair16":
            rows[j][rows[j] == 3] = 2
    return cols if mode == "point4" else 4 * rows + cols


def _compare(anchors, positives, mode, squared, reflection, monkeypatch, seed=0, mirrored=()):
    """Asserts the node equals the torch path (values, positives, choice, share, gradients); returns the choice.

    ``mirrored``: classes with a_j = p_j, whose S1_j = S2_j tie is left to rounding in the torch path;
    where the two paths resolve it differently the gradients differ (S1's flows through the
    coefficient on a_j, S2's through the one on p_j) and are only checked to be finite.
    """
    n = anchors.shape[0]
    off = _off_class(mode, n)
    g = torch.Generator().manual_seed(100 + seed)
    weights = torch.randn(off.shape, generator=g, dtype=torch.float64)
    pos_weights = torch.randn(n, generator=g, dtype=torch.float64)
    results = []
    for path in ("compiled", "torch"):
        a, p = anchors.clone().requires_grad_(), positives.clone().requires_grad_()
        if path == "compiled":
            values, positive, which, share = _compiled(a, p, mode, squared, reflection)
        else:
            values, positive, which, flags = _torch_path(a, p, mode, squared, reflection, monkeypatch)
        results.append((values, positive, which, _grads(values, positive, a, p, off, weights, pos_weights)))
    (values, positive, which, grads), (ref_values, ref_positive, ref_which, ref_grads) = results
    assert torch.isinf(values[~off]).all() and (values[~off] > 0).all()
    torch.testing.assert_close(values[off], ref_values[off])
    torch.testing.assert_close(positive, ref_positive)
    assert torch.equal(which[off], ref_which[off]) if not mirrored else torch.equal(
        _mirror_ties_as_one(which, mode, mirrored)[off], _mirror_ties_as_one(ref_which, mode, mirrored)[off])
    assert share.item() == pytest.approx(flags[off].double().mean().item())
    same_choice = torch.equal(which[off], ref_which[off])
    for grad, ref in zip(grads, ref_grads):
        assert torch.isfinite(grad).all()
        if same_choice:
            torch.testing.assert_close(grad, ref)
    return which


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("squared", [True, False], ids=["squared", "euclidean"])
@pytest.mark.parametrize("reflection", REFLECTIONS, ids=REFLECTION_IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_node_equals_the_torch_path(mode, squared, reflection, seed, monkeypatch):
    _compare(*_points(seed), mode, squared, reflection, monkeypatch, seed)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("squared", [True, False], ids=["squared", "euclidean"])
@pytest.mark.parametrize("reflection", REFLECTIONS, ids=REFLECTION_IDS)
def test_zero_norm_points_stay_finite(mode, squared, reflection, monkeypatch):
    _compare(*_points(3, zero_norm=True), mode, squared, reflection, monkeypatch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("squared", [True, False], ids=["squared", "euclidean"])
@pytest.mark.parametrize("reflection", REFLECTIONS, ids=REFLECTION_IDS)
def test_duplicates_tie_exactly_and_the_first_wins(mode, squared, reflection, monkeypatch):
    # a_1 = p_1: A_1 and P_1 coincide, so do S1_1 and S2_1 (with α = 2, β = 1 all four, exactly:
    # S1 = 2a − a); the first of the exactly tied sets wins in both paths
    anchors, positives = _points(3, duplicate=True, zero_norm=True)
    which = _compare(anchors, positives, mode, squared, reflection, monkeypatch, mirrored=[1])
    n = anchors.shape[0]
    others = [i for i in range(n) if i != 1]
    if mode == "point4":  # column 1: a_1 (set 0) wins its tie with p_1, and S1_1 its tie with S2_1
        chosen = which[others + [n + i for i in others], 1]
        assert set(chosen.tolist()) <= ({0} if reflection == REFLECTIONS[0] else {0, 2})
    else:  # class 1 as the column: t is never P (1) or S2 (3), as the row: s neither
        assert (which[others, 1] % 4 % 2 == 0).all() and (which[1, others] // 4 % 2 == 0).all()
    if reflection == REFLECTIONS[0]:  # no tie left to rounding: the same choice and gradients (checked above)
        off = _off_class(mode, n)
        assert torch.equal(which[off], _torch_path(anchors.clone(), positives.clone(), mode, squared, reflection,
                                                   monkeypatch)[2][off])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("squared", [True, False], ids=["squared", "euclidean"])
def test_compiled_node_passes_gradcheck(mode, squared):
    anchors, positives = (x.requires_grad_() for x in _points(5, n=5, dim=4))
    off = _off_class(mode, 5)

    def outputs(a, p):
        values, positive, _, _ = CompiledSymmDistances.apply(a, p, mode == "pair16", squared, 1.5, 0.5, "paper")
        return torch.where(off, values, 0.0), positive

    assert torch.autograd.gradcheck(outputs, (anchors, positives))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("squared", [True, False], ids=["squared", "euclidean"])
def test_compiled_node_in_float32_matches_float64(mode, squared):
    anchors, positives = _points(4, n=16, dim=12)
    off = _off_class(mode, 16)
    exact = _compiled(anchors, positives, mode, squared, REFLECTIONS[0])
    single = _compiled(anchors.float(), positives.float(), mode, squared, REFLECTIONS[0])
    assert single[0].dtype == single[1].dtype == torch.float32
    torch.testing.assert_close(single[0][off].double(), exact[0][off], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single[1].double(), exact[1], rtol=1e-4, atol=1e-4)
    a, p = anchors.float().requires_grad_(), positives.float().requires_grad_()
    values, positive, _, _ = _compiled(a, p, mode, squared, REFLECTIONS[0])
    weights = torch.ones(off.shape)
    grads = _grads(values, positive, a, p, off, weights, torch.ones(16))
    a, p = anchors.clone().requires_grad_(), positives.clone().requires_grad_()
    values, positive, _, _ = _compiled(a, p, mode, squared, REFLECTIONS[0])
    ref_grads = _grads(values, positive, a, p, off, weights.double(), torch.ones(16, dtype=torch.float64))
    for grad, ref in zip(grads, ref_grads):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("used", ["negatives", "positives"])
def test_an_unused_output_gets_no_gradient(used):
    anchors, positives = _points(6)
    results = []
    for compiled in (True, False):
        a, p = anchors.clone().requires_grad_(), positives.clone().requires_grad_()
        if compiled:
            values, positive = _compiled(a, p, "point4", False, REFLECTIONS[0])[:2]
        else:
            sets = symmetric_sets(a, p)
            values = distance.hardest_of_each_class(sets, False)[0]
            positive = to_distance(sets.sq_norms[0] + sets.sq_norms[1] - 2 * sets.ap, False)
        out = torch.where(_off_class("point4", 9), values, 0.0).sum() if used == "negatives" else positive.sum()
        results.append(torch.autograd.grad(out, (a, p)))
    for grad, ref in zip(*results):
        torch.testing.assert_close(grad, ref)


LOSS_CASES = [(name, mode) for name in ("contrastive", "triplet", "lifted") for mode in MODES]


@pytest.mark.parametrize("name, mode", LOSS_CASES)
@pytest.mark.parametrize("options", [{}, dict(alpha=1.5, beta=0.5, form="official", squared=True)], ids=["default", "other"])
@pytest.mark.parametrize("layout", ["interleaved", "blocked", "other order"])
def test_losses_are_the_same_with_the_compiled_node_switched_off(monkeypatch, name, mode, options, layout):
    g = torch.Generator().manual_seed(2)
    n = 8
    embeddings = torch.randn(2 * n, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(n).repeat_interleave(2) if layout == "interleaved" else torch.arange(n).repeat(2)
    if layout == "other order":
        labels = labels[torch.randperm(2 * n, generator=g)]
    calls = []
    original = CompiledSymmDistances.apply
    monkeypatch.setattr(CompiledSymmDistances, "apply", lambda *args: calls.append(1) or original(*args))
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv("SYMM_COMPILED_KERNELS", switch)
        emb = embeddings.clone().requires_grad_()
        loss = create_loss(name, negatives="symm", symm_mode=mode, **options)
        value = loss(emb, labels)
        value.backward()
        results.append((value.detach(), emb.grad, loss.last_stats["synthetic_share"]))
    assert len(calls) == 1  # switched on: the compiled node; off: the torch path
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][2] == pytest.approx(results[1][2], rel=1e-6)  # the torch path averages float32 flags


@pytest.mark.parametrize("options", [dict(hardness_rank=2), dict(rescale_to_axis_norm=True)])
def test_the_torch_path_serves_what_the_node_does_not(monkeypatch, options):
    calls = []
    monkeypatch.setattr(CompiledSymmDistances, "apply", lambda *args: calls.append(1))
    embeddings = torch.randn(16, 8)
    labels = torch.arange(8).repeat_interleave(2)
    for name in ("contrastive", "triplet", "lifted"):
        create_loss(name, negatives="symm", symm_mode="point4", **options)(embeddings, labels)
    create_loss("contrastive", negatives="symm")(embeddings.half().float().to(torch.bfloat16), labels)
    assert calls == []
