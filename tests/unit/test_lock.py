"""The study driver lock (runners.lock): refused while held, free once its holder ends, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from runners.lock import LOCK_FILE, study_lock
from suite.core.errors import SuiteError
from tests.conftest import ROOT

HOLD = textwrap.dedent("""
    import sys, time
    from runners.lock import study_lock
    with study_lock(sys.argv[1], "demo"):
        print("held", flush=True)
        time.sleep(600)
""")


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    with study_lock(str(tmp_path / "demo"), "demo"):
        with pytest.raises(SuiteError, match=rf"being run by another driver \(pid {os.getpid()} on "):
            with study_lock(str(tmp_path / "demo"), "demo"):
                pass
    with study_lock(str(tmp_path / "demo"), "demo"):  # released at the end of the block
        pass


def test_a_killed_holder_leaves_no_lock(tmp_path):
    root = str(tmp_path / "demo")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, root], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SuiteError, match=rf"pid {holder.pid} "):
            with study_lock(root, "demo"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert os.path.exists(os.path.join(root, LOCK_FILE))  # the file stays; the lock does not
    deadline = time.monotonic() + 10
    while True:
        try:
            with study_lock(root, "demo"):
                break
        except SuiteError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_uris_run_unlocked_with_a_note(capsys):
    with study_lock("s3://bucket/results/demo", "demo"):
        pass
    assert "no lock keeps a second driver off study demo" in capsys.readouterr().err
