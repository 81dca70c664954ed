"""Markup and code from data (issue 19): config values, cell labels and directory names that
hold HTML, Markdown or mathtext reach report.md/report.html as text and the figures as
their literal characters; a `--threshold` that is not a finite number is refused.
(`--delta` and the bounded DP accounting: test_report_privacy.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import matplotlib
import pytest
from matplotlib import cbook
from matplotlib.figure import Figure
from matplotlib.text import Text

from sweeper.cli import main
from sweeper.report.figures import plot_all
from sweeper.report.load import load_sweeps
from sweeper.report.page import build_report
from sweeper.report.stats import cell_summary

# One value per kind of markup a report renders: HTML (a tag with an event handler, a
# script), Markdown (a javascript: link, emphasis, a code span, a table cell), matplotlib's
# mathtext (an unknown command; a pair that would draw an italic x) and rich's markup.
MARKUP = ("<img src=x onerror=alert(1)><script>alert(2)</script> "
          r"[click](javascript:alert(3)) **bold** `code` _em_ a|b [/bold] &amp; a\b")
MARKUP_DIR = "<b onmouseover=alert(4)>sweep"  # a directory name (no `/`)
EVIL = MARKUP + r" $\undefinedcmd$ $x$"
EVIL_DIR = MARKUP_DIR + r" $\undefinedcmd$"

# The tags the page itself writes; anything else came from data.
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "ul",
             "li", "strong", "code", "table", "thead", "tbody", "tr", "th", "td", "img"}


def write_hostile(root, run_writer, value):
    """Four runs in directory `root`, attack × aggregator (so the heatmap is drawn), with
    σ > 0 (a privacy table), and `data.path` = `value` in two of them, arranged so that
    neither plug-in name implies it: every cell label, heatmap row, legend entry and privacy
    row carries it."""
    plan = [("none", "fedavg", value), ("model-replacement", "median", value),
            ("none", "median", "plain"), ("model-replacement", "fedavg", "plain")]
    for i, (kind, agg, path) in enumerate(plan):
        ov = {"attack.kind": kind, "defense.aggregator": agg, "data.path": path,
              "defense.norm_bound": 5.0, "defense.noise_sigma": 0.025}
        if kind != "none":
            ov["attack.fraction"] = 0.033
        run_writer(root / f"run{i}", ov, 0, {"main_acc": [0.5, 0.6, 0.7],
                                             "backdoor_acc": [0.1, 0.2, 0.3],
                                             "num_attackers": [1 if kind != "none" else 0] * 3})
    return root


@pytest.fixture
def hostile_sweep(tmp_path, run_writer):
    return write_hostile(tmp_path / EVIL_DIR, run_writer, EVIL)


class _Page(HTMLParser):
    """Every start tag with its attributes, and the text a browser shows."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._skip = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._skip = tag in ("style", "script")

    def handle_endtag(self, tag):
        self._skip = False

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


@pytest.mark.slow  # the whole report, heatmap included (~15 s each)
@pytest.mark.parametrize("value,dirname", [(MARKUP, MARKUP_DIR), (EVIL, EVIL_DIR)])
def test_page_shows_hostile_values_as_text(tmp_path, run_writer, value, dirname):
    """Without mathtext (the figures drew it before) and with it."""
    data = load_sweeps([str(write_hostile(tmp_path / dirname, run_writer, value))])
    assert any(value in c for c in data.cells())
    out = tmp_path / "out"
    rep = build_report(data, out, claims=True)
    assert len(rep.privacy) == 4
    page = _Page((out / "report.html").read_text())
    # no element and no attribute from data: only the page's own tags, the figures the
    # only images (inline PNGs), no event handler, no link
    assert {t for t, _ in page.tags} <= PAGE_TAGS
    imgs = [a for t, a in page.tags if t == "img"]
    assert sorted(a["alt"] for a in imgs) == ["heatmap", "overlay", "panels"]
    assert all(a["src"].startswith("data:image/png;base64,") and set(a) == {"alt", "src"}
               for a in imgs)
    assert not [k for _, a in page.tags for k in a if k.lower().startswith("on") or k == "href"]
    # ... and every hostile value is on the page, character for character
    text = "".join(page.text)
    assert f"Report: {dirname}" in text
    label = next(c for c in data.cells() if value in c)
    assert text.count(label) >= 2  # the cells table and the privacy table
    # report.md is the same page as Markdown: escaped there too
    md = (out / "report.md").read_text()
    assert "<img" not in md and "<script" not in md and "<b " not in md
    assert "\\](javascript:" in md and not re.search(r"(?<!\\)\]\(javascript:", md)


