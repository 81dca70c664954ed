"""Cross-checks against ByzFL (LPD-EPFL, pip `byzfl==0.0.11`, a test-only oracle pinned in
pyproject's `test` extra): the same inputs to our aggregator and to ByzFL's, agreement to
float precision.

ByzFL computes in the input's dtype (and casts torch input to float32), so we give it the
float64 numpy copy of our float32 inputs (exact) and it computes in float64. Ours compute in
float64 and return float32. So ours is the float32 rounding of a float64 value that differs
from ByzFL's by the two float64 computations' rounding only: |ours − ByzFL| ≤ ulp32(value)
(rounding to float32, one binade of slack) + err64, with err64 derived per rule below
(u = 2^-53, the float64 unit roundoff).

Where the definitions differ, the test maps one onto the other:
- trimmed mean: ByzFL trims f values per end; ours k = ⌊β·n⌋ per end → β = (f + ½)/n.
- Krum / Multi-Krum: ByzFL's score averages the n − f_B − 1 nearest squared distances (its
  `[:, 1:n−f]` after sorting each row, self first); ours sums the n − f − 2 nearest
  (Blanchard et al.) → f_B = f + 1 (sum vs mean does not change the order). ByzFL's
  Multi-Krum averages the n − f_B best → our m = n − f_B.
- geometric median: ByzFL's smoothed Weiszfeld starts at z = 0, ours (Pillutla et al.'s
  RFA) at the (weighted) mean μ. Weiszfeld's step is translation-equivariant, so ByzFL on
  x − μ, plus μ, is the same T steps from μ (uniform weights, our tolerance 0 = no early stop).
- centered clipping: ByzFL's `CenteredClipping(m=...)` refuses every explicit m (its check
  `not isinstance(m, np.ndarray) or not isinstance(m, torch.Tensor)` is true for any m, the
  quirk ZOO.md notes); we set its `m` attribute after construction instead, or let it carry
  its own state across calls (it keeps the returned v, as our aggregator_state does).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import byzfl  # the pinned test-only oracle (pyproject `test` extra); never skipped

from fl_core.aggregators.base import AggregatorContext
from fl_core.aggregators.centered_clipping import CenteredClipping
from fl_core.aggregators.krum import Krum
from fl_core.aggregators.median import Median
from fl_core.aggregators.multi_krum import MultiKrum
from fl_core.aggregators.rfa import RFA, RFAParams
from fl_core.aggregators.trimmed_mean import TrimmedMean

U = 2.0 ** -53
F64 = torch.float64


def test_oracle_version():
    from importlib.metadata import version

    assert version("byzfl") == "0.0.11"  # the mappings below were read off this version's source


def inputs(seed: int, n: int, d: int = 30, outliers: int = 2) -> torch.Tensor:
    """float32 [n, d]: N(0, 1) rows, the last `outliers` scaled by 20 (so rules act)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[n - outliers:] *= 20
    return x


def ctx(n, round_idx=0):
    return AggregatorContext(0, round_idx, n, tuple(range(n)))


def np64(x: torch.Tensor) -> np.ndarray:
    return x.to(F64).numpy()


def assert_f32_close(ours: torch.Tensor, ref: np.ndarray, err64: float) -> None:
    """ours (float32) rounds a float64 value within err64 of ref (float64)."""
    assert ours.dtype == torch.float32
    ref = np.asarray(ref, dtype=np.float64)
    ulp32 = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    diff = np.abs(ours.to(F64).numpy() - ref)
    bound = ulp32 + err64
    assert (diff <= bound).all(), f"max excess {np.max(diff - bound):.3g} (max diff {diff.max():.3g})"


def ones(n):
    return torch.ones(n, dtype=F64)


# ------------------------------------------------------------------------------ median
@pytest.mark.parametrize("n", [7, 8])
def test_median_matches_byzfl(n):
    x = inputs(1, n)
    ours = Median().aggregate(x, ones(n), ctx(n), {}).delta
    ref = byzfl.Median()(np64(x))
    # odd n: both pick the same float32 element; even n: both compute (a + b)/2 of the two
    # middle float32 values in float64 (exact sum and halving), then we round to float32:
    # the same bits as rounding ByzFL's float64 result
    assert torch.equal(ours, torch.from_numpy(ref).to(torch.float32))


# ------------------------------------------------------------------------------ trimmed mean
@pytest.mark.parametrize("n,f", [(7, 1), (8, 2), (9, 4), (10, 0)])
def test_trimmed_mean_matches_byzfl(n, f):
    x = inputs(2, n)
    beta = (f + 0.5) / n  # floor(β·n) = f exactly, away from the float edge
    out = TrimmedMean(beta).aggregate(x, ones(n), ctx(n), {})
    assert out.metrics["agg_trimmed_per_end"] == f
    ref = byzfl.TrMean(f=f)(np64(x))
    # both sum the same n − 2f float32 values in float64 (ours in order, numpy pairwise) and
    # divide once: each sum's error ≤ (n − 2f)·u·Σ|x| ≤ n²·u·max|x|, twice for the two
    err64 = 2 * n * n * U * float(x.abs().max())
    assert_f32_close(out.delta, ref, err64)


