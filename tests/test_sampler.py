"""N-pair batch sampler: structure of every batch, seeding and resumable state."""
import numpy as np
import pytest
import torch

from symm.losses import split_pairs
from symm.samplers import NPairBatchSampler


def labels_fixture():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), rng.integers(2, 9, size=20))
    return np.concatenate([labels, [99]])  # class 99 has a single image


def test_every_batch_has_n_distinct_classes_two_distinct_images_each():
    labels = labels_fixture()
    sampler = NPairBatchSampler(labels, classes_per_batch=8, seed=1)
    for _ in range(200):
        batch = sampler.sample()
        assert len(batch) == 16 and len(set(batch)) == 16  # no image twice in a batch
        batch_labels = labels[batch]
        assert len(set(batch_labels.tolist())) == 8
        assert all(batch_labels[2 * i] == batch_labels[2 * i + 1] for i in range(8))
        assert 99 not in batch_labels
        # the batch satisfies the loss contract (each label exactly twice)
        split_pairs(torch.zeros(16, 2), torch.as_tensor(batch_labels))
    assert sampler.excluded_classes == [99]


def test_seeded_and_resumable():
    labels = labels_fixture()
    a, b = NPairBatchSampler(labels, 6, seed=3), NPairBatchSampler(labels, 6, seed=3)
    assert [a.sample() for _ in range(5)] == [b.sample() for _ in range(5)]
    state = a.state_dict()
    expected = [a.sample() for _ in range(5)]
    c = NPairBatchSampler(labels, 6, seed=123)
    c.load_state_dict(state)
    assert [c.sample() for _ in range(5)] == expected
    assert NPairBatchSampler(labels, 6, seed=4).sample() != NPairBatchSampler(labels, 6, seed=3).sample()


def test_too_many_classes_per_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="only 20 classes have >= 2 images"):
        NPairBatchSampler(labels_fixture(), classes_per_batch=21)
