"""The fused grid node (symm.losses.grid), Symm coefficients and L2 normalisation against the autograd forms they replace.

Reference: ``PointSets.grid_sims_autograd`` (broadcast products recorded by autograd; the form
the loss tests checked against PML / numpy / brute force) and, for distances, the explicit
squared norms gathered with advanced indexing. Values and gradients must agree.
"""
import pytest
import torch

from symm.losses.pairs import symmetric_sets

REFLECTIONS = [{}, dict(alpha=1.5, beta=0.5), dict(form="official", alpha=2.5, beta=1.5, rescale_to_axis_norm=True)]


def inputs(seed, n=6, dim=5):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(2 * n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    return emb, g


def grad_of(value, emb, g):
    weights = torch.randn(value.shape, generator=g, dtype=torch.float64)
    return torch.autograd.grad((value * weights).sum(), emb)[0]


@pytest.mark.parametrize("reflection", REFLECTIONS)
@pytest.mark.parametrize("anchors_only", [False, True])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_fused_grid_sims_equal_autograd(reflection, anchors_only, batch):
    emb, g = inputs(0)
    n = emb.shape[0] // 2
    rows = torch.zeros(*batch, n, n, dtype=torch.long) if anchors_only else torch.randint(0, 4, (*batch, n, n), generator=g)
    cols = torch.randint(0, 4, (*batch, n, n), generator=g)
    values = []
    for fused in (True, False):
        sets = symmetric_sets(emb[0::2], emb[1::2], **reflection)
        sims = (sets.grid_sims if fused else sets.grid_sims_autograd)(rows, cols, anchors_only=anchors_only)
        values.append((sims, grad_of(sims, emb, torch.Generator().manual_seed(1))))
    torch.testing.assert_close(values[0][0], values[1][0])
    torch.testing.assert_close(values[0][1], values[1][1])


@pytest.mark.parametrize("reflection", REFLECTIONS)
@pytest.mark.parametrize("real_rows", [False, True])
def test_fused_grid_sq_distances_equal_autograd(reflection, real_rows):
    emb, g = inputs(2)
    n = emb.shape[0] // 2
    classes = torch.arange(n)
    if real_rows:  # rows=None: batch b has the real set b (a_i, then p_i) as rows
        rows, shape = None, (2, n, n)
        explicit_rows = torch.arange(2)[:, None, None].expand(shape)
    else:
        shape = (n, n)
        rows = explicit_rows = torch.randint(0, 4, shape, generator=g)
    cols = torch.randint(0, 4, shape, generator=g)
    values = []
    for fused in (True, False):
        sets = symmetric_sets(emb[0::2], emb[1::2], **reflection)
        if fused:
            d2 = sets.grid_sq_distances(rows, cols)
        else:
            sq = sets.sq_norms[explicit_rows, classes[:, None]] + sets.sq_norms[cols, classes[None, :]]
            d2 = sq - 2 * sets.grid_sims_autograd(explicit_rows, cols)
        values.append((d2, grad_of(d2, emb, torch.Generator().manual_seed(3))))
    torch.testing.assert_close(values[0][0], values[1][0])
    torch.testing.assert_close(values[0][1], values[1][1])


def test_l2_normalize_equals_torch_normalize():
    # Reference: torch.nn.functional.normalize (dim=1) with autograd, including a zero row and a
    # row below eps, where the clamp passes no gradient through the norm.
    import torch.nn.functional as F

    from symm.losses.pairs import l2_normalize

    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x[3], x[4] = 0.0, 1e-13
    weights = torch.randn(9, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    results = []
    for fn in (l2_normalize, lambda v: F.normalize(v, dim=1)):
        v = x.clone().requires_grad_(True)
        y = fn(v)
        results.append((y, torch.autograd.grad((y * weights).sum(), v)[0]))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize("reflection", [{}, dict(alpha=1.5, beta=0.5), dict(form="official", alpha=2.5, beta=1.5)])
@pytest.mark.parametrize("with_norms", [True, False])
def test_fused_symmetric_sets_equal_autograd(reflection, with_norms):
    # Reference: symmetric_sets_autograd (the coefficient form test_losses.py checks against
    # materialised reflections); a zero row exercises the eps clamp of the axis norm.
    from symm.losses.pairs import symmetric_sets_autograd

    emb, g = inputs(7)
    with torch.no_grad():
        emb[4] = 0.0
    weights = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((4, 2, 6), (4 if with_norms else 2, 6), (6,))]
    results = []
    for build in (symmetric_sets, symmetric_sets_autograd):
        sets = build(emb[0::2], emb[1::2], **reflection, with_norms=with_norms)
        outputs = (sets.coef, sets.sq_norms, sets.ap)
        total = sum((out * w).sum() for out, w in zip(outputs, weights))
        results.append((outputs, torch.autograd.grad(total, emb)[0]))
    for fused, reference in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(results[0][1], results[1][1])
