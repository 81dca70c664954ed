"""The dashboard and the report as a researcher sees them, in a real headless Chromium.

A tiny real sweep (synthetic data, 2 trials, in-process executor, its own local Ray
cluster) is run with `fl-sweep run`; `fl-sweep ui` serves it; Chromium renders the
experiment's runs page (MLflow's JS app, so the DOM is dumped after a virtual-time budget
that lets it fetch and render), the parent run's page and `report.html`, takes
screenshots, and the tests assert on the rendered text: the trial names, the metrics, the
description, no Markdown syntax. Chromium is Debian's `chromium` package (`.ci/run`
installs it where it can); without it these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run "
    "installs it when apt is usable)")
GRID = """\
name: browse
description: Browser test sweep — clipping off and on.
base:
  data: {source: synthetic, num_writers: 12, examples_per_writer: 20}
  fl: {rounds: 4, clients_per_round: 5, local_epochs: 1, checkpoint_every: 2}
  attack: {kind: model-replacement, fraction: 0.2, frequency: 2, num_tasks: 3}
grid:
  defense.norm_bound: [null, 2.0]
resources: {executor: in-process, cpus_per_trial: 1}
max_concurrent_trials: 2
"""
NAMES = ("M=off", "M=2")  # the trials' run names (their varied key, in the report's notation)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]


def fl_sweep(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from sweeper.cli import main; sys.exit(main(sys.argv[1:]))",
            *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_of(page: str) -> str:
    """The text a browser shows of an HTML document (tags, scripts and styles dropped)."""
    parts: list[str] = []

    class P(HTMLParser):
        skip = 0

        def handle_starttag(self, tag, attrs):
            self.skip += tag in ("style", "script")

        def handle_endtag(self, tag):
            self.skip -= tag in ("style", "script") and self.skip > 0

        def handle_data(self, d):
            if not self.skip:
                parts.append(d)

    P().feed(page)
    return " ".join(" ".join(parts).split())


def chromium(url: str, profile: Path, screenshot: Path | None = None, budget_s: int = 30) -> str:
    """The DOM after the page's scripts ran (`budget_s` of virtual time: MLflow fetches
    runs, then each chart's metric history), or a screenshot."""
    what = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                          f"--virtual-time-budget={budget_s * 1000}", *what, url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The finished tiny sweep, its report, and `fl-sweep ui` serving it."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("browser")
    (tmp / "grid.yaml").write_text(GRID)
    storage = tmp / "sweeps"
    run = subprocess.run(fl_sweep("run", str(tmp / "grid.yaml"), "--storage", str(storage),
                                  "--num-cpus", "2", "--object-store-mb", "150"),
                         cwd=tmp, env=env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    manifest = json.loads((storage / "browse" / "sweep.json").read_text())
    port = _free_port()
    log = open(tmp / "ui.log", "w")  # a file: the server's request log must never block on a pipe
    ui = subprocess.Popen(fl_sweep("ui", "browse", "--storage", str(storage), "--port", str(port)),
                          cwd=tmp, env=env(), stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        t0 = time.monotonic()
        while True:
            assert ui.poll() is None and time.monotonic() - t0 < 120, "the dashboard did not start"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield {"tmp": tmp, "storage": storage, "port": port, "manifest": manifest,
               "ui": ui, "run_out": run.stdout}
    finally:
        os.kill(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=10)
        log.close()


@needs_chromium
def test_experiment_page_shows_the_trials_and_their_curves(served):
    from sweeper.ui import landing_url

    lines = (served["tmp"] / "ui.log").read_text().splitlines()
    url = re.search(r"trials:\s+(http://\S+)", "\n".join(lines[:3])).group(1)  # as printed
    assert url == landing_url("127.0.0.1", served["port"], served["manifest"])
    text = text_of(chromium(url, served["tmp"] / "prof-exp"))
    chromium(url, served["tmp"] / "prof-exp", served["tmp"] / "dashboard.png")
    # the model-training runs page (not the GenAI traces overview) with the grid's
    # description, both trials listed by name (not hidden under a collapsed parent row)
    # and charts of their per-round metrics
    assert "Runs" in text and "Traces 0" not in text
    assert "Browser test sweep — clipping off and on." in text
    assert "2 matching runs" in text, text[:3000]
    for name in NAMES:
        assert name in text
    assert re.search(r"Model metrics \((\d+)\)", text).group(1) != "0"
    # a rendered chart: its legend names each trial's curve. MLflow draws chart tiles
    # lazily, when they scroll into view; on a loaded machine a headless dump sometimes
    # comes before the first ones are drawn, so up to three fresh loads are allowed.
    legends = [f"{name} (backdoor_acc)" for name in NAMES]
    for attempt in range(3):
        if all(legend in text for legend in legends):
            break
        text = text_of(chromium(url, served["tmp"] / f"prof-exp{attempt}", budget_s=45))
    assert all(legend in text for legend in legends), text[:3000]
    assert (served["tmp"] / "dashboard.png").stat().st_size > 10_000


@needs_chromium
def test_parent_run_page_is_the_sweeps_summary(served):
    m = served["manifest"]
    url = (f"http://127.0.0.1:{served['port']}/#/experiments/{m['experiment_id']}/runs/"
           f"{m['parent_run_id']}?workflowType=machine_learning")
    text = text_of(chromium(url, served["tmp"] / "prof-run"))
    chromium(url, served["tmp"] / "prof-run", served["tmp"] / "parent.png")
    # the description rendered from Markdown: the trial table, no Markdown syntax
    assert "Final metrics per trial" in text and "**" not in text
    for name in NAMES:
        assert name in text
    # the parent's own metrics: each trial's final value, one key per trial
    for name in NAMES:
        assert "final.main_acc/" + name.replace("=", ":") in text, text[:3000]


@needs_chromium
def test_report_html_renders_without_markdown_syntax(served):
    page = served["storage"] / "browse" / "report" / "report.html"
    assert page.is_file(), served["run_out"][-2000:]
    text = text_of(chromium(page.as_uri(), served["tmp"] / "prof-rep"))
    chromium(page.as_uri(), served["tmp"] / "prof-rep", served["tmp"] / "report.png")
    assert "Report: browse" in text
    for name in NAMES:
        assert name in text
    assert "backdoor acc (avg)" in text and "main acc (final)" in text
    assert "**" not in text and "`" not in text and "|---" not in text
    # the figures are inline: the page needs no other file
    dom = chromium(page.as_uri(), served["tmp"] / "prof-rep")
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom)) == 2
