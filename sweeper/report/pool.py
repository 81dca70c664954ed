"""The report's "Attacker pool" section (issue 25): for each attacked cell and seed, the
attacker pool's writers beside the population's (train images per writer: min / median /
max; share without a source-label image), recomputed from the run's config with the
engine's own target selection and pool draw on the data's labels
(`fl_core.pool_profile`). A run whose data is not on this machine, whose population is
lazy, or whose config this engine cannot read is named in a note instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeper.report.load import SweepData, na_to_none

@dataclass(frozen=True)
class PoolRow:
    cell: str
    seed: int
    pool_rule: str
    pool: Any        # fl_core.pool_profile.SizeProfile
    population: Any  # the same for the whole population

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cell": self.cell, "seed": self.seed, "pool_rule": self.pool_rule}
        for side in ("pool", "population"):
            p = getattr(self, side)
            out.update({f"{side}_writers": p.writers, f"{side}_min": p.min, f"{side}_median": p.median,
                        f"{side}_max": p.max, f"{side}_without_source": p.without_source})
        return out


def pool_report(data: SweepData) -> tuple[list[PoolRow], list[str]]:
    """(rows, notes): one row per attacked cell and seed, in cell order."""
    from fl_core.pool_profile import pool_profile
    from fl_core.config import parse_flat
    from fl_core.data import describe_data
    from fl_core.errors import FLCoreError

    rows: list[PoolRow] = []
    notes: list[str] = []
    keys = data.config_keys()
    for cell in data.cells():
        done: set[int] = set()
        for _, run in data.cell_runs(cell).iterrows():
            if str(na_to_none(run.get("attack.kind"))) in ("none", "None"):
                break
            flat = {k: v for k in keys if (v := na_to_none(run.get(k))) is not None}
            try:
                cfg = parse_flat(flat, source=f"run {run['run_id']}")
            except FLCoreError:
                notes.append(f"cell {cell}: a config of another engine version; its pool is not shown")
                break
            if cfg.seed in done:
                continue
            done.add(cfg.seed)
            try:
                summary = describe_data(cfg.data, cfg.seed if cfg.data.source == "synthetic" else 0)
            except (FLCoreError, OSError) as e:
                notes.append(f"cell {cell}: its data cannot be read here ({e}); its pool is not shown")
                break
            if summary.labels is None:
                notes.append(f"cell {cell}: {summary.name} gives no labels without reading every writer; "
                             "its pool is not shown")
                break
            try:
                p = pool_profile(cfg, summary.labels)
            except FLCoreError as e:
                notes.append(f"cell {cell}, seed {cfg.seed}: {e}")
                continue
            if p is not None:
                rows.append(PoolRow(cell, cfg.seed, cfg.attack.pool_rule, p.pool, p.population))
    order = {c: i for i, c in enumerate(data.cells())}
    rows.sort(key=lambda r: (order[r.cell], r.seed))
    return rows, notes


def _sizes(p) -> str:
    return f"{p.writers} writers, {p.min} / {p.median:g} / {p.max} images, {p.without_source:.0%} without a source-label image"


def pool_lines(rows: list[PoolRow]) -> list[tuple[str, str, str, list[tuple[int, str]]]]:
    """(cell, pool rule, population text, [(seed, pool text)]) per cell, for a list on the page:
    the population once per cell, the pool per seed."""
    out: list[tuple[str, str, str, list[tuple[int, str]]]] = []
    for r in rows:
        if not out or out[-1][0] != r.cell or out[-1][1] != r.pool_rule:
            out.append((r.cell, r.pool_rule, _sizes(r.population), []))
        out[-1][3].append((r.seed, _sizes(r.pool)))
    return out


POOL_INTRO = (
    "Who the attackers are: for each attacked cell and seed, the attacker pool's writers "
    "beside the whole population's (train images per writer: min / median / max, and the share of writers "
    "without a train image of the backdoor's source label), recomputed with the engine's own "
    "draw. With `attack.pool_rule: unbiased` the pool is a uniform draw from the population, "
    "so its numbers should look like the population's up to the luck of a small sample; "
    "`legacy-eligible` (the engine before issue 25) over-draws writers without a source-label "
    "image, mostly small ones (docs/REPRODUCTION.md)."
)
