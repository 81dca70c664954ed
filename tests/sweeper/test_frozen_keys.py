"""The trial keys users already have never change (issue 20: "nothing a user has breaks").

`tests/data/frozen_keys.json` was generated from the code BEFORE plug-ins owned their
settings: every shipped grid's trial keys, result hashes and warm-up keys, and the keys of
configs written in the old flat attack shape (`attack.pgd_iterations`, `attack.recipe`,
`attack.poison_fraction` at the top of `attack`) for every attack kind, including values an
attack ignores. Regenerate only for a deliberate, announced key change:
`PYTHONPATH=. python tests/sweeper/test_frozen_keys.py`.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
FIXTURE = REPO / "tests" / "data" / "frozen_keys.json"
GRIDS = sorted(str(p.relative_to(REPO)) for p in (REPO / "grids").rglob("*.yaml"))

KINDS = ("none", "model-replacement", "pgd", "neurotoxin", "constrain-and-scale", "dba")


def old_shape_configs() -> dict[str, dict]:
    """Configs in the old flat attack shape, named by their settings: each attack kind with the
    old keys left out, at their defaults, and at other values (used or not by the kind)."""
    out: dict[str, dict] = {}
    variants = [{}, {"pgd_iterations": 5, "recipe": None, "poison_fraction": 0.3125},
                {"pgd_iterations": 3}, {"recipe": "union"}, {"recipe": "mixed", "poison_fraction": 0.5},
                {"recipe": "reference"}, {"poison_fraction": 0.2}, {"pgd_iterations": 2, "recipe": "mixed"}]
    for kind, extra in itertools.product(KINDS, variants):
        attack = {"kind": kind, **extra}
        if kind != "none":
            attack.update(fraction=0.1)
        raw = {"attack": attack, "defense": {"norm_bound": 3.0}}
        out[json.dumps(raw, sort_keys=True)] = raw
    return out


def collect(download_dir: Path) -> dict:
    from fl_core.config import config_hash, parse_config, result_hash
    from sweeper.grid import load_grid

    grids = {}
    cwd = os.getcwd()
    os.chdir(download_dir)  # relative data paths resolve where the sweep is launched
    try:
        for rel in GRIDS:
            g = load_grid(REPO / rel)
            grids[rel] = {
                "trials": [[t.trial_key, result_hash(t.config)] for t in g.trials],
                "warmups": sorted(g.warmups),
            }
    finally:
        os.chdir(cwd)
    old = {}
    for name, raw in old_shape_configs().items():
        cfg = parse_config(raw)
        old[name] = [config_hash(cfg), result_hash(cfg)]
    return {"grids": grids, "old_shape": old}


@pytest.fixture(scope="module")
def download_dir(tmp_path_factory):
    """Stand-in data for the paper grids (as tests/sweeper/test_grid.py provides it)."""
    from tests.sweeper.test_grid import TFF_DIGITS_WRITERS, write_tff_pair

    root = tmp_path_factory.mktemp("launch")
    write_tff_pair(root / "data" / "fed_emnist_digitsonly", TFF_DIGITS_WRITERS, per_writer=1)
    return root


@pytest.fixture(scope="module")
def frozen() -> dict:
    return json.loads(FIXTURE.read_text())


def test_every_shipped_grid_keeps_its_trial_keys(frozen, download_dir):
    """Every grid in grids/ expands to the same trials, in the same order, with the same trial
    keys, result hashes (checkpoints) and warm-up keys as before."""
    assert sorted(frozen["grids"]) == GRIDS, "a grid was added or removed: regenerate the fixture deliberately"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        now = collect(download_dir)
    for rel in GRIDS:
        assert now["grids"][rel] == frozen["grids"][rel], rel


def test_old_shape_configs_keep_their_keys(frozen):
    """A config written in the old flat attack shape still loads and hashes to its old key."""
    from fl_core.config import config_hash, parse_config, result_hash

    assert sorted(frozen["old_shape"]) == sorted(old_shape_configs())
    for name, raw in old_shape_configs().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cfg = parse_config(raw)
        assert [config_hash(cfg), result_hash(cfg)] == frozen["old_shape"][name], name


if __name__ == "__main__":
    import tempfile

    from tests.sweeper.test_grid import TFF_DIGITS_WRITERS, write_tff_pair

    with tempfile.TemporaryDirectory() as d:
        write_tff_pair(Path(d) / "data" / "fed_emnist_digitsonly", TFF_DIGITS_WRITERS, per_writer=1)
        FIXTURE.write_text(json.dumps(collect(Path(d)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
