"""`download_archive` against a local HTTP server: verified, atomic, nothing left on failure,
and never over a directory it did not create (fl_core/outputs.py)."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

from fl_core.config import DataConfig
from fl_core.data import load_data
from fl_core.data.download import VARIANTS, archive_dir_name, download_archive, find_h5_pair
from fl_core.errors import DatasetError
from fl_core.outputs import MARKER, OutputError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """(serve_dir, base_url, hits): files in serve_dir are served on 127.0.0.1."""
    serve = tmp_path / "www"
    serve.mkdir()
    handler = type("Handler", (_Quiet,), {"hits": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(serve)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield serve, f"http://127.0.0.1:{httpd.server_address[1]}", handler.hits
    httpd.shutdown()
    httpd.server_close()


def _tar_bz2(path: Path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:bz2") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tff_archive(server, tmp_path, tiny_writers, write_tff_h5):
    """A TFF-like archive with a tiny h5 pair, served as fed_emnist_digitsonly.tar.bz2."""
    serve, base, hits = server
    work = tmp_path / "h5"
    work.mkdir()
    write_tff_h5(work / "fed_emnist_digitsonly_train.h5", tiny_writers(0, 4))
    write_tff_h5(work / "fed_emnist_digitsonly_test.h5", tiny_writers(1, 4))
    files = {p.name: p.read_bytes() for p in work.iterdir()}
    sha = _tar_bz2(serve / "fed_emnist_digitsonly.tar.bz2", files)
    return f"{base}/fed_emnist_digitsonly.tar.bz2", sha, hits


def test_good_checksum_lands_the_pair_and_reports_progress(tff_archive, tmp_path):
    url, sha, hits = tff_archive
    dest = tmp_path / "dest"
    seen = []
    out = download_archive(url, sha, dest, progress=lambda done, total: seen.append((done, total)))
    assert out == dest / "fed_emnist_digitsonly" and find_h5_pair(out) == out
    assert sorted(p.name for p in dest.iterdir()) == ["fed_emnist_digitsonly"]  # no temp files left
    assert seen[-1][0] == seen[-1][1] == len(Path(tmp_path / "www" / "fed_emnist_digitsonly.tar.bz2").read_bytes())
    data = load_data(DataConfig(source="tff-h5", path=str(out)), 0)
    assert data.num_writers == 4
    # a second call finds the verified copy and downloads nothing
    assert download_archive(url, sha, dest) == out and len(hits) == 1


def test_wrong_checksum_names_both_hashes_and_leaves_nothing(tff_archive, tmp_path):
    url, sha, _ = tff_archive
    dest = tmp_path / "dest"
    dest.mkdir()
    wrong = "0" * 64
    with pytest.raises(DatasetError) as e:
        download_archive(url, wrong, dest)
    assert wrong in str(e.value) and sha in str(e.value)
    assert list(dest.iterdir()) == []


def test_failed_download_does_not_create_dest(tff_archive, tmp_path):
    url, _, _ = tff_archive
    dest = tmp_path / "new" / "dest"
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        download_archive(url, "1" * 64, dest)
    assert not dest.exists()
    with pytest.raises(DatasetError, match="download failed"):
        download_archive(url.replace(".tar.bz2", ".missing.tar.bz2"), "1" * 64, dest)
    assert not dest.exists()


def test_not_a_tar_and_escaping_paths_are_refused(server, tmp_path):
    serve, base, _ = server
    (serve / "junk.tar.bz2").write_bytes(b"not an archive")
    junk_sha = hashlib.sha256(b"not an archive").hexdigest()
    evil_sha = _tar_bz2(serve / "evil.tar.bz2", {"../escaped.txt": b"x"})
    dest = tmp_path / "dest"
    dest.mkdir()
    for name, sha in (("junk", junk_sha), ("evil", evil_sha)):
        with pytest.raises(DatasetError, match="could not be unpacked"):
            download_archive(f"{base}/{name}.tar.bz2", sha, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_a_stale_download_is_replaced_whole(tff_archive, server, tmp_path):
    url, sha, _ = tff_archive
    serve, base, _ = server
    # an earlier download of another archive of the same name (re-published since)
    (serve / "old").mkdir()
    old_sha = _tar_bz2(serve / "old" / "fed_emnist_digitsonly.tar.bz2", {"leftover.h5": b"old"})
    stale = download_archive(f"{base}/old/fed_emnist_digitsonly.tar.bz2", old_sha, tmp_path / "dest")
    assert (stale / "leftover.h5").is_file()
    out = download_archive(url, sha, tmp_path / "dest")
    assert out == stale
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER, ".sha256", "fed_emnist_digitsonly_test.h5", "fed_emnist_digitsonly_train.h5",
    ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["fed_emnist_digitsonly"]


@pytest.mark.parametrize("case", ["users directory", "file added to a download"])
def test_a_directory_it_did_not_create_is_never_replaced(tff_archive, server, tmp_path, case):
    url, sha, hits = tff_archive
    serve, base, _ = server
    mine = tmp_path / "dest" / "fed_emnist_digitsonly"
    if case == "users directory":  # unrelated, it only has the archive's name
        mine.mkdir(parents=True)
    else:  # an earlier download the user put a file into
        (serve / "old").mkdir()
        old_sha = _tar_bz2(serve / "old" / "fed_emnist_digitsonly.tar.bz2", {"leftover.h5": b"old"})
        download_archive(f"{base}/old/fed_emnist_digitsonly.tar.bz2", old_sha, tmp_path / "dest")
    (mine / "notes.txt").write_text("mine")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "dest").rglob("*") if p.is_file()}
    n_hits = len(hits)
    with pytest.raises(OutputError, match="--dest") as e:
        download_archive(url, sha, tmp_path / "dest", option="--dest")
    assert str(mine) in str(e.value) and "notes.txt" in str(e.value)
    assert len(hits) == n_hits  # refused before downloading
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "dest").rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in (tmp_path / "dest").iterdir()) == [mine.name]


def test_a_dest_that_is_a_file_is_refused(tff_archive, tmp_path):
    url, sha, hits = tff_archive
    (tmp_path / "f").write_text("x")
    for dest in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(OutputError, match="is a file"):
            download_archive(url, sha, dest)
    assert (tmp_path / "f").read_text() == "x" and hits == []


def test_known_variants_point_at_tff_archives():
    assert archive_dir_name(VARIANTS["digits"].url) == "fed_emnist_digitsonly"
    assert archive_dir_name(VARIANTS["all"].url) == "fed_emnist"
    assert VARIANTS["digits"].sha256 == "55333deb8546765427c385710ca5e7301e16f4ed8b60c1dc5ae224b42bd5b14b"
    assert all(len(v.sha256) == 64 for v in VARIANTS.values())
