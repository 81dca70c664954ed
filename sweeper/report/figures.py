"""Paper-style figures (Sun et al. 2019, figs 1–6) with matplotlib's Agg canvas.

Two figures per report:
- `panels.png`: one panel per grid cell, laid out like the paper (rows: ε or the other
  varied keys; columns: fixed-frequency | random-sampling when the schedule varies).
  Each panel: main-task accuracy dotted, backdoor accuracy solid, the cumulative mean of
  the backdoor accuracy in green (the paper's green line); lines are the mean over seeds,
  shaded bands the min–max over seeds.
- `overlay.png`: every cell in one panel, one colour each (the paper's fig 4 style:
  dotted main task, solid backdoor), and beside it the cumulative means.
- `heatmap.png`, only when both the attack (`attack.kind`) and the aggregator
  (`defense.aggregator`) vary: defense × attack, backdoor acc (avg) and main acc (tail),
  the means over seeds written in each square (the comparison grids of issue 12).

The Figure/FigureCanvasAgg API is used instead of pyplot: no global backend or figure
state, so it is safe in any process (Ray workers, tests).

Every string from the data (cell labels, sweep and directory names) goes through `plain`
before it reaches a Text (titles, legends, tick labels): drawn as its characters, never as
mathtext; and TeX is off while the figures are made, whatever the user's matplotlibrc says.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sweeper.report.load import SweepData, format_value, label_for
from sweeper.report.stats import attack_goal, cell_curves, run_curves

MAIN_COLOR = "tab:blue"
BACKDOOR_COLOR = "tab:red"
CUMMEAN_COLOR = "tab:green"
CELL_COLORS = ("tab:blue", "tab:green", "tab:red", "black", "tab:orange", "tab:purple",
               "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
DPI = 100


def plain(text: object) -> str:
    """`text` for a matplotlib Text, drawn as exactly its characters: a pair of `$` is
    mathtext (`$\\undefinedcmd$` in a label raised ValueError, `$x$` drew an italic x);
    matplotlib draws an escaped `\\$` as `$` and parses no math without an unescaped pair."""
    return str(text).replace("$", r"\$")


def _no_tex(plot):
    """Run `plot` with TeX off: a matplotlibrc with `text.usetex: True` would hand every
    label (`ε=3.3%`, names with `_` or `#`) to LaTeX."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"text.usetex": False}):
            return plot(*args, **kwargs)

    return wrapper


def _band(ax, curve: pd.DataFrame, color: str, style: str, label: str | None, lw=1.2) -> None:
    x = curve.index.to_numpy()
    ax.plot(x, curve["mean"].to_numpy(), linestyle=style, color=color, lw=lw, label=label)
    if (curve["n"] > 1).any():
        ax.fill_between(x, curve["min"].to_numpy(), curve["max"].to_numpy(), color=color,
                        alpha=0.18, lw=0)


