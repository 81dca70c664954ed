"""`fl-sweep data download` against a local HTTP server serving a tar.bz2 built here."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from functools import partial

import h5py
import numpy as np
import pytest

from fl_core.config import DataConfig
from fl_core.data import load_data
from sweeper.cli import main


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _h5_bytes(writers: int, seed: int) -> bytes:
    """A TFF-layout h5 file (k/255 float32 pixels, white borders) in memory."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for k in range(writers):
            levels = rng.integers(0, 256, (3, 28, 28))
            levels[:, 0, :] = 255
            g = f.create_group(f"examples/f{k:04d}_00")
            g.create_dataset("label", data=rng.integers(0, 10, 3).astype(np.int32))
            g.create_dataset("pixels", data=(levels / 255).astype(np.float32))
    return buf.getvalue()


@pytest.fixture
def archive(tmp_path):
    """(url, sha256) of fed_emnist_digitsonly.tar.bz2 served on 127.0.0.1."""
    serve = tmp_path / "www"
    serve.mkdir()
    path = serve / "fed_emnist_digitsonly.tar.bz2"
    with tarfile.open(path, "w:bz2") as tar:
        for name, blob in (("fed_emnist_digitsonly_train.h5", _h5_bytes(3, 0)),
                           ("fed_emnist_digitsonly_test.h5", _h5_bytes(3, 1))):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(serve)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}", hashlib.sha256(path.read_bytes()).hexdigest()
    httpd.shutdown()
    httpd.server_close()


def test_download_lands_the_pair_and_prints_the_set_flags(archive, tmp_path, capsys):
    url, sha = archive
    dest = tmp_path / "dest"
    assert main(["data", "download", "--dest", str(dest), "--url", url, "--sha256", sha]) == 0
    landed = dest / "fed_emnist_digitsonly"
    assert sorted(p.name for p in landed.glob("*.h5")) == [
        "fed_emnist_digitsonly_test.h5", "fed_emnist_digitsonly_train.h5",
    ]
    out = capsys.readouterr().out
    assert f"--set data.source=tff-h5 --set data.path={landed}" in out
    assert load_data(DataConfig(source="tff-h5", path=str(landed)), 0).num_writers == 3


def test_wrong_checksum_exits_2_with_both_hashes_and_leaves_nothing(archive, tmp_path, capsys):
    url, sha = archive
    dest = tmp_path / "dest"
    dest.mkdir()
    wrong = "ab" * 32
    assert main(["data", "download", "--dest", str(dest), "--url", url, "--sha256", wrong]) == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and wrong in err and sha in err
    assert list(dest.iterdir()) == []


def test_default_dest_is_the_env_directory(archive, tmp_path, monkeypatch):
    url, sha = archive
    monkeypatch.setenv("FL_BACKDOOR_DATA", str(tmp_path / "envdir"))
    assert main(["data", "download", "--url", url, "--sha256", sha]) == 0
    assert (tmp_path / "envdir" / "fed_emnist_digitsonly" / "fed_emnist_digitsonly_train.h5").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--url", "http://127.0.0.1:9/x.tar.bz2"], "--sha256"),
        (["--url", "http://127.0.0.1:9/x.tar.bz2", "--sha256", "beef"], "64-hex-digit"),
        (["--variant", "letters"], "available: all, digits"),
    ],
)
def test_bad_options_exit_2(args, message, tmp_path, capsys):
    assert main(["data", "download", "--dest", str(tmp_path / "d"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
