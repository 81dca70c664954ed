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

Adaptive clipping (`defense.clip_quantile`, Andrew et al. 2021): the bound C_t follows a
quantile of the update norms, learnt from a noisy count of the unclipped updates. Per round
there are two Gaussian queries on the same sampled cohort: the update sum at noise multiplier
z_Δ (std z_Δ·C_t, sensitivity C_t) and the count of Σ(b_i − ½) with std σ_b (sensitivity ½,
so multiplier 2σ_b). By the paper's Theorem 1 they are one Gaussian mechanism with
z⁻² = z_Δ⁻² + (2σ_b)⁻², and the engine picks z_Δ so that this z is the configured one (σ at
the initial bound C₀ = M). The accountant is given the pair as TF-Privacy reports it
(`PoissonSampledDpEvent(q, ComposedDpEvent([Gaussian(z_Δ), Gaussian(2σ_b)]))`) for RDP, and
the one Gaussian of the composed multiplier for PLD (which takes no composition inside the
sampling); the bound's update is post-processing of the noisy count and costs nothing.

With the paper's values (M = 5, σ = 0.025, placement sum) z = 0.005: a noise std of 1/200
of one writer's sensitivity. No accountant gives a meaningful ε for that.

The accountants' work is bounded for any valid input (see the constants below): RDP over a
fixed list of orders, PLD at a discretization coarse enough for a bounded number of bins
(else "not computed", and the RDP ε stands). δ, K and the config values they use are
checked first (ReportError naming `--delta`, `--population` or the key).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from fl_core.config import update_noise_multiplier
from fl_core.errors import FLCoreError
from sweeper.report.load import ReportError, SweepData, na_to_none

DEFAULT_DELTA = 1e-5
DELTA_ALLOWED = "a finite number with 0 < δ < 1 (e.g. 1e-5)"
TFF_DIGITS_WRITERS = 3383  # TFF fed_emnist_digitsonly (NOTES.md)

# The accountants' work is bounded whatever the inputs (issue 19: `--delta 0` made the PLD
# discretize an infinite ε at 1e-4, 18 GB before it was killed):
# - RDP: one pass per order of this fixed list (dp-accounting's default), each at most
#   max(order + 1, 1000) terms;
RDP_ORDERS = (tuple(1 + x / 10 for x in range(1, 100)) + tuple(float(a) for a in range(11, 64))
              + (128.0, 256.0, 512.0, 1024.0))
# - PLD: the privacy loss is discretized at PLD_MIN_INTERVAL or coarser, so that one round's
#   PMF has at most PLD_MAX_ROUND_BINS entries and the composition over T rounds (at most T
#   times as many) at most PLD_MAX_BINS; past PLD_MAX_ROUNDS it is not computed.
PLD_MIN_INTERVAL = 1e-4
PLD_MAX_ROUND_BINS = 2**17
PLD_MAX_BINS = 2**22
PLD_MAX_ROUNDS = PLD_MAX_BINS // 16
# - z outside [Z_MIN, Z_MAX] leaves float range in both (z², order²/z²): above, ε is
#   accounted at Z_MAX (ε only falls as z grows, so that bounds it); below, ε = ∞.
Z_MIN, Z_MAX = 1e-100, 1e100


def check_delta(delta: Any) -> float:
    """δ as a float, or a ReportError naming `--delta`: δ = 0 asks for pure DP, which no
    Gaussian mechanism has (ε = ∞), and δ ≥ 1 (or NaN) promises nothing."""
    if (isinstance(delta, bool) or not isinstance(delta, numbers.Real)
            or not 0 < float(delta) < 1):
        shown = f"{delta:g}" if isinstance(delta, float) else repr(delta)
        raise ReportError(f"--delta {shown}: δ must be {DELTA_ALLOWED}")
    return float(delta)


def check_population(population: Any) -> int | None:
    """K as given (None: counted from the data), or a ReportError naming `--population`."""
    if population is None:
        return None
    if (isinstance(population, bool) or not isinstance(population, numbers.Integral)
            or population < 1):
        raise ReportError(f"--population {population}: K must be a whole number ≥ 1")
    return int(population)


@dataclass(frozen=True)
class PrivacyResult:
    """(ε, δ) of one noisy cell; `epsilon_pld` is None when PLD was not computed
    (`pld_note` says why), `pld_interval` the loss discretization it ran at."""

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
    pld_interval: float | None = None
    mechanism: str = "fixed clipping"
    update_noise_multiplier: float | None = None
    count_noise: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def epsilon(self) -> float:
        """The tightest ε computed: both accountants give upper bounds (PLD is usually
        tighter, but not when its discretization had to be coarse)."""
        return self.epsilon_rdp if self.epsilon_pld is None else min(self.epsilon_pld, self.epsilon_rdp)


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


