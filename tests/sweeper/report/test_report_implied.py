"""Cell labels leave out what the cell's attack or aggregator implies (e.g. DBA resolves
`attack.backdoor: trigger` and `attack.recipe: mixed`), and keep every other varied key."""

from __future__ import annotations

import pandas as pd

from sweeper.report.load import assign_cells


def test_keys_implied_by_the_attack_drop_out_of_the_labels_others_stay():
    runs = pd.DataFrame({
        "attack.kind": ["model-replacement", "dba", "model-replacement", "dba"],
        "attack.backdoor": ["semantic", "trigger", "semantic", "trigger"],
        "attack.recipe": ["reference", "mixed", "reference", "mixed"],
        "defense.norm_bound": [None, None, 3.0, 3.0],
        "defense.weighting": ["weighted", "weighted", "uniform", "uniform"],
        "seed": [0, 0, 0, 0],
    })
    out, keys = assign_cells(runs)
    assert "attack.backdoor" not in keys and "attack.recipe" not in keys
    assert "attack.kind" in keys and "defense.weighting" in keys and "defense.norm_bound" in keys
    assert out["cell"].nunique() == 4
    assert not any("backdoor=" in c or "recipe=" in c for c in out["cell"])
    # a recipe that varies on its own is a real axis and stays
    alone = runs.assign(**{"attack.kind": ["dba"] * 4, "attack.recipe": ["reference", "mixed"] * 2})
    assert "attack.recipe" in assign_cells(alone)[1]
