"""The matrix products a loss's forward+backward really runs, recorded once and replayed alone.

Why: the products run at the BLAS library's speed whatever the rest of a loss does, so timing
them alone says how much of a Symm loss's ratio to its base they explain (``bench.loss_overhead``'s
products estimate). Taking them from the code path itself (the aten matrix products that a
``TorchDispatchMode`` sees in the forward and in autograd's backward, and the BLAS syrk that
``symm.losses.kernels`` calls through SciPy) keeps that true as the losses change, where a
hand-written list of products (the earlier ``bench/matmul_floor.py``) went stale when the Gram
moved to syrk.

    products = record_products(loss, embeddings, labels)
    run = replay(products)          # the same calls on fresh tensors of the same sizes and strides
    multiply_adds(products)         # their multiply-add count
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from symm.losses import kernels

# aten operators (by overload packet) counted as matrix products; element-wise and reduction
# operators (the softmax, the L2 term's dot) are the rest of the loss
PRODUCT_OPS = frozenset({"mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_", "addbmm", "addbmm_"})
SYRK = "syrk"  # the (2N, 2N) Gram's lower triangle from BLAS syrk (symm.losses.kernels._symmetric_gram)


@dataclass(frozen=True)
class TensorSpec:
    """What a replay needs of a tensor argument: its layout, not its values."""

    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


@dataclass(frozen=True)
class Product:
    """One recorded call: an aten operator overload (or ``SYRK``) with its arguments as specs."""

    op: Any
    args: tuple
    kwargs: dict


def _spec(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), tuple(value.stride()), value.dtype, value.device)
    return value


class _ProductRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.products: list[Product] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in PRODUCT_OPS:
            self.products.append(Product(func, tree_map(_spec, args), tree_map(_spec, kwargs)))
        return func(*args, **kwargs)


def record_products(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embeddings: torch.Tensor,
                    labels: torch.Tensor) -> list[Product]:
    """The matrix products of one forward+backward of ``loss`` on ``embeddings``, in call order."""
    recorder = _ProductRecorder()
    gram = kernels._symmetric_gram

    def recorded_gram(points: torch.Tensor):  # noqa: ANN202 - kernels' own signature
        out = gram(points)
        if out is not None:  # None: syrk not used (the node then calls a torch matmul, recorded above)
            recorder.products.append(Product(SYRK, (_spec(points),), {}))
        return out

    x = embeddings.detach().requires_grad_(True)
    kernels._symmetric_gram = recorded_gram
    try:
        with recorder:
            loss(x, labels).backward()
    finally:
        kernels._symmetric_gram = gram
    return recorder.products


def _materialise(spec: TensorSpec, generator: torch.Generator) -> torch.Tensor:
    """A tensor of the spec's size and strides over random storage (views and transposes kept)."""
    extent = 1 + sum((n - 1) * s for n, s in zip(spec.size, spec.stride) if n > 0) if all(spec.size) else 0
    storage = torch.randn(extent, generator=generator, dtype=spec.dtype).to(spec.device)
    return storage.as_strided(spec.size, spec.stride)


def replay(products: list[Product], seed: int = 0) -> Callable[[], None]:
    """A call that runs the recorded products again, in order, on fresh tensors of the recorded layouts
    (made once here, so the call times the products only)."""
    generator = torch.Generator().manual_seed(seed)

    def real(value: Any) -> Any:
        return _materialise(value, generator) if isinstance(value, TensorSpec) else value

    steps = []
    for product in products:
        args, kwargs = tree_map(real, product.args), tree_map(real, product.kwargs)
        if product.op == SYRK:
            steps.append(functools.partial(kernels._symmetric_gram, *args))
        else:
            steps.append(functools.partial(product.op, *args, **kwargs))

    def run() -> None:
        for step in steps:
            step()
    return run


def multiply_adds(products: list[Product]) -> int:
    """Multiply-adds of the recorded products (syrk: one triangle with its diagonal)."""
    total = 0
    for product in products:
        if product.op == SYRK:
            rows, dim = product.args[0].size
            total += rows * (rows + 1) // 2 * dim
            continue
        name = product.op.overloadpacket.__name__
        first, second = product.args[:2] if name in ("mm", "bmm") else product.args[1:3]  # add*: (input, first, second)
        batch = first.size[0] if len(first.size) == 3 else 1  # bmm, baddbmm, addbmm: (b, m, k) · (b, k, n)
        total += batch * first.size[-2] * first.size[-1] * second.size[-1]
    return total
