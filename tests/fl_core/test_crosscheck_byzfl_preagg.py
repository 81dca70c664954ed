"""Our NNM and Bucketing against ByzFL's (`byzfl==0.0.11`, a test-only oracle;
byzfl/aggregators/preaggregators.py `NNM`, `Bucketing`) on the same inputs.

Definitions map one to one: both NNM's take f and average each row's n − f nearest rows
(itself included) in L2; both Bucketing's average consecutive runs of s rows of a random
permutation, the last run shorter. The inputs are Gaussian rows, so no two distances tie
(ByzFL's argpartition breaks ties arbitrarily, ours to the lower row).

The one thing that differs is Bucketing's permutation: ours comes from `Stream.PREAGG`,
ByzFL's from torch's/numpy's global RNG. So (1) with s ≥ n there is one bucket, the mean
of all rows, and the permutation does not matter; (2) ByzFL is handed the permutation ours
drew, by replacing its module's `random_tool` (what `Bucketing.__call__` asks for
`.permutation(vectors)`) with one that applies ours; (3) the input rows are permuted with
our permutation first and ByzFL's shuffle is made the identity.

Tolerance, derived: ours sums each mean in float64 and rounds once to float32; ByzFL's torch
path averages k rows in float32, whose sum errs by at most (k − 1)·u·Σ|x_j| ≤ (k − 1)·u·k·M
(u = 2⁻²⁴, M = max |x|), i.e. (k − 1)·u·M after dividing by k, plus one rounding each:
|ours − ByzFL| ≤ (k + 1)·u·M. ByzFL's numpy path averages float64 copies, so there the bound
is our one float32 rounding, u·|mean| ≤ u·M.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import byzfl  # the pinned test-only oracle (pyproject's test extra): missing, the test fails
from byzfl.aggregators import preaggregators as byzfl_pre

from fl_core.preaggregators.base import PreaggContext
from fl_core.preaggregators.bucketing import Bucketing, permutation
from fl_core.preaggregators.nnm import NNM

U = 2.0 ** -24  # float32 unit roundoff


def rows(n: int, d: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.logspace(-1, 1, d)  # coordinates of unequal scale


def bound(k: int, x: torch.Tensor) -> float:
    return (k + 1) * U * float(x.abs().max())


def test_byzfl_is_the_pinned_version():
    from importlib.metadata import version

    assert version("byzfl") == "0.0.11"


@pytest.mark.parametrize("n,f", [(5, 0), (5, 1), (5, 2), (8, 3), (11, 5), (11, 2)])
def test_nnm_matches_byzfl(n, f):
    x = rows(n, seed=n * 10 + f)
    ours, _, _ = NNM(f).apply(x, torch.ones(n, dtype=torch.float64), PreaggContext(0, 0, 0))
    theirs = byzfl.NNM(f)(x.clone())
    assert theirs.dtype == torch.float32 and theirs.shape == ours.shape
    assert (ours - theirs).abs().max().item() <= bound(n - f, x)
    # ByzFL's numpy path: scipy cdist and float64 means, so one float32 rounding apart
    theirs64 = byzfl.NNM(f)(x.numpy().astype(np.float64))
    assert np.abs(ours.numpy().astype(np.float64) - theirs64).max() <= U * float(x.abs().max())
    # the comparison can fail: NNM with another f gives other rows
    other = byzfl.NNM(f + 1 if 2 * (f + 1) < n else f - 1)(x.clone())
    assert (ours - other).abs().max().item() > 100 * bound(n - f, x)


@pytest.mark.parametrize("n,s", [(5, 5), (6, 7), (9, 20)])
def test_bucketing_with_one_bucket_matches_byzfl_whatever_the_permutation(n, s):
    """s ≥ n: one bucket, the mean of all n rows (ByzFL draws its own permutation here)."""
    x = rows(n, seed=s)
    ours, w, m = Bucketing(s).apply(x, torch.ones(n, dtype=torch.float64), PreaggContext(3, 1, 0))
    theirs = byzfl.Bucketing(s)(x.clone())
    assert ours.shape == theirs.shape == (1, x.shape[1]) and m == {"bucketing_buckets": 1}
    assert (ours - theirs).abs().max().item() <= bound(n, x)
    assert w.tolist() == [float(n)]


class _Fixed:
    """Stands in for ByzFL's `random_tool(vectors)`: `.permutation(v)` returns v[perm]."""

    def __init__(self, perm):
        self.perm = perm

    def permutation(self, v):
        return v[torch.as_tensor(self.perm)] if isinstance(v, torch.Tensor) else v[np.asarray(self.perm)]


@pytest.mark.parametrize("n,s", [(7, 2), (7, 3), (8, 2), (10, 4), (6, 1)])
@pytest.mark.parametrize("round_idx", [0, 5])
def test_bucketing_matches_byzfl_fed_our_permutation(n, s, round_idx, monkeypatch):
    x = rows(n, seed=100 + n * s)
    ctx = PreaggContext(9, round_idx, 0)
    perm = permutation(ctx.seed, ctx.round_idx, ctx.position, n)
    ours, _, _ = Bucketing(s).apply(x, torch.ones(n, dtype=torch.float64), ctx)

    monkeypatch.setattr(byzfl_pre, "random_tool", lambda vectors: _Fixed(perm))  # (2) our π
    fed = byzfl.Bucketing(s)(x.clone())
    monkeypatch.setattr(byzfl_pre, "random_tool", lambda vectors: _Fixed(np.arange(n)))  # (3) identity
    prepermuted = byzfl.Bucketing(s)(x[torch.as_tensor(perm)].clone())

    assert ours.shape == fed.shape == prepermuted.shape == (-(-n // s), x.shape[1])
    for theirs in (fed, prepermuted):
        assert (ours - theirs).abs().max().item() <= bound(s, x)
    # the comparison can fail: ByzFL on the unpermuted rows gives other buckets (s < n)
    unshuffled = byzfl.Bucketing(s)(x.clone())
    if not np.array_equal(perm, np.arange(n)):
        assert (ours - unshuffled).abs().max().item() > 100 * bound(s, x)
