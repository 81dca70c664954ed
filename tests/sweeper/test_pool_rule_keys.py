"""Issue 25 changed the attacker pool, so it changed the trial keys, deliberately and only
where results change: `tests/data/frozen_keys_pre25.json` is `frozen_keys.json` as it was
before issue 25. With `attack.pool_rule: legacy-eligible` every shipped grid's trials and
every old-shape config hash to their pre-25 trial keys and result hashes again (so old sweeps,
checkpoints and reports are found, and `legacy-eligible` reproduces them); unattacked trials and
every warm-up keep their keys under the new default."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tests.sweeper.test_frozen_keys import GRIDS, REPO, download_dir, old_shape_configs  # noqa: F401

PRE25 = REPO / "tests" / "data" / "frozen_keys_pre25.json"
NOW = REPO / "tests" / "data" / "frozen_keys.json"


def legacy(cfg):
    return cfg.model_copy(update={"attack": cfg.attack.model_copy(update={"pool_rule": "legacy-eligible"})})


def test_legacy_pool_rule_gives_every_shipped_trial_its_pre25_keys(download_dir):  # noqa: F811
    import os

    from fl_core.config import config_hash, result_hash
    from sweeper.grid import load_grid

    pre = json.loads(PRE25.read_text())["grids"]
    now = json.loads(NOW.read_text())["grids"]
    assert set(pre) <= set(GRIDS)  # grids added after issue 25 (the Byzantine ones) have no pre-25 keys
    cwd = os.getcwd()
    os.chdir(download_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for rel in sorted(pre):
                g = load_grid(REPO / rel)
                got = [[config_hash(legacy(t.config)), result_hash(legacy(t.config))] for t in g.trials]
                assert got == pre[rel]["trials"], rel
                assert now[rel]["warmups"] == pre[rel]["warmups"], rel
                for t, old, new in zip(g.trials, pre[rel]["trials"], now[rel]["trials"]):
                    assert (old == new) == (t.config.attack.kind == "none"), (rel, t.index)
    finally:
        os.chdir(cwd)


def test_legacy_pool_rule_gives_old_shape_configs_their_pre25_keys():
    from fl_core.config import config_hash, parse_config, result_hash

    pre = json.loads(PRE25.read_text())["old_shape"]
    for name, raw in old_shape_configs().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cfg = legacy(parse_config(raw))
        assert [config_hash(cfg), result_hash(cfg)] == pre[name], name
