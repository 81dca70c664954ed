"""The report: figures + per-cell table + claims + privacy, as Markdown and HTML pages
and machine-readable files, optionally logged to each sweep's MLflow parent run.

Files written to the output directory:
- `report.md`, `report.html`: the page;
- `figures/panels.png`, `figures/overlay.png`: see `figures`;
- `cells.csv`: the per-cell table (mean, min, max over seeds of every statistic);
- `claims.json` (with `--claims`): each claim, its verdict, checks, numbers and cells;
- `privacy.json`: (ε, δ) per noisy cell;
- `pool.csv`: each attacked cell's attacker pool beside its population, per seed (`pool`).

Every value that comes from the data (sweep, cell and directory names, config values, notes,
claim texts) reaches the page through `lit`: as text, never as Markdown or HTML (a config
value `<img src=x onerror=...>` is shown, not loaded). Only `Md` strings, written here, are
Markdown, and the HTML renderer takes no raw HTML at all.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sweeper.report.claims import ClaimResult, Thresholds, check_claims, format_check
from sweeper.report.figures import plot_all
from sweeper.report.load import SweepData
from sweeper.report.privacy import (
    DEFAULT_DELTA,
    PrivacyResult,
    check_delta,
    check_population,
    privacy_report,
)
from sweeper.report.pool import POOL_INTRO, PoolRow, pool_lines, pool_report
from sweeper.report.stats import cell_summary

# (column in cell_summary, header) of the page's table, in order.
TABLE_COLUMNS = (
    ("main_final", "main acc (final)"),
    ("main_tail", "main acc (tail)"),
    ("clean_tail", "main acc w/o source label (tail)"),
    ("backdoor_final", "backdoor acc (final)"),
    ("backdoor_avg", "backdoor acc (avg)"),
    ("heldout_avg", "held-out backdoor (avg)"),
    ("collateral_avg", "collateral (avg)"),
    ("main_drop", "main acc drop vs no attack"),
    ("flag_tpr_avg", "attackers flagged (TPR)"),
    ("flag_fpr_avg", "benign flagged (FPR)"),
    ("lifespan", "backdoor lifespan (rounds)"),
    ("attacked_rounds", "rounds attacked"),
    ("benign_norm_p90_median", "benign norm p90 (median)"),
    ("aggregate_seconds", "aggregator s/round"),
)
TABLE_HEADER = ("cell", "seeds", "rounds", *(h for _, h in TABLE_COLUMNS), "DP ε (δ)")
CLAIMS_HEADER = ("#", "claim", "paper fig.", "verdict", "numbers", "cells used")
PRIVACY_HEADER = ("cell", "noise on", "σ", "M", "C·K", "K", "q", "rounds", "z",
                  "δ", "ε (RDP)", "ε (PLD)", "in plain words")

DEFINITIONS = """\
- **backdoor acc (avg)**: the run's mean backdoor accuracy over all evaluated rounds after
  `attack.start_round` = the last value of the cumulative mean (the paper's green line){burn}.
- **main acc (tail)**: the run's mean main-task accuracy over the last {tail:.0%} of its
  evaluated rounds.
- **held-out backdoor**: the same on the target writers' test-split 7s (not seen by the
  attacker); `backdoor acc` is measured on the attacker's own backdoor set, as the
  original code does.
- **main acc w/o source label**: main-task accuracy on the test images whose label is not the
  backdoor's source label (`main_acc_clean`).
- **collateral (avg)**: the share of NON-target writers' source-label test images predicted
  as the target label (`collateral_rate`), averaged like backdoor acc (avg): the backdoor's
  spill-over onto other writers; compare it with the unattacked cell's value.
- **attackers flagged (TPR) / benign flagged (FPR)**: for aggregators that select or flag
  clients (Krum, Multi-Krum, Bulyan, FLAME, FoolsGold: docs/ROBUSTNESS.md), the share of the
  round's attackers (resp. benign clients) left out of the aggregate, averaged over the
  evaluated rounds (TPR over those with an attacker); "–" for rules that flag nobody.
- **backdoor lifespan**: with `attack.stop_round` = S, the rounds after the attack stops until
  backdoor acc is first below half its peak of the attack window (resolution `fl.eval_every`);
  "≥" marks a cell where some seed's run ended first (the value is then a lower bound);
  "–" without an attack or when the peak stayed below 0.2 (no backdoor to outlive).
