"""bench/products: the matrix products a loss's code path runs, recorded and replayed (the products
estimate that bench/loss_overhead reports). Reference: the products written out from each loss's
definition (N-pair: A·Pᵀ forward, D·P and Dᵀ·A backward; the Symm Gram: syrk's one triangle of
[A; P]·[A; P]ᵀ forward, the (2N, 2N) gradient times [A; P] backward)."""
from collections import Counter
from unittest import mock

import pytest
import torch

from bench import loss_overhead
from bench.products import SYRK, TensorSpec, _ProductRecorder, multiply_adds, record_products, replay
from symm.losses import create_loss, kernels

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # syrk serves the Gram only with one torch thread


def batch(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(2 * n, dim), torch.arange(n).repeat_interleave(2)  # the interleaved pair layout


def shapes(products) -> Counter:
    """(rows, inner, columns) of each aten product; syrk as (points, dim)."""
    out = Counter()
    for p in products:
        if p.op == SYRK:
            out[(SYRK, *p.args[0].size)] += 1
            continue
        first, second = p.args[:2] if p.op.overloadpacket.__name__ == "mm" else p.args[1:3]
        out[(first.size[0], first.size[1], second.size[1])] += 1
    return out


def test_plain_npair_runs_its_three_definition_products():
    n, dim = 5, 7
    embeddings, labels = batch(n, dim)
    products = record_products(create_loss("npair"), embeddings, labels)
    # A·Pᵀ; backward D·P for A and Aᵀ·D for Pᵀ (autograd differentiates the transposed operand)
    assert shapes(products) == Counter({(n, dim, n): 1, (n, n, dim): 1, (dim, n, n): 1})
    assert multiply_adds(products) == 3 * n * n * dim


@pytest.mark.parametrize("n, dim", [(6, 32), (20, 8)])  # small batch (2N <= d) and large (the blocked copy)
@pytest.mark.parametrize("mode", ["official", "pair16"])
def test_symm_gram_losses_run_syrk_and_one_backward_product(n, dim, mode):
    embeddings, labels = batch(n, dim)
    products = record_products(create_loss("npair", negatives="symm", symm_mode=mode), embeddings, labels)
    assert [p.op for p in products].count(SYRK) == 1
    assert products[0].args[0].size == (2 * n, dim)
    gram_triangle = (2 * n) * (2 * n + 1) // 2 * dim
    assert multiply_adds(products) == gram_triangle + (2 * n) ** 2 * dim


def test_without_syrk_the_gram_is_a_recorded_torch_product():
    n, dim = 6, 32
    embeddings, labels = batch(n, dim)
    with mock.patch.dict("os.environ", {"SYMM_BLAS_SYRK": "0"}):
        products = record_products(create_loss("npair", negatives="symm", symm_mode="official"), embeddings, labels)
    assert SYRK not in [p.op for p in products]
    assert shapes(products)[(2 * n, dim, 2 * n)] == 1
    assert multiply_adds(products) == 2 * (2 * n) ** 2 * dim


def test_in_place_products_are_recorded():
    # Symm+N-pair point4 on a large interleaved batch adds its positives' half with addmm_
    n, dim = 20, 8
    embeddings, labels = batch(n, dim)
    products = record_products(create_loss("npair", negatives="symm", symm_mode="point4"), embeddings, labels)
    assert "addmm_" in {p.op.overloadpacket.__name__ for p in products}
    # A·[A; P]ᵀ forward; backward D·[A; P] (as two products) and D's A·Pᵀ partᵀ · A
    assert multiply_adds(products) == 5 * n * n * dim


def test_replay_calls_the_recorded_products_on_the_recorded_layouts():
    n, dim = 20, 8
    embeddings, labels = batch(n, dim)
    products = record_products(create_loss("npair", negatives="symm", symm_mode="official"), embeddings, labels)
    grams = []
    real_gram = kernels._symmetric_gram
    with mock.patch.object(kernels, "_symmetric_gram", side_effect=lambda points: grams.append(points) or real_gram(points)):
        run = replay(products)  # binds the (patched) syrk call
        with _ProductRecorder() as again:
            run()
    aten = [p for p in products if p.op != SYRK]
    assert [(p.op, p.args, p.kwargs) for p in again.products] == [(p.op, p.args, p.kwargs) for p in aten]
    assert [TensorSpec(tuple(g.shape), tuple(g.stride()), g.dtype, g.device) for g in grams] == \
        [p.args[0] for p in products if p.op == SYRK]


def test_products_estimate_is_the_base_with_its_products_swapped_for_the_rows():
    # CPU medians (second item) as measure() returns them; reference: the arithmetic written out
    medians = {"npair": (0, 2.0), "symm_npair official": (0, 3.4), "products: npair": (0, 0.6),
               "products: symm_npair official": (0, 1.5), "symm_npair point4": (0, 3.0)}
    assert loss_overhead.products_estimates(medians) == {"symm_npair official": (2.0 - 0.6 + 1.5) / 2.0}


def test_verdict_table_gives_the_products_estimate_per_run():
    def run(ratio: float, row_products: float) -> dict:
        return {"N = 256, d = 128": {"npair": (1.0, 1.0), "products: npair": (0.3, 0.3),
                                     "symm_npair official": (1.0, ratio),
                                     "products: symm_npair official": (1.0, row_products)}}
    lines = loss_overhead.verdict_table([run(2.1, 0.9), run(2.2, 0.85)])  # estimates 1.6, 1.55
    assert "| N = 256, d = 128 | symm_npair official | 2.100, 2.200 | 2.100-2.200 | ≤ 1.5 | 1.600, 1.550 | **not met** |" \
        in lines


def test_matmul_floor_lists_every_symm_logit_row_with_its_multiply_adds():
    from bench import matmul_floor
    n, dim = 4, 8
    lines = matmul_floor.estimates(n, dim, 1)
    assert [line.split(":")[0].strip() for line in lines] == [
        "symm_npair official", "symm_npair point4", "symm_npair pair16", "symm_angular official", "symm_angular point4"]
    official = ((2 * n) * (2 * n + 1) // 2 * dim + (2 * n) ** 2 * dim) / (n * n * dim)  # syrk triangle + backward
    assert f"products {official:.2f} N²d against the base's 3.00" in lines[0]
