"""The report's files: figures, the page's tables (structure and content), claims.json,
the CLI, and logging to the sweep's MLflow parent run."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from sweeper.cli import main
from sweeper.report.claims import Thresholds
from sweeper.report.load import load_sweeps
from sweeper.report.page import (
    CLAIMS_HEADER,
    PRIVACY_HEADER,
    TABLE_HEADER,
    build_report,
    log_to_mlflow,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# every test here renders the whole report (matplotlib figures, MLflow logging): 10-30 s each
pytestmark = pytest.mark.slow


def _text(page: str) -> str:
    """The text a browser shows of an HTML page (tags dropped, style skipped)."""
    parts: list[str] = []

    class P(HTMLParser):
        skip = False

        def handle_starttag(self, tag, attrs):
            self.skip = tag in ("style", "script")

        def handle_endtag(self, tag):
            self.skip = False

        def handle_data(self, d):
            if not self.skip:
                parts.append(d)

    P().feed(page)
    return "".join(parts)


def test_report_files_and_table_structure(tmp_path, paper_sweep, md_tables):
    data = load_sweeps([str(paper_sweep)])
    rep = build_report(data, tmp_path / "out", claims=True)
    out = tmp_path / "out"
    for name in ("report.md", "report.html", "cells.csv", "claims.json", "privacy.json",
                 "figures/panels.png", "figures/overlay.png"):
        assert (out / name).is_file(), name
    for png in ("panels.png", "overlay.png"):
        blob = (out / "figures" / png).read_bytes()
        assert blob[:8] == PNG_MAGIC and 10_000 < len(blob) < 300_000
    cells_tbl, claims_tbl, privacy_tbl = md_tables((out / "report.md").read_text())
    # per-cell table: the header, then one row per cell in paper order
    assert tuple(cells_tbl[0]) == TABLE_HEADER
    assert [r[0] for r in cells_tbl[1:]] == data.cells()
    by_cell = {r[0]: dict(zip(TABLE_HEADER, r)) for r in cells_tbl[1:]}
    m3 = next(c for c in data.cells() if "M=3" in c and c.startswith("PGD"))  # not its unattacked baseline
    assert by_cell[m3]["seeds"] == "2" and by_cell[m3]["rounds"] == "20"
    # 0.05 ± 0.005 over the two seeds
    assert by_cell[m3]["backdoor acc (avg)"] == "0.050 [0.045–0.055]"
    dp_cell = next(c for c in data.cells() if "σ=0.025" in c and c.startswith("PGD"))
    assert by_cell[dp_cell]["DP ε (δ)"].endswith("(1e-05)")
    assert by_cell[m3]["DP ε (δ)"] == "no noise"
    # claims table: six rows, verdicts as in claims.json
    assert tuple(claims_tbl[0]) == CLAIMS_HEADER and len(claims_tbl) == 7
    js = json.loads((out / "claims.json").read_text())
    assert [r[3] for r in claims_tbl[1:]] == [c["verdict"] for c in js["claims"]] == ["PASS"] * 6
    assert js["thresholds"]["high_backdoor"] == Thresholds().high_backdoor
    # privacy table: one row per noisy cell (the attacked one and its unattacked baseline),
    # z = 0.025 / 5
    assert tuple(privacy_tbl[0]) == PRIVACY_HEADER and len(privacy_tbl) == 3
    row = next(r for r in privacy_tbl[1:] if r[0] == dp_cell)
    assert row[8] == "0.005"
    # cells.csv holds the same numbers, machine-readable
    csv = pd.read_csv(out / "cells.csv")
    assert list(csv["cell"]) == data.cells()
    assert csv.set_index("cell").loc[m3, "backdoor_avg"] == pytest.approx(0.05)
    # the HTML page has the same tables
    html = (out / "report.html").read_text()
    assert html.count("<table>") == 3 and html.count("<tr>") == len(cells_tbl) + 7 + len(privacy_tbl)
    assert rep.claims is not None
    # rendered by Python-Markdown: the figures inline (the same bytes as the PNG files),
    # and no Markdown syntax left in the page's text
    srcs = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([^"]+)"', html)
    assert {alt: base64.b64decode(b) for alt, b in srcs} == {
        f: (out / "figures" / f"{f}.png").read_bytes() for f in ("panels", "overlay")}
    text = _text(html)
    assert "**" not in text and "`" not in text and "| ---" not in text
    assert "backdoor acc (avg): the run's mean backdoor accuracy" in text
    assert "<strong>Claim 1 — PASS</strong>" in html and "<code>attack.start_round</code>" in html


def test_report_without_claims_removes_a_stale_claims_file(tmp_path, paper_sweep, md_tables):
    data = load_sweeps([str(paper_sweep)])
    build_report(data, tmp_path / "o", claims=True)
    build_report(data, tmp_path / "o", claims=False)
    assert not (tmp_path / "o" / "claims.json").exists()
    assert len(md_tables((tmp_path / "o" / "report.md").read_text())) == 2  # cells + privacy


def test_cli_report(tmp_path, paper_sweep, capsys):
    out = tmp_path / "cli"
    rc = main(["report", str(paper_sweep), "--out", str(out), "--claims",
               "--threshold", "high_backdoor=0.96"])
    assert rc == 0
    text = capsys.readouterr().out
    # claim 1's verdict is the fixed-frequency cell's backdoor (0.95 < 0.96 fails it)
    assert "FAIL claim 1" in text and "PASS claim 6" in text
    assert json.loads((out / "claims.json").read_text())["claims"][0]["verdict"] == "FAIL"
    # user errors: one line on stderr, exit 2
    assert main(["report", str(tmp_path / "nothing-here"), "--out", str(out)]) == 2
    assert main(["report", str(paper_sweep), "--threshold", "bogus=1", "--out", str(out)]) == 2
    assert "unknown threshold" in capsys.readouterr().err


def test_report_is_logged_to_the_parent_run(tmp_path, mlflow_sweep):
    from mlflow.tracking import MlflowClient

    root, sweep_dir, uri, parent = mlflow_sweep
    data = load_sweeps([str(sweep_dir)])
    rep = build_report(data, tmp_path / "r", claims=True, delta=1e-5)
    notes = log_to_mlflow(data, rep)
    client = MlflowClient(tracking_uri=uri)
    arts = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html", "report/claims.json",
            "report/figures"} <= arts
    run = client.get_run(parent)
    p = run.data.params
    assert float(p["dp.sigma_0.025.noise_multiplier"]) == pytest.approx(0.005)
    # q = C·K / K = 30 / 40 (data.max_writers = 40)
    assert float(p["dp.sigma_0.025.sampling_rate"]) == pytest.approx(30 / 40)
    assert p["dp.sigma_0.025.rounds"] == "5"
    assert run.data.metrics["dp.sigma_0.025.epsilon_rdp"] == pytest.approx(rep.privacy[0].epsilon_rdp)
    assert not any("already set" in n for n in notes)
    # a second report with another δ keeps the first params and updates the metrics
    rep2 = build_report(data, tmp_path / "r2", delta=1e-7)
    notes2 = log_to_mlflow(data, rep2)
    assert any("already set" in n for n in notes2)
    run = client.get_run(parent)
    assert run.data.params["dp.sigma_0.025.delta"] == "1e-05"
    assert run.data.metrics["dp.sigma_0.025.delta"] == pytest.approx(1e-7)
