"""One driver per study: an OS file lock in the study's results directory.

A second `suite run` (fresh or `--resume`) on a study whose driver is running would start
the same trials again and report the other driver's trials as its own (issue 14). The lock
is `flock` on `<results>/<study>/.driver.lock`, held while the driver runs; the kernel
releases it when the driver's process ends however it ends (Ctrl-C, SIGKILL, a crash), so a
killed driver never leaves a stale lock, and the file itself may stay. The file records the
holder (pid, host, start time) for the refusal message. The descriptor is not inherited by
the Ray processes the driver starts (Python opens it close-on-exec), so a Ray process that
outlives a killed driver does not hold the lock either.

Locations given as URIs (s3://, gs://, ...) have no such lock: the driver runs unlocked and
says so; running two drivers on one study there is the user's to avoid (README, Studies).
On NFS, Linux implements flock with NFS byte-range locks, so it holds across client machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

from suite.core.errors import SuiteError

LOCK_FILE = ".driver.lock"


@contextlib.contextmanager
def study_lock(root: str, study: str) -> Iterator[None]:
    """Hold the study's driver lock for the duration of the block; refuse when another driver holds it."""
    if "://" in root and not root.startswith("file://"):
        print(f"note: {root} is not a local path, so no lock keeps a second driver off study {study}; "
              f"run one driver at a time", file=sys.stderr)
        yield
        return
    folder = root.removeprefix("file://")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held by another driver
            raise SuiteError(f"study {study} in {folder} is being run by another driver ({_holder(fd)}); "
                             f"wait for it to end or stop it, then run again (with --resume to continue)") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
