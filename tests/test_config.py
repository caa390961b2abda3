"""params.yaml validation: bad input fails before any compute with a message naming the fix."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.prepare import prepare
from pipelines.settings import load_execution
from symm.config import parse_science_params

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid(params):
    science = parse_science_params(params)
    assert {"npair", "symm_npair", "angular", "symm_angular", "triplet", "triplet_hardest", "triplet_semihard",
            "symm_triplet", "symm_triplet_semihard", "lifted", "symm_lifted"} <= set(science.sweep.methods)
    assert len(science.sweep.seeds) >= 3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["sweep"]["methods"].append("magic"), "sweep.methods lists 'magic'"),
        (lambda p: p["model"].update(backbone="resnet9000"), "unknown backbone 'resnet9000'"),
        (lambda p: p["recipes"]["glyphs"]["train"].pop("steps"), r"recipes.glyphs is invalid:\n  - missing key 'train.steps'"),
        (lambda p: p["train"].update(stpes=3), r"unknown key 'train.stpes' \(typo\?\); allowed here: .*steps"),
        (lambda p: p["recipes"]["paper"]["train"].update(optimiser={}), r"recipes.paper is invalid:\n  - unknown key 'train.optimiser'"),
        (lambda p: p.update(recipe="papr"), r"recipe 'papr' is not defined; defined recipes: \['glyphs', 'mlrc', 'paper'\]"),
        (lambda p: p["train"].update(augmentation="official"), "'official' is an image-benchmark preset but 'glyphs'"),
        (lambda p: p["train"].update(images_per_class=4), r"methods \[.daml_npair., .daml_triplet., .hdml_npair., .hdml_triplet.\] \(DAML/HDML\) generate from N-pair batches"),
        (lambda p: p["data"]["cub"].update(augmentation="official"), "data.cub.augmentation is not read"),
        (lambda p: p["eval"].update(selection="best_on_test"), "'eval.selection'"),
        (lambda p: p["methods"]["npair"]["options"].update(loss="nope"), "methods.npair: unknown loss 'nope'"),
        (lambda p: p["methods"]["npair"]["options"].update(margn=1), r"methods.npair: unknown option\(s\) \['margn'\]"),
        (lambda p: p["methods"]["npair"].update(kind="alchemy"), "unknown method kind 'alchemy'"),
        (lambda p: p["train"].update(optimizer={"lr": -1}), "'train.optimizer.lr'"),
        (lambda p: p["train"].update(optimizer={"name": "adagrad"}), "'train.optimizer.name'"),
        (lambda p: p["train"].update(optimizer={"name": "sgd", "weight_decay_mode": "decoupled"}),
         "'decoupled' is defined for adam"),
        (lambda p: p["sweep"]["datasets"].append("cub"), "sweep.datasets lists 'cub'"),
    ],
)
def test_bad_params_raise_a_clear_error(params, mutate, message):
    bad = copy.deepcopy(params)
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        parse_science_params(bad)


def test_recipe_is_resolved_with_overrides(params):
    """Preset values, deep-merged with the top-level overrides; the other presets stay valid."""
    params["recipe"] = "paper"
    params["train"] = {"steps": 2000, "optimizer": {"lr": 2e-4}}
    params["sweep"]["datasets"] = params["datasets"] = ["cub"]
    science = parse_science_params(params)
    assert science.recipe == "paper" and science.model.backbone == "googlenet" and science.model.embedding_dim == 512
    assert science.train.steps == 2000 and science.train.optimizer.lr == 2e-4
    assert science.train.optimizer.weight_decay == 5e-3 and science.train.optimizer.schedule.every == 5000
    assert science.train.augmentation == "official" and science.train.classes_per_batch == 64


def test_dataset_without_prepare_rule(tmp_path, params):
    params["data"]["omniglot"] = {}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="no prepare rule for dataset .omniglot.; known datasets: .*glyphs"):
        prepare("omniglot", tmp_path / "out", path)
    # the CLI turns it into a one-line error and exit code 2, not a traceback
    cli = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--dataset", "omniglot", "--params", str(path),
                          "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 2 and "no prepare rule for dataset 'omniglot'" in cli.stderr
    assert not (tmp_path / "out").exists()


def test_sweep_rejects_bad_params_before_starting_ray(tmp_path, params):
    params["sweep"]["methods"] = ["npair", "symm_npiar"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cli = subprocess.run([sys.executable, "-m", "pipelines.sweep", "--params", str(path), "--out", str(tmp_path / "s.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert "sweep.methods lists 'symm_npiar'" in cli.stderr
    assert "ray" not in cli.stderr.lower()  # failed before Ray was imported or started


def test_execution_settings_take_environment_overrides(tmp_path, params, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("SYMM_GPUS_PER_TRIAL", "0.5")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    settings = load_execution(path)
    assert settings.ray_address == "ray://head:10001"
    assert settings.gpus_per_trial == 0.5
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5555"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert load_execution(path).mlflow_tracking_uri.startswith("sqlite:////")  # absolute path
