"""Where the backdoor tasks' target selection used to live: it is the plug-ins' own now
(`fl_core.backdoors`: `select_backdoor`; the semantic task's writers in
`fl_core.backdoors.semantic`). The names stay importable from here for existing callers."""

from __future__ import annotations

from fl_core.backdoors import select_backdoor
from fl_core.backdoors.base import BackdoorSets, num_attackers, reserved_count
from fl_core.backdoors.semantic import TARGET_ORDER_KEY, backdoor_pixels, select_semantic

__all__ = ["TARGET_ORDER_KEY", "BackdoorSets", "backdoor_pixels", "num_attackers", "reserved_count",
           "select_backdoor", "select_semantic"]
