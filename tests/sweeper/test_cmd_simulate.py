"""`fl-sweep simulate` end to end: outputs, resume without duplicate steps, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from fl_core.attacks import ATTACKS
from sweeper.cli import main

TINY = [
    "--set", "data.source=embedded", "--set", "data.max_writers=40",
    "--set", "fl.clients_per_round=4", "--set", "fl.local_epochs=1", "--set", "fl.eval_subsample=200",
    "--set", "fl.checkpoint_every=2", "--set", "attack.num_tasks=3",
    "--set", "attack.kind=model-replacement", "--set", "attack.fraction=0.1", "--set", "attack.frequency=2",
]


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_simulate_writes_config_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--rounds", "3", "--out", str(out)]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["fl"]["rounds"] == 3 and cfg["attack"]["kind"] == "model-replacement"
    ms = lines(out / "metrics.jsonl")
    assert [m["round"] for m in ms] == [1, 2, 3]
    for key in ("main_acc", "main_loss", "backdoor_acc", "backdoor_acc_heldout", "num_attackers",
                "benign_norm_p50", "benign_norm_p90"):
        assert key in ms[0]
    assert [m["num_attackers"] for m in ms] == [0, 1, 0]  # f = 2: rounds with index % 2 == 1
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    assert (out / "state.pt").exists()


def test_resume_extends_without_duplicates_and_matches_a_straight_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["simulate", *TINY, "--rounds", "5", "--out", str(straight)]) == 0
    assert main(["simulate", *TINY, "--rounds", "3", "--out", str(split)]) == 0
    # the checkpoint is at round 3 (the end); a stray line past it must be dropped on resume
    with open(split / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"round": 4, "main_acc": -1}) + "\n")
    from fl_core.state import load_state

    assert load_state(split / "state.pt").round_idx == 3
    assert main(["simulate", "--resume", "--rounds", "5", "--out", str(split)]) == 0
    a, b = lines(straight / "metrics.jsonl"), lines(split / "metrics.jsonl")
    assert [m["round"] for m in b] == [1, 2, 3, 4, 5]
    drop = lambda ms: [{k: v for k, v in m.items() if not k.endswith("_seconds")} for m in ms]
    assert drop(a) == drop(b)
    pa = load_state(straight / "state.pt").global_params
    assert torch.equal(pa, load_state(split / "state.pt").global_params)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "attack.fraction=1.5"], "attack.fraction"),
        (["--set", "fl.round=3"], "did you mean `fl.rounds`"),
        (["--set", "defense.noise_sigma=-1"], "defense.noise_sigma"),
        (["--set", "defense.norm_bound=0"], "defense.norm_bound"),
        (["--set", "attack.kind=backdoor"], "one of: " + ", ".join(sorted(ATTACKS))),
        (["--set", "attack.kind=pgd", "--set", "attack.fraction=0.1"], "defense.norm_bound"),
        (["--set", "data.source=embedded", "--set", "data.max_writers=10", "--set", "attack.num_tasks=50"],
         "attack.num_tasks"),
    ],
)
def test_bad_config_is_one_clear_error_with_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "bad"
    assert main(["simulate", *args, "--rounds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (out / "metrics.jsonl").exists()


def test_diverged_run_exits_3_with_status(tmp_path, capsys):
    out = tmp_path / "div"
    rc = main(["simulate", *TINY, "--set", "attack.frequency=1", "--set", "attack.boost=1e300",
               "--rounds", "2", "--out", str(out)])
    assert rc == 3
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "diverged" and status["round"] == 1
    assert "diverged" in capsys.readouterr().err


def test_resume_drops_a_cut_short_last_line_with_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--rounds", "2", "--out", str(out)]) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "main_acc": 0.4')  # a crash mid-write
    with pytest.warns(UserWarning, match="metrics.jsonl"):
        assert main(["simulate", "--resume", "--rounds", "3", "--out", str(out)]) == 0
    assert [m["round"] for m in lines(out / "metrics.jsonl")] == [1, 2, 3]


@pytest.fixture(scope="module")
def one_round(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["simulate", *TINY, "--rounds", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_resume_from_a_damaged_checkpoint_exits_2_naming_it(one_round, tmp_path, capsys, damage):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(one_round, out)
    data = (out / "state.pt").read_bytes()
    (out / "state.pt").write_bytes({"empty": b"", "truncated": data[: len(data) // 3],
                                    "garbage": b"\x00junk" * 100}[damage])
    assert main(["simulate", "--resume", "--rounds", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out / "state.pt") in err and "Traceback" not in err
    assert [m["round"] for m in lines(out / "metrics.jsonl")] == [1]  # nothing written


def test_fresh_run_refuses_a_non_empty_out_unless_forced(one_round, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(one_round, out)
    before = (out / "metrics.jsonl").read_bytes()
    assert main(["simulate", *TINY, "--rounds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err and "--force" in err
    assert (out / "metrics.jsonl").read_bytes() == before  # untouched
    assert main(["simulate", "--resume", "--force", "--out", str(out)]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["simulate", *TINY, "--rounds", "1", "--out", str(tmp_path / "file")]) == 2
    assert main(["simulate", *TINY, "--set", "seed=1", "--rounds", "2", "--force", "--out", str(out)]) == 0
    assert [m["round"] for m in lines(out / "metrics.jsonl")] == [1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1


def test_unreadable_h5_data_exits_2_naming_the_file(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("train", "test"):
        (d / f"fed_emnist_digitsonly_{split}.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    rc = main(["simulate", "--set", "data.source=tff-h5", "--set", f"data.path={d}", "--rounds", "1",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and str(d / "fed_emnist_digitsonly_train.h5") in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
