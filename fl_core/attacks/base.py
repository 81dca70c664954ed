"""The Attack protocol: how a compromised client builds the update it sends.

An attack composes the one client training loop (`fl_core.client`), never copies it, and
returns the update it sends (already boosted by the task's β), before any server defense.
"""

from __future__ import annotations

from typing import Protocol

import torch

from fl_core.client import ClientData, SGDParams
from fl_core.types import ClientTask, Delta


class Attack(Protocol):
    def craft(
        self,
        task: ClientTask,
        model: torch.nn.Module,
        global_params: torch.Tensor,
        benign: ClientData,
        malicious: ClientData,
        hp: SGDParams,
        gen: torch.Generator,
    ) -> tuple[Delta, dict]:
        """Return (update to send, metrics). `benign` is D_trn (the attacker's own data),
        `malicious` is D_mal already relabelled to the target label."""
        ...
