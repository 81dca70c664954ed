"""The DP accounting of adaptive clipping (`defense.clip_quantile`): per round the update
query at z_Δ and the count query at 2σ_b, composed on one sample (Andrew et al. 2021,
Thm 1) into the configured z. dp-accounting's own reduction of a composition of Gaussians
(`ComposedDpEvent` inside `PoissonSampledDpEvent`, RDP) is the independent side: the ε it
gives for the pair must be the ε of the one Gaussian at z, and so the ε of the same cell
with a fixed bound."""

from __future__ import annotations

import json
import math

import pytest

from sweeper.report.load import ReportError, load_sweeps
from sweeper.report.page import build_report
from sweeper.report.privacy import account, composed_noise_multiplier, epsilon_rdp

Q, T, DELTA, K = 30 / 3383, 100, 1e-5, 3383
BASE = {"defense.norm_bound": 3.0, "defense.noise_sigma": 3.0, "fl.clients_per_round": 30,
        "defense.noise_placement": "sum"}


def test_composed_multiplier_by_hand():
    # z_Δ = 3/4 and 2σ_b = 1: z⁻² = 16/9 + 1 = 25/9, z = 0.6
    assert composed_noise_multiplier((0.75, 1.0)) == pytest.approx(0.6, rel=1e-14)
    assert composed_noise_multiplier((2.0,)) == 2.0


def test_dp_accounting_composes_the_pair_into_the_configured_z():
    # independent: dp-accounting reduces the ComposedDpEvent itself (its own Σ z⁻²), we pass
    # only the parts; the RDP curves are equal up to the float rounding of z (1e-9 relative)
    pair, _ = epsilon_rdp(0.6, Q, T, DELTA, parts=(0.75, 1.0))
    one, _ = epsilon_rdp(0.6, Q, T, DELTA)
    assert pair == pytest.approx(one, rel=1e-9)
    # and it is a real composition: the update query alone at z_Δ gives a smaller ε
    assert epsilon_rdp(0.75, Q, T, DELTA)[0] < pair


def test_adaptive_cell_is_accounted_at_the_configured_z():
    fixed = account("fixed", BASE, T, DELTA, population=K)
    adaptive = account("adaptive", {**BASE, "defense.clip_quantile": 0.5}, T, DELTA, population=K)
    # z = σ/C₀ = 1; σ_b = 30/20 = 1.5, 2σ_b = 3; z_Δ = (1 − 1/9)^−½ = 3/√8
    assert adaptive.noise_multiplier == pytest.approx(1.0, rel=1e-14)
    assert adaptive.update_noise_multiplier == pytest.approx(3 / math.sqrt(8), rel=1e-14)
    assert adaptive.count_noise == 1.5
    assert adaptive.epsilon_rdp == pytest.approx(fixed.epsilon_rdp, rel=1e-9)
    assert adaptive.epsilon_pld == pytest.approx(fixed.epsilon_pld, rel=1e-6)
    assert fixed.mechanism == "fixed clipping" and fixed.update_noise_multiplier is None
    for text in (adaptive.mechanism, adaptive.verdict):
        assert "adaptive clipping" in text and "z_Δ = 1.061" in text and "σ_b = 1.5" in text
    assert adaptive.to_dict()["mechanism"] == adaptive.mechanism


def test_explicit_count_noise_and_placement_mean():
    # σ = 0.1 on the mean of 30 at C₀ = 3: z = 1; σ_b = 2 (2σ_b = 4): z_Δ = (1 − 1/16)^−½
    cfg = {**BASE, "defense.noise_sigma": 0.1, "defense.noise_placement": "mean",
           "defense.clip_quantile": 0.9, "defense.clip_count_noise": 2.0}
    res = account("c", cfg, T, DELTA, population=K)
    assert res.update_noise_multiplier == pytest.approx((1 - 1 / 16) ** -0.5, rel=1e-14)
    assert res.noise_multiplier == pytest.approx(1.0, rel=1e-14)


def test_no_update_noise_is_no_privacy_whatever_the_count_noise():
    cfg = {**BASE, "defense.noise_sigma": 0.0, "defense.clip_quantile": 0.5, "defense.clip_count_noise": 1.5}
    assert account("c", cfg, T, DELTA, population=K) is None


@pytest.mark.parametrize("extra,key", [
    ({"defense.clip_count_noise": 0.5}, "defense.clip_count_noise"),  # 2σ_b = 1 = z
    ({"defense.clip_count_noise": -1.0}, "defense.clip_count_noise"),
    ({"defense.clip_count_noise": "x"}, "defense.clip_count_noise"),
    ({"defense.clip_quantile": 2.0}, "defense.clip_quantile"),
    ({"defense.clip_quantile": "half"}, "defense.clip_quantile"),
])
def test_a_pair_the_engine_refuses_is_not_accounted(extra, key):
    cfg = {**BASE, "defense.clip_quantile": 0.5, **extra}
    with pytest.raises(ReportError, match=f"`{key}`"):
        account("c", cfg, T, DELTA, population=K)


def test_the_report_page_states_the_split(tmp_path, run_writer):
    run_writer(tmp_path / "sw" / "s0", {"defense.norm_bound": 3.0, "defense.noise_sigma": 3.0,
                                        "defense.clip_quantile": 0.5},
               0, {"main_acc": [0.5] * 3, "backdoor_acc": [0.1] * 3})
    out = tmp_path / "out"
    build_report(load_sweeps([str(tmp_path / "sw")]), out, population=K)
    (p,) = json.loads((out / "privacy.json").read_text())
    assert p["update_noise_multiplier"] == pytest.approx(3 / math.sqrt(8)) and p["count_noise"] == 1.5
    assert "adaptive clipping" in (out / "report.md").read_text()
