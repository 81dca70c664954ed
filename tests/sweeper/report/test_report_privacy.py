"""The DP accounting of weak DP: the noise multiplier for both noise placements (worked by
hand), dp-accounting against an independent closed form, monotonicity, and the
population size K the sampling rate q = C·K/K uses. Hardening (issue 19): `--delta`,
`--population` and the config values the accounting uses are checked before anything is
written, and its work is bounded for any valid input."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import textwrap

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from sweeper.cli import main
from sweeper.report.load import ReportError, load_sweeps
from sweeper.report.page import build_report
from sweeper.report.privacy import (
    TFF_DIGITS_WRITERS,
    account,
    epsilon_pld,
    epsilon_rdp,
    noise_multiplier,
    plain_words,
    population_size,
)

# Names issue 19 added are imported where they are used, so that the other tests run (and
# fail) against the code before it.


def test_noise_multiplier_by_hand():
    # paper: M = 5, σ = 0.025 on the SUM of 30 clipped updates: z = σ / M = 0.005
    assert noise_multiplier(0.025, 5.0, 30, "sum") == pytest.approx(0.005)
    # σ on the MEAN: the mean's sensitivity is M / (C·K) = 5/30, so z = 0.025·30/5 = 0.15
    assert noise_multiplier(0.025, 5.0, 30, "mean") == pytest.approx(0.15)
    # σ = 1 on the sum with M = 1 is the textbook z = 1
    assert noise_multiplier(1.0, 1.0, 100, "sum") == 1.0
    with pytest.raises(ValueError):
        noise_multiplier(0.1, 1.0, 30, "per-client")
    with pytest.raises(ValueError):
        noise_multiplier(0.1, 0.0, 30, "sum")


def exact_gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    """Independent closed form (Balle & Wang 2018): T Gaussian mechanisms with noise
    multiplier z compose to one with μ = √T / z, whose tight privacy profile is
    δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ); solve δ(ε) = delta for ε."""
    mu = math.sqrt(rounds) / z

    def gap(eps):
        return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu) - delta

    return brentq(gap, 0.0, 100.0)


@pytest.mark.parametrize("z,rounds", [(2.0, 10), (1.0, 1), (4.0, 50)])
def test_accountants_match_the_exact_gaussian_without_sampling(z, rounds):
    # q = 1 (every writer every round): no amplification, so the exact value is known
    delta = 1e-5
    exact = exact_gaussian_epsilon(z, rounds, delta)
    pld = epsilon_pld(z, 1.0, rounds, delta)
    rdp, order = epsilon_rdp(z, 1.0, rounds, delta)
    # the PLD accountant discretizes the privacy loss at 1e-4 (pessimistically) per composed
    # round and truncates tails: for ≤ 50 rounds its ε is above the exact one by ≤ 50·1e-4
    # plus the truncation; 1% (or 0.01 absolute) bounds both with room
    assert pld == pytest.approx(exact, rel=0.01, abs=0.01)
    # RDP is a valid upper bound, looser than exact but not by much for a pure Gaussian
    assert exact - 1e-6 <= rdp <= 1.5 * exact + 0.05
    assert order > 1


def test_more_noise_less_epsilon_more_rounds_more_epsilon():
    q, d = 30 / 3383, 1e-5
    e = {z: epsilon_rdp(z, q, 300, d)[0] for z in (0.5, 1.0, 2.0)}
    assert e[0.5] > e[1.0] > e[2.0] > 0
    r = [epsilon_rdp(1.0, q, t, d)[0] for t in (10, 100, 300)]
    assert r[0] < r[1] < r[2]
    # sampling amplifies privacy: a larger q costs more ε
    assert epsilon_rdp(1.0, 0.01, 100, d)[0] < epsilon_rdp(1.0, 0.1, 100, d)[0]
    p = [epsilon_pld(z, q, 100, d) for z in (0.7, 1.0)]
    assert p[0] > p[1]


def test_paper_setting_gives_no_meaningful_privacy():
    cfg = {"defense.noise_sigma": 0.025, "defense.norm_bound": 5.0, "fl.clients_per_round": 30,
           "defense.noise_placement": "sum", "data.source": "synthetic", "data.num_writers": 3383}
    res = account("M=5, σ=0.025", cfg, rounds=300, delta=1e-5)
    assert res.noise_multiplier == pytest.approx(0.005)
    assert res.sampling_rate == pytest.approx(30 / 3383)
    assert res.population == 3383 and res.rounds == 300
    assert res.epsilon_pld is not None and res.epsilon_pld <= res.epsilon_rdp
    assert res.epsilon > 1000 and res.verdict.startswith("none in practice")
    # the same σ on the mean is 30× more noise (z = 0.15): still no real guarantee
    mean = account("x", {**cfg, "defense.noise_placement": "mean"}, rounds=300, delta=1e-5)
    assert mean.noise_multiplier == pytest.approx(0.15)
    assert 10 < mean.epsilon < res.epsilon
    # no noise, nothing to account
    assert account("x", {**cfg, "defense.noise_sigma": 0.0}, rounds=300) is None


def test_population_size_sources(shared_digits):
    assert population_size({"data.source": "synthetic", "data.num_writers": 50})[0] == 50
    assert population_size({"data.source": "embedded"})[0] == 439
    k, how = population_size({"data.source": "embedded", "data.max_writers": 40})
    assert k == 40 and "max_writers" in how
    assert population_size({"data.source": "tff-h5", "data.path": str(shared_digits)})[0] == 439
    k, how = population_size({"data.source": "tff-h5", "data.path": "/nonexistent"})
    assert k == TFF_DIGITS_WRITERS and "assumed" in how


def test_plain_words_bins():
    assert plain_words(0.5, 1e-5).startswith("strong")
    assert plain_words(5.0, 1e-5).startswith("moderate")
    assert plain_words(50.0, 1e-5).startswith("weak")
    assert plain_words(5000.0, 1e-5).startswith("none in practice")
    assert "infinite" in plain_words(float("inf"), 1e-5)


def test_rdp_at_the_edges_of_float_range():
    """z = 1e-160: the accountant's α²/z² overflowed and its NaN came back as ε = 0
    ("strong"); z = 1e-300 divided by zero; z = 1e300 overflowed z². Now: ∞ below Z_MIN,
    and above Z_MAX the ε at Z_MAX (ε only falls as z grows)."""
    for z in (1e-160, 1e-300):
        assert epsilon_rdp(z, 0.5, 10, 1e-5)[0] == math.inf
    assert epsilon_rdp(1e300, 0.5, 10, 1e-5)[0] == epsilon_rdp(1e100, 0.5, 10, 1e-5)[0] == 0.0


def test_the_reported_epsilon_is_the_tighter_bound():
    """Both accountants give upper bounds; over 100,000 rounds the PLD's bounded
    discretization is coarse (ε above the RDP one), so the RDP ε is reported."""
    cfg = {"defense.noise_sigma": 1.0, "defense.norm_bound": 1.0, "fl.clients_per_round": 1,
           "data.source": "synthetic", "data.num_writers": 100}
    res = account("x", cfg, rounds=100_000, delta=1e-5)
    assert res.epsilon_pld is not None and res.epsilon_pld > res.epsilon_rdp
    assert res.epsilon == res.epsilon_rdp and res.verdict == plain_words(res.epsilon_rdp, 1e-5)
    assert res.pld_interval > 1e-4


# --------------------------------------------------------------------------- δ and K
@pytest.fixture
def noisy_sweep(tmp_path, run_writer):
    run_writer(tmp_path / "noisy" / "s0", {"defense.norm_bound": 5.0, "defense.noise_sigma": 0.025},
               0, {"main_acc": [0.5] * 3, "backdoor_acc": [0.1] * 3})
    return tmp_path / "noisy"


@pytest.mark.parametrize("delta", ["0", "2", "1", "nan", "inf", "-inf", "-1"])
def test_cli_rejects_a_delta_outside_0_1_before_writing(tmp_path, noisy_sweep, capsys, delta):
    out = tmp_path / "out"
    assert main(["report", str(noisy_sweep), "--delta", delta, "--out", str(out), "--no-log"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--delta" in err[0] and "0 < δ < 1" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("delta", [0.0, 1.0, math.nan, math.inf, -1e-5, "1e-5", None, True])
def test_build_report_rejects_a_bad_delta_before_writing(tmp_path, noisy_sweep, delta):
    data = load_sweeps([str(noisy_sweep)])
    with pytest.raises(ReportError, match="--delta.*0 < δ < 1"):
        build_report(data, tmp_path / "out", delta=delta)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("population", [0, -3, True, 2.5, "40"])
def test_build_report_rejects_a_bad_population_before_writing(tmp_path, noisy_sweep, population):
    data = load_sweeps([str(noisy_sweep)])
    with pytest.raises(ReportError, match="--population"):
        build_report(data, tmp_path / "out", population=population)
    assert not (tmp_path / "out").exists()


def test_cli_rejects_population_zero(tmp_path, noisy_sweep):
    assert main(["report", str(noisy_sweep), "--population", "0", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


# z (noise multiplier), q (sampling rate), T (rounds): tiny, paper-like, huge, q = 1
EXTREME = [(z, q, t) for z in (1e-300, 1e-120, 1e-6, 0.005, 1.0, 1e6, 1e120)
           for q in (1e-300, 30 / 3383, 1.0) for t in (1, 300, 100_000, 10**12)]


@pytest.mark.parametrize("z,q,rounds", EXTREME)
def test_pld_discretization_bounds_the_work(z, q, rounds):
    """The interval keeps the composed PMF under PLD_MAX_BINS (one round under
    PLD_MAX_ROUND_BINS) whatever z, q and T, and does not depend on δ at all (δ = 0 used
    to turn into a 1e-4 interval over an infinite ε); out of reach: not computed."""
    from sweeper.report.privacy import (
        PLD_MAX_BINS,
        PLD_MAX_ROUND_BINS,
        PLD_MAX_ROUNDS,
        Z_MIN,
        loss_width,
        pld_bins,
        pld_interval,
    )

    try:
        h = pld_interval(z, q, rounds)
    except ValueError as e:
        assert rounds > PLD_MAX_ROUNDS or z < Z_MIN, e
        return
    assert pld_bins(z, q, rounds, h) <= PLD_MAX_BINS
    assert math.floor(loss_width(z, q) / h) + 3 <= PLD_MAX_ROUND_BINS
    assert h >= 1e-4 and math.isfinite(h)


@pytest.mark.parametrize("z,q", [(0.005, 30 / 3383), (1.0, 1.0), (0.3, 0.5), (4.0, 30 / 439)])
def test_one_round_pmf_has_the_bins_the_bound_assumes(z, q):
    """dp-accounting's PMF of one round spans W/h + 3 bins at most (the premise of
    `pld_bins`), for both adjacencies."""
    from dp_accounting.pld.privacy_loss_distribution import from_gaussian_mechanism

    from sweeper.report.privacy import loss_width, pld_interval

    h = pld_interval(z, q, 1)
    pld = from_gaussian_mechanism(z, sampling_prob=q, value_discretization_interval=h)
    assert max(pld._pmf_remove.size, pld._pmf_add.size) <= math.floor(loss_width(z, q) / h) + 3


_ACCOUNT_ALL = textwrap.dedent("""
    import json, logging, math, sys
    logging.disable(logging.WARNING)
    from sweeper.report.privacy import account
    out = []
    for z, k, rounds, delta in json.loads(sys.argv[1]):
        cfg = {"defense.noise_sigma": z, "defense.norm_bound": 1.0, "fl.clients_per_round": 30,
               "data.source": "synthetic", "data.num_writers": k}
        r = account("c", cfg, rounds, delta)
        out.append([z, k, rounds, delta, r.epsilon_rdp, r.epsilon_pld, r.epsilon, r.verdict,
                    r.pld_note])
    print(json.dumps(out))