def panel_layout(data: SweepData) -> list[tuple[int, int, str]]:
    """(row, column, cell) for every cell, paper-style.

    The column key is `attack.schedule` when it varies (paper: fixed-frequency left,
    random sampling right), otherwise the last varied key when there are two or more;
    the rows are the remaining keys. When that does not give one cell per position, leaves
    more than max(1, n/4) positions empty, or a single key varies, the panels flow left to
    right, at most 4 per row.
    """
    cells = data.cells()
    keys = list(data.cell_keys)
    n = len(cells)
    if len(keys) >= 2:
        col_key = "attack.schedule" if "attack.schedule" in keys else keys[-1]
        row_keys = [k for k in keys if k != col_key]
        pos: dict[tuple[str, str], str] = {}
        rows: list[str] = []
        cols: list[str] = []
        for cell in cells:
            cfg = data.cell_config(cell)
            r = label_for(cfg, row_keys)
            c = format_value(col_key, cfg.get(col_key))
            rows += [r] if r not in rows else []
            cols += [c] if c not in cols else []
            if (r, c) in pos:
                break
            pos[(r, c)] = cell
        else:
            if len(rows) * len(cols) - n <= max(1, n // 4):  # (almost) full: keep the grid
                return [(rows.index(r), cols.index(c), cell) for (r, c), cell in pos.items()]
    ncols = min(4, n)
    return [(i // ncols, i % ncols, cell) for i, cell in enumerate(cells)]


def _title(data: SweepData, cell: str) -> str:
    seeds = data.cell_runs(cell)["seed"].nunique()
    # escaped after wrapping: a break between `\` and `$` would undo the escape
    return plain("\n".join(textwrap.wrap(f"{cell} ({seeds} seed{'s' if seeds != 1 else ''})", 46)))


def _curves(data: SweepData, backdoor_metric: str):
    runs = run_curves(data)
    cum = "backdoor_cummean" if backdoor_metric == "backdoor_acc" else "heldout_cummean"
    return (cell_curves(data, "main_acc", runs), cell_curves(data, backdoor_metric, runs),
            cell_curves(data, cum, runs))


@_no_tex
def plot_panels(data: SweepData, path: Path, backdoor_metric: str = "backdoor_acc",
                title: str | None = None) -> Path:
    """One panel per cell (see module docstring); writes a PNG to `path`."""
    layout = panel_layout(data)
    nrows = max(r for r, _, _ in layout) + 1
    ncols = max(c for _, c, _ in layout) + 1
    main, bd, cum = _curves(data, backdoor_metric)
    fig = Figure(figsize=(3.9 * ncols, 2.9 * nrows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    used = set()
    for r, c, cell in layout:
        ax = axes[r][c]
        used.add((r, c))
        _band(ax, main[cell], MAIN_COLOR, ":", "main task", lw=1.5)
        _band(ax, bd[cell], BACKDOOR_COLOR, "-", "backdoor")
        _band(ax, cum[cell], CUMMEAN_COLOR, "-", "backdoor, cumulative mean", lw=1.8)
        ax.set_title(_title(data, cell), fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for r in range(nrows):
        for c in range(ncols):
            if (r, c) not in used:
                axes[r][c].set_visible(False)
        axes[r][0].set_ylabel("accuracy")
    for c in range(ncols):
        axes[nrows - 1][c].set_xlabel("round")
    first = axes[layout[0][0]][layout[0][1]]
    return _finish(fig, first, 3, 8, data, title, path)


@_no_tex
def plot_overlay(data: SweepData, path: Path, backdoor_metric: str = "backdoor_acc",
                 title: str | None = None) -> Path:
    """All cells in one panel (paper fig 4 style) plus their cumulative means."""
    main, bd, cum = _curves(data, backdoor_metric)
    fig = Figure(figsize=(11, 4.2 + 0.18 * len(data.cells())), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2, sharey=True)
    for i, cell in enumerate(data.cells()):
        color = CELL_COLORS[i % len(CELL_COLORS)]
        _band(ax, main[cell], color, ":", None, lw=1.5)
        _band(ax, bd[cell], color, "-", plain(cell))
        _band(ax2, cum[cell], color, "-", plain(cell), lw=1.8)
    ax.set_title("per round: dotted = main task, solid = backdoor", fontsize=9)
    ax2.set_title("backdoor accuracy, cumulative mean", fontsize=9)
    for a in (ax, ax2):
        a.set_xlabel("round")
        a.set_ylim(-0.02, 1.02)
        a.grid(alpha=0.3)
    ax.set_ylabel("accuracy")
    return _finish(fig, ax2, 2, 7.5, data, title, path)



def _finish(fig: Figure, legend_ax, ncols: int, fontsize: float, data: SweepData,
            title: str | None, path: Path) -> Path:
    """Legend (from `legend_ax`) under the figure, the title, and the PNG at `path`."""
    fig.legend(*legend_ax.get_legend_handles_labels(), loc="outside lower center", ncols=ncols,
               fontsize=fontsize, frameon=False)
    fig.suptitle(plain(title or f"{data.name}: mean over seeds, band = min–max over seeds"),
                 fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


# The first panel is each attack's own measure: backdoor accuracy for a backdoor attack, the
# main-accuracy drop against the unattacked cell for an untargeted one (its column says so).
EFFECT = "effect"
HEATMAP_VALUES = ((EFFECT, "backdoor acc (avg); main acc drop for untargeted attacks", "Reds"),
                  ("main_tail", "main acc (tail)", "Blues"))


def _effect_column(cfg: dict) -> str:
    return "main_drop" if attack_goal(cfg.get("attack.kind")) == "untargeted" else "backdoor_avg"


def heatmap_matrix(data: SweepData, cells: pd.DataFrame, column: str
                   ) -> tuple[list[str], list[str], np.ndarray]:
    """(defense labels, attack labels, values [defenses × attacks]) of `cells[column]`
    (a `cell_summary` frame; `EFFECT`: each attack's own measure, `_effect_column`); NaN
    where the grid has no such cell. An attack is `attack.kind` with its own
    `attack.params.*` (and `attack.fraction` when it varies); a defense is everything else
    that labels a cell (aggregator, M, σ, ...), in the report's order. An untargeted
    attack's column label ends in "(drop)" in the EFFECT panel."""
    attack_keys = [k for k in data.cell_keys
                   if k in ("attack.kind", "attack.fraction") or k.startswith("attack.params.")]
    keys = [k for k in data.cell_keys if k not in attack_keys]
    by_cell = cells.set_index("cell")
    rows: list[str] = []
    cols: list[str] = []
    at: dict[tuple[str, str], float] = {}
    for cell in data.cells():
        cfg = data.cell_config(cell)
        if column == EFFECT and cfg.get("attack.kind") == "none" and "attack.kind" in data.cell_keys:
            continue  # the baseline of the drops, not an attack
        col = _effect_column(cfg) if column == EFFECT else column
        r = label_for(cfg, keys) or "–"
        c = label_for(cfg, attack_keys) + (" (drop)" if col == "main_drop" else "")
        rows += [r] if r not in rows else []
        cols += [c] if c not in cols else []
        at[(r, c)] = float(by_cell[col].get(cell, np.nan)) if col in by_cell else np.nan
    m = np.array([[at.get((r, c), np.nan) for c in cols] for r in rows], dtype=float)
    return rows, cols, m


def wants_heatmap(data: SweepData) -> bool:
    return "attack.kind" in data.cell_keys and "defense.aggregator" in data.cell_keys


@_no_tex
def plot_heatmap(data: SweepData, cells: pd.DataFrame, path: Path) -> Path:
    """Defense × attack: one panel per `HEATMAP_VALUES` entry, value written in each square."""
    panels = [(heatmap_matrix(data, cells, col), title, cmap) for col, title, cmap in HEATMAP_VALUES]
    rows = panels[0][0][0]
    width = max(len(p[0][1]) for p in panels)
    fig = Figure(figsize=(3.2 + 1.6 * width * len(panels), 1.2 + 0.42 * len(rows)), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, ((prows, cols, m), title, cmap) in zip(axes, panels):
        m = np.array([m[prows.index(r)] if r in prows else [np.nan] * len(cols) for r in rows]).reshape(
            len(rows), len(cols))
        ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(cols)), [plain(c) for c in cols], rotation=20, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [plain(r) for r in rows], fontsize=8)
        ax.set_title(title, fontsize=9)
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = m[i, j]
                ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if not np.isnan(v) and v > 0.6 else "black")
    fig.suptitle(plain(f"{data.name}: defense × attack, mean over seeds"), fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_all(data: SweepData, out_dir: Path, backdoor_metric: str = "backdoor_acc",
             cells: pd.DataFrame | None = None) -> list[Path]:
    """The figures into `out_dir` (the heatmap when `cells` is given and `wants_heatmap`);
    returns their paths."""
    out = [
        plot_panels(data, out_dir / "panels.png", backdoor_metric),
        plot_overlay(data, out_dir / "overlay.png", backdoor_metric),
    ]
    if cells is not None and wants_heatmap(data):
        out.append(plot_heatmap(data, cells, out_dir / "heatmap.png"))
    return out

