"""The plain N-pair loss's single autograd node against the autograd formula.

Reference: F.cross_entropy over A·Pᵀ (targets i) + reg_lambda/4 · (mean ||a||² + mean ||p||²)
written with autograd (the form test_npair.py checks against pytorch-metric-learning), for both
sampler layouts; values and gradients must agree, and gradcheck must pass.
"""
import pytest
import torch
import torch.nn.functional as F

from symm.losses import create_loss


@pytest.mark.parametrize("layout", ["interleaved", "blocked"])
@pytest.mark.parametrize("reg_lambda", [0.002, 0.5])
def test_fused_plain_npair_equals_the_autograd_formula(layout, reg_lambda):
    g = torch.Generator().manual_seed(4)
    n, dim = 9, 6
    emb = torch.randn(2 * n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randperm(100, generator=g)[:n]
    if layout == "interleaved":
        labels, anchors, positives = labels.repeat_interleave(2), emb[0::2], emb[1::2]
    else:
        labels, anchors, positives = torch.cat([labels, labels]), emb[:n], emb[n:]
    loss = create_loss("npair", reg_lambda=reg_lambda)(emb, labels)
    reference = F.cross_entropy(anchors @ positives.T, torch.arange(n)) + reg_lambda / 4 * (
        anchors.pow(2).sum(1).mean() + positives.pow(2).sum(1).mean())
    torch.testing.assert_close(loss, reference)
    (grad,) = torch.autograd.grad(loss * 1.7, emb)
    (reference_grad,) = torch.autograd.grad(reference * 1.7, emb)
    torch.testing.assert_close(grad, reference_grad)
    loss_fn = create_loss("npair", reg_lambda=reg_lambda)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.detach().clone().requires_grad_(True),))


@pytest.mark.parametrize("mode", ["official", "point4"])
@pytest.mark.parametrize("options", [{}, {"hardness_rank": 2}, {"alpha": 1.5, "beta": 0.5}, {"form": "official", "alpha": 2.5, "beta": 1.5}])
def test_fused_symm_angular_logits_equal_the_autograd_path(mode, options):
    # Reference: the angular loss's autograd path (PointSets; checked against numpy / brute force
    # and finite differences in test_losses.py); the fused node must give the same logits and gradients.
    from symm.losses.pairs import symmetric_sets

    g = torch.Generator().manual_seed(11)
    n, dim = 7, 5
    emb = torch.randn(2 * n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    loss = create_loss("angular", negatives="symm", symm_mode=mode, **options)
    a, p = emb[0::2], emb[1::2]
    fused, fused_flags = loss.fused_symm_logits(a, p)
    reference, reference_flags = loss.symm_logits(symmetric_sets(a, p, **loss.reflection, with_norms=False))
    torch.testing.assert_close(fused, reference)
    assert torch.equal(fused_flags, reference_flags)
    weights = torch.randn(fused.shape, generator=g, dtype=torch.float64)
    (fused_grad,) = torch.autograd.grad((fused * weights).sum(), emb)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), emb)
    torch.testing.assert_close(fused_grad, reference_grad)
