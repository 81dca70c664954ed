"""The old name of `fl_core.build` (building components), kept for existing callers."""

from __future__ import annotations

from fl_core.build import build_task, make_aggregator, make_attack, make_defenses, select_backdoor

__all__ = ["build_task", "make_aggregator", "make_attack", "make_defenses", "select_backdoor"]
