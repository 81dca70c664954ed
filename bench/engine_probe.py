"""Does an engine commit change results? Prints the sha256 (first 12 hex) of the global weights
after every round, and the evaluated rounds' main/backdoor accuracy, as one JSON line; run it
with PYTHONPATH pointing at two checkouts and compare the lines.

    PYTHONPATH=. python bench/engine_probe.py warmup              # the seed-0 clean warm-up of
                                                                  # grids/paper/cpu (30 rounds)
    PYTHONPATH=. python bench/engine_probe.py attack WARM [legacy] [ROUNDS]
        # claim 1's fixed-frequency cell (unconstrained, ε = 3.3%, seed 0) from the warm-up
        # state WARM (a state.pt or run directory), to round ROUNDS (default 32); `legacy`
        # sets attack.pool_rule: legacy-eligible (leave it out on engines older than the key)

It uses the flat attack keys every engine since 2026-12-01 reads (docs/REPRODUCTION.md §4c
used it to show that engines cc5fe87, 3cc0fc9 and a939bed give claim 1's seed-0 run bit for bit).
"""

import hashlib
import json
import sys

from fl_core.config import parse_config
from fl_core.simulate import Simulation

FL = {"rounds": 30, "clients_per_round": 30, "local_epochs": 1, "batch_size": 20, "client_lr": 0.1,
      "server_lr": 1.0, "eval_every": 2, "eval_subsample": 500, "checkpoint_every": 10,
      "sampling": "without-replacement", "device": "cpu"}


def digest(t) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:12]


def main(argv: list[str]) -> None:
    if argv[:1] == ["warmup"]:
        raw = {"seed": 0, "data": {"source": "embedded"}, "fl": FL}
    elif argv[:1] == ["attack"] and len(argv) >= 2:
        attack = {"kind": "model-replacement", "recipe": "reference", "fraction": 0.033,
                  "schedule": "fixed-frequency", "num_tasks": 30, "start_round": 30}
        rest = argv[2:]
        if rest[:1] == ["legacy"]:
            attack["pool_rule"], rest = "legacy-eligible", rest[1:]
        rounds = int(rest[0]) if rest else 32
        raw = {"seed": 0, "data": {"source": "embedded"}, "fl": {**FL, "rounds": rounds, "init": argv[1]},
               "attack": attack, "defense": {"weighting": "weighted"}}
    else:
        sys.exit(__doc__)
    sim = Simulation(parse_config(raw))
    rows = []
    while not sim.done:
        m = sim.step()
        rows.append([sim.state.round_idx, digest(sim.state.global_params),
                     None if m is None else m["main_acc"], None if m is None else m["backdoor_acc"]])
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
