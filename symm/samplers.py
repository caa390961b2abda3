"""Batch samplers for pair-based losses."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


class NPairBatchSampler:
    """Yields index batches of N distinct classes × 2 images: [a_1, p_1, a_2, p_2, ...].

    Classes and images are drawn without replacement within a batch. Classes with fewer than
    two images cannot form a pair and are left out (listed in ``excluded_classes``). The
    sampler is an endless stream; its state can be saved and restored for exact resume.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, classes_per_batch: int, seed: int = 0) -> None:
        labels = np.asarray(labels)
        classes, counts = np.unique(labels, return_counts=True)
        self.excluded_classes = classes[counts < 2].tolist()
        usable = classes[counts >= 2]
        if classes_per_batch < 2:
            raise ValueError(f"classes_per_batch must be >= 2 to have negatives, got {classes_per_batch}")
        if len(usable) < classes_per_batch:
            raise ValueError(
                f"classes_per_batch={classes_per_batch} but only {len(usable)} classes have >= 2 images; "
                "lower train.classes_per_batch in params.yaml"
            )
        self.classes_per_batch = classes_per_batch
        self._members = [np.flatnonzero(labels == c) for c in usable]
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.sample()

    def sample(self) -> list[int]:
        chosen = self._rng.choice(len(self._members), size=self.classes_per_batch, replace=False)
        batch: list[int] = []
        for c in chosen:
            batch.extend(int(i) for i in self._rng.choice(self._members[c], size=2, replace=False))
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
