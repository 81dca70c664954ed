"""The sweep's MLflow landing page: what a researcher sees on opening the experiment.

The MLflow experiment view shows the parent run collapsed, its children hidden until the
row is expanded, and charts only for visible runs. So:

- `fl-sweep ui` opens the experiment filtered to this sweep's trial runs (sweeper/ui.py),
  which MLflow then lists flat: every trial's curves are on the charts at once;
- the trials are named by their varied keys in the report's notation
  (`unconstrained, M=0.3`): the driver creates every child run, `pending`, with the
  parent; a trial finds its run by tag and re-opens it (`Tracker.get_or_create_child`);
- the grid's `description` is the experiment's and the parent's description (MLflow
  renders the `mlflow.note.content` tag as Markdown); at the end of the sweep the
  parent's gets a table of every trial's final metrics;
- the parent carries one metric per (headline metric, trial),
  `final.main_acc/no attack M:0.3`, charted directly, grouped by the prefix before `/`;
  the trial table as an MLflow table artifact (`trials_final.json`); and the report
  (figures, report.html) under `report/`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from sweeper.tracking import EXPERIMENT_KIND as KIND
from sweeper.tracking import NOTE, ROLE, STATUS, TRIAL_INDEX, TRIAL_KEY, Tracker
# metrics summarised on the parent, in this order; those a sweep did not log are left out
HEADLINE = ("main_acc", "backdoor_acc", "main_acc_clean", "backdoor_acc_heldout",
            "collateral_rate")
GUIDE = ("The trials of sweep `{sweep}` are the child runs of its parent run `{sweep}`. "
         "`fl-sweep ui {sweep}` opens this page filtered to them, on their charts; "
         "unfiltered, expand the parent's row (⊞) to see them. The parent run holds every "
         "trial's final metrics, their table and the report.")


def trial_name(overrides: Mapping[str, Any], varied_keys: Iterable[str]) -> str:
    """A trial's run name from its varied keys, in the report's notation:
    `unconstrained, M=0.3, seed=1` (the index is a fallback when nothing varies)."""
    from sweeper.report.load import _ordered_keys, label_for

    keys = [k for k in varied_keys if k != "seed"]
    name = label_for(overrides, _ordered_keys(keys)) if keys else ""
    if "seed" in varied_keys:
        name = f"{name}, seed={overrides['seed']}" if name else f"seed={overrides['seed']}"
    return name


def metric_key(metric: str, name: str) -> str:
    """`final.<metric>/<trial name>` with what MLflow refuses in a key (`=`, `,`, `%`...)
    replaced: names may hold letters, digits, `_ - . / : ` and spaces."""
    safe = re.sub(r"[^\w.\- :/]+", " ", name.replace("=", ":").replace("%", "pct"))
    return f"final.{metric}/" + re.sub(r" +", " ", safe).strip().replace("/", "-")


def describe_experiment(tracker: Tracker, experiment_id: str, sweep: str, description: str) -> None:
    """The grid's description and a short guide as the experiment's description."""
    text = (description.strip() + "\n\n" if description else "") + GUIDE.format(sweep=sweep)
    tracker.set_experiment_note(experiment_id, text)
    # without it, MLflow 3 opens a new experiment on its GenAI "Overview" (traces) page
    tracker.set_experiment_tag(experiment_id, KIND, "custom_model_development")


def create_children(tracker: Tracker, experiment_id: str, parent_run_id: str, sweep: str,
                    trials: Iterable[Any], varied_keys: Iterable[str]) -> dict[str, str]:
    """One named, `pending` child run per trial (TrialSpec), created before Tune starts;
    returns trial key → run id."""
    from fl_core.config import flatten

    keys = list(varied_keys)
    out = {}
    for t in trials:
        name = trial_name(t.overrides, keys) or f"trial-{t.index:04d}"
        out[t.trial_key] = tracker.start_child(
            experiment_id, parent_run_id, sweep, t.trial_key, name,
            params=flatten(t.config), tags={TRIAL_INDEX: str(t.index)}, pending=True,
            config=t.config)
    return out


def final_table(tracker: Tracker, manifest: Mapping[str, Any]):
    """One row per trial: index, name, varied keys, state, round, final headline metrics."""
    import pandas as pd

    keys = manifest.get("varied_keys", [])
    runs = {r.data.tags.get(TRIAL_KEY): r
            for r in tracker.child_runs(manifest["experiment_id"], manifest["parent_run_id"])
            if r.data.tags.get(ROLE) == "trial"}
    rows = []
    for t in manifest["trials"]:
        r = runs.get(t["trial_key"])
        m = r.data.metrics if r is not None else {}
        row = {"#": t["index"], "trial": trial_name(t["overrides"], keys) or f"trial-{t['index']:04d}",
               **{k: t["overrides"].get(k) for k in keys},
               "state": r.data.tags.get(STATUS, "running") if r is not None else "pending",
               "round": int(m.get("round", 0)), "rounds": t["rounds"]}
        row.update({k: m.get(k) for k in HEADLINE})
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.drop(columns=[k for k in HEADLINE if df[k].isna().all()])


def _md(x: Any) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x).replace("|", "\\|")


def summarise(tracker: Tracker, manifest: Mapping[str, Any], sweep_dir: Path,
              echo: Callable[[str], None]) -> None:
    """Fill the parent run with the sweep's summary (see the module docstring). A failure
    here is reported and never fails the sweep: the trials' results are already stored."""
    parent = manifest["parent_run_id"]
    df = final_table(tracker, manifest)
    metrics = {}
    for row in df.to_dict("records"):
        for k in HEADLINE:
            v = row.get(k)
            if isinstance(v, (int, float)) and v == v:  # logged, not NaN
                metrics[metric_key(k, row["trial"])] = v
    tracker.log_metrics(parent, metrics, step=0)
    tracker.log_table(parent, df, "trials_final.json")
    cols = [c for c in df.columns if c not in ("rounds",)]
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(_md(r[c]) for c in cols) + " |" for r in df.to_dict("records")]
    desc = manifest.get("description") or ""
    note = ((desc.strip() + "\n\n") if desc else "") + "**Final metrics per trial**\n\n" + \
        "\n".join(table) + "\n\n" + GUIDE.format(sweep=manifest["name"])
    tracker.set_tags(parent, {NOTE: note})
    try:
        from sweeper.report.load import load_sweeps
        from sweeper.report.page import build_report, log_to_mlflow

        data = load_sweeps([str(sweep_dir)], read_only=False)  # the driver writes after
        rep = build_report(data, sweep_dir / "report")
        log_to_mlflow(data, rep)
        echo(f"  report:    {sweep_dir / 'report' / 'report.html'} (also on the MLflow parent run)")
    except Exception as e:  # noqa: BLE001 - the report is a convenience; the sweep is done
        echo(f"  report:    not written ({type(e).__name__}: {e}); try `fl-sweep report {manifest['name']}`")
