"""The fair search mode's pieces: settings validation, overrides, selection on validation only.

References: hand-built params dicts and result objects (the expected values are written out);
Ray Tune's own search-space types for the conversion.
"""
from types import SimpleNamespace

import pytest

from pipelines.hpo import apply_overrides, best_overrides, load_hpo, search_space
from pipelines.settings import REPO_ROOT, load_science, read_params


def test_default_params_have_hpo_off_and_still_validate():
    raw = read_params(REPO_ROOT / "params.yaml")
    hpo = load_hpo(raw)
    assert hpo.enabled is False  # off by default
    load_science(REPO_ROOT / "params.yaml")  # the hpo section does not upset the science checks


@pytest.mark.parametrize("space, message", [
    ({"train.lr": {"lognormal": [1, 2]}}, "must be one of"),
    ({"eval.batch_size": {"choice": [1, 2]}}, "only train"),
])
def test_bad_search_space_is_named(space, message):
    with pytest.raises(ValueError, match=message):
        load_hpo({"hpo": {"space": space}})


def test_unknown_hpo_key_is_an_error():
    with pytest.raises(ValueError, match="trial_per_method"):
        load_hpo({"hpo": {"trial_per_method": 3}})


def test_overrides_set_dotted_paths_and_the_searched_methods_option_only():
    science = {"train": {"lr": 0.001, "steps": 10}, "methods": {"triplet": {"kind": "metric_loss",
               "options": {"loss": "triplet"}}, "npair": {"kind": "metric_loss", "options": {"loss": "npair"}}}}
    out = apply_overrides(science, "triplet", {"train.lr": 0.01, "method.margin": 0.3})
    assert out["train"] == {"lr": 0.01, "steps": 10}
    assert out["methods"]["triplet"]["options"] == {"loss": "triplet", "margin": 0.3}
    assert out["methods"]["npair"]["options"] == {"loss": "npair"}
    assert science["train"]["lr"] == 0.001  # the input is not modified


def test_search_space_uses_tune_domains():
    from ray.tune.search.sample import Categorical, Float

    space = search_space({"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.weight_decay": {"choice": [0.0, 1e-4]}})
    assert isinstance(space["train.lr"], Float) and isinstance(space["train.weight_decay"], Categorical)
    assert space["train.lr"].lower == 1e-4 and space["train.lr"].upper == 1e-2


def test_selection_uses_validation_never_test():
    def result(lr, val, test=None, error=None):
        metrics = {"best_val/recall_at_1": val}
        if test is not None:
            metrics["test/recall_at_1"] = test
        return SimpleNamespace(config={"overrides": {"train.lr": lr}}, metrics=metrics, error=error)

    results = [result(0.1, 0.50, test=0.99), result(0.01, 0.70, test=0.10), result(0.001, 0.90, error="boom")]
    assert best_overrides(results, "recall_at_1") == ({"train.lr": 0.01}, 0.70)
    with pytest.raises(RuntimeError, match="every search trial failed"):
        best_overrides([result(0.1, 0.5, error="x")], "recall_at_1")
