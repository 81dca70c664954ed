"""The paper's six claims (Sun et al. 2019, §5 and figs 1–6) as explicit checks.

Each claim's verdict tests only what the paper's text says, and carries the sentence it
comes from (`QUOTES`, printed by the report). What we check beyond the text (claim 1's
"main task intact", which the paper never states for the unconstrained attack; claim 5's
"M = 10 does not mitigate") are named extra checks (`ClaimResult.extras`): printed beside
the verdict with their numbers, never part of it.

Each claim is a list of inequalities between numbers measured in the sweep (means over
seeds of the run statistics defined in `stats`: `backdoor (avg)` = mean backdoor accuracy
over the attacked run, `main (tail)` = mean main-task accuracy over the last 10% of
rounds) and bounds built from `Thresholds`. The verdict follows from the checks alone:

- PASS: every check holds (on the seed means);
- FAIL: at least one check fails;
- N.A.: the loaded sweeps lack a cell the claim needs (the result says which).

Every check also says in how many seeds it holds on its own (seeds paired by seed
number), which answers "how sure are you?" without changing the verdict.

| # | verdict (what the paper's text says) | extra checks (ours, not in the verdict) | cells used |
|---|---|---|---|
| 1 | the unconstrained fixed-frequency attack at ε = 3.3% succeeds (fig 1); main-task cost and collateral printed beside | `main_intact` (≤ 2 points below the unattacked cell), `random_sampling_high` | unconstrained, ε_high, N = 30, each schedule; baseline if loaded |
| 2 | at ε = 0.33% the attack is much weaker (figs 1, 2) | – | ε_high and ε_low per attack (unconstrained; PGD M = 10) and schedule |
| 3 | fixed-frequency is at least as effective as random sampling (figs 1, 2) | – | both schedules per attack and ε |
| 4 | more backdoor tasks → lower backdoor accuracy (fig 3) | – | PGD M = 10, fixed-frequency, ε_high, every N |
| 5 | M = 3 mitigates the norm-bounded attack with almost no main-task loss (fig 4a) | `m_high_not_mitigated` (M = 10 does not) | PGD fixed-frequency ε_high with M = 3 and 10, unattacked baseline |
| 6 | M = 5 alone does not mitigate; adding σ = 0.025 mitigates further without hurting the main task much (fig 4b) | – | PGD fixed-frequency ε_high, M = 5 with σ = 0 and σ = 0.025, unattacked baseline |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import pandas as pd

from fl_core.config import uniform_weighting
from sweeper.report.load import SweepData
from sweeper.report.stats import DEFAULT_TAIL, run_summary

PASS, FAIL, NA = "PASS", "FAIL", "N.A."


@dataclass(frozen=True)
class Thresholds:
    """Bounds of the claim checks; every default is documented in docs/REPRODUCTION.md.

    Attributes:
        eps_high: ε of the strong attack (3.3%, one attacker every round).
        eps_low: ε of the weak attack (0.33%, one attacker every 10th round).
        tasks: number of backdoor tasks N of claims 1–3, 5, 6 (the paper's 30).
        high_backdoor: claim 1: backdoor (avg) ≥ this counts as "high".
        main_intact_drop: claim 1's extra check `main_intact`: baseline main − attacked
            main ≤ this (2 points); used when the unattacked baseline is loaded.
        min_main_acc: attacked main ≥ this where a main-task check has no baseline loaded
            (claim 1's `main_intact`, claim 6).
        weaker_ratio: claim 2: backdoor(ε_low) ≤ weaker_ratio × backdoor(ε_high).
        schedule_tolerance: claim 3: backdoor(fixed) ≥ backdoor(random) − this.
        tasks_tolerance: claim 4: from one N to the next larger, backdoor may rise by at
            most this (seed noise).
        tasks_min_drop: claim 4: backdoor(N_min) − backdoor(N_max) ≥ this.
        m_low, m_mid, m_high: the norm bounds M of claims 5, 6 (3, 5, 10).
        sigma: the noise σ of claim 6 (0.025).
        mitigated_max: claims 5: backdoor (avg) ≤ this counts as mitigated; M = m_high
            must stay above it.
        max_main_drop: claim 5: baseline main − main at M = m_low ≤ this (1 point).
        further_min_gap: claim 6: backdoor(σ = 0) − backdoor(σ) ≥ this.
        dp_max_main_drop: claim 6: baseline main − main with the noise ≤ this (our reading
            of "without hurting the overall performance much": 2 points).
        tail: fraction of the last evaluated rounds averaged into "main (tail)".
        burn_in: fraction of the first attacked rounds left out of "backdoor (avg)"
            (0 = the paper's cumulative mean; use ~0.25 for runs of a few dozen rounds,
            whose untrained first rounds call every digit a 1).
    """

    eps_high: float = 0.033
    eps_low: float = 0.0033
    tasks: int = 30
    high_backdoor: float = 0.8
    main_intact_drop: float = 0.02
    min_main_acc: float = 0.9
    weaker_ratio: float = 0.5
    schedule_tolerance: float = 0.05
    tasks_tolerance: float = 0.02
    tasks_min_drop: float = 0.05
    m_low: float = 3.0
    m_mid: float = 5.0
    m_high: float = 10.0
    sigma: float = 0.025
    mitigated_max: float = 0.2
    max_main_drop: float = 0.01
    further_min_gap: float = 0.05
    dp_max_main_drop: float = 0.02
    tail: float = DEFAULT_TAIL
    burn_in: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):  # NaN compares false and ∞ bounds nothing: both fake a verdict
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"threshold `{f.name}` needs a finite number, got {v!r}")
        if self.tasks < 1:
            raise ValueError(f"tasks must be a whole number ≥ 1, got {self.tasks}")
        if not 0 < self.tail <= 1:
            raise ValueError(f"tail must be in (0, 1], got {self.tail}")
        if not 0 <= self.burn_in < 1:
            raise ValueError(f"burn_in must be in [0, 1), got {self.burn_in}")
        if not 0 < self.eps_low < self.eps_high < 1:
            raise ValueError(f"need 0 < eps_low < eps_high < 1, got {self.eps_low}, {self.eps_high}")
        if not 0 < self.m_low < self.m_mid < self.m_high:
            raise ValueError(f"need 0 < m_low < m_mid < m_high, got {self.m_low}, {self.m_mid}, {self.m_high}")

    @classmethod
    def from_overrides(cls, items: Mapping[str, str]) -> "Thresholds":
        """`{"high_backdoor": "0.7"}` → Thresholds with that default replaced."""
        known = {f.name: f.type for f in fields(cls)}
        vals: dict[str, Any] = {}
        for k, v in items.items():
            if k not in known:
                raise ValueError(f"unknown threshold `{k}`; known: {', '.join(known)}")
            try:
                vals[k] = int(v) if k == "tasks" else float(v)
            except ValueError:
                raise ValueError(f"threshold `{k}` needs a number, got {v!r}") from None
        return cls(**vals)


@dataclass(frozen=True)
class Check:
    """One inequality `value op bound` on seed means; `seeds_ok` of `seeds_n` paired
    seeds satisfy it on their own."""

    text: str
    value: float
    op: str  # ">=" or "<="
    bound: float
    seeds_ok: int
    seeds_n: int
    name: str = ""  # an extra check's name (`main_intact`, ...); "" for a verdict check

    @property
    def ok(self) -> bool:
        return holds(self.value, self.op, self.bound)


@dataclass(frozen=True)
class ClaimResult:
    number: int
    claim: str
    figure: str
    verdict: str
    checks: tuple[Check, ...]
    cells: tuple[str, ...]
    note: str = ""
    quote: str = ""  # the paper's sentence(s) the verdict tests, with where they stand
    extras: tuple[Check, ...] = ()  # named checks beyond the text: printed, not in the verdict

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [{**asdict(c), "ok": c.ok} for c in self.checks]
        d["extras"] = [{**asdict(c), "ok": c.ok} for c in self.extras]
        return d


#: What the paper says, per claim: the sentences each verdict tests (Sun et al. 2019,
#: arXiv:1911.07963 v2; ../shared/paper/).
QUOTES = {
    1: ("§6: \"In the absence of any defense, we showed that the performance of the adversary "
        "largely depends on the fraction of adversaries present. Hence, for reasonable success, "
        "there needs to be a large number of adversaries.\" (fig 1, ε = 3.3%: one attacker every "
        "round). §5 on the main task of this attack says only: \"Note that our attack approach "
        "does not require 7s from other clients to be classified as 1s.\""),
    2: ("§5, Fraction of corrupted users: \"we can infer that the backdoor attack success largely "
        "depends on the fraction of adversaries and the performance of backdoor attack degrades as "
        "the fraction of fully compromised users falls below 1%.\""),
    3: ("§5, Random sampling vs. fixed frequency attacks: \"The figures show that both attack "
        "models have similar behaviors, despite fixed frequency attacks being slightly more "
        "effective than random sampling attacks.\""),
    4: ("§5, Number of backdoor tasks: \"We can see from the plot that the more backdoor tasks we "
        "have, the harder it is to fit a malicious model.\""),
    5: ("§5, Norm bound for the update: \"We can see from the plot that selecting 3 as the norm "
        "bound will successfully mitigate the attack with almost no effect on the performance of "
        "the main task.\""),
    6: ("§5, Weak differential privacy: \"We use norm bound of 5, which itself would not mitigate "
        "the attack, and add independent Gaussian noise with variance 0.025 to each coordinate. "
        "From the plots, we can see that adding Gaussian noise can also help mitigate the attack "
        "beyond norm clipping without hurting the overall performance much.\""),
}


def holds(value: float, op: str, bound: float) -> bool:
    """`value op bound`; NaN never holds."""
    if math.isnan(value) or math.isnan(bound):
        return False
    if op == ">=":
        return value >= bound
    if op == "<=":
        return value <= bound
    raise ValueError(f"unknown comparison {op!r}")


def verdict_of(checks: tuple[Check, ...] | list[Check]) -> str:
    """PASS iff there are checks and all hold; N.A. without checks; FAIL otherwise."""
    if not checks:
        return NA
    return PASS if all(c.ok for c in checks) else FAIL


# --------------------------------------------------------------------------- cell lookup
class _Cells:
    """Cell configs and per-seed run statistics of a SweepData."""

    def __init__(self, data: SweepData, th: Thresholds):
        self.data = data
        self.th = th
        self.summary = run_summary(data, th.tail, th.burn_in)
        self.configs = {c: data.cell_config(c) for c in data.cells()}

    def find(self, **crit: Any) -> list[str]:
        """Cells whose config matches every `key__sub=value` (dots as `__`); floats match
        within 5% (so ε = 0.033 finds 1/30)."""
        out = []
        for cell, cfg in self.configs.items():
            if all(_match(cfg.get(k.replace("__", ".")), v) for k, v in crit.items()):
                out.append(cell)
        return out

    def stat(self, cell: str, column: str) -> pd.Series:
        g = self.summary[self.summary["cell"] == cell]
        # Runs of one cell that differ only in execution keys (workers, ...) share a seed.
        return g.groupby("seed")[column].mean().sort_index()


def _match(have: Any, want: Any) -> bool:
    if callable(want):
        return bool(want(have))
    if want is None or have is None:
        return have is None and want is None
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return math.isclose(float(have), float(want), rel_tol=0.05, abs_tol=1e-12)
    return have == want


def _pct(x: float) -> str:
    return f"{x * 100:.3g}%"


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def make_check(text: str, lhs: pd.Series, op: str, rhs: pd.Series | float, name: str = "") -> Check:
    """Compare seed means; count the seeds (present on both sides) for which it holds.
    `name`: an extra check's name (outside the verdict)."""
    rhs_s = rhs if isinstance(rhs, pd.Series) else pd.Series(float(rhs), index=lhs.index)
    value = float(lhs.mean()) if len(lhs.dropna()) else float("nan")
    bound = float(rhs_s.mean()) if len(rhs_s.dropna()) else float("nan")
    common = lhs.dropna().index.intersection(rhs_s.dropna().index)
    ok = sum(holds(float(lhs[s]), op, float(rhs_s[s])) for s in common)
    return Check(text, value, op, bound, int(ok), len(common), name)


# --------------------------------------------------------------------------- the claims
def _family_filters(th: Thresholds) -> dict[str, dict[str, Any]]:
    return {
        "unconstrained": dict(attack__kind="model-replacement", defense__norm_bound=None,
                              defense__noise_sigma=0.0, attack__num_tasks=th.tasks),
        f"PGD M={th.m_high:g}": dict(attack__kind="pgd", defense__norm_bound=th.m_high,
                                     defense__noise_sigma=0.0, attack__num_tasks=th.tasks),
    }


# What makes an unattacked cell the like-for-like baseline of an attacked one: the same
# defense and the same aggregation rule. Comparing an attacked, clipped, uniformly weighted
# cell with the unclipped n_k-weighted baseline would measure the defense and the weighting
# change as much as the attack.
_DEFENSE_KEYS = ("defense.norm_bound", "defense.noise_sigma")


def aggregation_rule(cfg: Mapping[str, Any]) -> str:
    """`uniform` or `weighted`, as the engine resolves `defense.weighting: auto`."""
    uniform = uniform_weighting(cfg.get("defense.weighting") or "auto", cfg.get("defense.norm_bound"),
                                float(cfg.get("defense.noise_sigma") or 0))
    return "uniform" if uniform else "weighted"


def _same_defense(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if not all(_match(a.get(k), b.get(k)) for k in _DEFENSE_KEYS):
        return False
    noised = float(a.get("defense.noise_sigma") or 0) > 0
    if noised and (a.get("defense.noise_placement") or "sum") != (b.get("defense.noise_placement") or "sum"):
        return False
    return aggregation_rule(a) == aggregation_rule(b)


def _baseline(c: _Cells, cell: str) -> str | None:
    """The unattacked cell with `cell`'s defense and aggregation rule, or None."""
    cfg = c.configs[cell]
    for b in c.find(attack__kind="none"):
        if _same_defense(c.configs[b], cfg):
            return b
    return None


def _describe(cfg: Mapping[str, Any]) -> str:
    m, s = cfg.get("defense.norm_bound"), float(cfg.get("defense.noise_sigma") or 0)
    parts = ["no clipping" if m is None else f"M = {float(m):g}"] + ([f"σ = {s:g}"] if s else [])
    return ", ".join(parts) + f", {aggregation_rule(cfg)} mean"


def _baseline_note(c: _Cells, pairs: list[tuple[str, str | None]]) -> str:
    """Which baseline each attacked cell was compared with (the report prints this)."""
    out = []
    for cell, base in pairs:
        if base is None:
            out.append(f"no unattacked cell with {_describe(c.configs[cell])} loaded for [{cell}]")
        else:
            out.append(f"baseline of [{cell}]: [{base}] (unattacked, {_describe(c.configs[cell])})")
    return "; ".join(out)


def _main_check(c: _Cells, cell: str, base: str | None, max_drop: float, drop_name: str,
                name: str = "") -> Check:
    """Baseline main (tail) − main (tail) of `cell` ≤ `max_drop`, or without a baseline
    loaded main (tail) ≥ min_main_acc."""
    if base is not None:
        return make_check(f"main (tail) of [{base}] − main (tail) of [{cell}] ≤ {drop_name}",
                          c.stat(base, "main_tail") - c.stat(cell, "main_tail"), "<=", max_drop, name)
    return make_check(f"main (tail) of [{cell}] ≥ min_main_acc (no baseline loaded)",
                      c.stat(cell, "main_tail"), ">=", c.th.min_main_acc, name)


def claim1(c: _Cells) -> ClaimResult:
    th = c.th
    claim = (f"the unconstrained fixed-frequency attack at ε = {_pct(th.eps_high)} (one attacker "
             "every round) reaches high backdoor accuracy")
    unc = _family_filters(th)["unconstrained"]
    ff = c.find(**unc, attack__fraction=th.eps_high, attack__schedule="fixed-frequency")
    rs = c.find(**unc, attack__fraction=th.eps_high, attack__schedule="random-sampling")
    checks: list[Check] = []
    extras: list[Check] = []
    pairs: list[tuple[str, str | None]] = []
    beside: list[str] = []
    for cell in ff[:1]:
        checks.append(make_check(f"backdoor (avg) of [{cell}] ≥ high_backdoor",
                                 c.stat(cell, "backdoor_avg"), ">=", th.high_backdoor))
    for cell in rs[:1]:
        extras.append(make_check(f"backdoor (avg) of [{cell}] ≥ high_backdoor",
                                 c.stat(cell, "backdoor_avg"), ">=", th.high_backdoor, "random_sampling_high"))
    for cell in ff[:1] + rs[:1]:
        base = _baseline(c, cell)
        pairs.append((cell, base))
        extras.append(_main_check(c, cell, base, th.main_intact_drop, "main_intact_drop", "main_intact"))
        parts = []
        if base is not None:
            parts.append(f"main-task cost {float((c.stat(base, 'main_tail') - c.stat(cell, 'main_tail')).mean()):+.3f}")
        col = c.stat(cell, "collateral_avg").dropna()
        if len(col):
            parts.append(f"collateral (avg) {float(col.mean()):.3f}")
        if parts:
            beside.append(f"[{cell}]: " + ", ".join(parts))
    used = tuple(ff[:1] + rs[:1]) + tuple(dict.fromkeys(b for _, b in pairs if b))
    if ff:
        note = _baseline_note(c, pairs)
        if beside:
            note += "; (not part of the verdict) " + "; ".join(beside)
    else:
        note = (f"needs an unconstrained fixed-frequency cell with ε = {th.eps_high:g}, N = {th.tasks}, "
                "no defense (grids/paper/fig1_5.yaml)")
    return ClaimResult(1, claim, "1, 5", verdict_of(checks), tuple(checks), used, note, QUOTES[1], tuple(extras))


def claim2(c: _Cells) -> ClaimResult:
    th = c.th
    claim = f"at ε = {_pct(th.eps_low)} the attack is much weaker than at ε = {_pct(th.eps_high)}"
    checks, used = [], []
    for fam, filt in _family_filters(th).items():
        for sched in ("fixed-frequency", "random-sampling"):
            hi = c.find(**filt, attack__schedule=sched, attack__fraction=th.eps_high)
            lo = c.find(**filt, attack__schedule=sched, attack__fraction=th.eps_low)
            if hi and lo:
                h, l = hi[0], lo[0]
                checks.append(make_check(
                    f"backdoor (avg) of [{l}] ≤ weaker_ratio × backdoor (avg) of [{h}]",
                    c.stat(l, "backdoor_avg"), "<=", th.weaker_ratio * c.stat(h, "backdoor_avg")))
                used += [h, l]
    note = "" if checks else "needs cells at both ε values with the same attack and schedule (fig1_5 / fig2_6)"
    return ClaimResult(2, claim, "1, 2, 5, 6", verdict_of(checks), tuple(checks), tuple(used), note, QUOTES[2])


def claim3(c: _Cells) -> ClaimResult:
    th = c.th
    claim = "fixed-frequency attacks are at least as effective as random sampling"
    checks, used = [], []
    for fam, filt in _family_filters(th).items():
        for eps in (th.eps_high, th.eps_low):
            ff = c.find(**filt, attack__schedule="fixed-frequency", attack__fraction=eps)
            rs = c.find(**filt, attack__schedule="random-sampling", attack__fraction=eps)
            if ff and rs:
                checks.append(make_check(
                    f"backdoor (avg) of [{ff[0]}] ≥ backdoor (avg) of [{rs[0]}] − schedule_tolerance",
                    c.stat(ff[0], "backdoor_avg"), ">=",
                    c.stat(rs[0], "backdoor_avg") - th.schedule_tolerance))
                used += [ff[0], rs[0]]
    note = "" if checks else "needs both schedules at the same ε and attack (fig1_5 / fig2_6)"
    return ClaimResult(3, claim, "1, 2, 5, 6", verdict_of(checks), tuple(checks), tuple(used), note, QUOTES[3])


def claim4(c: _Cells) -> ClaimResult:
    th = c.th
    claim = f"more backdoor tasks → lower backdoor accuracy (PGD, M = {th.m_high:g})"
    cells = c.find(attack__kind="pgd", defense__norm_bound=th.m_high, defense__noise_sigma=0.0,
                   attack__schedule="fixed-frequency", attack__fraction=th.eps_high)
    by_n: dict[int, str] = {}
    for cell in cells:
        by_n.setdefault(int(c.configs[cell]["attack.num_tasks"]), cell)
    ns = sorted(by_n)
    checks: list[Check] = []
    if len(ns) >= 2:
        for a, b in zip(ns, ns[1:]):
            checks.append(make_check(
                f"backdoor (avg) of [{by_n[b]}] ≤ backdoor (avg) of [{by_n[a]}] + tasks_tolerance",
                c.stat(by_n[b], "backdoor_avg"), "<=",
                c.stat(by_n[a], "backdoor_avg") + th.tasks_tolerance))
        lo, hi = by_n[ns[0]], by_n[ns[-1]]
        checks.append(make_check(
            f"backdoor (avg) of [{lo}] − backdoor (avg) of [{hi}] ≥ tasks_min_drop",
            c.stat(lo, "backdoor_avg") - c.stat(hi, "backdoor_avg"), ">=", th.tasks_min_drop))
    note = "" if checks else f"needs PGD M = {th.m_high:g} cells at ≥ 2 values of N (grids/paper/fig3.yaml)"
    return ClaimResult(4, claim, "3", verdict_of(checks), tuple(checks),
                       tuple(by_n[n] for n in ns) if checks else (), note, QUOTES[4])


def _pgd_every_round(c: _Cells, m: float, sigma: float) -> list[str]:
    th = c.th
    return c.find(attack__kind="pgd", defense__norm_bound=m, defense__noise_sigma=sigma,
                  attack__schedule="fixed-frequency", attack__fraction=th.eps_high,
                  attack__num_tasks=th.tasks)


def claim5(c: _Cells) -> ClaimResult:
    th = c.th
    claim = (f"M = {th.m_low:g} clipping mitigates the norm-bounded attack with almost no main-task "
             f"loss (at most {th.max_main_drop * 100:g} point{'' if th.max_main_drop == 0.01 else 's'})")
    lo = _pgd_every_round(c, th.m_low, 0.0)
    hi = _pgd_every_round(c, th.m_high, 0.0)
    base = _baseline(c, lo[0]) if lo else None
    if not (lo and base):
        miss = [n for n, x in ((f"PGD M={th.m_low:g}", lo),
                               (f"the unattacked M={th.m_low:g} baseline (same weighting)", base)) if not x]
        return ClaimResult(5, claim, "4a", NA, (), (),
                           f"missing: {', '.join(miss)} (grids/paper/fig4a.yaml + fig4_baseline.yaml)", QUOTES[5])
    l = lo[0]
    checks = (
        make_check(f"backdoor (avg) of [{l}] ≤ mitigated_max", c.stat(l, "backdoor_avg"), "<=",
                   th.mitigated_max),
        make_check(f"main (tail) of [{base}] − main (tail) of [{l}] ≤ max_main_drop",
                   c.stat(base, "main_tail") - c.stat(l, "main_tail"), "<=", th.max_main_drop),
    )
    extras = tuple(make_check(f"backdoor (avg) of [{h}] ≥ mitigated_max (not mitigated)",
                              c.stat(h, "backdoor_avg"), ">=", th.mitigated_max, "m_high_not_mitigated")
                   for h in hi[:1])
    note = _baseline_note(c, [(l, base)])
    unclipped = c.find(attack__kind="none", defense__norm_bound=None, defense__noise_sigma=0.0)
    if unclipped:
        cost = float((c.stat(unclipped[0], "main_tail") - c.stat(base, "main_tail")).mean())
        note += (f"; (not part of the verdict) main-task cost of clipping itself, unattacked "
                 f"[{unclipped[0]}] − [{base}]: {cost:+.3f}")
    return ClaimResult(5, claim, "4a", verdict_of(checks), checks, (l, *hi[:1], base), note, QUOTES[5], extras)


def claim6(c: _Cells) -> ClaimResult:
    th = c.th
    claim = (f"M = {th.m_mid:g} alone does not mitigate; adding σ = {th.sigma:g} mitigates further "
             "without hurting the main task much")
    plain = _pgd_every_round(c, th.m_mid, 0.0)
    noisy = _pgd_every_round(c, th.m_mid, th.sigma)
    if not (plain and noisy):
        return ClaimResult(6, claim, "4b", NA, (), (),
                           f"needs PGD M = {th.m_mid:g} with σ = 0 and σ = {th.sigma:g} (grids/paper/fig4b.yaml)",
                           QUOTES[6])
    p, n = plain[0], noisy[0]
    base = _baseline(c, n)
    checks = (
        make_check(f"backdoor (avg) of [{p}] ≥ mitigated_max (M = {th.m_mid:g} alone does not mitigate)",
                   c.stat(p, "backdoor_avg"), ">=", th.mitigated_max),
        make_check(f"backdoor (avg) of [{p}] − backdoor (avg) of [{n}] ≥ further_min_gap",
                   c.stat(p, "backdoor_avg") - c.stat(n, "backdoor_avg"), ">=", th.further_min_gap),
        _main_check(c, n, base, th.dp_max_main_drop, "dp_max_main_drop"),
    )
    note = _baseline_note(c, [(n, base)])
    return ClaimResult(6, claim, "4b", verdict_of(checks), checks, (p, n) + ((base,) if base else ()), note,
                       QUOTES[6])


CLAIMS = (claim1, claim2, claim3, claim4, claim5, claim6)


#: the keys the claims tell cells apart by (the paper's axes, and the weighting that the
#: like-for-like baselines match); loaded cells that also differ in any other key would
#: leave a claim two candidates for one cell, e.g. both populations (`data.min_examples`)
#: or both recipes (`attack.params.recipe`)
CLAIM_AXES = frozenset({"attack.kind", "attack.fraction", "attack.schedule", "attack.frequency",
                        "attack.num_tasks", "defense.norm_bound", "defense.noise_sigma",
                        "defense.noise_placement", "defense.weighting", "seed"})


def check_claims(data: SweepData, thresholds: Thresholds | None = None) -> list[ClaimResult]:
    """Evaluate all six claims on the loaded runs. When the cells also differ in a key the
    claims do not tell apart, every claim is N.A. with the reason, never a verdict on
    whichever of two candidate cells came first."""
    cells = _Cells(data, thresholds or Thresholds())
    results = [f(cells) for f in CLAIMS]
    foreign = [k for k in data.cell_keys if k not in CLAIM_AXES]
    if not foreign:
        return results
    values = "; ".join(
        f"{k}: {', '.join(sorted({str(cfg.get(k)) for cfg in cells.configs.values()}))}" for k in foreign)
    note = (f"the loaded cells also differ in {', '.join(foreign)} ({values}), which the claims do "
            "not tell apart: report one value at a time (e.g. only the sweeps of one population "
            "or one recipe)")
    return [replace(r, verdict="N.A.", checks=(), extras=(), cells=(), note=note) for r in results]


def format_check(ch: Check) -> str:
    return (f"{ch.text}: {_fmt(ch.value)} {'≥' if ch.op == '>=' else '≤'} {_fmt(ch.bound)} "
            f"→ {'holds' if ch.ok else 'fails'} (per seed {ch.seeds_ok}/{ch.seeds_n})")
