"""bench/loss_overhead's verdict over several runs (the numbers docs/benchmarks.md quotes)."""
import subprocess
import sys
from pathlib import Path

import pytest

from bench import loss_overhead

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ratios, verdict", [
    ([1.2, 1.5, 1.49], "met"),  # the target itself counts as within
    ([1.51, 1.6], "**not met**"),
    ([1.47, 1.52, 1.57], "borderline (1 of 3 within)"),
])
def test_verdict_counts_the_runs_within_the_target(ratios, verdict):
    assert loss_overhead.verdict(ratios, 1.5) == verdict


def test_target_ratios_are_cpu_time_ratios_against_the_base_and_against_pml():
    # (wall s, CPU s) medians as measure() returns them; reference: the divisions written out
    medians = {"npair": (9.0, 2.0), "symm_npair official": (1.0, 3.4), "symm_npair pair16": (1.0, 4.2),
               "PML npair": (1.0, 4.0)}
    ratios = loss_overhead.target_ratios(medians)
    assert ratios == {"symm_npair official": (3.4 / 2.0, 1.5), "symm_npair pair16": (4.2 / 2.0, 2.0),
                      "npair vs PML": (2.0 / 4.0, 0.6)}


def test_verdict_table_has_one_line_per_row_and_size_in_run_order():
    runs = [{"N = 64, d = 512": {"npair": (1.0, 1.0), "symm_npair point4": (1.0, r)}} for r in (1.47, 1.52, 1.57)]
    lines = loss_overhead.verdict_table(runs)
    assert "| N = 64, d = 512 | symm_npair point4 | 1.470, 1.520, 1.570 | 1.470-1.570 | ≤ 1.5 |  | borderline (1 of 3 within) |" \
        in lines  # no products rows measured: no estimate
    assert sum(line.startswith("| N = 64") for line in lines) == 1


def test_runs_option_measures_in_separate_processes_and_reports_the_verdict(tmp_path):
    markdown = tmp_path / "benchmarks.md"
    run = subprocess.run([sys.executable, "-m", "bench.loss_overhead", "--runs", "2", "--repeats", "2", "--only", "contrastive",
                          "--markdown", str(markdown), "--plot", str(tmp_path / "verdict.png")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "run 2 of 2" in run.stderr
    text = markdown.read_text()
    assert "--runs 2" in text and "**Verdict over 2 runs**" in text
    line = next(l for l in text.splitlines() if l.startswith("| N = 256, d = 128 | symm_contrastive pair16 |"))
    assert len(line.split("|")[3].split(",")) == 2  # one ratio per run
    assert len(line.split("|")[6].split(",")) == 2  # one products estimate per run
    assert "Matrix products of each row's code path replayed alone" in text
    assert "loss_overhead results: begin" in text
    assert (tmp_path / "verdict.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_must_be_positive():
    run = subprocess.run([sys.executable, "-m", "bench.loss_overhead", "--runs", "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "--runs must be at least 1, got 0" in run.stderr


@pytest.mark.parametrize("products", [True, False])
def test_products_rows_replay_every_row_but_pml_unless_left_out(products):
    medians = loss_overhead.measure(4, 8, 1, "cpu", only="contrastive", products=products)
    losses = {name for name in medians if not name.startswith(("PML ", loss_overhead.PRODUCTS))}
    replayed = {name[len(loss_overhead.PRODUCTS):] for name in medians if name.startswith(loss_overhead.PRODUCTS)}
    assert losses and "PML contrastive" in medians
    assert replayed == (losses if products else set())


def _three_runs() -> list:
    """Three runs' medians (wall s, CPU s) at one size; reference: the divisions written out below."""
    return [{"N = 64, d = 512": {"npair": (1.0, 1.0), "symm_npair official": (1.0, r), "PML npair": (1.0, 2.0),
                                 "symm_npair official, torch node": (1.0, 3.0),
                                 loss_overhead.PRODUCTS + "npair": (1.0, 0.5),
                                 loss_overhead.PRODUCTS + "symm_npair official": (1.0, 0.8)}}
            for r in (1.47, 1.52, 1.57)]


def test_verdict_rows_carry_every_runs_ratio_target_and_products_estimate():
    rows = {item.row: item for item in loss_overhead.verdict_rows(_three_runs())}
    official = rows["symm_npair official"]
    assert official.ratios == pytest.approx((1.47, 1.52, 1.57)) and official.target == 1.5
    assert official.estimates == pytest.approx((1.0 - 0.5 + 0.8,) * 3)  # (base − base's products + its products) / base
    assert official.verdict == "borderline (1 of 3 within)" and official.status == "borderline"
    assert rows["npair vs PML"].ratios == pytest.approx((0.5,) * 3) and rows["npair vs PML"].verdict == "met"


def test_verdict_figure_draws_each_losss_own_rows_to_a_png(tmp_path):
    path = tmp_path / "figures" / "verdict.png"
    shown = loss_overhead.verdict_figure(_three_runs(), path, "test")
    assert [item.row for item in shown] == ["npair vs PML", "symm_npair official"]  # not the diagnostic torch-node row
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_several_runs():
    run = subprocess.run([sys.executable, "-m", "bench.loss_overhead", "--plot", "x.png"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "--plot draws the verdict over several runs" in run.stderr
