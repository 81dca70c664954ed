"""The numbers behind the figures, the table and the claims.

Definitions (used everywhere in the report, and stated on the page):
- **cumulative mean** of the backdoor accuracy at round t: the mean of the run's
  evaluated backdoor accuracies from the first evaluated round after `attack.start_round`
  up to t (the paper's green line). With `fl.eval_every` > 1 it averages the evaluated
  rounds only.
- **backdoor (avg)** of a run: its cumulative mean at its last round, i.e. the mean
  backdoor accuracy over the whole attacked run. This is what the claims compare: with
  an attack every 10th round the per-round accuracy spikes and decays, and the average
  is what the paper's green line shows. With `burn_in` = b > 0 the first b·n of those
  n rounds are left out: an untrained model calls every digit a 1, so the first rounds
  of a short run score "backdoor accuracy" 1.0 with or without an attack.
- **main (tail)** of a run: its mean main-task accuracy over the last `tail` fraction of
  evaluated rounds (at least one round): the level training settled at, less noisy than
  the last round alone.
- **main clean (tail)**: the same tail mean of `main_acc_clean` (test images whose label is not
  the backdoor's source label), so a semantic backdoor's own label does not count.
- **collateral (avg)**: the mean `collateral_rate` (non-target writers' source-label images
  predicted as the target label) over the attacked rounds, with the same burn-in as
  backdoor (avg): how far the backdoor spreads beyond its targets.
- **backdoor lifespan** of a run with `attack.stop_round` = S: the rounds after the attack
  stops until the backdoor accuracy is first seen below half its peak of the attack window
  (rounds S..; the first evaluated round r > S with accuracy < peak/2 gives r − S, so its
  resolution is `fl.eval_every`). A run that ends before that gives a lower bound (r_last − S),
  counted in `lifespan_censored`; NaN without a stop round, without an attack, and when the
  peak stays below `LIFESPAN_MIN_PEAK` (0.2): no backdoor was implanted, so there is nothing
  to outlive (a trigger task reads ~0.01 unattacked; half of a peak of 0.03 is noise).
- **main drop** of a cell: the unattacked cell's main (tail) minus this cell's, mean over
  seeds (min and max: against the unattacked cell's mean). The unattacked cell is the one
  with `attack.kind: none` and every key outside `attack.*` equal; NaN when the grid has
  none. It is the measure of an untargeted attack (ALIE, IPM, Min-Max, ...).
- **aggregator s/round**: the aggregation rule's own wall time per round
  (`aggregate_seconds`, mean over evaluated rounds).
- Cell values are the mean over the cell's seeds, with min and max.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sweeper.report.load import SweepData, na_to_none

DEFAULT_TAIL = 0.1


def cumulative_mean(values: pd.Series | np.ndarray, start: int = 0) -> np.ndarray:
    """Running mean of `values` from position `start` on; NaN before `start`.

    NaN entries (an unevaluated metric) are skipped: the mean is over the values seen.
    """
    v = np.asarray(values, dtype=float)
    out = np.full(v.shape, np.nan)
    if start >= len(v):
        return out
    tail = v[start:]
    ok = ~np.isnan(tail)
    sums = np.cumsum(np.where(ok, tail, 0.0))
    counts = np.cumsum(ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[start:] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def _start_index(rounds: np.ndarray, start_round: int | None) -> int:
    """Index of the first evaluated round after the attack starts (round r is 1-based:
    rounds completed, so round r ran 0-based round r-1 ≥ start_round)."""
    s = int(start_round or 0)
    idx = np.nonzero(rounds - 1 >= s)[0]
    return int(idx[0]) if len(idx) else len(rounds)


#: the least peak backdoor accuracy of the attack window for which a lifespan is computed
LIFESPAN_MIN_PEAK = 0.2


def backdoor_lifespan(rounds: np.ndarray, backdoor: np.ndarray, start_round: int | None,
                      stop_round: int | None) -> tuple[float, bool]:
    """(lifespan in rounds, censored?) as defined in the module docstring.

    Args:
        rounds: 1-based evaluated rounds (round r = r rounds done, its last one 0-based r − 1).
        backdoor: backdoor accuracy at those rounds (NaN = not evaluated).
    """
    if stop_round is None:
        return float("nan"), False
    r = np.asarray(rounds, dtype=float)
    b = np.asarray(backdoor, dtype=float)
    s0, s1 = int(start_round or 0), int(stop_round)
    window = (r - 1 >= s0) & (r - 1 < s1) & ~np.isnan(b)
    after = (r > s1) & ~np.isnan(b)
    if not window.any() or not after.any():
        return float("nan"), False
    peak = float(b[window].max())
    if peak < LIFESPAN_MIN_PEAK:
        return float("nan"), False
    fallen = np.nonzero(after & (b < peak / 2))[0]
    if len(fallen):
        return float(r[fallen[0]] - s1), False
    return float(r[after].max() - s1), True


def run_curves(data: SweepData) -> pd.DataFrame:
    """Per run and round: the metrics plus `backdoor_cummean` and `heldout_cummean`."""
    parts = []
    for run_id, g in data.metrics.groupby("run_id", sort=False):
        g = g.sort_values("round").copy()
        start = data.runs.loc[run_id].get("attack.start_round", 0)
        i0 = _start_index(g["round"].to_numpy(), None if pd.isna(start) else start)
        g["backdoor_cummean"] = cumulative_mean(g["backdoor_acc"].to_numpy(), i0)
        g["heldout_cummean"] = cumulative_mean(g["backdoor_acc_heldout"].to_numpy(dtype=float), i0)
        parts.append(g)
    out = pd.concat(parts, ignore_index=True)
    cols = data.runs[["run_id", "cell", "seed"]].reset_index(drop=True)
    return out.merge(cols, on="run_id", how="left")


def _tail_mean(x: pd.Series, tail: float) -> float:
    n = max(1, int(math.ceil(len(x) * tail)))
    return float(x.iloc[-n:].mean())


def _late_mean(x: pd.Series, burn_in: float) -> float:
    """Mean of the non-NaN values of `x` after dropping the first ceil(burn_in·n)."""
    x = x.dropna()
    if x.empty:
        return float("nan")
    skip = min(len(x) - 1, int(math.ceil(len(x) * burn_in)))
    return float(x.iloc[skip:].mean())


def run_summary(data: SweepData, tail: float = DEFAULT_TAIL, burn_in: float = 0.0) -> pd.DataFrame:
    """One row per run: cell, seed, rounds, final and averaged metrics (see module doc).

    Args:
        tail: fraction of the last evaluated rounds averaged into `main_tail`, in (0, 1].
        burn_in: fraction of the attacked rounds left out of `backdoor_avg` and
            `heldout_avg`, in [0, 1); 0 = the paper's cumulative mean.
    """
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    if not 0 <= burn_in < 1:
        raise ValueError(f"burn_in must be in [0, 1), got {burn_in}")
    curves = run_curves(data)
    rows = []
    for run_id, g in curves.groupby("run_id", sort=False):
        g = g.sort_values("round")
        last = g.iloc[-1]
        attacked = g["num_attackers"].fillna(0) > 0
        cfg = data.runs.loc[run_id]
        attacked_run = cfg.get("attack.kind") not in (None, "none")
        lifespan, censored = backdoor_lifespan(
            g["round"].to_numpy(), g["backdoor_acc"].to_numpy(dtype=float),
            _opt_int(cfg.get("attack.start_round")),
            _opt_int(cfg.get("attack.stop_round")) if attacked_run else None)
        after = g["backdoor_cummean"].notna()  # evaluated rounds after attack.start_round
        rows.append({
            "run_id": run_id,
            "cell": last["cell"],
            "seed": int(last["seed"]),
            "status": data.runs.loc[run_id, "status"],
            "rounds": int(last["round"]),
            "main_final": float(last["main_acc"]),
            "main_tail": _tail_mean(g["main_acc"], tail),
            "backdoor_final": float(last["backdoor_acc"]),
            "backdoor_avg": _late_mean(g.loc[after, "backdoor_acc"].astype(float), burn_in),
            "heldout_avg": _late_mean(g.loc[after, "backdoor_acc_heldout"].astype(float), burn_in),
            # absent in runs made before these metrics existed: NaN, shown as "–"
            "clean_tail": _tail_mean(_col(g, "main_acc_clean"), tail),
            "collateral_avg": _late_mean(_col(g, "collateral_rate").loc[after], burn_in),
            # aggregators that select or flag clients (fl_core/round.py): mean over the
            # evaluated rounds that logged them (flag_tpr only where attackers took part)
            "flag_tpr_avg": float(_col(g, "flag_tpr").mean()),
            "flag_fpr_avg": float(_col(g, "flag_fpr").mean()),
            "lifespan": lifespan,
            "lifespan_censored": float(censored),
            "attacked_rounds": float(attacked.mean()),
            "attackers_per_round": float(g["num_attackers"].fillna(0).mean()),
            "benign_norm_p90_median": float(g["benign_norm_p90"].median()),
            "aggregate_seconds": float(_col(g, "aggregate_seconds").mean()),
        })
    return pd.DataFrame(rows)


def _opt_int(v) -> int | None:
    """A round from the runs' frame (`load` already parsed MLflow's strings): NaN/None → None."""
    v = na_to_none(v)
    return None if v is None else int(v)


def _col(g: pd.DataFrame, name: str) -> pd.Series:
    return g[name].astype(float) if name in g else pd.Series(np.nan, index=g.index)


SUMMARY_COLUMNS = (
    "main_final", "main_tail", "clean_tail", "backdoor_final", "backdoor_avg", "heldout_avg",
    "collateral_avg", "flag_tpr_avg", "flag_fpr_avg", "lifespan", "lifespan_censored",
    "attacked_rounds", "attackers_per_round", "benign_norm_p90_median", "aggregate_seconds",
)


def attack_goal(kind: object) -> str:
    """`backdoor` or `untargeted`: the registered attack's goal (`AttackSpec.goal`); an
    attack this engine does not know (a run of another version) counts as a backdoor one."""
    from fl_core.attacks import ATTACKS

    spec = ATTACKS.get(kind) if isinstance(kind, str) else None
    return spec.goal if spec is not None else "backdoor"


def unattacked_cell(data: SweepData, cell: str) -> str | None:
    """The cell with `attack.kind: none` whose keys outside `attack.*` equal `cell`'s."""
    def rest(c: str) -> dict:
        return {k: v for k, v in data.cell_config(c).items() if not k.startswith("attack.")}

    mine = rest(cell)
    for other in data.cells():
        if data.cell_config(other).get("attack.kind") == "none" and rest(other) == mine:
            return other
    return None