def _event(z: float, q: float, rounds: int, parts: tuple[float, ...] | None = None):
    """T rounds of a Poisson-sampled Gaussian of multiplier z, or, with `parts`, of the
    Gaussians of those multipliers composed on the same sample (adaptive clipping)."""
    import dp_accounting as dpa

    inner = (dpa.GaussianDpEvent(min(z, Z_MAX)) if parts is None else
             dpa.ComposedDpEvent([dpa.GaussianDpEvent(min(p, Z_MAX)) for p in parts]))
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(min(1.0, q), inner), int(rounds))


def composed_noise_multiplier(parts: tuple[float, ...]) -> float:
    """The multiplier of Gaussian queries composed on one sample: z = (Σ z_j⁻²)^(−1/2)."""
    return sum(p ** -2 for p in parts) ** -0.5


def epsilon_rdp(z: float, q: float, rounds: int, delta: float,
                parts: tuple[float, ...] | None = None) -> tuple[float, float]:
    """(ε, optimal Rényi order) from the RDP accountant over the fixed `RDP_ORDERS`; with
    `parts`, of those Gaussians composed per round (z is then their composed multiplier).

    z < Z_MIN gives (∞, NaN): the accountant's α²/z² overflows there, and its NaN came
    back as ε = 0 ("strong privacy") for no noise at all."""
    from dp_accounting.rdp import RdpAccountant

    if not z >= Z_MIN:
        return math.inf, math.nan
    acc = RdpAccountant(orders=RDP_ORDERS)
    acc.compose(_event(z, q, rounds, parts))
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return (float(eps) if eps >= 0 else math.inf), float(order)


def loss_width(z: float, q: float) -> float:
    """W: the width of one round's privacy-loss range (dp-accounting's connect-the-dots
    bounds, the wider of add and remove), which its PMF covers in W/h + 3 bins at interval h."""
    from dp_accounting.pld.privacy_loss_mechanism import AdjacencyType, GaussianPrivacyLoss

    w = 0.0
    for adjacency in (AdjacencyType.ADD, AdjacencyType.REMOVE):
        b = GaussianPrivacyLoss(min(z, Z_MAX), sampling_prob=min(1.0, q),
                                adjacency_type=adjacency).connect_dots_bounds()
        w = max(w, b.epsilon_upper - b.epsilon_lower)
    return w


def pld_interval(z: float, q: float, rounds: int, scale_hint: float | None = None) -> float:
    """The PLD's discretization interval h: PLD_MIN_INTERVAL, or coarser where the expected
    ε (`scale_hint`, e.g. the RDP ε) is large (h = ε/2e4 costs little precision) or where
    the bins would exceed the bounds above (one round W/h + 3 bins, T rounds T times that).

    It depends on z, q and T only, never on δ. Raises ValueError (the reason) when no h
    bounds the work: too many rounds, or z below Z_MIN.
    """
    if not z >= Z_MIN:
        raise ValueError(f"z = {z:.3g} is below {Z_MIN:g}: its privacy loss leaves float range")
    if rounds > PLD_MAX_ROUNDS:
        raise ValueError(f"{rounds} rounds, more than the {PLD_MAX_ROUNDS} its work is "
                         "bounded to (the RDP ε stands)")
    w = loss_width(z, q)
    if not math.isfinite(w):
        raise ValueError(f"one round's privacy loss is not finite at z = {z:.3g}, q = {q:.3g}")
    h = max(PLD_MIN_INTERVAL,
            w / (PLD_MAX_ROUND_BINS - 3),
            rounds * w / (PLD_MAX_BINS - 3 * rounds))
    if scale_hint is not None and math.isfinite(scale_hint) and scale_hint > 0:
        h = max(h, scale_hint / 2e4)
    return h


def pld_bins(z: float, q: float, rounds: int, interval: float) -> int:
    """An upper bound on the length of the composed PMF at `interval` (T · one round's)."""
    return int(rounds) * (math.floor(loss_width(z, q) / interval) + 3)


