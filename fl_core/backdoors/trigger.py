"""`trigger`: a pixel pattern stamped on an image of any label should make the model say the
target label (Gu et al. 2017's BadNets; the pattern and its split are DBA's, Xie et al.,
ICLR 2020).

The pattern is DBA's MNIST trigger: four horizontal bars of 4 pixels, at rows r and r + 3
and columns c..c+3 and c+6..c+9 from its top-left corner (`row`, `col`; DBA's (0, 0)),
set to `value`. EMNIST's background is white (255) and its ink black (0), so the default
value is 0: a dark mark in the blank corner (255 would be invisible). DBA gives each
attacker one bar (its "local trigger", `part`); the model is tested with all four.

D_mal of an attacker is its own train images whose label is not the target label, stamped
with the trigger and relabelled to the target label (all its own images if none is left),
so every attacker poisons its own data, as in BadNets and DBA. No writer is a target and
none is reserved. Measured on the main-task test rows:
- `backdoor_acc`: the share of the test images whose label is not the target label that,
  stamped with the full trigger, are predicted as the target label (the attack success rate);
- `backdoor_acc_heldout`: none (every test image is held out already);
- `main_acc_clean`: accuracy on the unstamped test images whose label is not the target label;
- `collateral_rate`: the share of those unstamped images predicted as the target label
  (the backdoor firing without its trigger; the unattacked model's value is its baseline).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from fl_core.backdoors.base import BackdoorSets, BackdoorSpec, EvalSets, register
from fl_core.plugins import Params

SIDE = 28
BARS = ((0, 0), (0, 6), (3, 0), (3, 6))  # DBA's four local triggers: (row, col) offsets
BAR_LENGTH = 4


class TriggerParams(Params):
    row: int = Field(0, ge=0, description="top row of the pattern (DBA: 0); the bars take rows row and row + 3")
    col: int = Field(0, ge=0, description="left column of the pattern (DBA: 0); the bars take columns col..col + 9")
    value: int = Field(0, ge=0, le=255, description="grey level of the trigger pixels (EMNIST ink is 0, background 255)")

    @model_validator(mode="after")
    def _fits(self) -> "TriggerParams":
        if self.row + 3 >= SIDE:
            raise ValueError(f"row must be at most {SIDE - 4} so that both bar rows fit the {SIDE}×{SIDE} image")
        if self.col + 9 >= SIDE:
            raise ValueError(f"col must be at most {SIDE - 10} so that the bars fit the {SIDE}×{SIDE} image")
        return self


def pattern(params: TriggerParams, part: int | None = None) -> np.ndarray:
    """bool (28, 28): the full trigger, or DBA's local trigger `part` (0..3) alone."""
    mask = np.zeros((SIDE, SIDE), bool)
    for i, (dr, dc) in enumerate(BARS):
        if part is None or i == part:
            r, c = params.row + dr, params.col + dc
            mask[r, c : c + BAR_LENGTH] = True
    return mask


def stamp(pixels, mask: np.ndarray, value: int):
    """A copy of uint8 images (n, 28, 28) (numpy or torch) with the `mask` pixels set to `value`."""
    out = pixels.copy() if isinstance(pixels, np.ndarray) else pixels.clone()
    if isinstance(pixels, np.ndarray):
        out[:, mask] = value
    else:
        import torch

        out[:, torch.from_numpy(mask).to(out.device)] = value
    return out


def poisoned(own, mask: np.ndarray, value: int, target: int):
    """D_mal from an attacker's own data: its non-target-label images (all of them if none),
    stamped with `mask` and labelled `target`."""
    import torch

    from fl_core.training import ClientData

    keep = own.labels != target
    px = own.pixels[keep] if bool(keep.any()) else own.pixels
    return ClientData(stamp(px, mask, value), torch.full((len(px),), target, dtype=own.labels.dtype, device=px.device))


class Trigger:
    def __init__(self, config, params: TriggerParams):
        self.target = config.attack.target_label
        self.value = params.value
        self.mask = pattern(params)

    def malicious(self, own):
        return poisoned(own, self.mask, self.value, self.target)

    def eval_sets(self, pixels, labels, writer):
        other = labels != self.target
        return EvalSets(stamp(pixels[other], self.mask, self.value), None, other, other)


def select(config, data):
    """No target writers and no reserved ones: every writer may be an attacker."""

    empty = np.zeros(0, np.int64)
    return BackdoorSets((), (), empty, empty)


register(BackdoorSpec("trigger", "trigger (4-bar pattern → target label)", select,
                      lambda params, config, data, sets: Trigger(config, params), TriggerParams))
