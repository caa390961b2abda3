"""The closed-form nodes on the real points' distance grid (symm.losses.real_grid) against the autograd forms they replace.

References: the code the nodes replaced, written with autograd — ``geometry`` (``real_sets``,
``to_distance``) plus ``masked_mean(relu(margin − real_distances), other_class_mask)`` for the
contrastive loss, and ``real_distances(...).gather(1, closest_negative(...))`` for the
batch-hard triplet loss (the forms the loss tests check against PML). Values and gradients must
agree in float64, including duplicate and zero-norm embeddings (distance 0: the clamps pass no
gradient there, and the gradients stay finite); ``gradcheck`` checks each node by finite
differences away from those kinks.
"""
import pytest
import torch

from symm.losses import create_loss
from symm.losses.distance import closest_negative, masked_mean, other_class_mask, real_distances, real_points_and_norms
from symm.losses.pairs import real_sets
from symm.losses.real_grid import ClosestOtherClass, ContrastiveTerms, closest_other_class, contrastive_terms

N = 6
LAYOUTS = ["interleaved", "blocked", "other order"]


def batch(seed: int, layout: str, degenerate: bool, scale: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """(2N, 4) float64 embeddings and labels; ``degenerate``: duplicates across and within classes, and zero rows."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(2 * N, 4, generator=g, dtype=torch.float64) * scale
    labels = torch.arange(N).repeat_interleave(2) if layout == "interleaved" else torch.arange(N).repeat(2)
    if layout == "other order":  # the general path: split, gathered, put in the blocked layout
        labels = (labels * 7 % 11)[torch.randperm(2 * N, generator=g)]
    if degenerate:
        emb[3], emb[8], emb[7] = emb[0], emb[1], emb[6]  # other-class duplicates and, in some layouts, a pair
        emb[5] = emb[10] = 0.0
    return emb, labels


def value_and_grad(fn, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = emb.clone().requires_grad_(True)
    value = fn(x, labels)
    return value.detach(), torch.autograd.grad(value, x)[0]


def assert_equal_with_grad(ours, ref, emb, labels) -> None:
    value, grad = value_and_grad(ours, emb, labels)
    ref_value, ref_grad = value_and_grad(ref, emb, labels)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-14)
    assert torch.isfinite(grad).all()
    # zero rows have gradients of order 1/eps (l2_normalize): compare relative to the size
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


def contrastive_autograd(loss, emb, labels):
    """The all-pairs contrastive loss as it was written before the node."""
    sets, positive = loss.geometry(emb, labels)
    rows = real_distances(sets, loss.squared)
    other = other_class_mask(2, 2, sets.n_classes, rows.device, rows.dtype)
    return torch.relu(positive - loss.pos_margin).mean() + masked_mean(torch.relu(loss.margin - rows), other)


def hardest_triplet_autograd(loss, emb, labels):
    """The batch-hard triplet loss as it was written before the node."""
    sets, positive = loss.geometry(emb, labels)
    rows = real_distances(sets, loss.squared)
    other = other_class_mask(2, 2, sets.n_classes, rows.device, rows.dtype)
    column = closest_negative(rows.detach(), other)
    negative = rows.gather(1, column[:, None])[:, 0]
    return torch.relu(positive.repeat(2) - negative + loss.margin).mean()


# (loss, negatives, reference, option sets): margins with some and with no negatives inside, raw embeddings
CASES = {
    "contrastive": ("none", contrastive_autograd, [dict(margin=1.2, pos_margin=0.05), dict(margin=0.5),
                                                   dict(margin=0.0, normalize=False)]),
    "triplet": ("hardest", hardest_triplet_autograd, [dict(margin=0.2), dict(margin=1.0, normalize=False)]),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("degenerate", [False, True])
def test_loss_node_equals_autograd(name, seed, layout, squared, degenerate):
    emb, labels = batch(seed, layout, degenerate)
    negatives, reference, option_sets = CASES[name]
    for options in option_sets:
        loss = create_loss(name, negatives=negatives, squared=squared, **options)
        assert_equal_with_grad(loss, lambda x, y: reference(loss, x, y), emb, labels)


@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
@pytest.mark.parametrize("squared", [False, True])
def test_contrastive_terms_outputs_equal_autograd(layout, squared):
    # Both outputs of the node, each with its own gradient, against real_sets / real_distances.
    emb, _ = batch(3, layout, degenerate=False)
    n = emb.shape[0] // 2
    weights = torch.randn(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    results = []
    for fused in (True, False):
        x = emb.clone().requires_grad_(True)
        anchors, positives = (x[0::2], x[1::2]) if layout == "interleaved" else (x[:n], x[n:])
        if fused:
            positive, negative = contrastive_terms(x, layout, 1.1, squared)
        else:
            sets = real_sets(anchors, positives)
            sq = sets.sq_norms
            d2 = sq[0] + sq[1] - 2 * sets.ap
            positive = d2.clamp_min(0) if squared else d2.clamp_min(0).clamp_min(1e-12).sqrt()
            rows = real_distances(sets, squared)
            negative = masked_mean(torch.relu(1.1 - rows), other_class_mask(2, 2, n, rows.device, rows.dtype))
        grads = [torch.autograd.grad(out, x, retain_graph=True)[0] for out in ((positive * weights).sum(), negative)]
        results.append((positive.detach(), negative.detach(), *grads))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    assert results[0][1] > 0 and results[0][3].abs().sum() > 0  # the margin makes some negatives count


def test_closest_other_class_equals_autograd_with_norms_as_input():
    # The node's own interface: points and squared norms as separate inputs, each with its gradient.
    emb, _ = batch(5, "blocked", degenerate=True)
    weights = torch.randn(emb.shape[0], generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for squared in (False, True):
        results = []
        for fused in (True, False):
            x = emb.clone().requires_grad_(True)
            sets = real_sets(x[:N], x[N:])
            points, sq = real_points_and_norms(sets)
            if fused:
                negative = closest_other_class(points, sq, squared)
            else:
                rows = real_distances(sets, squared)
                column = closest_negative(rows.detach(), other_class_mask(2, 2, N, rows.device, rows.dtype))
                negative = rows.gather(1, column[:, None])[:, 0]
            grad = torch.autograd.grad((negative * weights).sum(), x)[0]
            results.append((negative.detach(), grad))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
        assert torch.isfinite(results[0][1]).all()
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
@pytest.mark.parametrize("squared", [False, True])
def test_contrastive_terms_gradcheck(layout, squared):
    emb, _ = batch(7, layout, degenerate=False, scale=0.3)
    x = emb.clone().requires_grad_(True)
    margin = 0.8 if not squared else 0.6  # some negatives inside the margin, none at its edge
    assert torch.autograd.gradcheck(lambda p: ContrastiveTerms.apply(p, layout, margin, squared), (x,))


@pytest.mark.parametrize("squared", [False, True])
def test_closest_other_class_gradcheck(squared):
    emb, _ = batch(8, "blocked", degenerate=False)
    points = emb.clone().requires_grad_(True)
    sq = (emb * emb).sum(1).requires_grad_(True)  # an independent input: its gradient is checked too
    assert torch.autograd.gradcheck(lambda p, s: ClosestOtherClass.apply(p, s, squared), (points, sq))


def test_nodes_without_gradient():
    # Under no_grad (evaluation) the nodes give the same values and save nothing.
    emb, labels = batch(9, "interleaved", degenerate=False)
    for loss in (create_loss("contrastive", margin=1.2), create_loss("triplet", negatives="hardest")):
        with torch.no_grad():
            value = loss(emb, labels)
        torch.testing.assert_close(value, loss(emb.clone().requires_grad_(True), labels).detach())