def _main_drop(data: SweepData, cells: pd.DataFrame) -> pd.DataFrame:
    """`main_drop` (+ `_min`, `_max`) of every cell against its unattacked cell."""
    tail = dict(zip(cells["cell"], cells["main_tail"]))
    drop, lo, hi = [], [], []
    for _, row in cells.iterrows():
        base = unattacked_cell(data, row["cell"])
        b = tail.get(base, float("nan")) if base is not None else float("nan")
        drop.append(b - row["main_tail"])
        lo.append(b - row["main_tail_max"])
        hi.append(b - row["main_tail_min"])
    return cells.assign(main_drop=drop, main_drop_min=lo, main_drop_max=hi)


def cell_summary(data: SweepData, tail: float = DEFAULT_TAIL, burn_in: float = 0.0) -> pd.DataFrame:
    """One row per cell (paper order): n seeds, rounds, and mean/min/max over seeds of
    each `SUMMARY_COLUMNS` value (columns `<name>`, `<name>_min`, `<name>_max`)."""
    runs = run_summary(data, tail, burn_in)
    rows = []
    for cell in data.cells():
        g = runs[runs["cell"] == cell]
        row = {"cell": cell, "seeds": len(g), "rounds_min": int(g["rounds"].min()),
               "rounds_max": int(g["rounds"].max()),
               "statuses": ",".join(sorted(set(g["status"].astype(str))))}
        for c in SUMMARY_COLUMNS:
            row[c] = float(g[c].mean())
            row[f"{c}_min"] = float(g[c].min())
            row[f"{c}_max"] = float(g[c].max())
        rows.append(row)
    return _main_drop(data, pd.DataFrame(rows))


def cell_curves(data: SweepData, metric: str,
                curves: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Per cell: a frame indexed by round with columns mean, min, max, n over seeds.

    Args:
        curves: `run_curves(data)` if already computed (it is the costly part).
    """
    curves = run_curves(data) if curves is None else curves
    out = {}
    for cell in data.cells():
        g = curves[curves["cell"] == cell]
        piv = g.pivot_table(index="round", columns="run_id", values=metric, aggfunc="first")
        out[cell] = pd.DataFrame({
            "mean": piv.mean(axis=1), "min": piv.min(axis=1), "max": piv.max(axis=1),
            "n": piv.notna().sum(axis=1),
        })
    return out
