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
from symm.losses.distance import closest_negative, masked_mean, other_class_mask, real_distances
from symm.losses.pairs import real_sets
from symm.losses.pairs import to_distance
from symm.losses.real_grid import ContrastiveTerms, HardestTripletTerms, contrastive_terms, hardest_triplet_terms

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


def node_outputs(node: str, x: torch.Tensor, layout: str, squared: bool, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive distances, negative output) of a node, or of the autograd code it replaces."""
    if fused:
        return contrastive_terms(x, layout, 1.1, squared) if node == "contrastive" else hardest_triplet_terms(x, layout, squared)
    n = x.shape[0] // 2
    sets = real_sets(*((x[0::2], x[1::2]) if layout == "interleaved" else (x[:n], x[n:])))
    sq = sets.sq_norms
    positive = to_distance(sq[0] + sq[1] - 2 * sets.ap, squared)
    rows = real_distances(sets, squared)
    other = other_class_mask(2, 2, n, rows.device, rows.dtype)
    if node == "contrastive":
        return positive, masked_mean(torch.relu(1.1 - rows), other)
    return positive, rows.gather(1, closest_negative(rows.detach(), other)[:, None])[:, 0]


@pytest.mark.parametrize("node", ["contrastive", "hardest_triplet"])
@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("degenerate", [False, True])
def test_node_outputs_equal_autograd(node, layout, squared, degenerate):
    # Both outputs of each node, each with its own gradient (random weights on vector outputs).
    emb, _ = batch(3, layout, degenerate)
    results = []
    for fused in (True, False):
        x = emb.clone().requires_grad_(True)
        outputs = node_outputs(node, x, layout, squared, fused)
        weights = [torch.randn(out.shape, generator=torch.Generator().manual_seed(4 + k), dtype=x.dtype)
                   for k, out in enumerate(outputs)]
        grads = [torch.autograd.grad((out * w).sum(), x, retain_graph=True)[0] for out, w in zip(outputs, weights)]
        results.append([out.detach() for out in outputs] + grads)
    for ours, ref in zip(*results):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    if node == "contrastive":  # the margin makes some negatives count
        assert results[0][1] > 0 and results[0][3].abs().sum() > 0


@pytest.mark.parametrize("node", [ContrastiveTerms, HardestTripletTerms])
@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
@pytest.mark.parametrize("squared", [False, True])
def test_node_gradcheck(node, layout, squared):
    emb, _ = batch(7, layout, degenerate=False, scale=0.3)
    x = emb.clone().requires_grad_(True)
    # the full Jacobian of both outputs; some negatives inside the contrastive margin, none at its edge
    args = (layout, 0.8 if not squared else 0.6, squared) if node is ContrastiveTerms else (layout, squared)
    assert torch.autograd.gradcheck(lambda p: node.apply(p, *args), (x,))


def test_nodes_without_gradient():
    # Under no_grad (evaluation) the nodes give the same values and save nothing.
    emb, labels = batch(9, "interleaved", degenerate=False)
    for loss in (create_loss("contrastive", margin=1.2), create_loss("triplet", negatives="hardest")):
        with torch.no_grad():
            value = loss(emb, labels)
        torch.testing.assert_close(value, loss(emb.clone().requires_grad_(True), labels).detach())