""")


def _limits():
    # 3 GiB of address space and 300 s of CPU for the whole matrix: the PLD at δ = 0 took
    # ~18 GB before; everything here takes a few seconds
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (300, 300))


@pytest.mark.slow  # one subprocess, ~60 accountings
def test_accounting_of_extreme_valid_inputs_runs_in_bounded_memory_and_cpu():
    """ε for extreme but valid inputs, in a subprocess that may use 3 GiB and 300 CPU-s:
    it finishes, ε is never NaN, and a noise multiplier of 1e-150 (no privacy) is never
    reported as strong (the RDP accountant's overflow came back as ε = 0)."""
    cases = [[z, k, t, d] for z in (1e-300, 1e-150, 1e-6, 0.005, 1.0, 1e300)
             for k in (30, 3383, 10**30) for t in (1, 300, 10**15) for d in (1e-300, 1e-5, 0.5)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _ACCOUNT_ALL, json.dumps(cases)], env=env,
                          capture_output=True, text=True, preexec_fn=_limits)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert len(results) == len(cases)
    for z, k, rounds, delta, e_rdp, e_pld, eps, verdict, note in results:
        case = (z, k, rounds, delta)
        assert not math.isnan(eps) and eps >= 0 and eps <= e_rdp, case
        if z <= 1e-6 and 30 / k >= 1e-3 and delta <= 1e-5:  # sampled often, hardly any noise
            assert eps > 1e6 and verdict.startswith(("none", "no guarantee")), case
        if rounds > 2**18:  # PLD_MAX_ROUNDS
            assert e_pld is None and "not computed" in note, case
    # the paper's setting (the PLD took more than 5 minutes before): both accountants ran
    paper = next(r for r in results if r[:4] == [0.005, 3383, 300, 1e-5])
    assert paper[5] is not None and 1e3 < paper[5] < paper[4]


