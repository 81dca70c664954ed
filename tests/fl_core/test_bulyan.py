"""Bulyan (`fl_core/aggregators/bulyan.py`), golden cases worked by hand."""

from __future__ import annotations

import pytest
import torch

from fl_core.aggregators import AGGREGATORS
from fl_core.aggregators.base import AggregatorContext
from fl_core.aggregators.bulyan import Bulyan, closest_to_median_mean, select
from fl_core.config import parse_config
from fl_core.errors import ConfigError

# Scalar updates [0, 1, 2, 3, 4, 100, 5], n = 7, f = 1 (n ≥ 4f + 3), θ = 5, β = 3.
# Krum scores (squared distances to the r − f − 2 nearest remaining):
#  r = 7, 4 nearest: 0:30 1:15 2:10 3:10 4:15 100:huge 5:30 → 2 (tie with 3: lower row)
#  r = 6, 3 nearest of [0,1,3,4,100,5]: 0:26 1:14 3:9 4:11 5:21 → 3
#  r = 5, 2 nearest of [0,1,4,100,5]: 0:17 1:10 4:10 5:17 → 1 (tie with 4: lower row)
#  r = 4, 1 nearest of [0,4,100,5]: 0:16 4:1 5:1 → 4 (tie with 5: lower row)
#  r = 3, r − f − 2 = 0 → 1 nearest of [0,100,5]: 0:25 5:25 → 0 (tie: lower row)
# S = {0, 1, 2, 3, 4}; median 2; the 3 closest: 2, 1, 3 → mean 2.
UPDATES = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [100.0], [5.0]])


def test_selection_is_iterated_krum_by_hand():
    assert select(UPDATES, f=1) == [2, 3, 1, 4, 0]


def test_trimmed_step_by_hand():
    """Column 0: values 0,1,2,9,3, median 2 → 2,1,3 → 2. Column 1: 10,0,3,4,5, median 4 →
    4,3,5 → 4."""
    s = torch.tensor([[0.0, 10.0], [1.0, 0.0], [2.0, 3.0], [9.0, 4.0], [3.0, 5.0]])
    assert closest_to_median_mean(s, 3).tolist() == [2.0, 4.0]
    # an even count: median of 1,2,3,10 is 2.5; the two closest are 2 and 3 → 2.5
    assert closest_to_median_mean(torch.tensor([[1.0], [10.0], [2.0], [3.0]]), 2).tolist() == [2.5]


def test_aggregate_drops_the_outliers_and_flags_who_was_not_chosen():
    ctx = AggregatorContext(0, 0, 7, tuple(range(7)))
    out = Bulyan(f=1).aggregate(UPDATES, torch.ones(7, dtype=torch.float64), ctx, {})
    assert out.delta.tolist() == [2.0] and out.delta.dtype == torch.float32
    assert out.accepted == (True, True, True, True, True, False, False)
    assert out.metrics == {"agg_selected": 5, "agg_flagged": 2, "bulyan_f": 1}


def test_permuting_the_rows_permutes_the_choice_and_keeps_the_aggregate():
    """Without ties the rule is permutation invariant. With f = 3 every Krum step sums at
    least r − f − 2 = 2 distances (the last step has r = 2f + 1 = 7), so no two random
    candidates tie; with 1 distance a mutual nearest pair always ties (then the lower row
    wins, as in Krum)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(15, 6, generator=g, dtype=torch.float64).float()
    x[3] += 50  # one far outlier
    perm = torch.randperm(15, generator=g)
    ctx = AggregatorContext(0, 0, 15, tuple(range(15)))
    w = torch.ones(15, dtype=torch.float64)
    a = Bulyan(3).aggregate(x, w, ctx, {})
    b = Bulyan(3).aggregate(x[perm], w, ctx, {})
    assert torch.equal(a.delta, b.delta)
    assert [a.accepted[int(i)] for i in perm] == list(b.accepted) and not a.accepted[3]
    assert sum(a.accepted) == 15 - 2 * 3


def test_f_is_checked_against_the_cohort_when_the_config_loads():
    assert "bulyan" in AGGREGATORS
    parse_config({"fl": {"clients_per_round": 11}, "defense": {"aggregator": "bulyan", "aggregator_params": {"f": 2}}})
    with pytest.raises(ConfigError, match=r"aggregator_params\.f.*at most \(fl.clients_per_round − 3\) / 4 = 1"):
        parse_config({"fl": {"clients_per_round": 10}, "defense": {"aggregator": "bulyan", "aggregator_params": {"f": 2}}})
