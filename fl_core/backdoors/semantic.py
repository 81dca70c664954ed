"""`semantic` (Sun et al. 2019 §3, the default): N target writers' 7s should be read as 1s.

D_mal is all the target writers' source-label train images relabelled to the target label
(`fl_core.data.backdoor` selects the targets and reserves the writers that are never
attackers); every attacker uses the same D_mal, whatever its own data. `backdoor_acc` is
measured on D_mal itself (the reference code's figure), `backdoor_acc_heldout` on the
targets' held-out source-label test images. The main task without the backdoor's label
(`main_acc_clean`) drops the source-label rows; `collateral_rate` is the share of the OTHER
writers' source-label images predicted as the target label (the backdoor's spill-over).
"""

from __future__ import annotations

import numpy as np

from fl_core.backdoors.base import BackdoorSpec, EvalSets, register


class Semantic:
    def __init__(self, config, data, sets):
        from fl_core.data.backdoor import backdoor_pixels

        self.source = config.attack.source_label
        self.target = config.attack.target_label
        self.targets = np.asarray(sets.targets, np.int64)
        self.mal_pixels, self.held_pixels = backdoor_pixels(data, sets)
        self._mal = None  # D_mal on the device, made on first use

    def malicious(self, own):
        import torch

        from fl_core.training import ClientData

        if self._mal is None or self._mal.pixels.device != own.pixels.device:
            px = torch.from_numpy(np.ascontiguousarray(self.mal_pixels)).to(own.pixels.device)
            self._mal = ClientData(px, torch.full((len(px),), self.target, dtype=own.labels.dtype, device=px.device))
        return self._mal

    def eval_sets(self, pixels, labels, writer):
        is_src = labels == self.source
        return EvalSets(self.mal_pixels, self.held_pixels, ~is_src, is_src & ~np.isin(writer, self.targets))


def _select(config, data):
    from fl_core.data.backdoor import select_semantic  # imports the config module: not at import

    return select_semantic(config, data)


register(BackdoorSpec("semantic", "semantic (target writers' 7s → 1)", _select,
                      lambda config, params, data, sets: Semantic(config, data, sets)))