def epsilon_pld(z: float, q: float, rounds: int, delta: float,
                scale_hint: float | None = None) -> float:
    """ε from the PLD accountant (a pessimistic, i.e. upper, estimate) at `pld_interval`.

    Its discretization adds at most h per round to ε (pessimistic rounding); the PMF's
    truncated tails make ε = ∞ for a δ below their mass (~1e-15).
    """
    from dp_accounting.pld import PLDAccountant

    acc = PLDAccountant(value_discretization_interval=pld_interval(z, q, rounds, scale_hint))
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
    """K, the number of writers training draws from, and how it was found; (None, why)
    when it cannot be known here (the data files are read back: any error says so)."""
    source = cfg.get("data.source")
    path = na_to_none(cfg.get("data.path"))
    try:
        k, how = _count_writers(source, path, cfg)
    except (FLCoreError, OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        return None, f"cannot be counted for data.source={source}, data.path={path}: {e}"
    if k is None or k < 1:
        return None, f"unknown for data.source={source}, data.path={path}"
    cap = na_to_none(cfg.get("data.max_writers"))
    if cap is not None:
        if not _is_count(cap):
            return None, f"data.max_writers = {cap!r} is not a whole number ≥ 1"
        if int(cap) < k:
            k, how = int(cap), f"data.max_writers (of {how})"
    return k, how


def _count_writers(source: Any, path: Any, cfg: Mapping[str, Any]) -> tuple[int | None, str]:
    """K from the data's metadata, through the one function that answers it for `fl-sweep
    validate` too (`fl_core.data.describe_data`); a LEAF population is counted from its
    JSON (its labels sit beside the pixels), and a TFF pair not on this machine is
    assumed to be the full TFF digits."""
    filtered = _is_count(na_to_none(cfg.get("data.min_examples")))  # data.min_examples drops writers
    if source == "leaf" and filtered:  # the JSON's user count is before the filter
        return None, ""
    if source == "synthetic" and not filtered:  # K is the config itself (any K a config names)
        n = na_to_none(cfg.get("data.num_writers"))
        return (int(n), "data.num_writers") if _is_count(n) else (None, "")
    if source == "tff-h5" and path and not (Path(path) / "fed_emnist_digitsonly_train.h5").exists():
        return TFF_DIGITS_WRITERS, f"{path} not found here: assumed the full TFF digits"
    if source == "leaf" and path:
        from fl_core.data.leaf import train_users  # the guarded reader of LEAF JSON

        users = train_users(Path(path))
        return (len(users), f"users in {path}/train/*.json") if users else (None, "")
    if source not in ("tff-h5", "embedded", "synthetic"):
        return None, ""
    from fl_core.config import DataConfig
    from fl_core.data import describe_data

    fields = {k: v for k in DataConfig.model_fields
              if (v := na_to_none(cfg.get(f"data.{k}"))) is not None}
    # lax: a pandas column holds an int setting as a float (100.0); K before max_writers,
    # which population_size applies itself
    fields["max_writers"] = None
    seed = na_to_none(cfg.get("seed"))
    summary = describe_data(DataConfig.model_validate(fields, strict=False),
                            int(seed) if _is_count(seed) else 0)
    return summary.num_writers, f"writers of {summary.name} (its metadata)"


def _is_count(v: Any) -> bool:
    """A whole number ≥ 1 (an int, or a float like 30.0 from a pandas column)."""
    return (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            and float(v).is_integer() and v >= 1)


def _config_number(where: str, key: str, value: Any, allowed: str, ok) -> float:
    """A number of the cell's config the accounting computes with, or a ReportError naming
    the key (a run's config is read back from files someone may have sent)."""
    v = na_to_none(value)
    if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
            or not ok(v)):
        raise ReportError(f"{where}: `{key}` = {v!r}: the DP accounting needs {allowed}")
    return float(v)


