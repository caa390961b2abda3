"""The paper's analyses: their library parts against brute force, and every analysis end to end.

References: numpy re-derivations (mirror image 2·proj − x, cosine nearest neighbour by explicit
loops) for the synthetic-query Recall@1; a brute-force numpy k-th hardest N-pair logit for the
hardness analysis' loss; real runs of `python -m pipelines.analyses all --smoke-test` on a tiny
glyph dataset (24 characters, ≤ 12 fonts per class) with a real MLflow sqlite store.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from symm.analysis.synthetic_recall import mirror_pairs, synthetic_label_scores

REPO = Path(__file__).resolve().parent.parent


def _brute_nn_hit(query, query_label, gallery, labels, excluded) -> bool:
    best, best_j = -np.inf, -1
    for j in range(len(gallery)):  # first maximum wins ties
        if j in excluded:
            continue
        sim = float(query @ gallery[j] / (np.linalg.norm(query) * np.linalg.norm(gallery[j])))
        if sim > best:
            best, best_j = sim, j
    return labels[best_j] == query_label


def test_synthetic_query_recall_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), [6, 5, 4, 7, 2])  # odd class sizes leave one item unpaired
    centres = rng.normal(size=(5, 6))
    emb = centres[labels] + 0.9 * rng.normal(size=(len(labels), 6))
    scores = synthetic_label_scores(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels), seed=3)
    pairs = mirror_pairs(torch.tensor(labels), seed=3).numpy()
    assert sorted(np.bincount(labels[pairs[:, 0]], minlength=5)) == sorted([3, 2, 2, 3, 1])
    assert (labels[pairs[:, 0]] == labels[pairs[:, 1]]).all() and len(set(pairs.ravel())) == pairs.size

    def mirror(x, axis):  # numpy re-derivation: 2·proj_axis(x) − x
        return 2 * (x @ axis) / (axis @ axis) * axis - x

    synthetic = [_brute_nn_hit(mirror(emb[k], emb[l]), labels[k], emb, labels, {k, l})
                 for a, b in pairs for k, l in ((a, b), (b, a))]
    original = [_brute_nn_hit(emb[i], labels[i], emb, labels, {i}) for i in range(len(labels))]
    partner = [_brute_nn_hit(emb[k], labels[k], emb, labels, {k, l}) for a, b in pairs for k, l in ((a, b), (b, a))]
    assert scores["n_synthetic"] == 2 * len(pairs)
    assert scores["synthetic_recall_at_1"] == pytest.approx(np.mean(synthetic), abs=1e-12)
    assert scores["original_recall_at_1"] == pytest.approx(np.mean(original), abs=1e-12)
    assert scores["original_recall_at_1_partner_excluded"] == pytest.approx(np.mean(partner), abs=1e-12)
    assert 0 < scores["synthetic_recall_at_1"] < 1  # the data is hard enough for the check to mean something


def test_hardness_analysis_builds_the_kth_hardest_loss() -> None:
    """The analysis' method spec gives the N-pair loss over the brute-force k-th most similar of S_j."""
    from pipelines.analyses import hardness
    from pipelines.analyses.common import Context
    from symm.methods import create_method

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    ctx = Context(name="hardness", params_path=REPO / "params.yaml", raw=raw, dataset="glyphs", out_dir=Path("."),
                  smoke_test=True)
    torch.manual_seed(0)
    emb = torch.randn(12, 5, dtype=torch.float64)
    labels = torch.arange(6).repeat_interleave(2)
    a, p = emb[0::2].numpy(), emb[1::2].numpy()
    mirror = lambda x, axis: 2 * (x * axis).sum(1, keepdims=True) / (axis * axis).sum(1, keepdims=True) * axis - x
    sets = [a, p, mirror(p, a), mirror(a, p)]  # a' = p mirrored about a, p' = a mirrored about p
    for k in (1, 2, 3, 4):
        spec = hardness.method_spec(ctx, hardness.Config(), "point4", k)
        loss = create_method(spec["kind"], **spec["options"]).loss
        logits = np.empty((6, 6))
        for i in range(6):
            for j in range(6):
                logits[i, j] = a[i] @ p[i] if i == j else sorted((a[i] @ s[j] for s in sets), reverse=True)[k - 1]
        ce = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
        expected = ce + 0.002 / 4 * ((a**2).sum(1).mean() + (p**2).sum(1).mean())
        assert loss(emb, labels).item() == pytest.approx(expected, rel=1e-9), k