# ------------------------------------------------------------------------------ geometric median
@pytest.mark.parametrize("seed,iterations", [(3, 3), (4, 10)])
def test_rfa_matches_byzfl_geometric_median_from_the_mean(seed, iterations):
    n = 9
    x = inputs(seed, n)
    out = RFA(RFAParams(iterations=iterations, nu=0.1, tolerance=0.0)).aggregate(x, ones(n), ctx(n), {})
    assert out.metrics["rfa_iterations"] == iterations
    mu = (ones(n) / n) @ x.to(F64)  # our starting point, the same expression as rfa.py
    ref = byzfl.GeometricMedian(nu=0.1, T=iterations)(np64(x) - mu.numpy()) + mu.numpy()
    # each step: n norms of d terms and a weighted sum of n rows, relative error ~(n + d)·u
    # on values ≤ max|x|; the shift adds one rounding per coordinate; a Weiszfeld step does
    # not amplify a perturbation of its start by more than ~n (the weights' sensitivity is
    # bounded by 1/ν·max|x|, here ≤ 10·max|x|): allow 100·(n + d)·u·max|x| per step
    err64 = iterations * 100 * (n + x.shape[1]) * U * float(x.abs().max())
    assert_f32_close(out.delta, ref, err64)


# ------------------------------------------------------------------------------ Krum, Multi-Krum
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("f", [0, 1, 2, 3, None])
def test_krum_matches_byzfl(seed, f):
    n = 9
    x = inputs(seed, n)
    out = Krum(f).aggregate(x, ones(n), ctx(n), {})
    f_ours = out.metrics["krum_f"]
    ref = byzfl.Krum(f=f_ours + 1)(np64(x))
    # a selection: the same input row, exactly
    assert torch.equal(out.delta, torch.from_numpy(ref).to(torch.float32))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("f_byzfl", [1, 2, 3, 4])
def test_multi_krum_matches_byzfl(seed, f_byzfl):
    n = 9
    x = inputs(seed, n)
    out = MultiKrum(f_byzfl - 1, n - f_byzfl).aggregate(x, ones(n), ctx(n), {})
    assert out.metrics["agg_selected"] == n - f_byzfl
    ref = byzfl.MultiKrum(f=f_byzfl)(np64(x))
    # the mean of the same m rows: float64 sums (ours in order, numpy pairwise), error
    # ≤ 2·m²·u·max|x|
    err64 = 2 * n * n * U * float(x.abs().max())
    assert_f32_close(out.delta, ref, err64)


# ------------------------------------------------------------------------------ centered clipping
def test_byzfl_centered_clipping_refuses_an_explicit_start():
    # the quirk the mapping works around: any m, of either type, is refused
    with pytest.raises(TypeError):
        byzfl.CenteredClipping(m=np.zeros(3))
    with pytest.raises(TypeError):
        byzfl.CenteredClipping(m=torch.zeros(3))


def cc_err64(x: torch.Tensor, iterations: int) -> float:
    # per iteration: n differences and norms of d terms, a sum of n rows (ours in order,
    # numpy's mean pairwise): ≤ (n + d)·u relative to max|x − v| ≲ 2·max|x| per step; an
    # error in v is not amplified (v ↦ v + mean P_τ(x_i − v), with P_τ the projection on
    # the τ-ball, is 1-Lipschitz): sum over iterations, with a factor 10 of slack
    n, d = x.shape
    return iterations * 10 * (n + d) * U * 2 * float(x.abs().max())


@pytest.mark.parametrize("tau,iterations", [(100.0, 1), (5.0, 1), (5.0, 3), (1.0, 5)])
def test_centered_clipping_matches_byzfl_from_zero(tau, iterations):
    n = 9
    x = inputs(5, n)
    out = CenteredClipping(tau, iterations).aggregate(x, ones(n), ctx(n), {})
    if tau < 100:
        assert out.metrics["cc_clip_fraction"] > 0  # the clipping is exercised
    ref = byzfl.CenteredClipping(L=iterations, tau=tau)(np64(x))
    assert_f32_close(out.delta, ref, cc_err64(x, iterations))


@pytest.mark.parametrize("tau,iterations", [(5.0, 1), (2.0, 3)])
def test_centered_clipping_matches_byzfl_across_rounds(tau, iterations):
    # three rounds: ours carries its centre in the state (the float32 aggregate), ByzFL
    # in its own `m` (float64). Ours rounds v to float32 between rounds, ≤ ulp32(v) each,
    # and the map does not amplify it (see cc_err64): one ulp32 of max|v| per round on top.
    n = 9
    ours, ref = CenteredClipping(tau, iterations), byzfl.CenteredClipping(L=iterations, tau=tau)
    state: dict = {}
    carried = 0.0
    for r in range(3):
        x = inputs(10 + r, n)
        out = ours.aggregate(x, ones(n), ctx(n, r), state)
        expect = ref(np64(x))
        carried += float(np.spacing(np.float32(np.abs(expect).max())))
        assert_f32_close(out.delta, expect, (r + 1) * cc_err64(x, iterations) + carried)
        state = out.state
    # with the same start set explicitly (ByzFL's m attribute), one round agrees as well
    ref2 = byzfl.CenteredClipping(L=iterations, tau=tau)
    ref2.m = np64(state["center"])
    x = inputs(20, n)
    assert_f32_close(ours.aggregate(x, ones(n), ctx(n, 3), state).delta, ref2(np64(x)), cc_err64(x, iterations))