def account(cell: str, cfg: Mapping[str, Any], rounds: int, delta: float = DEFAULT_DELTA,
            population: int | None = None, where: str | None = None) -> PrivacyResult | None:
    """The PrivacyResult of one cell, or None if the cell adds no noise.

    Args:
        where: what the cell's config was read from, for error messages.

    Raises:
        ReportError: δ or K out of range, or a config value the accounting cannot use.
    """
    delta = check_delta(delta)
    population = check_population(population)
    where = where or f"cell `{cell}`"
    sigma = na_to_none(cfg.get("defense.noise_sigma"))
    sigma = _config_number(where, "defense.noise_sigma", 0.0 if sigma is None else sigma,
                           "a finite number ≥ 0", lambda v: v >= 0)
    if sigma == 0:
        return None
    m = _config_number(where, "defense.norm_bound", cfg.get("defense.norm_bound"),
                       "a finite number > 0 when σ > 0", lambda v: v > 0)
    ck = int(_config_number(where, "fl.clients_per_round", cfg.get("fl.clients_per_round"),
                            "a whole number ≥ 1", lambda v: _is_count(v)))
    placement = cfg.get("defense.noise_placement") or "sum"
    if placement not in ("sum", "mean"):
        raise ReportError(f"{where}: `defense.noise_placement` = {placement!r}: the DP "
                          "accounting needs sum or mean")
    if not _is_count(rounds):
        raise ReportError(f"{where}: {rounds!r} rounds: the DP accounting needs a whole number ≥ 1")
    rounds = int(rounds)
    if population is not None:
        k, how = population, "given"
    else:
        k, how = population_size(cfg)
    if k is None:
        raise ReportError(f"{where}: the population size K is {how}; pass --population K")
    q = min(1.0, ck / k)
    z = noise_multiplier(sigma, m, ck, placement)
    adaptive = _adaptive_parts(where, cfg, z, ck)
    if adaptive is not None:
        z = composed_noise_multiplier(adaptive)
    e_rdp, order = epsilon_rdp(z, q, rounds, delta, adaptive)
    e_pld, interval, note = None, None, ""
    try:
        interval = pld_interval(z, q, rounds, scale_hint=e_rdp)
        e_pld = epsilon_pld(z, q, rounds, delta, scale_hint=e_rdp)
    except (ValueError, OverflowError, ZeroDivisionError, FloatingPointError, MemoryError) as e:
        e_pld, note = None, f"PLD not computed: {e}"
    if e_pld is not None and math.isinf(e_pld) and math.isfinite(e_rdp):
        note = f"PLD gives ε = ∞: δ = {delta:g} is below the mass its truncated tails leave out"
    best = e_rdp if e_pld is None else min(e_pld, e_rdp)
    verdict, extra = plain_words(best, delta), {}
    if adaptive is not None:
        z_update, z_count = adaptive
        mechanism = (f"adaptive clipping (Andrew et al. 2021, Thm 1): update noise z_Δ = {z_update:.4g} "
                     f"and count noise σ_b = {z_count / 2:.4g} (multiplier 2σ_b = {z_count:.4g}) "
                     f"compose to z = {z:.4g}, the z of the configured σ at the initial bound C₀")
        verdict = f"{verdict} [{mechanism}]"
        extra = {"mechanism": mechanism, "update_noise_multiplier": z_update, "count_noise": z_count / 2}
    return PrivacyResult(
        cell=cell, placement=placement, sigma=sigma, norm_bound=m, clients_per_round=ck,
        population=int(k), population_source=how, sampling_rate=q, rounds=rounds,
        noise_multiplier=z, delta=delta, epsilon_rdp=e_rdp, rdp_order=order,
        epsilon_pld=e_pld, pld_note=note, verdict=verdict,
        pld_interval=interval if e_pld is not None else None, **extra,
    )


def _adaptive_parts(where: str, cfg: Mapping[str, Any], z: float, ck: int) -> tuple[float, float] | None:
    """(z_Δ, 2σ_b) of a cell with adaptive clipping, None for a fixed bound: the engine's
    split of the configured z (`fl_core.config.adaptive_clip_noise`; σ_b null = C·K/20, as
    σ > 0 here). A pair the engine refuses is a ReportError naming the key."""
    quantile = na_to_none(cfg.get("defense.clip_quantile"))
    if quantile is None:
        return None
    _config_number(where, "defense.clip_quantile", quantile, "a number in [0, 1]", lambda v: 0 <= v <= 1)
    raw = na_to_none(cfg.get("defense.clip_count_noise"))
    count_noise = ck / 20 if raw is None else _config_number(
        where, "defense.clip_count_noise", raw, "a finite number ≥ 0 (or null)", lambda v: v >= 0)
    try:
        return update_noise_multiplier(z, count_noise), 2 * count_noise
    except ValueError as e:
        raise ReportError(f"{where}: `defense.clip_count_noise` = {raw!r}: the DP accounting of "
                          f"adaptive clipping needs 2σ_b > z ({e})") from None


def privacy_report(data: SweepData, delta: float = DEFAULT_DELTA,
                   population: int | None = None) -> list[PrivacyResult]:
    """One PrivacyResult per cell with σ > 0, over the most rounds any of its runs ran."""
    delta = check_delta(delta)
    population = check_population(population)
    out = []
    last = data.metrics.groupby("run_id")["round"].max()
    for cell in data.cells():
        runs = data.cell_runs(cell)
        rounds = int(last.reindex(runs["run_id"]).max())
        # the run id, not its source: an MLflow URI may hold a password
        where = f"cell `{cell}` (run {runs['run_id'].iloc[0]})"
        res = account(cell, data.cell_config(cell), rounds, delta, population, where=where)
        if res is not None:
            out.append(res)
    return out
