"""Crash integrity (issue 19): a run killed mid-way whose metrics file lost its last line (a
line cut short by the crash, or gone) resumes to exactly the metric rows of a run that never
stopped, also when the checkpoint already covers the lost line's round: every checkpoint
carries the rows it covers (`fl_core.loop`), and the resume restores them.

The runs are real `fl-sweep simulate` runs on the embedded digits; the crash is an
exception out of `Simulation.step` when a given round starts (what a kill leaves: rows and
checkpoints up to there, status.json still "running")."""

from __future__ import annotations

import json
import shutil

import pytest

from fl_core.simulate import Simulation
from fl_core.state import load_state
from sweeper.cli import main
from sweeper.jsonl import TruncatedLineWarning

TINY = [
    "--set", "data.source=embedded", "--set", "data.max_writers=40",
    "--set", "fl.clients_per_round=4", "--set", "fl.local_epochs=1", "--set", "fl.eval_subsample=200",
    "--set", "attack.num_tasks=3", "--set", "attack.kind=model-replacement",
    "--set", "attack.fraction=0.1", "--set", "attack.frequency=2",
]
CADENCES = {
    "eval1-ckpt2": ["--set", "fl.eval_every=1", "--set", "fl.checkpoint_every=2"],
    # no row since the previous checkpoint at round 3: it still carries round 2's
    "eval2-ckpt1": ["--set", "fl.eval_every=2", "--set", "fl.checkpoint_every=1"],
}
ROUNDS = "4"


class Crash(Exception):
    """Stands for a kill: nothing after it is written."""


def _timeless(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted runs, one per cadence."""
    out = {}
    for name, args in CADENCES.items():
        d = tmp_path_factory.mktemp("straight") / name
        assert main(["simulate", *TINY, *args, "--rounds", ROUNDS, "--out", str(d)]) == 0
        out[name] = d
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """(cadence, round at which the crash hits) -> the run directory it left."""
    cache = {}

    def get(cadence: str, crash_at: int):
        if (cadence, crash_at) not in cache:
            d = tmp_path_factory.mktemp("crashed") / f"{cadence}-{crash_at}"
            real = Simulation.step

            def step(self):
                if self.state.round_idx + 1 == crash_at:
                    raise Crash(f"killed as round {crash_at} starts")
                return real(self)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(Simulation, "step", step)
                with pytest.raises(Crash):
                    main(["simulate", *TINY, *CADENCES[cadence], "--rounds", ROUNDS, "--out", str(d)])
            assert json.loads((d / "status.json").read_text())["status"] == "running"
            cache[cadence, crash_at] = d
        return cache[cadence, crash_at]

    return get


CUTS = {
    "gone": lambda line: b"",                     # the whole line lost
    "one-byte": lambda line: line[:1],
    "half": lambda line: line[: len(line) // 2],
    "no-brace": lambda line: line[:-2],           # all but the closing `}` and the newline
    "no-newline": lambda line: line[:-1],         # still JSON: kept as it is
}


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("cadence,crash_at,lost_round,checkpoint", [
    ("eval1-ckpt2", 3, 2, 2),   # the lost line is the checkpoint's own round (was [1, 3, 4])
    ("eval1-ckpt2", 4, 3, 2),   # the lost line is past the checkpoint: that round runs again
    ("eval2-ckpt1", 4, 2, 3),   # the lost line is before the checkpoint's round (was [4])
])
def test_resume_after_a_cut_last_line_equals_the_uninterrupted_run(
        straight, crashed, tmp_path, cadence, crash_at, lost_round, checkpoint, cut):
    out = tmp_path / "run"
    shutil.copytree(crashed(cadence, crash_at), out)
    assert load_state(out / "state.pt").round_idx == checkpoint
    metrics = out / "metrics.jsonl"
    whole = metrics.read_bytes().splitlines(keepends=True)
    assert json.loads(whole[-1])["round"] == lost_round
    metrics.write_bytes(b"".join(whole[:-1]) + CUTS[cut](whole[-1]))

    if cut in ("one-byte", "half", "no-brace"):
        with pytest.warns(TruncatedLineWarning):
            assert main(["simulate", "--resume", "--out", str(out)]) == 0
    else:
        assert main(["simulate", "--resume", "--out", str(out)]) == 0

    want, got = _rows(straight[cadence] / "metrics.jsonl"), _rows(metrics)
    assert [r["round"] for r in got] == [r["round"] for r in want]
    assert _timeless(got) == _timeless(want)  # every value, in the same key order
    assert [list(r) for r in got] == [list(r) for r in want]
    # the rows the checkpoint covers are the very lines the run wrote before the crash
    kept = [x for x in whole if json.loads(x)["round"] <= checkpoint]
    assert metrics.read_bytes().splitlines(keepends=True)[: len(kept)] == kept
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
