"""m-per-class batches (the MLRC recipe's 8 × 4) for the N-pair-batch losses.

Reference: an explicit Python loop that walks the batch, collects each class's images in batch
order and builds sub-batch k from images 2k and 2k+1 of every class (the rule documented in
symm.losses.m_per_class); the loss of a batch must equal the mean of the registered loss on those
sub-batches, and an N-pair batch must give the loss itself.
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from symm.config import EvalConfig, ModelConfig, OptimizerConfig, TrainConfig, parse_science_params
from symm.losses import create_loss, supported_combinations
from symm.losses.m_per_class import mean_over_pair_sub_batches, pair_sub_batches
from symm.methods import create_method
from symm.samplers import MPerClassBatchSampler
from symm.training import train_trial

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def loop_sub_batches(labels: list[int]) -> list[list[int]]:
    """Explicit reference: class order by first appearance, images in batch order, pairs (2k, 2k+1)."""
    members: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        members.setdefault(label, []).append(position)
    m = len(next(iter(members.values())))
    return [[i for positions in members.values() for i in positions[2 * k : 2 * k + 2]] for k in range(m // 2)]


def shuffled_batch(classes: int, m: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(rng.choice(1000, size=classes, replace=False), m))
    return torch.tensor(labels)


@pytest.mark.parametrize("classes, m, seed", [(8, 4, 0), (5, 6, 1), (3, 2, 2), (4, 8, 3)])
def test_sub_batches_match_the_explicit_loop(classes, m, seed):
    labels = shuffled_batch(classes, m, seed)
    got = [index.tolist() for index in pair_sub_batches(labels)]
    assert got == loop_sub_batches(labels.tolist())
    for index in pair_sub_batches(labels):  # each one is an N-pair batch in the interleaved layout
        sub = labels[index]
        assert torch.equal(sub[0::2], sub[1::2]) and sub[0::2].unique().numel() == classes


def test_sampler_batches_split_into_all_classes_each():
    labels = np.repeat(np.arange(20), 5)
    batch = next(iter(MPerClassBatchSampler(labels, m=4, classes_per_batch=8, seed=0)))
    subs = pair_sub_batches(torch.as_tensor(labels[batch]))
    assert len(subs) == 2 and sorted(torch.cat(subs).tolist()) == list(range(32))  # every image used once


@pytest.mark.parametrize("name, negatives, mode", supported_combinations())
def test_every_loss_on_a_four_per_class_batch_is_the_mean_of_its_pair_sub_batches(name, negatives, mode):
    torch.manual_seed(0)
    loss = create_loss(name, negatives=negatives, **({"symm_mode": mode} if mode else {}))
    labels = shuffled_batch(8, 4, seed=5)
    embeddings = torch.randn(32, 16, dtype=torch.float64, requires_grad=True)
    value, stats = mean_over_pair_sub_batches(loss, embeddings, labels)
    references, shares = [], []
    for index in loop_sub_batches(labels.tolist()):
        references.append(loss(embeddings[index], labels[index]))
        shares.append(loss.last_stats.get("synthetic_share"))
    torch.testing.assert_close(value, torch.stack(references).mean())
    if negatives == "symm":
        assert stats["synthetic_share"] == pytest.approx(np.mean(shares))
    value.backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0


def test_a_pair_batch_is_passed_through_unchanged():
    torch.manual_seed(1)
    loss = create_loss("npair", negatives="symm", symm_mode="official")
    labels = torch.tensor([3, 3, 1, 1, 7, 7, 2, 2])
    embeddings = torch.randn(8, 6)
    value, stats = mean_over_pair_sub_batches(loss, embeddings, labels)
    assert torch.equal(value, loss(embeddings, labels)) and stats == loss.last_stats


@pytest.mark.parametrize(
    "labels, message",
    [
        ([1, 1, 1, 2, 2, 2], "3 images per class cannot be split"),
        ([1, 1, 1, 1, 2, 2], r"same number of images in a batch: the first has 4, these differ \{2: 2\}"),
        ([1, 1, 1, 1], "at least 2 classes"),
    ],
)
def test_unsplittable_batches_name_the_problem(labels, message):
    with pytest.raises(ValueError, match=message):
        mean_over_pair_sub_batches(create_loss("triplet"), torch.randn(len(labels), 4), torch.tensor(labels))


# ----------------------------------------------------------------------------------- params


def params(**top):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(top)
    return raw


def mlrc_params(methods):
    raw = params(recipe="mlrc")
    raw["sweep"] = {**raw["sweep"], "datasets": ["cub"], "methods": methods}
    raw["datasets"] = ["cub"]
    return raw


def test_the_mlrc_recipe_validates_with_its_eight_by_four_batch():
    science = parse_science_params(mlrc_params(["triplet", "symm_triplet", "npair", "symm_npair"]))
    assert (science.train.classes_per_batch, science.train.images_per_class) == (8, 4)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["train"].update(images_per_class=3), "m must be even"),
        (lambda p: p["sweep"].update(methods=["npair", "daml_npair"]), r"methods \['daml_npair'\] \(DAML/HDML\)"),
    ],
)
def test_m_per_class_params_that_cannot_train_are_refused(mutate, message):
    raw = mlrc_params(["npair"])
    mutate(raw)
    with pytest.raises(ValueError, match=message):
        parse_science_params(raw)


# ---------------------------------------------------------------------------------- trainer


def run(data, steps, negatives="symm"):
    method = {"kind": "metric_loss", "options": {"loss": "triplet", "negatives": negatives}}
    return train_trial(
        method_spec=method,
        model_cfg=ModelConfig(backbone="small_cnn", embedding_dim=16, options={"width": 8}),
        train_cfg=TrainConfig(steps=steps, eval_every=steps, optimizer=OptimizerConfig(lr=5e-3),
                              classes_per_batch=8, images_per_class=4, augmentation="none"),
        eval_cfg=EvalConfig(ks=[1], batch_size=512), data=data, seed=0,
    )


def test_trainer_learns_from_eight_by_four_batches(glyphs):
    """MLRC's batch shape (8 classes × 4 images) with Symm+triplet must beat the untrained network."""
    from symm.evaluation import evaluate
    from symm.models import create_model
    from symm.training import embed, seed_everything

    seed_everything(0)  # the initial weights train_trial starts from
    untrained = create_model("small_cnn", embedding_dim=16, in_channels=1, width=8)
    before = evaluate(embed(untrained, glyphs["test"][0], 512), glyphs["test"][1], ks=[1], seed=0)["recall_at_1"]
    result = run(glyphs, steps=200)
    assert result.test["recall_at_1"] > before + 0.01, (before, result.test["recall_at_1"])
    assert 0.0 < result.history[-1]["train"]["synthetic_share"] <= 1.0


def test_the_method_logs_the_mean_of_its_sub_batches():
    torch.manual_seed(0)
    method = create_method("metric_loss", loss="npair", negatives="symm", symm_mode="point4")
    model = torch.nn.Linear(5, 4)
    method.configure_optimizers(model, OptimizerConfig(lr=1e-3))
    labels = shuffled_batch(4, 4, seed=2)
    images = torch.randn(16, 5)
    reference_model = copy.deepcopy(model)
    logs = method.training_step(model, images, labels, step=0)
    with torch.no_grad():
        expected = mean_over_pair_sub_batches(create_loss("npair", negatives="symm", symm_mode="point4"),
                                              reference_model(images), labels)[0]
    assert logs["loss"] == pytest.approx(expected.item()) and 0.0 <= logs["synthetic_share"] <= 1.0
