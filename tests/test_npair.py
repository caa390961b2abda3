"""N-pair loss, plain and with symmetrical synthesis.

References: pytorch-metric-learning's NPairsLoss (plain form) and a numpy re-derivation of the
official release's Symm+N-pair formula (method.md §3.1 "official").
"""
import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.losses import NPairsLoss

from symm.losses import create_loss


def make_batch(n_classes=12, dim=16, seed=0, interleaved=True):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(n_classes, dim, generator=g, dtype=torch.float64)
    positives = anchors + 0.7 * torch.randn(n_classes, dim, generator=g, dtype=torch.float64)
    labels = torch.randperm(1000, generator=g)[:n_classes]
    if interleaved:  # [a1, p1, a2, p2, ...]
        emb = torch.stack([anchors, positives], 1).reshape(2 * n_classes, dim)
        lab = labels.repeat_interleave(2)
    else:  # [a1..aN, p1..pN]
        emb, lab = torch.cat([anchors, positives]), torch.cat([labels, labels])
    return anchors, positives, emb, lab


def np_reflect(x, axis):
    r = (np.sum(x * axis, 1, keepdims=True) / np.sum(axis * axis, 1, keepdims=True)) * axis
    return 2 * r - x


def np_cross_entropy_diag(logits):
    shifted = logits - logits.max(1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -np.mean(np.diag(log_softmax))


def np_l2(a, p, lam):
    return lam / 4 * (np.mean(np.sum(a * a, 1)) + np.mean(np.sum(p * p, 1)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("interleaved", [True, False])
def test_plain_npair_matches_pytorch_metric_learning(interleaved, seed):
    anchors, positives, emb, labels = make_batch(interleaved=interleaved, seed=seed)
    ours = create_loss("npair", reg_lambda=0.002)(emb, labels)
    # PML: un-normalised dot product, explicit (anchor, positive) pairs = first and second occurrence
    n = len(anchors)
    a_idx = torch.arange(0, 2 * n, 2) if interleaved else torch.arange(n)
    p_idx = a_idx + 1 if interleaved else a_idx + n
    empty = torch.empty(0, dtype=torch.long)
    reference = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))(
        emb, labels, indices_tuple=(a_idx, p_idx, empty, empty)
    )
    reference = reference + 0.002 / 4 * (anchors.pow(2).sum(1).mean() + positives.pow(2).sum(1).mean())
    torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symm_npair_official_matches_numpy_rederivation(seed):
    anchors, positives, emb, labels = make_batch(seed=seed)
    loss_fn = create_loss("npair", negatives="symm", symm_mode="official")
    ours = loss_fn(emb, labels)

    a, p = anchors.numpy(), positives.numpy()
    s1, s2 = np_reflect(p, a), np_reflect(a, p)  # S1 = P mirrored about A, S2 = A mirrored about P
    sets = [a, p, s1, s2]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    stacked = np.stack([sets[s] @ sets[t].T for s, t in pairs])
    logits = stacked.max(0)  # elementwise max, diagonal included
    expected = np_cross_entropy_diag(logits) + np_l2(a, p, 0.002)
    np.testing.assert_allclose(ours.item(), expected, rtol=1e-10)

    off = ~np.eye(len(a), dtype=bool)
    expected_share = (stacked.argmax(0)[off] != 0).mean()
    assert loss_fn.last_stats["synthetic_share"] == pytest.approx(expected_share)


def test_symm_keep_positive_uses_original_diagonal():
    anchors, positives, emb, labels = make_batch(seed=3)
    a, p = anchors.numpy(), positives.numpy()
    s1, s2 = np_reflect(p, a), np_reflect(a, p)
    sets = [a, p, s1, s2]
    logits = np.stack([sets[s] @ sets[t].T for s, t in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]]).max(0)
    np.fill_diagonal(logits, np.sum(a * p, 1))
    ours = create_loss("npair", negatives="symm", symm_mode="official", keep_positive=True, reg_lambda=0.0)(emb, labels)
    np.testing.assert_allclose(ours.item(), np_cross_entropy_diag(logits), rtol=1e-10)


def test_symm_point4_and_pair16_match_explicit_loops():
    anchors, positives, emb, labels = make_batch(n_classes=6, seed=4)
    a, p = anchors.numpy(), positives.numpy()
    s1, s2 = np_reflect(p, a), np_reflect(a, p)
    groups = [np.stack([a[i], p[i], s1[i], s2[i]]) for i in range(len(a))]
    n = len(a)
    point4 = np.array([[a[i] @ p[i] if i == j else max(a[i] @ v for v in groups[j]) for j in range(n)] for i in range(n)])
    pair16 = np.array([[a[i] @ p[i] if i == j else max(u @ v for u in groups[i] for v in groups[j]) for j in range(n)] for i in range(n)])
    for mode, logits in [("point4", point4), ("pair16", pair16)]:
        ours = create_loss("npair", negatives="symm", symm_mode=mode, reg_lambda=0.0)(emb, labels)
        np.testing.assert_allclose(ours.item(), np_cross_entropy_diag(logits), rtol=1e-10, err_msg=mode)


