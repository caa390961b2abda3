"""The single-trial trainer: seeded, selects on validation only, resumes exactly.

Data: scikit-learn's bundled digits (8×8), split by class like a zero-shot benchmark.
"""
import pytest
import torch

from symm.config import EvalConfig, ModelConfig, OptimizerConfig, TrainConfig
from symm.training import train_trial

METHOD = {"kind": "metric_loss", "options": {"loss": "npair", "negatives": "symm", "symm_mode": "official"}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(digits, steps=30, eval_every=10, seed=0, **kw):
    return train_trial(
        method_spec=METHOD,
        model_cfg=ModelConfig(backbone="small_cnn", embedding_dim=16, options={"width": 8}),
        train_cfg=TrainConfig(steps=steps, eval_every=eval_every, optimizer=OptimizerConfig(lr=1e-3), classes_per_batch=4, augmentation="affine"),
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


def test_resume_through_a_checkpoint_file_is_exact(digits, tmp_path):
    """The in-memory path's checkpoint survives torch.save/load(weights_only=True) and resumes bit-exactly."""
    from symm.checkpoint import load_checkpoint, save_checkpoint

    straight = run(digits, steps=20)
    run(digits, steps=20, on_eval=lambda e: save_checkpoint(e.checkpoint(), tmp_path / "s.pt") if e.step == 10 else None)
    resumed = run(digits, steps=20, resume_state=load_checkpoint(tmp_path / "s.pt"))
    assert resumed.history == straight.history
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_best_on_test_is_only_a_labelled_diagnostic(digits):
    """Default: test metrics never reach selection; the diagnostic picks the best TEST step and says so."""
    fair = run(digits)
    assert fair.selection == "validation" and all("test_diagnostic" not in h for h in fair.history)
    diag = train_trial(
        method_spec=METHOD,
        model_cfg=ModelConfig(backbone="small_cnn", embedding_dim=16, options={"width": 8}),
        train_cfg=TrainConfig(steps=30, eval_every=10, optimizer=OptimizerConfig(lr=1e-3), classes_per_batch=4),
        eval_cfg=EvalConfig(ks=[1, 2], batch_size=256, selection="best_on_test_diagnostic"),
        data=digits, seed=0,
    )
    assert diag.selection == "best_on_test_diagnostic"
    test_r1 = [h["test_diagnostic"]["recall_at_1"] for h in diag.history]
    assert diag.best_step == diag.history[test_r1.index(max(test_r1))]["step"]
    assert diag.test["recall_at_1"] == max(test_r1)
    assert [h["val"] for h in diag.history] == [h["val"] for h in fair.history]  # same training, other pick


def test_a_search_trial_never_embeds_a_test_image(digits):
    """final_test=False (the fair search mode's trials): every embedding pass is on validation."""
    from symm.data.trial import InMemoryData

    data = InMemoryData(digits, augmentation="affine")
    seen = []
    embed = data.embed
    data.embed = lambda model, split, **kw: seen.append(split) or embed(model, split, **kw)
    searched = run(data, steps=20, final_test=False)
    assert seen == ["val", "val"] and searched.test == {} and searched.test_embeddings is None
    seen.clear()
    full = run(data, steps=20)
    assert seen == ["val", "val", "test"] and full.best_val == searched.best_val
    embeddings, labels = full.test_embeddings  # the final pass's, as scored
    assert embeddings.shape == (len(digits["test"][1]), 16) and torch.equal(labels, digits["test"][1])