- **trigger backdoor** (`attack.backdoor: trigger`, DBA's task): backdoor acc is the share of
  the test images that are not the target label, stamped with the trigger, predicted as the
  target label; "w/o source label" drops the target label's images instead, collateral is the
  share of those images predicted as the target label WITHOUT the trigger, and there is no
  held-out figure (docs/ROBUSTNESS.md, "Backdoor tasks").
- Every number is the mean over the cell's seeds, with [min–max] over seeds.
- **rounds attacked**: the share of evaluated rounds with at least one attacker.
"""


class Md(str):
    """Markdown written by this module (trusted); any other str is data, escaped by `lit`."""


# Python-Markdown's backslash escapes that can start markup inside a line (emphasis, code,
# links and images, table cells); `<` and `&` become entities instead.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def lit(value: object) -> Md:
    """`value` as Markdown that renders as exactly its text, in report.md and report.html:
    no tag, attribute, link, emphasis, code span or table cell can come from data. One
    line (a newline could start a heading or a code block); control characters (which
    Python-Markdown uses for its own placeholders) become U+FFFD."""
    if isinstance(value, Md):
        return value
    text = _CONTROL.sub("\ufffd", " ".join(str(value).splitlines()))
    return Md(html.escape(_MD_SPECIAL.sub(r"\\\1", text), quote=True))


def md(template: str, *values: object) -> Md:
    """The trusted Markdown `template` with its `{}` fields filled with `lit(value)`."""
    return Md(template.format(*(lit(v) for v in values)))


@dataclass
class Report:
    out_dir: Path
    files: list[Path]
    cells: pd.DataFrame
    claims: list[ClaimResult] | None
    privacy: list[PrivacyResult]
    notes: list[str] = field(default_factory=list)
    pool: list[PoolRow] = field(default_factory=list)
    pool_notes: list[str] = field(default_factory=list)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# rounds: one decimal (a mean over seeds); seconds: four; accuracies: three
DIGITS = {"lifespan": 1, "aggregate_seconds": 4}


def _spread(row: pd.Series, col: str) -> str:
    mean, lo, hi = row[col], row[f"{col}_min"], row[f"{col}_max"]
    d = DIGITS.get(col, 3)
    if math.isnan(mean):
        return "–"
    if row["seeds"] <= 1 or lo == hi:
        return _fmt(mean, d)
    return f"{_fmt(mean, d)} [{_fmt(lo, d)}–{_fmt(hi, d)}]"


def _eps_text(p: PrivacyResult | None) -> str:
    if p is None:
        return "no noise"
    return f"{p.epsilon:.3g} ({p.delta:g})"


def table_rows(cells: pd.DataFrame, privacy: list[PrivacyResult]) -> list[list[str]]:
    """The per-cell table as strings, one list per row, columns as `TABLE_HEADER`."""
    by_cell = {p.cell: p for p in privacy}
    rows = []
    for _, r in cells.iterrows():
        rounds = (str(r["rounds_max"]) if r["rounds_min"] == r["rounds_max"]
                  else f"{r['rounds_min']}–{r['rounds_max']}")
        cols = [_spread(r, c) for c, _ in TABLE_COLUMNS]
        if r.get("lifespan_censored_max", 0) > 0:  # some seed's backdoor outlived its run
            i = [c for c, _ in TABLE_COLUMNS].index("lifespan")
            cols[i] = "≥ " + cols[i]
        rows.append([r["cell"], *map(Md, (str(int(r["seeds"])), rounds, *cols,
                                          _eps_text(by_cell.get(r["cell"]))))])
    return rows


def format_extra(ch) -> str:
    return f"extra check {ch.name} (not in the verdict): {format_check(ch)}"


def claims_rows(claims: list[ClaimResult]) -> list[list[str]]:
    rows = []
    for c in claims:
        numbers = "; ".join(format_check(ch) for ch in c.checks) or c.note
        if c.checks and c.note:
            numbers += f"; {c.note}"
        if c.extras:
            numbers += "; " + "; ".join(format_extra(ch) for ch in c.extras)
        rows.append([str(c.number), c.claim, c.figure, c.verdict, numbers,
                     "; ".join(c.cells) or "–"])
    return rows


def privacy_rows(privacy: list[PrivacyResult]) -> list[list[str]]:
    return [[p.cell, p.placement, f"{p.sigma:g}", f"{p.norm_bound:g}", str(p.clients_per_round),
             f"{p.population} ({p.population_source})", f"{p.sampling_rate:.4g}", str(p.rounds),
             f"{p.noise_multiplier:.4g}", f"{p.delta:g}", f"{p.epsilon_rdp:.4g}",
             "–" if p.epsilon_pld is None else f"{p.epsilon_pld:.4g}", p.verdict]
            for p in privacy]


def _md_table(header, rows) -> Md:
    """A Markdown table; every cell that is not `Md` is data, escaped by `lit` (which also
    escapes `|`)."""
    lines = ["| " + " | ".join(map(lit, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(lit(x) for x in r) + " |" for r in rows]
    return Md("\n".join(lines))


PRIVACY_INTRO = (
    "Weak DP read as user-level DP-FedAvg: per round a Gaussian mechanism on the clipped "
    "updates of a sampled cohort, accounted with `dp-accounting` (RDP and PLD, Poisson "
    "sampling at q = C·K/K, add/remove-one-writer, over the rounds run). Noise on the sum: "
    "z = σ/M; on the mean: z = σ·C·K/M. The cohort is really a fixed-size sample; Poisson "
    "sampling with the same expected size is the standard approximation."
)


def _sections(data: SweepData, rep: Report, tail: float, burn_in: float
              ) -> list[tuple[str, Md, list | None, tuple | None]]:
    """(title, text, rows, header) sections shared by the Markdown and HTML pages; the
    texts are `Md` with every data value through `lit`."""
    n_runs, n_cells = len(data.runs), len(data.cells())
    intro = md("{} runs in {} cells from: {}. Varied keys: {}.", n_runs, n_cells,
               ", ".join(sorted(set(data.runs["sweep"].astype(str)))),
               ", ".join(data.cell_keys) or "none")
    if rep.notes:
        intro = Md(intro + md(" Notes: {}", "; ".join(rep.notes)))
    secs = [("", intro, None, None)]
    burn = (f", here without the first {burn_in:.0%} of those rounds (burn-in)" if burn_in else "")
    secs.append(("Cells: final and averaged metrics", Md(DEFINITIONS.format(tail=tail, burn=burn)),
                 table_rows(rep.cells, rep.privacy), TABLE_HEADER))
    if rep.claims is not None:
        counts = {v: sum(c.verdict == v for c in rep.claims) for v in ("PASS", "FAIL", "N.A.")}
        secs.append(("Claims of the paper",
                     Md(" · ".join(f"{k}: {v}" for k, v in counts.items())
                        + ". Thresholds are parameters (`--threshold name=value`); a verdict is "
                        "PASS iff every check holds on the seed means. A verdict tests only what the "
                        "paper's text says (its sentences are quoted below); our stricter checks are "
                        "listed as extra checks, outside the verdict."),
                     claims_rows(rep.claims), CLAIMS_HEADER))
    if rep.pool or rep.pool_notes:
        lines = [POOL_INTRO + (md(" Not shown: {}.", "; ".join(rep.pool_notes)) if rep.pool_notes else ""), ""]
        for cell, rule, population, seeds in pool_lines(rep.pool):
            lines.append(md("- **{}** (`attack.pool_rule: {}`); population: {}", cell, rule, population))
            lines += [md("    - seed {}: pool of {}", seed, text) for seed, text in seeds]
        secs.append(("Attacker pool", Md("\n".join(lines)), None, None))
    if rep.privacy:
        secs.append(("How private is the weak DP?", Md(PRIVACY_INTRO), privacy_rows(rep.privacy),
                     PRIVACY_HEADER))
    else:
        secs.append(("How private is the weak DP?", Md("No cell adds noise (σ = 0 everywhere): "
                     "no differential privacy at all."), None, None))
    return secs


STYLE = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:0 1em}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
         "padding:3px 6px;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
         "code{background:#f3f3f3;padding:0 2px}")


def _markdown(data: SweepData, rep: Report, secs, images: list[tuple[str, str]]) -> str:
    """The page as Markdown; `images` are (alt, src) pairs, so that the HTML page can
    carry the same text with its figures inline."""
    out = [md("# Report: {}", data.name), ""]
    first, *rest = secs
    out += [first[1], "", "## Figures", ""] + [f"![{alt}]({src})" for alt, src in images] + [""]
    for title, text, rows, header in rest:
        out += [f"## {title}", "", text, ""]
        if rows is not None:
            out += [_md_table(header, rows), ""]
    if rep.claims:
        out += ["### Claim checks in detail", ""]
        for c in rep.claims:
            out.append(md("- **Claim {} — {}**: {}.", c.number, c.verdict, c.claim))
            # four spaces: Python-Markdown nests a list only at that indent
            if c.quote:
                out.append(md("    - the paper: {}", c.quote))
            out += [md("    - {}", format_check(ch)) for ch in c.checks]
            out += [md("    - {}", format_extra(ch)) for ch in c.extras]
            if c.note:
                out.append(md("    - {}", c.note))
        out.append("")
    return "\n".join(out) + "\n"


def render_html(text: str) -> str:
    """Python-Markdown without raw HTML: it passes `<tag>`s through by default; here any
    that reached the text would be escaped, not rendered (`lit` already keeps data out)."""
    import markdown

    renderer = markdown.Markdown(extensions=["tables"], output_format="html")
    renderer.preprocessors.deregister("html_block")
    renderer.inlinePatterns.deregister("html")
    return renderer.convert(text)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_pages(data: SweepData, rep: Report, figures: list[Path], tail: float,
                burn_in: float = 0.0) -> list[Path]:
    """report.md (figures linked) and report.html: the same Markdown rendered by
    Python-Markdown (`tables` extension), figures inline, so the page is one file."""
    secs = _sections(data, rep, tail, burn_in)
    md_text = _markdown(data, rep, secs, [(f.stem, f.relative_to(rep.out_dir).as_posix())
                                          for f in figures])
    body = render_html(_markdown(data, rep, secs, [(f.stem, _data_uri(f)) for f in figures]))
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(data.name)}"
            f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
    md_path, html_path = rep.out_dir / "report.md", rep.out_dir / "report.html"
    md_path.write_text(md_text)
    html_path.write_text(page)
    return [md_path, html_path]


def build_report(
    data: SweepData,
    out_dir: Path,
    claims: bool = False,
    thresholds: Thresholds | None = None,
    delta: float = DEFAULT_DELTA,
    population: int | None = None,
    backdoor_metric: str = "backdoor_acc",
) -> Report:
    """Write every report file into `out_dir` (see the module docstring).

    Raises:
        ReportError: δ or the population out of range, checked before anything is written.
    """
    delta = check_delta(delta)
    population = check_population(population)
    th = thresholds or Thresholds()
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = cell_summary(data, th.tail, th.burn_in)
    privacy = privacy_report(data, delta, population)
    claim_results = check_claims(data, th) if claims else None
    pool, pool_notes = pool_report(data)
    rep = Report(out_dir, [], cells, claim_results, privacy, list(data.notes), pool, pool_notes)
    (out_dir / "figures" / "heatmap.png").unlink(missing_ok=True)  # never a stale one
    figures = plot_all(data, out_dir / "figures", backdoor_metric, cells)
    csv_safe(cells).to_csv(out_dir / "cells.csv", index=False)
    files = [*figures, out_dir / "cells.csv"]
    (out_dir / "privacy.json").write_text(strict_json([p.to_dict() for p in privacy]))
    files.append(out_dir / "privacy.json")
    (out_dir / "pool.csv").unlink(missing_ok=True)  # never a stale one
    if pool:
        csv_safe(pd.DataFrame([r.to_dict() for r in pool])).to_csv(out_dir / "pool.csv", index=False)
        files.append(out_dir / "pool.csv")
    (out_dir / "claims.json").unlink(missing_ok=True)  # never leave a stale one behind
    if claim_results is not None:
        payload = {"thresholds": th.__dict__, "claims": [c.to_dict() for c in claim_results]}
        (out_dir / "claims.json").write_text(strict_json(payload))
        files.append(out_dir / "claims.json")
    files += write_pages(data, rep, figures, th.tail, th.burn_in)
    rep.files = files
    return rep


def strict_json(obj) -> str:
    """JSON that every parser reads: a non-finite float (an ε of inf, a NaN statistic) is
    written as null, where Python's json would write the non-standard Infinity/NaN."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=2, default=float, allow_nan=False)


#: a spreadsheet runs a cell that starts with one of these as a formula (OWASP: CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every text cell that a spreadsheet would run as a formula prefixed by a
    quote (cell labels carry config values, e.g. a data path or a plug-in's parameter);
    numbers are left as they are."""
    def safe(v):
        return "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(safe)
    return out


def _slug(text: str) -> str:
    text = text.replace("σ", "sigma").replace("ε", "eps").replace("%", "pct")
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("_")[:120]


def log_to_mlflow(data: SweepData, rep: Report) -> list[str]:
    """Log the report directory as artifacts (`report/`) of every loaded sweep's parent
    run, and each noisy cell's (z, q, rounds, δ, ε) as params and metrics there.

    Params are immutable in MLflow: when a re-run of the report computes a different
    value (another δ, more rounds), the param keeps its first value and the metric
    (which may change) carries the new one; the returned notes say so.
    """
    from sweeper.tracking import Tracker

    notes = []
    for parent in data.parents:
        tracker = Tracker(parent.tracking_uri)
        tracker.log_artifacts(parent.run_id, rep.out_dir, artifact_path="report")
        for p in rep.privacy:
            if p.cell not in set(data.runs.loc[data.runs["sweep"] == parent.sweep, "cell"]):
                continue
            base = f"dp.{_slug(p.cell)}"
            values = {"noise_multiplier": p.noise_multiplier, "sampling_rate": p.sampling_rate,
                      "rounds": p.rounds, "delta": p.delta, "epsilon_rdp": p.epsilon_rdp}
            if p.epsilon_pld is not None:
                values["epsilon_pld"] = p.epsilon_pld
            for k, v in values.items():
                tracker.log_metric(parent.run_id, f"{base}.{k}", float(v))
                if not tracker.log_param_once(parent.run_id, f"{base}.{k}", f"{v:.6g}"):
                    notes.append(f"{parent.sweep}: param {base}.{k} already set to another "
                                 "value; the metric holds the new one")
        notes.append(f"logged report to MLflow run {parent.run_id} ({parent.tracking_uri})")
    return notes
