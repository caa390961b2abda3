"""Every base loss, mining baseline and Symm variant against references we did not write.

References: pytorch-metric-learning (PML) with matched distance / normalisation / reduction;
explicit-loop numpy re-derivations of the TF definitions (semi-hard, lifted) and of the
official release's Symm formulas; brute force over materialised reflections for point4 / pair16.
All in float64 over several seeds.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import distances, losses, miners, reducers

from symm.losses import create_loss, supported_combinations
from symm.losses.distance import hardest_of_each_class, hardest_pair_of_classes
from symm.losses.pairs import real_sets, symmetric_sets
from symm.synthesis import reflect

SEEDS = [0, 1, 2]


def batch(seed, n=7, dim=6, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    anchors = scale * torch.randn(n, dim, generator=g, dtype=torch.float64)
    positives = anchors + 0.8 * scale * torch.randn(n, dim, generator=g, dtype=torch.float64)
    emb = torch.stack([anchors, positives], 1).reshape(2 * n, dim)
    labels = (torch.randperm(100, generator=g)[:n] + 3).repeat_interleave(2)
    return emb, labels


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_reflect(x, axis):
    r = (np.sum(x * axis, 1, keepdims=True) / np.sum(axis * axis, 1, keepdims=True)) * axis
    return 2 * r - x


def np_sets(emb, normalize):
    """[A, P, S1, S2] as numpy (4, N, D): S1 = P mirrored about A, S2 = A mirrored about P."""
    x = emb.numpy()
    a, p = x[0::2], x[1::2]
    if normalize:
        a, p = unit(a), unit(p)
    return np.stack([a, p, np_reflect(p, a), np_reflect(a, p)])


def d2(u, v):
    return float(np.sum((u - v) ** 2))


def d1(u, v):
    return math.sqrt(d2(u, v))


# ---------------------------------------------------------------- base losses vs PML


@pytest.mark.parametrize("seed", SEEDS)
def test_triplet_all_triplets_matches_pml(seed):
    emb, labels = batch(seed)
    ours = create_loss("triplet", margin=0.3)(emb, labels)
    ref = losses.TripletMarginLoss(margin=0.3, distance=distances.LpDistance(power=2, normalize_embeddings=True),
                                   reducer=reducers.MeanReducer())(emb, labels)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("seed", SEEDS)
def test_triplet_batch_hard_matches_pml_batch_hard_miner(seed):
    emb, labels = batch(seed)
    ours = create_loss("triplet", negatives="hardest", margin=0.3)(emb, labels)
    distance = distances.LpDistance(power=2, normalize_embeddings=True)
    triplets = miners.BatchHardMiner(distance=distance)(emb, labels)
    ref = losses.TripletMarginLoss(margin=0.3, distance=distance, reducer=reducers.MeanReducer())(emb, labels, triplets)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("seed", SEEDS)
def test_lifted_matches_pml(seed):
    emb, labels = batch(seed)
    ours = create_loss("lifted")(emb, labels)
    ref = losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, reducer=reducers.MeanReducer(),
                                     distance=distances.LpDistance(normalize_embeddings=False))(emb, labels)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("seed", SEEDS)
def test_contrastive_matches_pml(seed):
    emb, labels = batch(seed)
    ours = create_loss("contrastive", margin=0.9, pos_margin=0.1)(emb, labels)
    ref = losses.ContrastiveLoss(pos_margin=0.1, neg_margin=0.9, reducer=reducers.MeanReducer(),
                                 distance=distances.LpDistance(normalize_embeddings=True))(emb, labels)
    torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------- explicit-loop re-derivations


@pytest.mark.parametrize("seed", SEEDS)
def test_semihard_triplet_matches_tf_definition(seed):
    # TF triplet_semihard_loss: squared distances; for each ordered positive pair, the smallest
    # negative distance > D(a,p), else the anchor's largest negative distance; mean over pairs.
    emb, labels = batch(seed, scale=0.3)
    x, y = unit(emb.numpy()), labels.numpy()
    terms = []
    for i, j in itertools.product(range(len(y)), repeat=2):
        if i == j or y[i] != y[j]:
            continue
        pos = d2(x[i], x[j])
        negs = [d2(x[i], x[k]) for k in range(len(y)) if y[k] != y[i]]
        outside = [d for d in negs if d > pos]
        neg = min(outside) if outside else max(negs)
        terms.append(max(pos - neg + 1.0, 0.0))
    expected = np.mean(terms)
    np.testing.assert_allclose(create_loss("semihard_triplet")(emb, labels).item(), expected, rtol=1e-10)
    np.testing.assert_allclose(create_loss("triplet", negatives="semihard", margin=1.0)(emb, labels).item(), expected, rtol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_lifted_matches_tf_contrib_definition(seed):
    emb, labels = batch(seed)
    x, y = emb.numpy(), labels.numpy()
    terms = []
    for i, j in itertools.product(range(len(y)), repeat=2):
        if i < j and y[i] == y[j]:
            negs = [1.0 - d1(x[i], x[k]) for k in range(len(y)) if y[k] != y[i]]
            negs += [1.0 - d1(x[j], x[k]) for k in range(len(y)) if y[k] != y[j]]
            objective = math.log(sum(math.exp(v) for v in negs)) + d1(x[i], x[j])
            terms.append(max(objective, 0.0) ** 2 / 2)
    np.testing.assert_allclose(create_loss("lifted")(emb, labels).item(), np.mean(terms), rtol=1e-10)


def np_softmax_ce_diag(logits):
    shifted = logits - logits.max(1, keepdims=True)
    return -np.mean(np.diag(shifted - np.log(np.exp(shifted).sum(1, keepdims=True))))


def np_l2(a, p, lam=0.002):
    return lam / 4 * (np.mean(np.sum(a * a, 1)) + np.mean(np.sum(p * p, 1)))


@pytest.mark.parametrize("seed", SEEDS)
def test_angular_matches_wang_npair_form(seed):
    # Wang et al. 2017, eq. (8): log(1 + Σ_{n} exp(4 tan²α (x_a + x_p)ᵀ x_n − 2(1 + tan²α) x_aᵀ x_p))
    emb, labels = batch(seed, scale=0.4)
    a, p = emb.numpy()[0::2], emb.numpy()[1::2]
    t = math.tan(math.radians(40)) ** 2
    terms = []
    for i in range(len(a)):
        f = [4 * t * (a[i] + p[i]) @ p[j] - 2 * (1 + t) * a[i] @ p[i] for j in range(len(a)) if j != i]
        terms.append(math.log(1 + sum(math.exp(v) for v in f)))
    expected = 2.0 * (np.mean(terms) + np_l2(a, p))
    ours = create_loss("angular", angle=40, weight=2.0)(emb, labels)
    np.testing.assert_allclose(ours.item(), expected, rtol=1e-10)


# ---------------------------------------------------------------- Symm: official formulas


@pytest.mark.parametrize("seed", SEEDS)
def test_symm_angular_official_matches_numpy_rederivation(seed):
    emb, labels = batch(seed, scale=0.4)
    sets = np_sets(emb, normalize=False)
    t = 1.0  # tan² 45°
    candidates = []
    for s, u in itertools.permutations(range(4), 2):  # the 12 ordered set pairs
        logits = 4 * t * (sets[s] + sets[u]) @ sets[u].T
        np.fill_diagonal(logits, 2 * (1 + t) * np.sum(sets[s] * sets[u], 1))
        candidates.append(logits)
    stacked = np.stack(candidates)
    expected = np_softmax_ce_diag(stacked.max(0)) + np_l2(sets[0], sets[1])
    loss = create_loss("angular", negatives="symm", symm_mode="official")
    np.testing.assert_allclose(loss(emb, labels).item(), expected, rtol=1e-10)
    pairs = list(itertools.permutations(range(4), 2))
    off = ~np.eye(stacked.shape[1], dtype=bool)
    share = np.mean([pairs[w][0] >= 2 or pairs[w][1] >= 2 for w in stacked.argmax(0)[off]])
    assert loss.last_stats["synthetic_share"] == pytest.approx(share)


@pytest.mark.parametrize("seed", SEEDS)
def test_symm_angular_point4_matches_brute_force(seed):
    emb, labels = batch(seed, scale=0.4)
    s = np_sets(emb, normalize=False)
    n = s.shape[1]
    logits = np.array([[2 * 2 * s[0, i] @ s[1, i] if i == j else max(4 * (s[0, i] + s[1, i]) @ s[k, j] for k in range(4))
                        for j in range(n)] for i in range(n)])
    expected = np_softmax_ce_diag(logits) + np_l2(s[0], s[1])
    ours = create_loss("angular", negatives="symm", symm_mode="point4")(emb, labels)
    np.testing.assert_allclose(ours.item(), expected, rtol=1e-10)


# ---------------------------------------------------------------- Symm: point4 / pair16 brute force


def kth_smallest(values, rank):
    """The rank-th hardest (closest) candidate by sorting the explicit list: rank 1 = min."""
    return sorted(values)[rank - 1]


def brute_triplet(sets, mode, margin, squared=True, rank=1):
    dist = d2 if squared else d1
    n = sets.shape[1]
    terms = []
    for i, j in itertools.product(range(n), repeat=2):
        if i == j:
            continue
        pos = dist(sets[0, i], sets[1, i])
        if mode == "point4":
            for anchor in (sets[0, i], sets[1, i]):
                terms.append(max(pos - kth_smallest([dist(anchor, v) for v in sets[:, j]], rank) + margin, 0))
        else:
            terms.append(max(pos - kth_smallest([dist(u, v) for u in sets[:, i] for v in sets[:, j]], rank) + margin, 0))
    return np.mean(terms)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["point4", "pair16"])
def test_symm_triplet_matches_brute_force(seed, mode):
    emb, labels = batch(seed)
    expected = brute_triplet(np_sets(emb, normalize=True), mode, margin=0.3)
    ours = create_loss("triplet", negatives="symm", symm_mode=mode, margin=0.3)(emb, labels)
    np.testing.assert_allclose(ours.item(), expected, rtol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_symm_semihard_pool_includes_synthetic_points(seed):
    emb, labels = batch(seed, scale=0.3)
    sets = np_sets(emb, normalize=True)
    n = sets.shape[1]
    terms, synthetic = [], []
    for i in range(n):
        for s in (0, 1):
            anchor, pos = sets[s, i], d2(sets[0, i], sets[1, i])
            pool = [(d2(anchor, sets[t, j]), t >= 2) for t in range(4) for j in range(n) if j != i]
            outside = [c for c in pool if c[0] > pos]
            neg = min(outside, key=lambda c: c[0]) if outside else max(pool, key=lambda c: c[0])
            terms.append(max(pos - neg[0] + 1.0, 0))
            synthetic.append(neg[1])
    loss = create_loss("semihard_triplet", negatives="symm")
    np.testing.assert_allclose(loss(emb, labels).item(), np.mean(terms), rtol=1e-10)
    assert loss.last_stats["synthetic_share"] == pytest.approx(np.mean(synthetic))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["point4", "pair16"])
def test_symm_lifted_matches_brute_force(seed, mode):
    emb, labels = batch(seed)
    ours = create_loss("lifted", negatives="symm", symm_mode=mode)(emb, labels)
    np.testing.assert_allclose(ours.item(), brute_lifted(np_sets(emb, normalize=False), mode), rtol=1e-10)


def brute_lifted(sets, mode, rank=1):
    n = sets.shape[1]
    terms = []
    for i in range(n):
        if mode == "point4":
            scores = [1 - kth_smallest([d1(anchor, v) for v in sets[:, j]], rank)
                      for anchor in (sets[0, i], sets[1, i]) for j in range(n) if j != i]
        else:
            scores = [1 - kth_smallest([d1(u, v) for u in sets[:, i] for v in sets[:, j]], rank) for j in range(n) if j != i]
        objective = math.log(sum(math.exp(v) for v in scores)) + d1(sets[0, i], sets[1, i])
        terms.append(max(objective, 0) ** 2 / 2)
    return np.mean(terms)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["point4", "pair16"])
def test_symm_contrastive_matches_brute_force(seed, mode):
    emb, labels = batch(seed)
    ours = create_loss("contrastive", negatives="symm", symm_mode=mode)(emb, labels)
    np.testing.assert_allclose(ours.item(), brute_contrastive(np_sets(emb, normalize=True), mode), rtol=1e-10)


def brute_contrastive(sets, mode, rank=1, margin=0.5):
    n = sets.shape[1]
    pos = np.mean([d1(sets[0, i], sets[1, i]) for i in range(n)])
    if mode == "point4":
        negs = [kth_smallest([d1(anchor, v) for v in sets[:, j]], rank)
                for i in range(n) for anchor in (sets[0, i], sets[1, i]) for j in range(n) if j != i]
    else:
        negs = [kth_smallest([d1(u, v) for u in sets[:, i] for v in sets[:, j]], rank) for i in range(n) for j in range(n) if j != i]
    return pos + np.mean([max(margin - d, 0) for d in negs])


@pytest.mark.parametrize("seed", SEEDS)
def test_contrastive_hardest_matches_explicit_loop(seed):
    emb, labels = batch(seed)
    x, y = unit(emb.numpy()), labels.numpy()
    pos = np.mean([d1(x[i], x[i + 1]) for i in range(0, len(y), 2)])
    hardest = [min(d1(x[i], x[k]) for k in range(len(y)) if y[k] != y[i]) for i in range(len(y))]
    expected = pos + np.mean([max(0.5 - d, 0) for d in hardest])
    np.testing.assert_allclose(create_loss("contrastive", negatives="hardest")(emb, labels).item(), expected, rtol=1e-10)


# ---------------------------------------------------------------- level of hardness: the k-th candidate


def kth_largest(values, rank):
    return sorted(values, reverse=True)[rank - 1]


def brute_angular(sets, mode, rank):
    """Symm angular logits by explicit loops, the rank-th largest candidate per entry (t = tan² 45° = 1)."""
    n = sets.shape[1]
    logits = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        if mode == "official":  # 12 ordered set pairs, diagonal included
            candidates = [2 * 2 * sets[s, i] @ sets[u, i] if i == j else 4 * (sets[s, i] + sets[u, i]) @ sets[u, j]
                          for s, u in itertools.permutations(range(4), 2)]
            logits[i, j] = kth_largest(candidates, rank)
        elif i == j:
            logits[i, j] = 2 * 2 * sets[0, i] @ sets[1, i]
        else:
            logits[i, j] = kth_largest([4 * (sets[0, i] + sets[1, i]) @ sets[k, j] for k in range(4)], rank)
    return np_softmax_ce_diag(logits) + np_l2(sets[0], sets[1])


def brute_npair(sets, mode, rank):
    n = sets.shape[1]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    logits = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        if mode == "official":  # the release's 6 set pairs, diagonal included
            logits[i, j] = kth_largest([sets[s, i] @ sets[t, j] for s, t in pairs], rank)
        elif i == j:
            logits[i, j] = sets[0, i] @ sets[1, i]
        elif mode == "point4":
            logits[i, j] = kth_largest([sets[0, i] @ v for v in sets[:, j]], rank)
        else:
            logits[i, j] = kth_largest([u @ v for u in sets[:, i] for v in sets[:, j]], rank)
    return np_softmax_ce_diag(logits) + np_l2(sets[0], sets[1])


RANKED = [("triplet", "point4", 2), ("triplet", "pair16", 5), ("lifted", "point4", 4), ("lifted", "pair16", 16),
          ("contrastive", "point4", 3), ("contrastive", "pair16", 2), ("npair", "point4", 3), ("npair", "pair16", 9),
          ("npair", "official", 2), ("npair", "official", 6), ("angular", "point4", 2), ("angular", "official", 7),
          ("angular", "official", 12)]


@pytest.mark.parametrize("name, mode, rank", RANKED)
def test_hardness_rank_equals_brute_force_kth_candidate(name, mode, rank):
    # Reference: explicit loops over the materialised candidate sets, sorted, the rank-th taken.
    emb, labels = batch(rank, scale=0.4 if name in ("npair", "angular") else 1.0)
    normalize = name in ("triplet", "contrastive")
    sets = np_sets(emb, normalize=normalize)
    expected = {"triplet": lambda: brute_triplet(sets, mode, margin=0.3, rank=rank),
                "lifted": lambda: brute_lifted(sets, mode, rank=rank),
                "contrastive": lambda: brute_contrastive(sets, mode, rank=rank),
                "npair": lambda: brute_npair(sets, mode, rank),
                "angular": lambda: brute_angular(sets, mode, rank)}[name]()
    options = {"margin": 0.3} if name == "triplet" else {}
    loss = create_loss(name, negatives="symm", symm_mode=mode, hardness_rank=rank, **options)
    np.testing.assert_allclose(loss(emb, labels).item(), expected, rtol=1e-10)
    if rank > 1:  # and it is a different choice from the hardest one
        hardest = create_loss(name, negatives="symm", symm_mode=mode, **options)(emb, labels)
        assert abs(hardest.item() - expected) > 1e-8


def test_hardness_rank_synthetic_share_counts_the_kth_choice():
    # Reference: explicit loops; point4 for triplet, which candidate is 3rd closest from each anchor
    emb, labels = batch(11)
    sets = np_sets(emb, normalize=True)
    n = sets.shape[1]
    synthetic = []
    for i, j in itertools.product(range(n), repeat=2):
        if i != j:
            for anchor in (sets[0, i], sets[1, i]):
                order = np.argsort([d2(anchor, v) for v in sets[:, j]])
                synthetic.append(order[2] >= 2)
    loss = create_loss("triplet", negatives="symm", symm_mode="point4", hardness_rank=3)
    loss(emb, labels)
    assert loss.last_stats["synthetic_share"] == pytest.approx(np.mean(synthetic))


@pytest.mark.parametrize("options, message", [
    (dict(name="triplet", negatives="symm", symm_mode="point4", hardness_rank=5), r"must be in 1..4 for symm_mode='point4'"),
    (dict(name="lifted", negatives="symm", symm_mode="pair16", hardness_rank=17), r"must be in 1..16"),
    (dict(name="npair", negatives="symm", symm_mode="official", hardness_rank=7), r"must be in 1..6"),
    (dict(name="angular", negatives="symm", symm_mode="official", hardness_rank=13), r"must be in 1..12"),
    (dict(name="npair", negatives="symm", hardness_rank=0), r"integer >= 1"),
    (dict(name="npair", negatives="symm", hardness_rank=2.0), r"integer >= 1"),
    (dict(name="triplet", negatives="hardest", hardness_rank=2), r"needs negatives='symm'"),
    (dict(name="npair", hardness_rank=2), r"needs negatives='symm'"),
    (dict(name="semihard_triplet", negatives="symm", hardness_rank=2), r"symm_mode='semihard' picks no k-th candidate"),
])
def test_invalid_hardness_rank_raises(options, message):
    options = dict(options)
    with pytest.raises(ValueError, match=message):
        create_loss(options.pop("name"), **options)


# ---------------------------------------------------------------- the Gram formulation


@pytest.mark.parametrize("form, alpha, beta, rescale", [
    ("paper", 2.0, 1.0, False), ("paper", 1.5, 0.5, False), ("official", 2.5, 1.5, False),
    ("official", 1.5, 0.5, True), ("paper", 2.5, 1.5, True),
])
def test_gram_formulation_equals_materialised_reflections(form, alpha, beta, rescale):
    emb, _ = batch(4, n=9, dim=5)
    a, p = emb[0::2], emb[1::2]
    opts = dict(alpha=alpha, beta=beta, form=form, rescale_to_axis_norm=rescale)
    points = torch.stack([a, p, reflect(p, a, **opts), reflect(a, p, **opts)])
    sets = symmetric_sets(a, p, **opts)
    torch.testing.assert_close(sets.sims, torch.einsum("sid,tjd->stij", points, points))
    torch.testing.assert_close(sets.sq_norms, points.pow(2).sum(-1))
    torch.testing.assert_close(real_sets(a, p).sims, sets.sims[:2, :2])


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("squared", [True, False])
def test_symm_never_selects_an_easier_negative(seed, squared):
    # every candidate set contains the real points, so the selected negative is at least as close
    emb, _ = batch(seed)
    a, p = emb[0::2], emb[1::2]
    real = real_sets(a, p).distances(squared)
    symm = symmetric_sets(a, p).distances(squared)
    real_point4, _ = hardest_of_each_class(real)
    symm_point4, _ = hardest_of_each_class(symm)
    assert (symm_point4 <= real_point4 + 1e-12).all()
    real_pair16, _ = hardest_pair_of_classes(real)
    symm_pair16, _ = hardest_pair_of_classes(symm)
    assert (symm_pair16 <= real_pair16 + 1e-12).all()
    assert (symm_pair16 <= symm_point4.view(2, *symm_pair16.shape).min(0).values + 1e-12).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["triplet", "contrastive", "npair"])
@pytest.mark.parametrize("mode", ["point4", "pair16"])
def test_symm_loss_is_never_below_the_plain_loss(seed, name, mode):
    # for losses that average (or softmax) over negatives, a harder selection cannot lower the loss
    emb, labels = batch(seed)
    plain = create_loss(name)(emb, labels)
    symm = create_loss(name, negatives="symm", symm_mode=mode)(emb, labels)
    assert symm >= plain - 1e-12


def degenerate_batch(kind):
    emb, labels = batch(9, n=5, dim=4)
    emb = emb.clone()
    if kind == "zero_norm":
        emb[0] = 0.0  # an anchor at the origin
        emb[3] = 0.0  # a positive at the origin
    elif kind == "duplicates":
        emb[1] = emb[0]  # positive identical to its anchor
        emb[4] = emb[2]  # a negative identical to another class's anchor
    return emb, labels


@pytest.mark.parametrize("name, negatives, mode", supported_combinations())
@pytest.mark.parametrize("kind", ["random", "zero_norm", "duplicates"])
def test_every_registered_combination_runs_forward_and_backward(name, negatives, mode, kind):
    emb, labels = degenerate_batch(kind)
    emb = emb.requires_grad_(True)
    options = {"symm_mode": mode} if mode else {}
    loss_fn = create_loss(name, negatives=negatives, **options)
    loss = loss_fn(emb, labels)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert emb.grad.shape == emb.shape and torch.isfinite(emb.grad).all()
    if negatives == "symm":
        assert 0.0 <= loss_fn.last_stats["synthetic_share"] <= 1.0
    if kind == "random":
        assert emb.grad.abs().sum() > 0


@pytest.mark.parametrize("call, message", [
    (lambda: create_loss("npair", negatives="hardest"), "does not define negatives='hardest'; supported: \\['none', 'symm'\\]"),
    (lambda: create_loss("triplet", negatives="symm", symm_mode="official"), "unknown symm_mode 'official' for loss 'triplet'"),
    (lambda: create_loss("angular", negatives="symm", symm_mode="pair16"), "supported: \\['official', 'point4'\\]"),
    (lambda: create_loss("triplet", margin=-0.1), "margin must be >= 0"),
    (lambda: create_loss("triplet", symm_mode="point4"), "only applies with negatives='symm'"),
    (lambda: create_loss("npair", negatives="symm", symm_mode="point4", keep_positive=False), "only in symm_mode='official'"),
    (lambda: create_loss("angular", angle=90), "angle must be in"),
    (lambda: create_loss("lifted", negatives="mystery"), "unknown negatives 'mystery'"),
    (lambda: create_loss("contrastive", negatives="symm", beta=0.0), "beta must be > 0"),
    (lambda: create_loss("triplet", angle=45), r"unknown option\(s\) \['angle'\] for loss 'triplet'"),
])
def test_invalid_combinations_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
