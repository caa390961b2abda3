"""What a training step and its loss cost: wall time, matmul FLOPs, memory held for backward.

Memory on CPU has no allocator counter, so the device-independent measure is the bytes of the
distinct tensor storages autograd saves for backward during the forward (what a step holds until
``backward``); on CUDA the allocator's peak is measured too. FLOPs come from torch's
``FlopCounterMode`` (matmuls and convolutions; elementwise work is not counted).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from symm.losses import kernels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (device synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def saved_for_backward_bytes(forward: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run ``forward``; return its output and the bytes of distinct storages saved for backward.

    Two kinds: what autograd's saved-tensor hooks see, and what this project's compiled Symm nodes
    (``symm.losses.kernels``, ``symm.losses.triton_kernels``) keep on their ``ctx.kept`` — their
    Gram rows, coefficients and choice, as NumPy arrays or tensors, which the hooks do not see
    (kept there because ``save_for_backward`` costs those nodes 2-5% at the paper's batch)."""
    storages: dict[tuple[int, str], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    storages.update(_kept_on_ctx(out))
    return out, sum(storages.values())


def _kept_on_ctx(output: torch.Tensor) -> dict[tuple[int, str], int]:
    """Storages that the graph's custom nodes keep on ``ctx.kept`` (tensors and NumPy arrays)."""
    held: dict[tuple[int, str], int] = {}
    stack, seen = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for value in getattr(node, "kept", None) or ():
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                held[(storage.data_ptr(), str(value.device))] = storage.nbytes()
            elif isinstance(value, np.ndarray):
                base = value
                while isinstance(base.base, np.ndarray):  # a view: count the array it views, once
                    base = base.base
                held[(base.__array_interface__["data"][0], "cpu")] = base.nbytes
        stack.extend(function for function, _ in node.next_functions)
    return held


def flops(fn: Callable[[], None]) -> int:
    """Matmul/convolution FLOPs of one call of ``fn`` (forward and, if it calls it, backward).

    Counted with the Symm logit node's Gram as a torch matmul: BLAS syrk, which the node uses on
    one thread, runs outside torch and its counter (it does half of that product's FLOPs).
    """
    counter = FlopCounterMode(display=False)
    with counter, kernels.gram_as_matmul():
        fn()
    return int(counter.get_total_flops())


def peak_cuda_bytes(fn: Callable[[], None], device: torch.device) -> int | None:
    """Allocator peak above the starting allocation during ``fn`` (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def matrix_sizes(n_classes: int, dim: int, synthetic: bool) -> dict[str, int]:
    """The paper's accounting: points held (2N or 4N rows × d) and similarity entries (N² or (4N)²)."""
    sets = 4 if synthetic else 2
    return {"points_matrix": sets * n_classes * dim,
            "similarity_matrix": (4 * n_classes) ** 2 if synthetic else n_classes**2}
