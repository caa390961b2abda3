"""Shared test settings: keep any Ray started by tests on loopback and private."""
import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread, as a sweep trial uses (cpus_per_trial: 1): on a loaded 2-core machine
    two threads spin against each other and a 30-step glyph run takes ~7x longer."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """sklearn's bundled 8x8 digits as class-disjoint splits: train 0-5, val 6-7, test 8-9."""
    import torch
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(labels)

    def take(classes):
        mask = torch.isin(labels, torch.tensor(classes))
        return images[mask], labels[mask]

    return {"train": take([0, 1, 2, 3, 4, 5]), "val": take([6, 7]), "test": take([8, 9])}


@pytest.fixture(scope="session")
def glyphs(tmp_path_factory):
    """The 62-class glyph set at 16 px, one font per family (near-duplicate styles out, so the
    untrained network's nearest neighbours are not already right): class-disjoint splits."""
    from symm.data.glyphs import prepare_glyphs
    from symm.data.prepared import load_split

    out = tmp_path_factory.mktemp("glyphs_small")
    prepare_glyphs(out, image_size=16, max_fonts_per_family=1, min_fonts=20, progress=False)
    return {split: load_split(out, split) for split in ("train", "val", "test")}
