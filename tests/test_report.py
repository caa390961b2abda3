"""The report stage on a fixture of known results.

References: scipy.stats (t interval, paired t-test) recomputed here on the fixture's numbers;
the paper's numbers file for rows that have them; Python's html.parser for the offline check.
"""
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from scipy import stats

from pipelines import report

RNG = np.random.default_rng(0)
METHODS = ["npair", "symm_npair", "triplet"]


def record(dataset, method, seed, r1):
    test = {"recall_at_1": r1, "recall_at_2": r1 + 0.05, "nmi": r1 / 2, "f1": r1 / 3, "map_at_r": r1 / 4}
    return {"dataset": dataset, "method": method, "seed": seed, "status": "ok", "error": None, "test": test,
            "best_val": {}, "best_step": 10, "mlflow_run_id": f"run-{dataset}-{method}-{seed}",
            "history": [{"epoch": 1, "step": 10, "val/recall_at_1": r1 - 0.1, "train/synthetic_share": 0.5}]}


@pytest.fixture
def sweep(tmp_path):
    values = {(d, m, s): float(RNG.uniform(0.4, 0.8)) for d in ("glyphs", "cub") for m in METHODS for s in range(4)}
    trials = [record(d, m, s, v) for (d, m, s), v in values.items()]
    trials.append({**record("cub", "triplet", 9, 0.5), "status": "error", "error": "boom", "test": {}})
    summary = {"sweep": "sweep-test", "code_version": "abc", "data_hashes": {"glyphs": "h1", "cub": "h2"},
               "mlflow_tracking_uri": "sqlite:///nowhere.db", "experiment": "e", "parent_run_id": "p", "trials": trials}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(summary))
    assert report.main(["--sweep", str(path), "--out", str(tmp_path / "out"), "--no-mlflow"]) == 0
    return values, tmp_path / "out"


def test_means_and_intervals_match_scipy(sweep):
    values, out = sweep
    metrics = json.loads((out / "metrics.json").read_text())
    r1 = np.array([values[("cub", "npair", s)] for s in range(4)])
    assert metrics["cub"]["npair"]["recall_at_1"] == pytest.approx(r1.mean())
    low, high = stats.t.interval(0.95, len(r1) - 1, loc=r1.mean(), scale=stats.sem(r1))
    assert report.confidence_interval(r1) == pytest.approx((high - low) / 2)
    text = (out / "results.md").read_text()
    assert f"| npair | 4 | {100 * r1.mean():.1f} ± {100 * (high - low) / 2:.1f} |" in text


def test_paired_comparison_matches_scipy_ttest_rel(sweep):
    values, out = sweep
    symm = [values[("glyphs", "symm_npair", s)] for s in range(4)]
    base = [values[("glyphs", "npair", s)] for s in range(4)]
    expected = stats.ttest_rel(symm, base)
    rows = report.paired_comparisons(json.loads((out.parent / "sweep.json").read_text())["trials"], "glyphs")
    row = next(r for r in rows if r["method"] == "symm_npair" and r["metric"] == "recall_at_1")
    assert row["baseline"] == "npair" and row["n"] == 4
    assert row["p"] == pytest.approx(expected.pvalue)
    assert row["diff"] == pytest.approx(np.mean(np.subtract(symm, base)))
    assert not any(r["method"] == "triplet" for r in rows)  # no symm_triplet in the fixture: nothing to pair


def test_paper_numbers_beside_comparable_rows_and_labels_elsewhere(sweep):
    _, out = sweep
    text = (out / "results.md").read_text()
    cub = text[text.index("## cub"):text.index("## glyphs")]
    assert "paper R@1" in cub
    assert "| symm_npair | 4 |" in cub and "| 55.9 |" in cub  # the paper's CUB Symm+N-pair R@1
    glyphs = text[text.index("## glyphs"):text.index("## all trials")]
    assert "not comparable to the paper" in glyphs and "paper R@1" not in glyphs
    assert "| cub | triplet | 9 | error |" in text  # failed trials are listed, not dropped silently


class ResourceFinder(HTMLParser):
    def __init__(self):
        super().__init__()
        self.external = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("data:", "#")):
                self.external.append((tag, value))
        if tag == "img":
            self.images += 1
        if tag in ("script", "link"):
            self.external.append((tag, dict(attrs)))


def test_index_html_is_self_contained(sweep):
    _, out = sweep
    finder = ResourceFinder()
    finder.feed((out / "index.html").read_text())
    assert finder.external == []
    assert finder.images == 4


def test_best_on_test_rows_are_labelled_as_a_diagnostic(tmp_path):
    """Test-selected trials never pass for fair rows: their own label, warning, key and no paper delta."""
    trials = [record("cub", m, s, 0.5 + 0.01 * s) for m in ("npair", "symm_npair") for s in range(2)]
    trials += [{**record("cub", m, s, 0.6), "selection": "best_on_test_diagnostic"} for m in ("npair", "symm_npair")
               for s in range(2)]
    summary = {"sweep": "s", "code_version": "c", "data_hashes": {"cub": "h"}, "mlflow_tracking_uri": "sqlite:///x.db",
               "experiment": "e", "parent_run_id": "p", "trials": trials}
    (tmp_path / "sweep.json").write_text(json.dumps(summary))
    assert report.main(["--sweep", str(tmp_path / "sweep.json"), "--out", str(tmp_path / "out"), "--no-mlflow"]) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    label = "npair [best-on-test diagnostic]"
    assert "**4 trial(s) selected their checkpoint on the TEST split**" in text
    assert f"| {label} | 2 |" in text and "| npair | 2 |" in text
    assert f"| symm_{label} | {label} | R@1 |" in text  # paired only with its own kind
    assert f"| symm_{label} | 2 | 60.0 ± 0.0 |" in text and "| 55.9 | +4.1 |" not in text  # no paper delta
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["cub"]) == {"npair", "symm_npair", label, f"symm_{label}"}
