"""How private is the paper's "weak DP"? (ε, δ) from a real accountant.

The defense of Sun et al. 2019 (§4, fig 4b) clips every client update to L2 norm M and
adds Gaussian noise; in the reference code (tensorflow_privacy's GaussianSumQuery wrapped
in a NormalizedQuery) the noise of std σ goes on the SUM of the C·K clipped updates.
Read as user-level DP-FedAvg (McMahan et al. 2018), one round is a subsampled Gaussian
mechanism over the K writers:

- placement `sum`:  the sum has sensitivity M and noise std σ, so the noise multiplier
  is z = σ / M;
- placement `mean`: the mean has sensitivity M / (C·K) and noise std σ, so
  z = σ · C·K / M;
- sampling rate q = C·K / K per round, composed over the T rounds that were run.

(ε, δ) come from `dp-accounting` (Google): `RdpAccountant` (Rényi DP, the classic
moments-accountant bound) and `PLDAccountant` (privacy-loss distributions, tighter),
both on `SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), T)` under
add/remove-one-writer adjacency. Two approximations, both stated in the report: the
cohort is a fixed-size sample without replacement (the paper) or with replacement (the
reference code), accounted here as Poisson sampling with the same expected size; and only
the aggregation is accounted (the model is public, evaluation uses no private data).

With the paper's values (M = 5, σ = 0.025, placement sum) z = 0.005: a noise std of 1/200
of one writer's sensitivity. No accountant gives a meaningful ε for that.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from sweeper.report.load import SweepData, na_to_none

DEFAULT_DELTA = 1e-5
TFF_DIGITS_WRITERS = 3383  # TFF fed_emnist_digitsonly (NOTES.md)


@dataclass(frozen=True)
class PrivacyResult:
    """(ε, δ) of one noisy cell; `epsilon_pld` is None when PLD could not be run."""

    cell: str
    placement: str
    sigma: float
    norm_bound: float
    clients_per_round: int
    population: int
    population_source: str
    sampling_rate: float
    rounds: int
    noise_multiplier: float
    delta: float
    epsilon_rdp: float
    rdp_order: float
    epsilon_pld: float | None
    pld_note: str
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def epsilon(self) -> float:
        """The tightest ε computed (PLD when available, else RDP)."""
        return self.epsilon_pld if self.epsilon_pld is not None else self.epsilon_rdp


def noise_multiplier(sigma: float, norm_bound: float, clients_per_round: int,
                     placement: str) -> float:
    """z = noise std / sensitivity of the noised quantity (see the module docstring).

    Args:
        sigma: σ, the noise std per coordinate (parameter units).
        norm_bound: M, the per-client L2 clip (parameter units).
        clients_per_round: C·K, the cohort size the mean divides by.
        placement: "sum" (σ on the sum of the clipped updates) or "mean" (σ on the mean).
    """
    if norm_bound <= 0:
        raise ValueError(f"norm bound must be > 0, got {norm_bound}")
    if placement == "sum":
        return sigma / norm_bound
    if placement == "mean":
        return sigma * clients_per_round / norm_bound
    raise ValueError(f"noise placement must be `sum` or `mean`, got {placement!r}")


def _event(z: float, q: float, rounds: int):
    import dp_accounting as dpa

    return dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(min(1.0, q), dpa.GaussianDpEvent(z)), int(rounds))


def epsilon_rdp(z: float, q: float, rounds: int, delta: float) -> tuple[float, float]:
    """(ε, optimal Rényi order) from the RDP accountant."""
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant()
    acc.compose(_event(z, q, rounds))
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)


def epsilon_pld(z: float, q: float, rounds: int, delta: float,
                scale_hint: float | None = None) -> float:
    """ε from the PLD accountant (a pessimistic, i.e. upper, estimate).

    The discretization interval grows with the expected ε (`scale_hint`, e.g. the RDP
    ε): at the default 1e-4 a tiny z (ε in the millions) would need billions of bins.
    """
    from dp_accounting.pld import PLDAccountant

    interval = 1e-4
    if scale_hint is not None and math.isfinite(scale_hint):
        interval = min(1.0, max(1e-4, scale_hint / 2e4))
    acc = PLDAccountant(value_discretization_interval=interval)
    acc.compose(_event(z, q, rounds))
    return float(acc.get_epsilon(delta))


def plain_words(eps: float, delta: float) -> str:
    """How strong an (ε, δ) guarantee is, in one sentence."""
    if not math.isfinite(eps):
        return "no guarantee at all (ε is infinite)"
    if eps <= 1:
        return f"strong: ε = {eps:.2g} bounds any attacker's odds gain by e^ε ≈ {math.exp(eps):.2g}×"
    if eps <= 10:
        return (f"moderate: ε = {eps:.3g} (deployed DP-FL systems report ε ≈ 1–10); "
                f"odds may grow by up to e^ε ≈ {math.exp(eps):.3g}×")
    if eps <= 100:
        return (f"weak: ε = {eps:.3g} lets an attacker's odds grow by e^ε ≈ "
                f"{math.exp(eps):.1e}×; a formal but practically empty guarantee")
    return (f"none in practice: ε = {eps:.3g} (e^ε ≈ 10^{eps / math.log(10):.0f}); "
            "the noise is far too small to hide any writer")


def population_size(cfg: Mapping[str, Any]) -> tuple[int | None, str]:
    """K, the number of writers training draws from, and how it was found."""
    source = cfg.get("data.source")
    path = na_to_none(cfg.get("data.path"))
    cap = na_to_none(cfg.get("data.max_writers"))
    k: int | None = None
    how = ""
    if source == "synthetic":
        k, how = int(cfg.get("data.num_writers") or 0), "data.num_writers"
    elif source == "tff-h5" and path:
        f = Path(path) / "fed_emnist_digitsonly_train.h5"
        if f.exists():
            k, how = _count_h5_writers(f), f"writers in {f}"
        else:
            k, how = TFF_DIGITS_WRITERS, f"{f} not found here: assumed the full TFF digits"
    elif source == "embedded":
        files = sorted(_embedded_dir().glob("*train*.h5"))
        if files:
            k, how = _count_h5_writers(files[0]), f"writers in the embedded {files[0].name}"
    elif source == "leaf" and path:
        users: set[str] = set()
        for f in sorted((Path(path) / "train").glob("*.json")):
            users.update(json.loads(f.read_text()).get("users", []))
        if users:
            k, how = len(users), f"users in {path}/train/*.json"
    if k is None:
        return None, f"unknown for data.source={source}, data.path={path}"
    if cap is not None and cap < k:
        k, how = int(cap), f"data.max_writers (of {how})"
    return k, how


def _embedded_dir() -> Path:
    import fl_core.data

    return Path(fl_core.data.__file__).parent / "embedded"


def _count_h5_writers(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as h5:
        return len(h5["examples"])


def account(cell: str, cfg: Mapping[str, Any], rounds: int, delta: float = DEFAULT_DELTA,
            population: int | None = None) -> PrivacyResult | None:
    """The PrivacyResult of one cell, or None if the cell adds no noise."""
    sigma = float(na_to_none(cfg.get("defense.noise_sigma")) or 0.0)
    if sigma <= 0:
        return None
    m = float(cfg["defense.norm_bound"])
    ck = int(cfg["fl.clients_per_round"])
    placement = str(cfg.get("defense.noise_placement") or "sum")
    if population is not None:
        k, how = population, "given"
    else:
        k, how = population_size(cfg)
    if k is None:
        raise ValueError(f"cell {cell}: population size {how}; pass it explicitly")
    q = min(1.0, ck / k)
    z = noise_multiplier(sigma, m, ck, placement)
    e_rdp, order = epsilon_rdp(z, q, rounds, delta)
    try:
        e_pld, note = epsilon_pld(z, q, rounds, delta, scale_hint=e_rdp), ""
    except (ValueError, MemoryError, OverflowError) as e:
        e_pld, note = None, f"PLD failed: {e}"
    best = e_pld if e_pld is not None else e_rdp
    return PrivacyResult(
        cell=cell, placement=placement, sigma=sigma, norm_bound=m, clients_per_round=ck,
        population=int(k), population_source=how, sampling_rate=q, rounds=int(rounds),
        noise_multiplier=z, delta=delta, epsilon_rdp=e_rdp, rdp_order=order,
        epsilon_pld=e_pld, pld_note=note, verdict=plain_words(best, delta),
    )


def privacy_report(data: SweepData, delta: float = DEFAULT_DELTA,
                   population: int | None = None) -> list[PrivacyResult]:
    """One PrivacyResult per cell with σ > 0, over the most rounds any of its runs ran."""
    out = []
    last = data.metrics.groupby("run_id")["round"].max()
    for cell in data.cells():
        runs = data.cell_runs(cell)
        rounds = int(last.reindex(runs["run_id"]).max())
        res = account(cell, data.cell_config(cell), rounds, delta, population)
        if res is not None:
            out.append(res)
    return out
