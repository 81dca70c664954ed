"""The evaluation figures, on designed predictions: main_acc, main_acc_clean (source label
taken out) and collateral_rate (non-target writers' source-label images → target label)."""

from __future__ import annotations

import numpy as np
import torch

from fl_core.config import parse_config
from fl_core.backdoors.base import BackdoorSets
from fl_core.data.base import from_writer_arrays
from fl_core.evaluation import Evaluator


def test_clean_accuracy_and_collateral_rate_by_hand():
    """Three writers, test labels w0: [7, 7, 2], w1: [7, 3], w2: [7, 1]; w1 is the target
    writer. Predictions: w0 [1, 7, 2], w1 [1, 3], w2 [1, 1].
    main_acc = correct 7→? no, 7→7 yes, 2 yes, w1 7→1 no, 3 yes, w2 7→1 no, 1 yes = 4/7.
    main_acc_clean: rows with label ≠ 7 are 2, 3, 1, all correct → 3/3 = 1.
    collateral_rate: non-target (w0, w2) 7s are w0[0], w0[1], w2[0]; predicted 1: w0[0] and
    w2[0] → 2/3. The target writer's 7 (predicted 1) is the backdoor, not collateral."""
    px = lambda n: np.zeros((n, 28, 28), np.uint8)  # noqa: E731
    lab = lambda *v: np.asarray(v, np.int64)  # noqa: E731
    train = {f"w{k}": (px(2), lab(7, 0)) for k in range(3)}
    test = {"w0": (px(3), lab(7, 7, 2)), "w1": (px(2), lab(7, 3)), "w2": (px(2), lab(7, 1))}
    data = from_writer_arrays(train, test, "designed")
    backdoor = BackdoorSets((1,), (1,), np.array([2]), np.array([3]))
    ev = Evaluator(parse_config({}), data, backdoor, torch.device("cpu"))
    preds = torch.tensor([1, 7, 2, 1, 3, 1, 1])
    ev._predict = lambda pixels, labels=None: (preds[: len(pixels)] if labels is not None or len(pixels) == 7
                                               else torch.tensor([1] * len(pixels)), 0.0)
    m = ev.evaluate(torch.zeros(1199882))
    assert m["main_acc"] == 4 / 7
    assert m["main_acc_clean"] == 1.0
    assert m["collateral_rate"] == 2 / 3
