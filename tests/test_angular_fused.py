"""Symm+angular through the fused Symm+N-pair node (symm.losses.fused) and the compiled node
(symm.losses.kernels) against its autograd path.

Reference: the angular loss's autograd path (PointSets, checked against numpy / brute force and
finite differences in test_losses.py): logits, synthetic flags and gradients must agree.
"""
import pytest
import torch

from symm.losses import create_loss


@pytest.mark.parametrize("compiled", ["1", "0"], ids=["compiled-node", "torch-node"])
@pytest.mark.parametrize("mode", ["official", "point4"])
@pytest.mark.parametrize("options", [{}, {"hardness_rank": 2}, {"alpha": 1.5, "beta": 0.5}, {"form": "official", "alpha": 2.5, "beta": 1.5}])
def test_fused_symm_angular_logits_equal_the_autograd_path(mode, options, compiled, monkeypatch):
    # Reference: the angular loss's autograd path (PointSets; checked against numpy / brute force
    # and finite differences in test_losses.py); the fused node must give the same logits and gradients.
    from symm.losses.pairs import symmetric_sets

    monkeypatch.setenv("SYMM_COMPILED_KERNELS", compiled)  # symm.losses.kernels where it applies (rank 1), else the torch node
    g = torch.Generator().manual_seed(11)
    n, dim = 7, 5
    emb = torch.randn(2 * n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    loss = create_loss("angular", negatives="symm", symm_mode=mode, **options)
    a, p = emb[0::2], emb[1::2]
    fused, fused_flags = loss.fused_symm_logits(a, p)
    reference, reference_flags = loss.symm_logits(symmetric_sets(a, p, **loss.reflection, with_norms=False))
    torch.testing.assert_close(fused, reference)
    if compiled == "1" and loss.hardness_rank == 1:
        # the official diagonal has exact ties (X_s·X_t = X_t·X_s, a·p = a·S1 = p·S2 at alpha=2, beta=1):
        # rounding picks among them; the diagonal is no negative (the synthetic share is off-diagonal)
        off = ~torch.eye(n, dtype=torch.bool)
        assert torch.equal(fused_flags[off], reference_flags[off])
    else:
        assert torch.equal(fused_flags, reference_flags)
    weights = torch.randn(fused.shape, generator=g, dtype=torch.float64)
    (fused_grad,) = torch.autograd.grad((fused * weights).sum(), emb)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), emb)
    torch.testing.assert_close(fused_grad, reference_grad)