def test_lit_renders_any_string_as_itself():
    """`lit` is the one gate for data: Python-Markdown gives back the exact text, in a
    table cell and in a line of prose (data never starts a line of the page)."""
    from sweeper.report.page import lit, render_html

    def norm(t):
        return " ".join(t.split())

    for s in (EVIL, EVIL_DIR, "plain", "x\ny\r\nz", "\x02wzxhzdk:0\x03", "| a | b |", "# h",
              "1. item", "    code", "<http://example.com>", "&lt;", "\\|", "a\\", "*a*b*"):
        page = _Page(render_html(f"| h |\n|---|\n| {lit(s)} |\n\nv: {lit(s)}\n"))
        assert {t for t, _ in page.tags} <= {"table", "thead", "tbody", "tr", "th", "td", "p"}, s
        want = norm(s.replace("\x02", "\ufffd").replace("\x03", "\ufffd"))
        assert [norm(t) for t in page.text if t.strip()] == ["h", want, f"v: {want}"], s


def _figure_texts(monkeypatch) -> list[list[str]]:
    """Record every figure the report saves; return, per figure, the strings its Text
    artists draw (after the draw, so tick labels and legends are in)."""
    figs: list[Figure] = []
    save = Figure.savefig

    def recording(self, *args, **kwargs):
        figs.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)

    def texts():
        out = []
        for fig in figs:
            strings = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
            # a figure's text is drawn as mathtext iff it has an unescaped pair of `$`
            assert not [s for s in strings if cbook.is_math_text(s)]
            out.append([s.replace(r"\$", "$") for s in strings])  # what matplotlib draws
        return out

    return texts


def test_figures_draw_hostile_labels_literally(tmp_path, hostile_sweep, monkeypatch):
    data = load_sweeps([str(hostile_sweep)])
    texts = _figure_texts(monkeypatch)
    cells = cell_summary(data)
    paths = plot_all(data, tmp_path / "fig", cells=cells)
    assert [p.name for p in paths] == ["panels.png", "overlay.png", "heatmap.png"]
    panels, overlay, heatmap = texts()
    label = next(c for c in data.cells() if EVIL in c)
    # panels: the title of each cell (wrapped), the figure title with the directory name
    assert any(" ".join(s.split()).startswith(" ".join(label.split())) for s in panels)
    assert any(s.startswith(f"{EVIL_DIR}: mean over seeds") for s in panels)
    # overlay: the legend holds the labels exactly
    assert label in overlay
    # heatmap: the row tick labels (defense keys: aggregator and data.path)
    assert any(s.endswith(f"data.path={EVIL}") for s in heatmap)
    assert any(s.startswith(EVIL_DIR) for s in heatmap)


def test_figures_ignore_a_matplotlibrc_that_turns_tex_on(tmp_path, hostile_sweep):
    """`text.usetex: True` would hand every label (`ε=3.3%`, `$x$`) to LaTeX."""
    data = load_sweeps([str(hostile_sweep)])
    with matplotlib.rc_context({"text.usetex": True}):
        paths = plot_all(data, tmp_path / "fig", cells=cell_summary(data))
    assert all(p.stat().st_size > 10_000 for p in paths)


@pytest.mark.parametrize("item", ["high_backdoor=nan", "m_high=inf", "sigma=-inf", "tasks=0"])
def test_cli_rejects_a_threshold_that_is_not_a_finite_number(tmp_path, run_writer, capsys, item):
    """NaN fails every comparison and ∞ bounds nothing: either would fake a verdict."""
    run_writer(tmp_path / "s" / "r", {}, 0, {"main_acc": [0.5] * 2, "backdoor_acc": [0.1] * 2})
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "s"), "--threshold", item, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threshold" in err[0] and item.split("=")[0] in err[0], err
    assert not out.exists()
