"""Symmetric reflection: the exact invariances stated in method.md §3, checked numerically."""
import numpy as np
import pytest
import torch

from symm.synthesis import reflect


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 32, generator=g, dtype=torch.float64), torch.randn(64, 32, generator=g, dtype=torch.float64)


def test_mirror_keeps_norm_similarity_and_distance_to_axis(pairs):
    x, axis = pairs
    mirrored = reflect(x, axis)
    torch.testing.assert_close(mirrored.norm(dim=1), x.norm(dim=1))
    torch.testing.assert_close((mirrored * axis).sum(1), (x * axis).sum(1))
    torch.testing.assert_close((mirrored - axis).norm(dim=1), (x - axis).norm(dim=1))


def test_mirror_matches_numpy_householder_form(pairs):
    # Reference: reflection about the line spanned by u is (2 u uᵀ - I) x with u the unit axis.
    x, axis = (t.numpy() for t in pairs)
    expected = np.stack([(2 * np.outer(u, u) / (u @ u) - np.eye(len(u))) @ v for v, u in zip(x, axis)])
    np.testing.assert_allclose(reflect(*pairs).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_mirror_is_an_involution_and_not_the_identity(pairs):
    x, axis = pairs
    mirrored = reflect(x, axis)
    torch.testing.assert_close(reflect(mirrored, axis), x)
    assert (mirrored - x).norm(dim=1).min() > 1e-3


def test_paper_and_official_forms_agree_only_at_alpha_2_beta_1(pairs):
    x, axis = pairs
    torch.testing.assert_close(reflect(x, axis, form="paper"), reflect(x, axis, form="official"))
    paper = reflect(x, axis, alpha=1.5, beta=0.5, form="paper")
    official = reflect(x, axis, alpha=1.5, beta=0.5, form="official")
    assert not torch.allclose(paper, official)
    # paper form: beta * (x + alpha (r - x)); alpha = 1 lands on the projection r itself
    r = ((x * axis).sum(1, keepdim=True) / (axis * axis).sum(1, keepdim=True)) * axis
    torch.testing.assert_close(reflect(x, axis, alpha=1.0, form="paper"), r)
    torch.testing.assert_close(reflect(x, axis, alpha=1.5, beta=0.5, form="official"), 0.5 * (1.5 * r - x))


def test_rescale_to_axis_norm(pairs):
    x, axis = pairs
    out = reflect(x, axis, alpha=2.5, beta=1.5, form="official", rescale_to_axis_norm=True)
    torch.testing.assert_close(out.norm(dim=1), axis.norm(dim=1))


def test_gradients_flow_and_are_finite_even_for_a_zero_axis():
    x = torch.randn(5, 8, requires_grad=True)
    axis = torch.randn(5, 8)
    axis[0] = 0.0
    axis.requires_grad_(True)
    out = reflect(x, axis)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(axis.grad).all()
    assert axis.grad[1:].abs().sum() > 0  # nothing is detached: the axis gets gradient too


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        reflect(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="form"):
        reflect(torch.zeros(3, 4), torch.ones(3, 4), form="nope")
