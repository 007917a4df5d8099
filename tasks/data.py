"""Data handling shared by the task plugins: locate files, download with checksums, lock, cache.

A task names its source files (`Remote`: file name, mirror URLs, md5 or size); `download`
fetches a missing one to a temporary name, verifies it and renames it, so a failed or
corrupt download never leaves a file behind. `locked` takes a per-data-set file lock in the
data directory so parallel trials on one node never race. `SplitCache` stores the parsed
splits as uint8 / int `.npy` arrays, built in a temporary directory and renamed into place,
and keyed by a fingerprint (names, sizes, modification times) of the source files, so a
changed source rebuilds and loading a split is one `np.load`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from suite.core.errors import DataError

# (url, destination) -> None; raise OSError (or urllib.error.URLError) when the URL cannot be fetched.
Fetch = Callable[[str, Path], None]
CACHE_FORMAT = 1
LOCK_TIMEOUT_S = 3600.0  # a real download of the largest file takes minutes, never an hour


@dataclass(frozen=True)
class Remote:
    """A canonical source file: its name, mirrors to fetch it from, and what it must hash to."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    size: int | None = None


def md5sum(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, remote: Remote) -> None:
    """DataError unless `path` has the remote's size and md5 (where they are known)."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        raise DataError(f"{path}: {size} bytes, expected {remote.size} (truncated or wrong file); "
                        f"delete it and run `suite data prepare` again")
    if remote.md5 is not None:
        got = md5sum(path)
        if got != remote.md5:
            raise DataError(f"{path}: md5 {got}, expected {remote.md5} (corrupt or wrong file); "
                            f"delete it and run `suite data prepare` again")


def url_fetch(url: str, dest: Path) -> None:
    """Stream `url` (http, https or file) into `dest`."""
    request = urllib.request.Request(url, headers={"User-Agent": "recnorm-suite"})
    with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def download(remote: Remote, folder: Path, fetch: Fetch | None = None) -> Path:
    """`folder/remote.name`, fetched from the first mirror that serves a verified copy."""
    target = folder / remote.name
    if target.exists():
        verify(target, remote)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fetch = fetch or url_fetch
    failures = []
    for url in remote.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.name}.", suffix=".part", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fetch(url, tmp)
            verify(tmp, remote)
        except (OSError, urllib.error.URLError, ValueError, DataError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        else:
            os.replace(tmp, target)
            return target
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not fetch {remote.name} ({'; '.join(failures)}); download it by hand into {folder}")


@contextlib.contextmanager
def locked(data_dir: Path, name: str) -> Iterator[None]:
    """Hold the file lock of data set `name` (parallel trials on one node must not race)."""
    locks = data_dir / ".locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(locks / f"{name}.lock"), timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except OSError:
        # A read-only data directory: nothing will be written there, so there is nothing to race on.
        yield
        return
    except Timeout:
        raise DataError(f"timed out waiting for the lock {locks / name}.lock held by another process") from None
    try:
        yield
    finally:
        lock.release()


def fingerprint(paths: Sequence[Path]) -> dict[str, list[int]]:
    """Name -> [size, mtime_ns] of each source file: cheap, and changes when a file is replaced."""
    out = {}
    for path in paths:
        stat = path.stat()
        out[str(path.resolve())] = [stat.st_size, stat.st_mtime_ns]
    return out


class SplitCache:
    """A directory of `.npy` arrays derived from some source files, valid while they are unchanged."""

    def __init__(self, data_dir: Path, family: str, sources: Sequence[Path], variant: str = ""):
        self.sources = list(sources)
        self.manifest = {"format": CACHE_FORMAT, "variant": variant, "sources": fingerprint(self.sources)}
        key = hashlib.sha1(json.dumps([variant, sorted(self.manifest["sources"])]).encode()).hexdigest()[:12]
        self.directory = data_dir / "cache" / family / key

    def ready(self) -> bool:
        """Whether the cache exists and was built from the current source files."""
        try:
            return json.loads((self.directory / "manifest.json").read_text()) == self.manifest
        except (OSError, ValueError):
            return False

    def load(self, names: Sequence[str], mmap: bool = False) -> dict[str, np.ndarray]:
        """The cached arrays (memory-mapped read-only when `mmap`)."""
        mode = "r" if mmap else None
        try:
            return {name: np.load(self.directory / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
                    for name in names}
        except (OSError, ValueError) as exc:
            raise DataError(f"cache {self.directory} is unreadable ({exc}); delete it to rebuild") from None

    def store(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Write all arrays and the manifest to a temporary directory, then rename it into place."""
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", dir=self.directory.parent))
        try:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            (tmp / "manifest.json").write_text(json.dumps(self.manifest))
            if self.directory.exists():  # built from older sources: replace it
                stale = self.directory.with_name(f".{self.directory.name}.stale-{os.getpid()}")
                os.replace(self.directory, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, self.directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def get(self, build: Callable[[], Mapping[str, np.ndarray]], names: Sequence[str], mmap: bool = False,
            lock: tuple[Path, str] | None = None) -> dict[str, np.ndarray]:
        """Cached arrays, building them (under `lock`) when absent; in memory if the cache is unwritable."""
        if self.ready():
            return self.load(names, mmap)
        with locked(*lock) if lock else contextlib.nullcontext():
            if self.ready():  # another process built it while we waited
                return self.load(names, mmap)
            arrays = build()
            try:
                self.store(arrays)
            except OSError:
                return {name: arrays[name] for name in names}
        return self.load(names, mmap)


def first_complete(places: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first folder holding every file in `names`, or None."""
    for place in places:
        if all((place / name).is_file() for name in names):
            return place
    return None


def missing_error(task: str, names: Sequence[str], places: Sequence[Path], data_dir: Path,
                  hint: str = "", own_copy: bool = False) -> DataError:
    """The one error for absent files: what is missing, where we looked, how to fetch it."""
    if len(places) == 1:
        names = [name for name in names if not (places[0] / name).is_file()] or list(names)
    fetch = f"`suite data prepare {task} --data-dir {data_dir}`{hint}"
    if own_copy:
        return DataError(f"{task}: missing {', '.join(names)} in {places[0]} (set by data.path); put them there, "
                         f"or drop data.path and fetch them with {fetch}")
    where = " or ".join(str(p) for p in places)
    return DataError(f"{task}: missing {', '.join(names)} (looked in {where}); fetch them with {fetch}, "
                     f"or point to your own copy with --set data.path=DIR")
