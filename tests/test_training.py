"""The single-trial trainer: seeded, selects on validation only, resumes exactly.

Data: scikit-learn's bundled digits (8×8), split by class like a zero-shot benchmark.
"""
import pytest
import torch
from sklearn.datasets import load_digits

from symm.config import EvalConfig, ModelConfig, OptimizerConfig, TrainConfig
from symm.training import train_trial

METHOD = {"kind": "metric_loss", "options": {"loss": "npair", "negatives": "symm", "symm_mode": "official"}}


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits(return_X_y=True)
    images = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(labels)

    def take(classes):
        mask = torch.isin(labels, torch.tensor(classes))
        return images[mask], labels[mask]

    return {"train": take([0, 1, 2, 3, 4, 5]), "val": take([6, 7]), "test": take([8, 9])}


def run(digits, steps=30, eval_every=10, seed=0, **kw):
    return train_trial(
        method_spec=METHOD,
        model_cfg=ModelConfig(backbone="small_cnn", embedding_dim=16, options={"width": 8}),
        train_cfg=TrainConfig(steps=steps, eval_every=eval_every, optimizer=OptimizerConfig(lr=1e-3), classes_per_batch=4, augment=True),
        eval_cfg=EvalConfig(ks=[1, 2], batch_size=256),
        data=digits, seed=seed, **kw,
    )


def test_same_seed_same_result_and_other_seed_differs(digits):
    a, b, c = run(digits), run(digits), run(digits, seed=1)
    assert a.test == b.test and a.history == b.history
    assert a.history != c.history


def test_reports_each_epoch_and_keeps_the_best_validation_weights(digits):
    events = []
    result = run(digits, on_eval=events.append)
    assert [e.step for e in events] == [10, 20, 30]
    assert {"loss", "synthetic_share"} <= set(events[0].train)
    best = max(events, key=lambda e: e.val["recall_at_1"])  # first best wins ties
    assert result.best_step == best.step and result.best_val == best.val
    assert set(result.test) >= {"recall_at_1", "recall_at_2", "nmi", "f1"}


def test_resume_from_a_checkpoint_continues_exactly(digits):
    straight = run(digits, steps=30)
    saved = {}
    run(digits, steps=30, on_eval=lambda e: saved.setdefault(e.step, e.checkpoint()) if e.step == 20 else None)
    resumed = run(digits, steps=30, resume_state=saved[20])
    assert resumed.history == straight.history
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)


def test_missing_split_is_a_clear_error(digits):
    with pytest.raises(ValueError, match="no 'val' split"):
        run({"train": digits["train"], "test": digits["test"]})
