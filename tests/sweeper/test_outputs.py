"""The one rule for outputs (fl_core/outputs.py, sweeper/outputs.py): nothing the tool did
not create is ever deleted or replaced; writes are built beside and swapped in. Unit tests
of the mechanism, then `fl-sweep report --out` and `fl-sweep data download --dest` end to
end on real files (export: tests/sweeper/report/test_report_export.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import socket
import tarfile
from pathlib import Path

import pytest

from fl_core import outputs as core
from fl_core.config import parse_config
from sweeper import outputs
from sweeper.cli import main
from sweeper.configio import dump_config


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fl-sweep: error: "), err
    return lines[0]


def _build(dest: Path, files: dict[str, str], kind: str = "report", origin: str | None = None) -> None:
    with core.building(dest, "--out", kind, origin) as d:
        for name, text in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)


# ------------------------------------------------------------------ the mechanism
def test_a_new_output_is_marked_with_what_was_written(tmp_path):
    dest = tmp_path / "out" / "r"
    _build(dest, {"a.txt": "1", "figures/f.png": "2"}, origin="sweep x")
    mark = core.read_marker(dest)
    assert mark["kind"] == "report" and mark["origin"] == "sweep x"
    assert mark["entries"] == ["a.txt", "figures", "figures/f.png"]
    assert dest.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in dest.parent.iterdir()) == ["r"]  # no temporary left


def test_an_output_of_the_tool_is_replaced_whole_an_empty_directory_too(tmp_path):
    dest = tmp_path / "r"
    _build(dest, {"old.txt": "old", "figures/stale.png": "x"})
    _build(dest, {"new.txt": "new"})
    assert _snapshot(dest) == {core.MARKER: (dest / core.MARKER).read_bytes(), "new.txt": b"new"}
    empty = tmp_path / "empty"
    empty.mkdir()
    _build(empty, {"new.txt": "new"})
    assert (empty / "new.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "r"]


@pytest.mark.parametrize("case,expect", [
    ("users directory", "an existing directory this tool did not create (it holds mine.txt"),
    ("file added", "holds mine.txt, which this tool did not write"),
    ("file added deep", "holds figures/mine.txt, which this tool did not write"),
    ("other kind", "holds an earlier export, not a report"),
    ("other origin", "holds the report of sweep a, not of sweep b"),
    ("marker not JSON", "an existing directory this tool did not create"),
    ("marker nested 100,000 deep", "an existing directory this tool did not create"),
    ("marker of another shape", "an existing directory this tool did not create"),
    ("a file", "is a file; it is not replaced"),
    ("a symlink", "is a symlink; it is not replaced"),
])
def test_what_the_tool_did_not_write_is_never_replaced(tmp_path, case, expect):
    dest = tmp_path / "r"
    kind, origin = "report", ("sweep b" if case == "other origin" else None)
    if case == "a file":
        dest.write_text("mine")
    elif case == "a symlink":
        (tmp_path / "target").mkdir()
        dest.symlink_to(tmp_path / "target")
    elif case == "users directory":
        dest.mkdir()
        (dest / "mine.txt").write_text("mine")
    else:
        _build(dest, {"a.txt": "1", "figures/f.png": "2"},
               kind="export" if case == "other kind" else "report",
               origin="sweep a" if case == "other origin" else None)
        extra = {"file added": "mine.txt", "file added deep": "figures/mine.txt"}.get(case)
        if extra:
            (dest / extra).write_text("mine")
        bad = {"marker not JSON": "{not json",
               "marker nested 100,000 deep": "[" * 100_000 + "]" * 100_000,
               "marker of another shape": json.dumps({"format": 1, "kind": "report", "entries": "*"})}
        if case in bad:
            (dest / core.MARKER).write_text(bad[case])
            (dest / "mine.txt").write_text("mine")
    before = _snapshot(tmp_path)
    with pytest.raises(core.OutputError, match="--out") as e:
        _build(dest, {"new.txt": "new"}, kind=kind, origin=origin)
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert _snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_failure_while_building_leaves_the_earlier_output(tmp_path):
    dest = tmp_path / "r"
    _build(dest, {"a.txt": "old"})
    before = _snapshot(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        with core.building(dest, "--out", "report") as d:
            (d / "a.txt").write_text("half")
            raise OSError("disk full")
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_failed_swap_puts_the_earlier_output_back(tmp_path, monkeypatch):
    dest = tmp_path / "r"
    _build(dest, {"a.txt": "old"})
    before = _snapshot(tmp_path)
    real = os.rename

    def rename(src, dst):  # moving the old one aside works, renaming the new one in fails
        if Path(src).name.endswith(".tmp"):
            raise OSError("EIO")
        return real(src, dst)

    monkeypatch.setattr(core.os, "rename", rename)
    with pytest.raises(OSError, match="EIO"):
        _build(dest, {"a.txt": "new"})
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_resolve_dir_refuses_a_file_a_path_under_it_and_a_symlink_loop(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    for path, expect in ((tmp_path / "f", "is a file, not a directory"),
                         (tmp_path / "f" / "a" / "b", f"{tmp_path / 'f'} is a file"),
                         (tmp_path / "l1", "cannot be resolved"),
                         (tmp_path / "l1" / "x", "cannot be resolved")):
        with pytest.raises(core.OutputError, match="--dest") as e:
            core.resolve_dir(path, "--dest")
        assert expect in str(e.value)
    assert core.resolve_dir(tmp_path / "new" / "dir", "--dest") == (tmp_path / "new" / "dir").resolve()


def test_output_error_pickles_intact():
    e = core.OutputError("--out x: is a file")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is core.OutputError and str(back) == str(e)
    s = outputs.OutputError("--out x: is a file")
    assert str(pickle.loads(pickle.dumps(s))) == str(s)


@pytest.mark.parametrize("where,expect", [
    ("sweep", "is the sweep directory"), ("inside", "is inside the sweep directory"),
    ("around", "contains the sweep directory"),
])
def test_check_out_finds_sweep_directories_by_their_manifest(tmp_path, where, expect):
    sweep = tmp_path / "elsewhere" / "s1"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    path = {"sweep": sweep, "inside": sweep / "tune" / "x", "around": sweep.parent}[where]
    with pytest.raises(outputs.OutputError, match=expect):
        outputs.check_out(path, "--out")
    assert outputs.check_out(tmp_path / "free", "--out") == (tmp_path / "free").resolve()


def test_safe_name_keeps_outputs_in_their_directory():
    assert outputs.safe_name("fig4a") and outputs.safe_name("a+b c")
    for bad in ("", ".", "..", "../x", "a/b", ".hidden", "a\nb", "a\0b"):
        assert not outputs.safe_name(bad)


# ------------------------------------------------------------------ report --out
def _run_dir(d: Path, seed: int, note: str | None = None, **overrides) -> None:
    """A `fl-sweep simulate --out` directory: config.yaml + 2 evaluated rounds. With `note`,
    the config carries an extra key (another engine version): the report keeps it raw,
    and it becomes part of the cell label."""
    raw = {"seed": seed, "data": {"source": "embedded"}, "fl": {"rounds": 2}}
    for k, v in overrides.items():
        raw.setdefault(k.split("__")[0], {})[k.split("__")[1]] = v
    d.mkdir(parents=True)
    text = dump_config(parse_config(raw))
    if note is not None:
        text += f"extra:\n  note: {json.dumps(note)}\n"
    (d / "config.yaml").write_text(text)
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"round": r, "main_acc": 0.5 + 0.1 * r, "backdoor_acc": 0.1, "num_attackers": 0}) + "\n"
        for r in (1, 2)))


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for s in (0, 1):
        _run_dir(root / f"a{s}", s)
        _run_dir(root / f"b{s}", s, defense__norm_bound=3.0)
    return root


@pytest.mark.parametrize("kind", ["file", "under a file", "symlink loop"])
def test_report_out_that_is_no_directory_is_refused_before_reading(tmp_path, capsys, kind):
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    out = {"file": tmp_path / "afile", "under a file": tmp_path / "afile" / "r",
           "symlink loop": tmp_path / "l1"}[kind]
    # the sweep does not exist either: the --out error comes first, nothing was read
    assert main(["report", str(tmp_path / "no-such-sweep"), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--out {out}: " in line and {"file": "is a file", "under a file": "is a file, so nothing",
                                          "symlink loop": "cannot be resolved"}[kind] in line
    assert (tmp_path / "afile").read_text() == "keep"


def test_report_over_a_users_directory_is_refused(runs, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own report")
    assert main(["report", str(runs), "--out", str(mine), "--no-log"]) == 2
    assert "an existing directory this tool did not create" in _one_line(capsys.readouterr().err)
    assert _snapshot(mine) == {"report.md": b"my own report"}


def test_report_into_the_storage_root_or_a_source_is_refused(runs, tmp_path, capsys):
    storage = tmp_path / "S"
    (storage / "s1").mkdir(parents=True)
    (storage / "s1" / "sweep.json").write_text("{}")
    before = _snapshot(tmp_path)
    for out, expect in ((storage, "is the sweep storage root"), (storage / "new", "is inside the sweep storage root"),
                        (runs / "report", "is inside the source"), (tmp_path, "contains the")):
        assert main(["report", str(runs), "--storage", str(storage), "--out", str(out)]) == 2
        assert expect in _one_line(capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


def test_a_report_replaces_its_earlier_self_but_not_a_file_added_to_it(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(out), "--claims", "--no-log"]) == 0
    assert (out / "claims.json").is_file()
    assert main(["report", str(runs), "--out", str(out), "--no-log"]) == 0
    assert not (out / "claims.json").exists() and (out / "report.md").is_file()
    (out / "my-notes.md").write_text("notes")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["report", str(runs), "--out", str(out), "--no-log"]) == 2
    assert "holds my-notes.md, which this tool did not write" in _one_line(capsys.readouterr().err)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "runs"]  # no temporary left


def test_markup_in_a_cell_label_prints_as_text(tmp_path, capsys):
    root = tmp_path / "runs"
    _run_dir(root / "a", 0, note="[/bold]")
    _run_dir(root / "b", 0, note="[red]plain")
    assert main(["report", str(root), "--out", str(tmp_path / "rep"), "--no-log"]) == 0
    out = capsys.readouterr().out
    assert "extra.note=[/bold]" in out and "extra.note=[red]plain" in out


@pytest.mark.parametrize("given", ["--tracking-uri", "$MLFLOW_TRACKING_URI"])
def test_report_never_prints_the_tracking_uris_credentials(tmp_path, monkeypatch, capsys, given):
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(k, "x")  # recorded, so the value the command sets is undone
        monkeypatch.delenv(k)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the server is known down
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: connecting is refused
    uri = f"http://bob:hunter2pw@127.0.0.1:{port}/?token=s3cr3ttok&x=1"
    argv = ["report", "some-sweep", "--storage", str(tmp_path / "S"), "--out", str(tmp_path / "r")]
    if given == "--tracking-uri":
        argv += ["--tracking-uri", uri]
    else:  # the store a sweep name not under the storage root is looked up in
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "cannot read its MLflow store" in _one_line(err) and f"127.0.0.1:{port}" in err
    for secret in ("hunter2pw", "s3cr3ttok"):
        assert secret not in out + err
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "hunter2pw"
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ data download --dest
def _tar(path: Path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_never_replaces_a_users_directory_of_the_archives_name(tmp_path, capsys):
    sha = _tar(tmp_path / "keep.tar", {"x_train.h5": b"a", "x_test.h5": b"b"})
    dest = tmp_path / "d"
    (dest / "keep").mkdir(parents=True)
    (dest / "keep" / "thesis.tex").write_text("years of work")
    argv = ["data", "download", "--url", (tmp_path / "keep.tar").as_uri(), "--sha256", sha, "--dest", str(dest)]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)  # refused before the "downloading" line
    assert f"--dest {dest / 'keep'}: an existing directory this tool did not create" in line
    assert _snapshot(dest) == {"keep/thesis.tex": b"years of work"}
    assert sorted(p.name for p in dest.iterdir()) == ["keep"]


def test_download_dest_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    sha = _tar(tmp_path / "keep.tar", {"x_train.h5": b"a"})
    (tmp_path / "d").write_text("a file")
    url = (tmp_path / "keep.tar").as_uri()
    for dest, expect in ((tmp_path / "d", "is a file, not a directory"),
                         (tmp_path / "d" / "sub", "is a file, so nothing can be created under it")):
        assert main(["data", "download", "--url", url, "--sha256", sha, "--dest", str(dest)]) == 2
        assert expect in _one_line(capsys.readouterr().err)
    assert (tmp_path / "d").read_text() == "a file"
