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


@pytest.mark.parametrize("fields,field", [
    ({"round_idx": "1"}, "round_idx"), ({"round_idx": None}, "round_idx"), ({"round_idx": -5}, "round_idx"),
    ({"global_params": torch.zeros(10)}, "global_params"),
    ({"global_params": torch.full((1_199_882,), float("nan"))}, "global_params"),
])
def test_resume_from_a_forged_checkpoint_exits_2_naming_file_and_field(one_round, tmp_path, capsys,
                                                                       fields, field):
    """Issue 19: a state.pt whose header or weights are wrong is refused at once, not a
    traceback rounds later."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(one_round, out)
    payload = torch.load(out / "state.pt", weights_only=True)
    header = json.loads(payload["header"])
    for k, v in fields.items():
        if k in header:
            header[k] = v
        else:
            payload[k] = v
    payload["header"] = json.dumps(header)
    torch.save(payload, out / "state.pt")
    before = (out / "metrics.jsonl").read_bytes()
    assert main(["simulate", "--resume", "--rounds", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out / "state.pt") in err and f"`{field}`" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert (out / "metrics.jsonl").read_bytes() == before  # nothing written


# --- a write that fails mid-run (disk full, quota, I/O error) -------------------------------

import errno  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

EXIT_WRITE_FAILED = 74  # the documented exit code (sweeper/cmd_simulate.py: sysexits' EX_IOERR)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def straight4(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["simulate", *TINY, "--rounds", "4", "--out", str(out)]) == 0
    return lines(out / "metrics.jsonl")


def _timeless(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _check_failed_then_resume(out, err, rc, failed_file, checkpoint, straight4, capsys):
    assert rc == EXIT_WRITE_FAILED, err
    assert "Traceback" not in err
    assert len([x for x in err.splitlines() if "error" in x]) == 1, err
    assert str(failed_file) in err and "--resume" in err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["round"] == checkpoint
    assert str(failed_file) in status["message"]
    assert load_state_round(out) == checkpoint
    # resumable: the same rows as a run that never stopped, no step lost or duplicated
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a cut-short last line is dropped with a warning
        assert main(["simulate", "--resume", "--out", str(out)]) == 0
    got = lines(out / "metrics.jsonl")
    assert [m["round"] for m in got] == [1, 2, 3, 4]
    assert _timeless(got) == _timeless(straight4)
    assert json.loads((out / "status.json").read_text())["status"] == "finished"


def load_state_round(out):
    from fl_core.state import load_state

    return load_state(out / "state.pt").round_idx


def test_disk_full_writing_a_checkpoint_ends_failed_and_resumes(tmp_path, capsys, monkeypatch, straight4):
    """Issue 19: ENOSPC while writing state.pt at round 4 (round 2's is on disk): one line
    naming the file and the error, status.json says failed, exit 74; resume goes on from
    round 2."""
    import sweeper.local as local

    out = tmp_path / "run"
    real = local.save_state
    monkeypatch.setattr(local, "save_state", lambda p, s: _enospc() if s.round_idx == 4 else real(p, s))
    rc = main(["simulate", *TINY, "--rounds", "4", "--out", str(out)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "No space left on device (ENOSPC)" in err
    _check_failed_then_resume(out, err, rc, out / "state.pt", 2, straight4, capsys)


def test_disk_full_mid_metrics_line_ends_failed_and_resumes(tmp_path, capsys, monkeypatch, straight4):
    """ENOSPC after half of round 3's line reached the file (a short write)."""
    import sweeper.local as local

    out = tmp_path / "run"
    real = local._Appender.append

    def append(self, row):
        if row["round"] == 3:
            self.f.write(json.dumps(row).encode()[:40])
            _enospc()
        real(self, row)

    monkeypatch.setattr(local._Appender, "append", append)
    rc = main(["simulate", *TINY, "--rounds", "4", "--out", str(out)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    _check_failed_then_resume(out, err, rc, out / "metrics.jsonl", 2, straight4, capsys)


def test_when_even_status_json_cannot_be_written_the_message_says_so(tmp_path, capsys, monkeypatch):
    import sweeper.local as local

    out = tmp_path / "run"
    real_text = local.atomic_write_text
    monkeypatch.setattr(local, "save_state", lambda p, s: _enospc())
    monkeypatch.setattr(local, "atomic_write_text",
                        lambda p, t: _enospc() if '"failed"' in t else real_text(p, t))
    rc = main(["simulate", *TINY, "--rounds", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_WRITE_FAILED and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(out / "state.pt") in err and "no checkpoint was written" in err
    assert f"{out / 'status.json'} could not be written either" in err
    assert json.loads((out / "status.json").read_text())["status"] == "running"  # as the message says


def _simulate_with_file_size_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    """`fl-sweep simulate` in a process whose files cannot grow past `limit` bytes
    (RLIMIT_FSIZE): the kernel fails the write with EFBIG, as a full disk fails it with
    ENOSPC (Python ignores SIGXFSZ). No root, no real disk filled."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run(
        [sys.executable, "-c", "import sys; from sweeper.cli import main; sys.exit(main(sys.argv[1:]))",
         "simulate", *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=limit_files, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("what", ["checkpoint", "metrics-line"])
def test_a_real_failed_write_ends_failed_and_resumes(tmp_path, capsys, straight4, what):
    """The kernel refuses the write: state.pt cannot reach its 4.8 MB, or round 3's line
    stops short at the size limit (a real short write, then EFBIG)."""
    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--rounds", "2", "--out", str(out)]) == 0
    size = (out / "metrics.jsonl").stat().st_size
    line = size // 2  # a metrics line (2 rows so far)
    # above config.yaml (rewritten on resume; it grows with every new config key) and
    # short of a whole third metrics line
    limit = 2_000_000 if what == "checkpoint" else max(size + 100, (out / "config.yaml").stat().st_size + 1)
    assert limit > (out / "config.yaml").stat().st_size
    assert what == "checkpoint" or limit < size + line
    p = _simulate_with_file_size_limit(limit, "--resume", "--rounds", "4", "--out", str(out))
    assert "File too large (EFBIG)" in p.stderr, p.stderr
    failed = out / ("state.pt" if what == "checkpoint" else "metrics.jsonl")
    if what == "metrics-line":
        assert (out / "metrics.jsonl").stat().st_size == limit  # half a line reached the file
    _check_failed_then_resume(out, p.stderr, p.returncode, failed, 2, straight4, capsys)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # no temp file left behind
