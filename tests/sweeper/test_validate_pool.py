"""`fl-sweep validate` prints the attacker pool of every attacked (data, ε, seed, pool rule)
beside its population (issue 25): the numbers of the engine's own draw, one row per distinct
pool (N does not change the pool, so N = 5 and N = 10 share a row); unattacked trials none."""

from __future__ import annotations

import contextlib
import io
import re

from fl_core.pool_profile import pool_profile
from fl_core.config import parse_config
from fl_core.data import describe_data
from sweeper.cli import main

GRID = """\
name: pool-check
base:
  data: {source: embedded, max_writers: 80}
  fl: {rounds: 2}
  attack: {kind: pgd, fraction: 0.1}
  defense: {norm_bound: 3.0}
seeds: 2
grid:
  attack.pool_rule: [unbiased, legacy-eligible]
  attack.num_tasks: [5, 10]
"""


def test_validate_prints_the_pool_beside_the_population(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["validate", str(path)])
    text = out.getvalue()
    assert rc in (0, None), text
    assert "attacker pool vs population" in text
    rows = [ln for ln in text.splitlines() if re.search(r"│ (unbiased|legacy-eligible)\s+│", ln)]
    assert len(rows) == 4, text  # 2 rules × 2 seeds; N = 5 and 10 share their pool
    for rule in ("unbiased", "legacy-eligible"):
        for seed in (0, 1):
            cfg = parse_config({"seed": seed, "data": {"source": "embedded", "max_writers": 80},
                                "attack": {"kind": "pgd", "fraction": 0.1, "pool_rule": rule},
                                "defense": {"norm_bound": 3.0}})
            p = pool_profile(cfg, describe_data(cfg.data).labels)
            want = (f"{p.pool.min} / {p.pool.median:g} / {p.pool.max}", f"{p.pool.without_source:.0%}",
                    f"{p.population.min} / {p.population.median:g} / {p.population.max}")
            cells = [[c.strip() for c in r.split("│")] for r in rows]
            match = [c for c in cells if c[3] == rule and c[4] == str(seed)]
            assert len(match) == 1 and (match[0][6], match[0][7], match[0][9]) == want, (rule, seed, text)