# --------------------------------------------------------------------------- config values
BASE_CFG = {"defense.noise_sigma": 0.025, "defense.norm_bound": 5.0, "fl.clients_per_round": 30,
            "defense.noise_placement": "sum", "data.source": "synthetic", "data.num_writers": 3383}


@pytest.mark.parametrize("key,value", [
    ("defense.noise_sigma", "abc"), ("defense.noise_sigma", -0.1), ("defense.noise_sigma", math.inf),
    ("defense.norm_bound", None), ("defense.norm_bound", "5"), ("defense.norm_bound", 0.0),
    ("defense.norm_bound", math.nan), ("fl.clients_per_round", 0), ("fl.clients_per_round", 2.5),
    ("fl.clients_per_round", True), ("defense.noise_placement", "per-client"),
])
def test_a_config_value_the_accounting_cannot_use_is_named(key, value):
    with pytest.raises(ReportError, match=f"`{key}`"):
        account("c", {**BASE_CFG, key: value}, rounds=10)


@pytest.mark.parametrize("rounds", [0, -5, 2.5, math.nan])
def test_rounds_must_be_a_whole_number(rounds):
    with pytest.raises(ReportError, match="rounds"):
        account("c", BASE_CFG, rounds=rounds)


@pytest.mark.parametrize("cfg", [
    {"data.source": "synthetic", "data.num_writers": 0},
    {"data.source": "synthetic", "data.num_writers": "many"},
    {"data.source": "synthetic", "data.num_writers": 50, "data.max_writers": "x"},
    {"data.source": "somewhere-else"},
])
def test_an_unknown_population_asks_for_population(cfg):
    assert population_size(cfg)[0] is None
    with pytest.raises(ReportError, match="--population K"):
        account("c", {**BASE_CFG, **cfg}, rounds=10)


