"""Screenshots of the report and of the MLflow run comparison, taken with headless Chromium.

    python -m pipelines.screenshots [--db mlflow.db] [--report reports/index.html] [--out docs/images]

Starts a private `mlflow server` on loopback over a copy of the tracking database, opens the
experiment and the comparison of the latest sweep's child runs, checks that every method's run
and its test/recall_at_1 are on the page, and saves PNGs. Needs Debian's `chromium` and
`chromium-driver` (`apt-get install -y --no-install-recommends chromium chromium-driver`).
The browser test (tests/test_pipeline_e2e.py) uses the same functions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.settings import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Flags measured to work headless in containers (stack-notes "Browser"); --user-data-dir is added per run.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")
METRIC = "test/recall_at_1"
# The comparison's metrics grid: a virtualised name column (overflow hidden) and value grid.
grids_js = ("const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];"
            "const names = grids.find(g => getComputedStyle(g).overflowY === 'hidden');"
            "const values = grids.find(g => g !== names && getComputedStyle(g).overflowY !== 'hidden');")


def browser_missing() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install -y --no-install-recommends {package}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is pinned in requirements.txt)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(db: Path, workdir: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 over `db`; yields its URL and stops it by PID."""
    port = free_port()
    (workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(workdir / "mlflow-server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {workdir / 'mlflow-server.log'}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up after {timeout_s:.0f} s; see {workdir / 'mlflow-server.log'}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it forks a worker), SIGKILL after a grace period."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@contextmanager
def chromium(workdir: Path, width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """Headless Debian Chromium driven by selenium through /usr/bin/chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'chromium-profile'}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: Any, texts: list[str], timeout_s: float = 30.0) -> str:
    """Poll the rendered page until every text is visible in it; returns the page's text."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = driver.execute_script("return document.body ? document.body.innerText : ''")
        missing = [t for t in texts if t not in body]
        if not missing:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"not on the page after {timeout_s:.0f} s: {missing}; page text starts: {body[:800]!r}")
        time.sleep(0.5)


@dataclass
class Sweep:
    experiment_id: str
    parent_name: str
    runs: list[dict[str, Any]]  # child runs: run_id, run_name, method, seed, metric value


def latest_sweep(tracking_uri: str, experiment: str = "symm-dml", max_runs: int | None = None,
                 methods: list[str] | None = None) -> Sweep:
    """The newest sweep parent run and its child runs (first seed of each method if max_runs is set)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}; run the pipeline first")
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'", order_by=["attributes.start_time DESC"],
                                 max_results=1)
    if not parents:
        raise ValueError(f"experiment {experiment!r} has no sweep run; run the pipeline first")
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=1000)
    runs = [{"run_id": r.info.run_id, "run_name": r.info.run_name, "method": r.data.params.get("method"),
             "seed": int(r.data.params.get("seed", 0)), "value": r.data.metrics.get(METRIC)}
            for r in children if METRIC in r.data.metrics]
    runs.sort(key=lambda r: (r["seed"], r["method"]))
    if methods:  # the methods to show, in this order
        runs = sorted((r for r in runs if r["method"] in methods), key=lambda r: (r["seed"], methods.index(r["method"])))
    if max_runs is not None:  # one run per method (lowest seed) keeps the comparison readable
        seen: dict[str, dict[str, Any]] = {}
        for r in runs:
            seen.setdefault(r["method"], r)
        runs = list(seen.values())[:max_runs]
    if not runs:
        raise ValueError(f"sweep {parent.info.run_name} has no finished child run with {METRIC}")
    return Sweep(exp.experiment_id, parent.info.run_name, runs)


def compare_url(base: str, sweep: Sweep) -> str:
    runs = json.dumps([r["run_id"] for r in sweep.runs])
    return (f"{base}/#/compare-runs?runs={urllib.parse.quote(runs)}"
            f"&experiments={urllib.parse.quote(json.dumps([sweep.experiment_id]))}")


def show_comparison(driver: Any, base: str, sweep: Sweep, screenshot: Path | None = None,
                    timeout_s: float = 30.0) -> dict[str, str]:
    """Open the experiment, then the run comparison; returns {run name: its METRIC as displayed}.

    Fails unless the experiment page lists the sweep and the comparison shows every run's name
    and a METRIC value in that run's column.
    """
    driver.get(f"{base}/#/experiments/{sweep.experiment_id}/runs")  # the "Training runs" tab
    wait_for_text(driver, [sweep.parent_name], timeout_s)
    driver.get(compare_url(base, sweep))
    wait_for_text(driver, [METRIC, *(r["run_name"] for r in sweep.runs)], timeout_s)
    for label in ("Parameters - Show diff only", "Tags - Show diff only", "Close"):  # compact page, no side panel
        for button in driver.find_elements("css selector", f"button[aria-label='{label}']"):
            button.click()
    driver.execute_script(  # collapse the parallel-coordinates panel: runs, parameters and metrics on one screen
        "const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); let n;"
        "while ((n = w.nextNode())) if (n.textContent.trim() === 'Visualizations') { n.parentElement.click(); break; }")
    shown = dict(zip(_run_columns(driver, [r["run_name"] for r in sweep.runs]), _metric_row(driver, METRIC, timeout_s)))
    if screenshot is not None:
        # Let the metrics grid show every row it has rendered (its box is 300 px high), so
        # test/recall_at_1 is visible without scrolling it.
        driver.execute_script(
            grids_js + "for (const g of [names, values]) {"
            "  let h = 0; for (const c of g.querySelectorAll('[style*=top]')) h = Math.max(h, parseFloat(c.style.top) + 45);"
            "  g.style.height = h + 'px'; for (let e = g.parentElement, i = 0; i < 3; i++, e = e.parentElement)"
            "    e.style.height = 'auto'; }")
        time.sleep(0.5)
        driver.execute_script(  # page to the top (the page scrolls in an inner container), grids untouched
            "for (const e of document.querySelectorAll('*')) if (e.scrollTop > 0 && !e.classList.contains("
            "'ReactVirtualized__Grid')) e.scrollTop = 0;")
        time.sleep(0.5)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
    return shown


def mismatches(sweep: Sweep, shown: dict[str, str], tolerance: float = 6e-4) -> list[str]:
    """Runs whose displayed METRIC is missing or differs from the tracking store's value (UI rounds to 3 digits)."""
    bad = []
    for r in sweep.runs:
        text = shown.get(r["run_name"])
        try:
            ok = text is not None and abs(float(text) - r["value"]) <= tolerance
        except ValueError:
            ok = False
        if not ok:
            bad.append(f"{r['run_name']}: page shows {text!r}, store has {r['value']:.4f}")
    return bad


def _run_columns(driver: Any, names: list[str]) -> list[str]:
    """Run names in the left-to-right order of the comparison's columns."""
    lefts = driver.execute_script(
        "const out = {}; const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); let n;"
        "while ((n = w.nextNode())) { const t = n.textContent.trim();"
        "  if (arguments[0].includes(t) && !(t in out)) out[t] = n.parentElement.getBoundingClientRect().left; }"
        "return out;", names)
    missing = set(names) - set(lefts)
    if missing:
        raise AssertionError(f"runs not shown in the comparison: {sorted(missing)}")
    return sorted(names, key=lambda n: lefts[n])


def _metric_row(driver: Any, metric: str, timeout_s: float) -> list[str]:
    """The displayed values of one metric, left to right, from the comparison's metrics grid.

    The grid is virtualised: only the rows and columns in view plus an overscan exist in the DOM,
    and its name column does not stay aligned with a scrolled value grid in this MLflow version, so
    nothing is scrolled: the metric's row must be among the rendered ones (it is for the sweep's ~20
    metrics), and a run whose column is not rendered (many runs, narrow window) counts as missing.
    """
    find = (grids_js + "if (!names || !values) return {error: 'no metrics grid on the page'};"
            "const cell = [...names.querySelectorAll('[style*=top]')].find(c => c.innerText.trim() === arguments[0]);"
            "if (!cell) return {pending: true};"
            "const row = [...values.querySelectorAll('[style*=top]')].filter(c => c.style.top === cell.style.top)"
            "  .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left)).map(c => c.innerText.trim());"
            "return {row: row};")
    deadline = time.monotonic() + timeout_s
    while True:
        got = driver.execute_script(find, metric)
        if got.get("error"):
            raise AssertionError(f"run comparison: {got['error']}")
        if got.get("row"):
            return got["row"]
        if time.monotonic() > deadline:
            raise AssertionError(f"{metric} row not rendered in the comparison's metrics grid after {timeout_s:.0f} s")
        time.sleep(0.3)


def show_report(driver: Any, index_html: Path, screenshot: Path, height: int = 1600) -> str:
    """Render the self-contained report (file:// URL, no network) and screenshot its top."""
    driver.set_window_size(1400, height)
    driver.get(index_html.resolve().as_uri())
    text = wait_for_text(driver, ["Results", "mean ± 95% CI"], 15)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshot))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=REPO_ROOT / "mlflow.db", help="MLflow sqlite tracking database")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "reports" / "index.html")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images")
    parser.add_argument("--max-runs", type=int, default=6, help="runs in the comparison (one per method)")
    parser.add_argument("--methods", nargs="*", default=["npair", "symm_npair", "triplet", "symm_triplet",
                                                         "daml_npair", "hdml_npair"],
                        help="methods to compare, in this order (none given: every method)")
    args = parser.parse_args(argv)
    problem = browser_missing()
    for path, what in ((args.db, "run `dvc repro` first"), (args.report, "run `dvc repro` first")):
        if not path.exists():
            problem = problem or f"{path} not found: {what}"
    if problem:
        print(f"screenshots: error: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="symm-screenshots-") as tmp:
        work = Path(tmp)
        db = work / "mlflow.db"
        shutil.copy2(args.db, db)  # the server may migrate the schema: never touch the user's file
        try:
            sweep = latest_sweep(f"sqlite:///{db}", max_runs=args.max_runs, methods=args.methods)
        except ValueError as err:
            print(f"screenshots: error: {err}", file=sys.stderr)
            return 2
        with chromium(work) as driver:
            show_report(driver, args.report, args.out / "report.png")
            with mlflow_server(db, work) as url:
                driver.set_window_size(1500, 2000)
                shown = show_comparison(driver, url, sweep, args.out / "mlflow-compare.png")
        bad = mismatches(sweep, shown)
        if bad:
            print("screenshots: error: the comparison does not show the stored values: " + "; ".join(bad), file=sys.stderr)
            return 1
    print(f"screenshots: {args.out / 'report.png'} and {args.out / 'mlflow-compare.png'} "
          f"(sweep {sweep.parent_name}, {len(sweep.runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
