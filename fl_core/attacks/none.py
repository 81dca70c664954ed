"""`attack.kind: none`: no attackers (the unattacked baseline of every comparison)."""

from __future__ import annotations

from fl_core.attacks.base import AttackSpec, register

register(AttackSpec("none", "no attack", build=lambda params, config: None, rank=0))