@pytest.fixture(scope="module")
def tiny_glyphs(tmp_path_factory) -> Path:
    """24 characters (12 test, 9 train, 3 validation classes), at most 12 fonts per class."""
    from symm.data.glyphs import DEFAULT_CHARACTERS, prepare_glyphs

    out = tmp_path_factory.mktemp("tiny_glyphs")
    prepare_glyphs(out, characters=DEFAULT_CHARACTERS[:24], val_classes=3, progress=False)
    for split in ("train", "val", "test"):
        with np.load(out / f"{split}.npz") as data:
            images, labels = data["images"], data["labels"]
        keep = np.concatenate([np.flatnonzero(labels == c)[:12] for c in np.unique(labels)])
        np.savez(out / f"{split}.npz", images=images[keep], labels=labels[keep])
    return out


EXPECTED = {  # analysis -> (table columns that must be there, figures)
    "alpha_beta": ({"form", "alpha", "beta", "recall_at_1", "nmi"}, ["heatmap.png"]),
    "hardness": ({"symm_mode", "hardness_rank", "recall_at_1", "nmi", "synthetic_share"}, ["hardness.png"]),
    "synthetic_labels": ({"epoch", "original_recall_at_1", "synthetic_recall_at_1"}, ["synthetic_labels.png"]),
    "feature_ratio": ({"loss", "symm_mode", "share_first_10pct", "share_last_10pct"}, ["feature_ratio.png"]),
    "embedding_maps": ({"step", "points", "synthetic"}, ["maps.png", "maps.gif"]),
    "training_cost": ({"variant", "step_ms", "step_ratio", "loss_ms", "loss_ratio", "paper_loss_ratio",
                       "step_saved_mb", "similarity_ratio"}, ["training_cost.png"]),
}


@pytest.fixture(scope="module")
def smoke_run(tiny_glyphs, tmp_path_factory):
    from pipelines.analyses.__main__ import main

    tmp = tmp_path_factory.mktemp("analyses")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["execution"]["mlflow_tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = main(["all", "--smoke-test", "--params", str(tmp / "params.yaml"), "--data-dir", str(tiny_glyphs),
                     "--out", str(tmp / "out")])
    assert code == 0
    return tmp


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_analysis_writes_its_table_and_figure(smoke_run, name) -> None:
    columns, figures = EXPECTED[name]
    out = smoke_run / "out" / name
    with (out / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and columns <= set(rows[0])
    assert len(json.loads((out / "table.json").read_text())) == len(rows)
    assert (out / "table.md").read_text().count("\n") == len(rows) + 2
    for figure in figures:
        assert (out / figure).stat().st_size > (2_000 if figure.endswith(".gif") else 5_000)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke_test"] and summary["data_hash"] and summary["code_version"]


def test_results_mean_what_they_say(smoke_run) -> None:
    out = smoke_run / "out"
    steps = json.loads((out / "feature_ratio" / "per_step.json").read_text())
    assert len([r for r in steps if r["loss"] == "npair"]) == 6  # one share per training step (smoke: 6 steps)
    assert all(0.0 <= r["synthetic_share"] <= 1.0 for r in steps)
    labels = json.loads((out / "synthetic_labels" / "table.json").read_text())
    assert [r["step"] for r in labels] == [3, 6]
    from PIL import Image

    assert Image.open(out / "embedding_maps" / "maps.gif").n_frames == 2
    cost = json.loads((out / "training_cost" / "table.json").read_text())
    assert {r["similarity_ratio"] for r in cost} == {1.0, 16.0} and {r["points_ratio"] for r in cost} == {1.0, 2.0}
    ab = json.loads((out / "alpha_beta" / "table.json").read_text())
    assert {(r["form"], r["alpha"], r["beta"]) for r in ab} == {(f, a, 0.5) for f in ("paper", "official") for a in (1.5, 2.0)}


def test_one_mlflow_parent_run_per_analysis_with_its_trials(smoke_run) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_run / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("symm-dml").experiment_id])
    parents = {r.data.tags["analysis"]: r for r in runs if r.data.tags.get("kind") == "analysis"}
    assert set(parents) == set(EXPECTED)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents["hardness"].info.run_id]
    assert len(children) == 4 and all("test/recall_at_1" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(parents["alpha_beta"].info.run_id, "analyses/alpha_beta")}
    assert {"analyses/alpha_beta/table.md", "analyses/alpha_beta/heatmap.png"} <= artifacts


def test_a_bad_analysis_setting_is_a_clear_error(tmp_path, capsys) -> None:
    from pipelines.analyses.__main__ import main

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["analyses"]["hardness"]["rankz"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["hardness", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "analyses.hardness" in capsys.readouterr().err
