"""Every registered loss on a CUDA device against the same loss on the CPU; one trial on the GPU.

Skipped without CUDA (CI and the development machine have none; `scripts/device_check.sh` runs
this file on a lent GPU machine). Reference: the CPU result of the same loss, itself checked
against pytorch-metric-learning, numpy re-derivations of the release and brute-force loops in
the other test files. On a GPU the Symm logit losses (N-pair, angular; hardest candidate) take
the Triton node (symm.losses.triton_kernels) and every other Symm loss the torch path (the numba
loops are CPU-only), so this is also the test that both keep every tensor on the input's device.
"""
import pytest
import torch

from symm.losses import create_loss, supported_combinations

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# besides the defaults: the k-th hardest and the release's norm rescale (served by the torch path alone,
# on the CPU too) and the official reflection form with α, β off the plain mirror
EXTRA_SYMM_OPTIONS = [{}, {"hardness_rank": 2}, {"rescale_to_axis_norm": True}, {"alpha": 1.5, "beta": 0.5, "form": "official"}]


def _batch(layout: str, n: int = 12, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2 * n, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(n).repeat_interleave(2)
    if layout == "shuffled":  # any order: the loss splits the pairs itself
        order = torch.randperm(2 * n, generator=g)
        embeddings, labels = embeddings[order], labels[order]
    return embeddings, labels


def _run(name, negatives, options, embeddings, labels, device):
    x = embeddings.to(device).requires_grad_(True)
    loss_fn = create_loss(name, negatives=negatives, **options)
    value = loss_fn(x, labels.to(device))
    assert value.device.type == torch.device(device).type
    value.backward()
    return value.detach().cpu(), x.grad.cpu(), loss_fn.last_stats.get("synthetic_share")


@pytest.mark.parametrize("name, negatives, mode", supported_combinations())
@pytest.mark.parametrize("layout", ["interleaved", "shuffled"])
def test_every_loss_on_cuda_equals_the_cpu(name, negatives, mode, layout):
    embeddings, labels = _batch(layout)
    extras = EXTRA_SYMM_OPTIONS if negatives == "symm" else [{}]
    ranked = negatives == "symm" and create_loss(name, negatives=negatives, symm_mode=mode).candidate_count() is not None
    for extra in extras:
        if "hardness_rank" in extra and not ranked:
            continue  # only a ranked selection has a k-th candidate
        options = dict({"symm_mode": mode} if mode else {}, **extra)
        cpu = _run(name, negatives, options, embeddings, labels, "cpu")
        gpu = _run(name, negatives, options, embeddings, labels, "cuda")
        torch.testing.assert_close(gpu[0], cpu[0], msg=f"loss value, options {options}")
        torch.testing.assert_close(gpu[1], cpu[1], msg=f"gradient, options {options}")
        if negatives == "symm":
            assert gpu[2] == pytest.approx(cpu[2], rel=1e-6), options


def test_a_short_trial_trains_and_evaluates_on_the_gpu(digits):
    pytest.importorskip("faiss")
    from symm.config import EvalConfig, ModelConfig, OptimizerConfig, TrainConfig
    from symm.training import train_trial

    result = train_trial(
        method_spec={"kind": "metric_loss", "options": {"loss": "npair", "negatives": "symm", "symm_mode": "official"}},
        model_cfg=ModelConfig(backbone="small_cnn", embedding_dim=16, options={"width": 8}),
        train_cfg=TrainConfig(steps=20, eval_every=10, optimizer=OptimizerConfig(lr=1e-3), classes_per_batch=4),
        eval_cfg=EvalConfig(ks=[1, 2], batch_size=256),
        data=digits, seed=0, device="cuda",
    )
    assert [entry["step"] for entry in result.history] == [10, 20]
    assert all(torch.isfinite(torch.tensor(entry["train"]["loss"])) for entry in result.history)
    assert all(0.0 <= entry["train"]["synthetic_share"] <= 1.0 for entry in result.history)
    assert 0.0 <= result.test["recall_at_1"] <= 1.0
    assert next(result.model.parameters()).device.type == "cuda"