def test_a_hostile_leaf_file_is_not_counted(tmp_path):
    """The LEAF JSON the population is counted from is read back: a 100,000-deep one (a
    RecursionError) or one that is not a mapping asks for --population."""
    for name, text in (("deep", "[" * 100_000 + "]" * 100_000), ("list", "[1, 2]"),
                       ("bytes", b"\xff\xfe".decode("latin-1"))):
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / "train" / "a.json").write_text(text)
        k, how = population_size({"data.source": "leaf", "data.path": str(tmp_path / name)})
        assert k is None and "cannot be counted" in how, (name, how)


def test_population_size_counts_the_writers_data_min_examples_keeps():
    """K of the accounting is the population the run trained on: after `data.min_examples`
    (231 of the 439 embedded writers own ≥ 40 train images; tests/fl_core/test_min_examples.py
    counts them by hand), for synthetic data too (there K is no longer the config's number), and
    unknown for LEAF (its JSON's user count is before the filter)."""
    assert population_size({"data.source": "embedded", "data.min_examples": 40})[0] == 231
    syn = {"data.source": "synthetic", "data.num_writers": 50, "data.examples_per_writer": 8}
    from fl_core.config import DataConfig
    from fl_core.data import describe_data

    kept = describe_data(DataConfig(source="synthetic", num_writers=50, examples_per_writer=8, min_examples=10)).num_writers
    assert 1 <= kept < 50  # the synthetic writers' sizes vary around 8: 10 drops some
    assert population_size({**syn, "data.min_examples": 10})[0] == kept
    assert population_size({**syn, "data.min_examples": 0})[0] == 50
    assert population_size({"data.source": "leaf", "data.path": "/nonexistent", "data.min_examples": 5})[0] is None
