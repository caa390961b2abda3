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


class MPerClassBatchSampler:
    """Yields index batches of ``classes_per_batch`` distinct classes × ``m`` images, grouped by
    class: [c1 × m, c2 × m, ...] (the MLRC-style sampler; ``m = 2`` gives N-pair batches).

    A class with at least ``m`` images gives ``m`` distinct images. A class with ``2 <= n < m``
    images (SOP has thousands with 2-12) is handled by ``small_classes``:

    - ``"repeat"`` (default): all ``n`` images once, the remaining ``m - n`` slots drawn again from
      them without replacement (so an image repeats at most ceil(m / n) - 1 times; with per-sample
      augmentation the copies differ) - the batch keeps its shape;
    - ``"exclude"``: such classes are never drawn (listed in ``excluded_classes``).

    Classes with a single image are always excluded (no positive pair). Deterministic under a
    seed; ``state_dict`` / ``load_state_dict`` resume exactly.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        m: int,
        classes_per_batch: int,
        seed: int = 0,
        small_classes: str = "repeat",
    ) -> None:
        if m < 2:
            raise ValueError(f"m must be >= 2 (images per class), got {m}")
        if classes_per_batch < 2:
            raise ValueError(f"classes_per_batch must be >= 2 to have negatives, got {classes_per_batch}")
        if small_classes not in ("repeat", "exclude"):
            raise ValueError(f"small_classes must be 'repeat' or 'exclude', got {small_classes!r}")
        labels = np.asarray(labels)
        classes, counts = np.unique(labels, return_counts=True)
        minimum = 2 if small_classes == "repeat" else m
        self.excluded_classes = classes[counts < minimum].tolist()
        usable = classes[counts >= minimum]
        if len(usable) < classes_per_batch:
            raise ValueError(
                f"classes_per_batch={classes_per_batch} but only {len(usable)} classes have >= {minimum} images; "
                "lower classes_per_batch"
            )
        self.m = m
        self.classes_per_batch = classes_per_batch
        self.small_classes = small_classes
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], usable)
        ends = np.searchsorted(labels[order], usable, side="right")
        self._members = [order[a:b] for a, b in zip(bounds, ends)]
        self._rng = np.random.default_rng(seed)

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.m

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.sample()

    def sample(self) -> list[int]:
        chosen = self._rng.choice(len(self._members), size=self.classes_per_batch, replace=False)
        batch: list[int] = []
        for c in chosen:
            members = self._members[c]
            n = len(members)
            if n >= self.m:
                picked = self._rng.choice(members, size=self.m, replace=False)
            else:
                extra: list[np.ndarray] = []
                need = self.m - n
                while need > 0:
                    take = min(need, n)
                    extra.append(self._rng.choice(members, size=take, replace=False))
                    need -= take
                picked = self._rng.permutation(np.concatenate([members, *extra]))
            batch.extend(int(i) for i in picked)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]


class StepBatchSampler:
    """Adapter from an endless batch sampler (``.sample()``) to a DataLoader ``batch_sampler``.

    Yields, for steps ``start_step .. steps - 1``, the sampler's batch as a list of
    ``(index, (seed, step, position))`` items: the dataset derives each sample's augmentation
    generator from that key, so augmentation does not depend on which worker loads the sample.
    Before drawing batch ``k`` it records the sampler's state in ``snapshots[k]``: a DataLoader
    prefetches, so the state *after the last consumed batch* is a snapshot, not the live state
    (see ``symm.data.loaders.TrainLoader.state_dict``).
    """

    def __init__(self, sampler: Any, steps: int | None, seed: int = 0, start_step: int = 0) -> None:
        self.sampler = sampler
        self.steps = steps
        self.seed = seed
        self.start_step = start_step
        self.snapshots: dict[int, dict[str, Any]] = {}

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, int, int]]]]:
        step = self.start_step
        while self.steps is None or step < self.steps:
            self.snapshots[step] = self.sampler.state_dict()
            batch = self.sampler.sample()
            yield [(int(i), (self.seed, step, pos)) for pos, i in enumerate(batch)]
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless StepBatchSampler has no length (pass steps)")
        return max(0, self.steps - self.start_step)
