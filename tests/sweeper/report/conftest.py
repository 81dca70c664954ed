"""Fixtures of the report tests: `fl-sweep simulate`-style output directories with
designed curves, so that every number the report computes is known in advance.

`write_run(dir, overrides, seed, curves)` writes DIR/config.yaml (the fully resolved
config, as `fl-sweep simulate` does) and DIR/metrics.jsonl (one line per round).
`paper_cells(...)` describes every cell of the paper's figures with a constant backdoor
and main accuracy per cell, chosen so that all six claims PASS with the default
thresholds; tests perturb single cells to make one claim FAIL.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fl_core.config import config_hash, flatten, parse_config, set_dotted

ROUNDS = 20
BASE = {
    "data": {"source": "embedded"},
    "fl": {"rounds": ROUNDS, "clients_per_round": 30},
}


def write_run(d: Path, overrides: dict[str, Any], seed: int, curves: dict[str, list]) -> Path:
    raw = json.loads(json.dumps(BASE))
    for k, v in overrides.items():
        set_dotted(raw, k, v)
    raw["seed"] = seed
    cfg = parse_config(raw)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    n = len(next(iter(curves.values())))
    with open(d / "metrics.jsonl", "w") as f:
        for i in range(n):
            row = {"round": i + 1, "num_attackers": 0, "main_loss": 0.3,
                   "benign_norm_p50": 1.0, "benign_norm_p90": 1.5}
            row.update({k: v[i] for k, v in curves.items()})
            f.write(json.dumps(row) + "\n")
    return d


MR = {"attack.kind": "model-replacement"}
PGD = {"attack.kind": "pgd"}


def _pgd(m, **kw):
    return {**PGD, "defense.norm_bound": m, **kw}


def paper_cells() -> dict[str, tuple[dict[str, Any], float, float]]:
    """name → (config overrides, backdoor accuracy, main accuracy); all claims PASS."""
    hi, lo = 0.033, 0.0033
    ff, rs = "fixed-frequency", "random-sampling"
    return {
        "baseline": ({"attack.kind": "none"}, 0.01, 0.95),
        # like-for-like baselines of the defended cells: unattacked, same defense/weighting
        "baseline_m3": ({"attack.kind": "none", "defense.norm_bound": 3.0}, 0.01, 0.95),
        "baseline_m5_dp": ({"attack.kind": "none", "defense.norm_bound": 5.0,
                            "defense.noise_sigma": 0.025}, 0.01, 0.95),
        "mr_hi_ff": ({**MR, "attack.fraction": hi, "attack.schedule": ff}, 0.95, 0.94),
        "mr_hi_rs": ({**MR, "attack.fraction": hi, "attack.schedule": rs}, 0.92, 0.94),
        "mr_lo_ff": ({**MR, "attack.fraction": lo, "attack.schedule": ff}, 0.30, 0.95),
        "mr_lo_rs": ({**MR, "attack.fraction": lo, "attack.schedule": rs}, 0.20, 0.95),
        "pgd_hi_ff": (_pgd(10.0, **{"attack.fraction": hi, "attack.schedule": ff}), 0.80, 0.95),
        "pgd_hi_rs": (_pgd(10.0, **{"attack.fraction": hi, "attack.schedule": rs}), 0.78, 0.95),
        "pgd_lo_ff": (_pgd(10.0, **{"attack.fraction": lo, "attack.schedule": ff}), 0.20, 0.95),
        "pgd_lo_rs": (_pgd(10.0, **{"attack.fraction": lo, "attack.schedule": rs}), 0.15, 0.95),
        "pgd_n10": (_pgd(10.0, **{"attack.fraction": hi, "attack.num_tasks": 10}), 0.90, 0.95),
        "pgd_n20": (_pgd(10.0, **{"attack.fraction": hi, "attack.num_tasks": 20}), 0.85, 0.95),
        "pgd_n50": (_pgd(10.0, **{"attack.fraction": hi, "attack.num_tasks": 50}), 0.60, 0.95),
        "pgd_m3": (_pgd(3.0, **{"attack.fraction": hi}), 0.05, 0.945),
        "pgd_m5": (_pgd(5.0, **{"attack.fraction": hi}), 0.50, 0.95),
        "pgd_m5_dp": (_pgd(5.0, **{"attack.fraction": hi, "defense.noise_sigma": 0.025}), 0.20, 0.95),
    }


def write_cells(root: Path, cells: dict[str, tuple[dict[str, Any], float, float]],
                seeds=(0, 1), jitter: float = 0.01, rounds: int = ROUNDS) -> Path:
    """Constant curves per cell; seed s shifts both accuracies by (s − mean seed)·jitter."""
    mid = sum(seeds) / len(seeds)
    for name, (ov, bd, main) in cells.items():
        for s in seeds:
            shift = (s - mid) * jitter
            attacked = ov.get("attack.kind", "none") != "none"
            write_run(root / name / f"seed{s}", ov, s, {
                "backdoor_acc": [bd + shift] * rounds,
                "backdoor_acc_heldout": [max(0.0, bd - 0.1 + shift)] * rounds,
                "main_acc": [main + shift] * rounds,
                "num_attackers": [1 if attacked else 0] * rounds,
            })
    return root


@pytest.fixture
def run_writer():
    return write_run


@pytest.fixture
def cells_writer():
    return write_cells


@pytest.fixture
def paper_sweep(tmp_path) -> Path:
    """Every paper cell, 2 seeds, all claims PASS by construction."""
    return write_cells(tmp_path / "paper", paper_cells())


@pytest.fixture
def paper_cell_table():
    return paper_cells


@pytest.fixture(scope="module")
def mlflow_sweep(tmp_path_factory):
    """A sweep directory as `fl-sweep run` leaves it (manifest + sqlite store), written
    with the sweeper's Tracker: 2 cells × 2 seeds, 5 rounds each."""
    from sweeper import storage
    from sweeper.tracking import Tracker, default_uri

    root = tmp_path_factory.mktemp("sweeps")
    sweep_dir = root / "fig4b-mini"
    sweep_dir.mkdir()
    uri = default_uri(sweep_dir)
    tr = Tracker(uri)
    tr.init_store(template_dir=root)
    exp = tr.experiment("fig4b-mini", (sweep_dir / "artifacts").as_uri())
    parent = tr.start_parent(exp, "fig4b-mini")
    for sigma, bd in ((0.0, 0.6), (0.025, 0.2)):
        for seed in (0, 1):
            cfg = parse_config({"seed": seed, "data": {"source": "embedded", "max_writers": 40},
                                "fl": {"rounds": 5},
                                "attack": {"kind": "pgd", "fraction": 0.033},
                                "defense": {"norm_bound": 5.0, "noise_sigma": sigma}})
            run = tr.get_or_create_child(exp, parent, "fig4b-mini", config_hash(cfg),
                                         f"s{sigma}-{seed}", flatten(cfg))
            for r in range(1, 6):
                tr.log_metrics(run, {"main_acc": 0.8 + 0.01 * r, "backdoor_acc": bd,
                                     "backdoor_acc_heldout": None, "num_attackers": 1}, step=r)
            tr.finish(run, "finished")
    storage.write_json(sweep_dir / storage.MANIFEST, {
        "name": "fig4b-mini", "tracking_uri": uri, "experiment_id": exp,
        "parent_run_id": parent})
    return root, sweep_dir, uri, parent


def md_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of `text` as rows of cells (header first, separator dropped)."""
    tables, cur = [], []
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            cur.append(cells)
        elif line.startswith("|---"):
            continue
        elif cur:
            tables.append(cur)
            cur = []
    if cur:
        tables.append(cur)
    return tables


@pytest.fixture(name="md_tables")
def _md_tables_fixture():
    return md_tables
