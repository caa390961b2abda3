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
METHODS = ["npair", "symm_npair", "triplet", "newmethod_npair"]  # the last one: unknown to the paper
SPECS = {"npair": {"kind": "metric_loss", "options": {"loss": "npair", "negatives": "none"}},
         "symm_npair": {"kind": "metric_loss", "options": {"loss": "npair", "negatives": "symm"}},
         "triplet": {"kind": "metric_loss", "options": {"loss": "triplet", "negatives": "none"}},
         "newmethod_npair": {"kind": "generator", "options": {"loss": "npair"}}}


def record(dataset, method, seed, r1):
    test = {"recall_at_1": r1, "recall_at_2": r1 + 0.05, "nmi": r1 / 2, "f1": r1 / 3, "map_at_r": r1 / 4}
    return {"dataset": dataset, "method": method, "seed": seed, "status": "ok", "error": None, "test": test,
            "best_val": {}, "best_step": 10, "mlflow_run_id": f"run-{dataset}-{method}-{seed}",
            "history": [{"epoch": 1, "step": 10, "val/recall_at_1": r1 - 0.1, "train/synthetic_share": 0.5}]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    values = {(d, m, s): float(RNG.uniform(0.4, 0.8)) for d in ("glyphs", "cub") for m in METHODS for s in range(4)}
    trials = [record(d, m, s, v) for (d, m, s), v in values.items()]
    trials.append({**record("cub", "triplet", 9, 0.5), "status": "error", "error": "boom", "test": {}})
    summary = {"sweep": "sweep-test", "code_version": "abc", "data_hashes": {"glyphs": "h1", "cub": "h2"},
               "mlflow_tracking_uri": "sqlite:///nowhere.db", "experiment": "e", "parent_run_id": "p", "trials": trials,
               "model": {"backbone": "small_cnn", "pretrained": None}, "selection": {"split": "val"},
               "methods": SPECS}
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
    rows = report.paired_comparisons(json.loads((out.parent / "sweep.json").read_text())["trials"], "glyphs", SPECS)
    row = next(r for r in rows if r["method"] == "symm_npair" and r["metric"] == "recall_at_1")
    assert row["baseline"] == "npair" and row["n"] == 4
    assert row["t"] == pytest.approx(expected.statistic) and row["p"] == pytest.approx(expected.pvalue)
    text = (out / "results.md").read_text()
    assert f"| {expected.statistic:.2f} | {expected.pvalue:.3f} |" in text
    assert row["diff"] == pytest.approx(np.mean(np.subtract(symm, base)))
    assert not any(r["method"] == "triplet" for r in rows)  # no symm_triplet in the fixture: nothing to pair
    # every non-Symm method on the same loss is a baseline (here a generator method unknown to the paper)
    assert {r["baseline"] for r in rows} == {"npair", "newmethod_npair"}
    other = next(r for r in rows if r["baseline"] == "newmethod_npair" and r["metric"] == "recall_at_1")
    assert other["p"] == pytest.approx(stats.ttest_rel(symm, [values[("glyphs", "newmethod_npair", s)] for s in range(4)]).pvalue)
    # without recorded specs: the name rule (symm_X vs X)
    assert {r["baseline"] for r in report.paired_comparisons(json.loads((out.parent / "sweep.json").read_text())["trials"],
                                                             "glyphs")} == {"npair"}


def test_paper_numbers_beside_comparable_rows_and_labels_elsewhere(sweep):
    _, out = sweep
    text = (out / "results.md").read_text()
    cub = text[text.index("## cub"):text.index("## glyphs")]
    assert "paper R@1" in cub
    assert "| symm_npair | 4 |" in cub and "| 55.9 |" in cub  # the paper's CUB Symm+N-pair R@1
    glyphs = text[text.index("## glyphs"):text.index("## all trials")]
    assert "Not comparable to the paper" in glyphs and "paper R@1" not in glyphs
    assert "| cub | triplet | 9 | error |" in text  # failed trials are listed, not dropped silently


def test_beside_the_paper_every_metric_and_no_published_number_label(sweep):
    values, out = sweep
    text = (out / "results.md").read_text()
    cub = text[text.index("## cub"):text.index("## glyphs")]
    beside = cub[cub.index("### Beside the paper"):]
    assert "| NMI |" not in beside.splitlines()[0]
    ours = 100 * np.mean([values[("cub", "symm_npair", s)] for s in range(4)])
    nmi = 100 * np.mean([values[("cub", "symm_npair", s)] / 2 for s in range(4)])
    row = next(line for line in beside.splitlines() if line.startswith("| symm_npair |"))
    assert f"{ours:.1f} vs 55.9 ({ours - 55.9:+.1f})" in row  # paper's CUB Symm+N-pair R@1
    assert f"{nmi:.1f} vs 63.6 ({nmi - 63.6:+.1f})" in row  # and NMI
    assert "– vs 78.3" in row  # R@4: published, but not measured in the fixture
    unknown = next(line for line in beside.splitlines() if line.startswith("| newmethod_npair |"))
    assert report.NO_PUBLISHED in unknown and "vs" not in unknown
    main_row = next(line for line in cub.splitlines() if line.startswith("| newmethod_npair | 4 |"))
    assert main_row.rstrip(" |").endswith(f"{report.NO_PUBLISHED} | –")


def test_not_comparable_setups_are_labelled(sweep):
    _, out = sweep
    text = (out / "results.md").read_text()
    cub = text[text.index("## cub"):text.index("## glyphs")]
    assert "Not comparable to the paper:" in cub and "other backbone: small_cnn" in cub and "no ImageNet weights" in cub
    glyphs = text[text.index("## glyphs"):text.index("## all trials")]
    assert "embedded glyph dataset" in glyphs
    paper = {"datasets": {"cub": {}}}
    same = {"model": {"backbone": "googlenet", "pretrained": "imagenet"}, "selection": {"split": "val"}}
    assert report.not_comparable_reasons("cub", same, paper) == []
    on_test = {**same, "selection": {"split": "test"}}
    assert any("best-on-test diagnostic" in r for r in report.not_comparable_reasons("cub", on_test, paper))
    assert report.not_comparable_reasons("sop", {}, paper) == ["the paper has no numbers for this dataset",
                                                               "backbone not recorded in the sweep"]


class ResourceFinder(HTMLParser):
    """Everything in a page that a browser would fetch: src/href/srcset/poster, script, link, CSS url()/@import."""

    def __init__(self):
        super().__init__()
        self.external = []
        self.images = 0
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action") and value and not value.startswith(("data:", "#")):
                self.external.append((tag, value))
            if name == "style" and value and ("url(" in value or "@import" in value):
                self.external.append((tag, value))
        if tag == "img":
            self.images += 1
            assert dict(attrs)["src"].startswith("data:image/png;base64,")
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.external.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_data(self, data):
        if self._in_style and ("url(" in data or "@import" in data):
            self.external.append(("style", data))


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


def test_symm_is_paired_with_the_generator_baselines_on_its_base_loss():
    """Reference: the method specs as params.yaml writes them (DAML/HDML name their loss base_loss)."""
    from pipelines.report import baselines_of

    specs = {"npair": {"kind": "metric_loss", "options": {"loss": "npair", "negatives": "none"}},
             "symm_npair": {"kind": "metric_loss", "options": {"loss": "npair", "negatives": "symm"}},
             "daml_npair": {"kind": "daml", "options": {"base_loss": "npair"}},
             "hdml_triplet": {"kind": "hdml", "options": {"base_loss": "triplet"}}}
    assert baselines_of("symm_npair", list(specs), specs) == ["npair", "daml_npair"]
