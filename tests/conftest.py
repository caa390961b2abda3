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