def test_symm_is_at_least_as_hard_as_plain():
    # every candidate set contains the real pair, so the max similarity can only grow
    _, _, emb, labels = make_batch(seed=5)
    plain = create_loss("npair", reg_lambda=0.0)(emb, labels)
    for mode in ("point4", "pair16"):
        assert create_loss("npair", negatives="symm", symm_mode=mode, reg_lambda=0.0)(emb, labels) >= plain


def test_gradients_are_finite_and_reach_every_embedding():
    _, _, emb, labels = make_batch(seed=6)
    emb = emb.clone().requires_grad_(True)
    create_loss("npair", negatives="symm")(emb, labels).backward()
    assert torch.isfinite(emb.grad).all()
    assert (emb.grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 0, 1, 1, 2]), "appears once"),
        (torch.tensor([0, 0, 0, 1, 1, 1]), "appears 3 times"),
        (torch.tensor([4, 4]), "at least 2 classes"),
    ],
)
def test_bad_batches_raise_clear_errors(labels, message):
    emb = torch.randn(len(labels), 4)
    with pytest.raises(ValueError, match=message):
        create_loss("npair")(emb, labels)


def test_unknown_names_and_options_raise():
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        create_loss("nope")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['margn'\]"):
        create_loss("npair", margn=0.1)
    with pytest.raises(ValueError, match="symm_mode"):
        create_loss("npair", negatives="symm", symm_mode="point5")
    with pytest.raises(ValueError, match="reg_lambda"):
        create_loss("npair", reg_lambda=-1.0)


def test_shuffled_batches_take_the_general_path_with_the_same_result():
    # Reference: the same batch rebuilt by an explicit loop in the sampler's interleaved layout
    # (first occurrence = anchor, classes by anchor position), which takes the views fast path.
    _, _, emb, labels = make_batch(seed=7)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    shuffled_emb, shuffled_labels = emb[order], labels[order]
    seen: dict[int, list[int]] = {}
    for row, label in enumerate(shuffled_labels.tolist()):
        seen.setdefault(label, []).append(row)
    rows = [r for pair in seen.values() for r in pair]
    for options in ({}, {"negatives": "symm", "symm_mode": "pair16"}):
        loss = create_loss("npair", **options)
        torch.testing.assert_close(loss(shuffled_emb, shuffled_labels), loss(shuffled_emb[rows], shuffled_labels[rows]))


@pytest.mark.parametrize("compiled", ["1", "0"], ids=["compiled-node", "torch-node"])
@pytest.mark.parametrize("mode", ["official", "point4", "pair16"])
@pytest.mark.parametrize("options", [{}, {"hardness_rank": 2}, {"alpha": 1.5, "beta": 0.5}, {"form": "official", "alpha": 2.5, "beta": 1.5}])
def test_fused_symm_logits_equal_the_autograd_path(mode, options, compiled, monkeypatch):
    # Reference: the autograd path (PointSets; itself checked against numpy and finite
    # differences); the fused node's hand-written backward must give the same gradients,
    # through the compiled node (symm.losses.kernels, rank 1) and the torch node alike.
    from symm.losses.pairs import symmetric_sets

    monkeypatch.setenv("SYMM_COMPILED_KERNELS", compiled)

    anchors, positives, emb, labels = make_batch(n_classes=7, dim=5, seed=8)
    loss = create_loss("npair", negatives="symm", symm_mode=mode, **options)
    emb = emb.clone().requires_grad_(True)
    a, p = emb[0::2], emb[1::2]
    fused, fused_flags = loss.fused_symm_logits(a, p)
    reference, reference_flags = loss.symm_logits(symmetric_sets(a, p, **loss.reflection, with_norms=False))
    torch.testing.assert_close(fused, reference)
    off = ~torch.eye(len(anchors), dtype=torch.bool)  # the diagonal has exact ties (a·p = a·S1 = p·S2): either may win
    assert torch.equal(fused_flags[off], reference_flags[off])
    weights = torch.randn(fused.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (fused_grad,) = torch.autograd.grad((fused * weights).sum(), emb)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), emb)
    torch.testing.assert_close(fused_grad, reference_grad)
