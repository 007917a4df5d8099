"""`suite bench` (the throughput table) and the malloc settings of suite/core/perf.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from suite.core import perf
from runners import throughput
from suite.cli import main
from suite.core.results import read_table


def test_bench_writes_the_throughput_table(tmp_path, capsys):
    code = main(["bench", "--shape", "tiny", "--variants", "lstm", "bn_vertical", "--rounds", "2",
                 "--results", str(tmp_path), "--name", "smoke", "--threads", "1"])
    assert code == 0
    rows = read_table(str(tmp_path / "smoke"), "throughput").to_pylist()
    labels = {(r["variant"], r["direction"]) for r in rows}
    want = {"cudnn_lstm", "lstm[reference]", "lstm[fast]", "bn_vertical[reference]", "bn_vertical[fast]"}
    assert labels == {(v, d) for v in want for d in ("fwd+bwd", "fwd")}
    for row in rows:
        assert row["seconds_median"] > 0 and row["seconds_min"] <= row["seconds_median"]
        assert row["rounds"] == 2 and row["steps"] == 20 and row["hidden_size"] == 8
        assert json.loads(row["env_json"])["torch_threads"] == 1
        if row["variant"] == "cudnn_lstm":
            assert row["ratio_to_cudnn"] == 1.0
        if sys.platform == "linux":
            assert row["peak_memory_bytes"] is not None
    assert "bn_vertical[fast]" in capsys.readouterr().out


def test_rounds_are_interleaved_across_variants():
    """A machine that slows down halfway must slow every variant's rounds alike."""
    calls = []
    times = throughput.time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], 3)
    assert calls == ["a", "b"] * 3 and [len(t) for t in times] == [3, 3]


@pytest.mark.parametrize("argv, message", [
    (["--variants", "nope"], "unknown variant"),
    (["--rounds", "0"], "--rounds must be"),
])
def test_bench_rejects_bad_arguments(tmp_path, capsys, argv, message):
    assert main(["bench", "--shape", "tiny", "--results", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


def test_malloc_env_merges_and_switches_off(monkeypatch):
    monkeypatch.delenv(perf.ENV_VAR, raising=False)
    env = perf.malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.mmap_max=5"})
    items = env["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.arena_max=2" in items and "glibc.malloc.mmap_max=5" in items  # the user's wins
    assert f"glibc.malloc.trim_threshold={perf.TRIM_THRESHOLD}" in items
    monkeypatch.setenv(perf.ENV_VAR, "0")
    assert perf.malloc_env({}) == {perf.ENV_VAR: "0"}
    assert perf.apply_malloc_tuning() is False and perf.malloc_tuning_state() == "disabled"


# Frees and re-allocates a 64 MiB tensor (above glibc's 32 MiB dynamic mmap threshold cap);
# counts the minor page faults that costs.
PROBE = textwrap.dedent("""
    import json, resource, sys, torch
    from suite.core import perf
    if sys.argv[1] == "mallopt":
        perf.apply_malloc_tuning()
    for _ in range(10):  # warm-up: with the tuning the heap needs ~8 rounds to settle (aligned blocks leave holes)
        x = torch.ones(16 * 2**20)
        del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.ones(16 * 2**20)
        del x
    print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                      "state": perf.malloc_tuning_state()}))
""")


def probe(mode: str, env: dict[str, str]) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", perf.ENV_VAR)} | env
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env=full, capture_output=True, text=True,
                          check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_malloc_settings_stop_page_faults_in_this_process_and_in_children():
    default = probe("none", {})
    in_process = probe("mallopt", {})
    child = probe("none", perf.malloc_env({}))
    assert default["state"] == "default" and in_process["state"] == "mallopt" and child["state"] == "tunables"
    # Default glibc unmaps the freed 64 MiB block and faults it in again each time (16k faults).
    assert default["faults"] > 50_000
    assert in_process["faults"] < default["faults"] / 20 and child["faults"] < default["faults"] / 20


def test_fit_applies_the_malloc_settings(monkeypatch):
    """Every training process (suite train, Ray trials) goes through fit, which tunes malloc."""
    from tasks.resolve import load_run_config
    from suite.core.train import fit
    from tasks.base import create

    calls = []
    monkeypatch.setattr(perf, "apply_malloc_tuning", lambda: calls.append(1) or True)
    config = load_run_config(overrides=["task.name=\"adding\"", "task.length=5", "model.hidden_size=4",
                                        "train.steps=1", "train.eval_every=1", "train.batch_size=4"])
    task = create(config.task.name, config.task.options, None, None)
    assert fit(task, config).status == "finished"
    assert calls


# A parallel op on two threads, then sleeps: the process's CPU time during a sleep is what its
# idle OpenMP worker burns spinning. Prints the median in milliseconds.
@pytest.mark.parametrize(("cap", "others", "want"), [
    (2, 0.0, 2), (2, 0.5, 2), (2, 0.51, 1), (2, 1.0, 1), (2, 3.0, 1), (4, 1.2, 3), (1, 0.0, 1),
])
def test_fitting_threads_are_the_free_cpus_rounded_at_least_one(cap, others, want):
    assert perf.fitting_threads(cap, others) == want


def test_busy_seconds_sum_the_working_ticks_of_the_given_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 30 900 0 0 0 0 0 0\n"
                    "cpu0 10 1 20 400 9 2 3 7 0 0\n"  # user nice system idle iowait irq softirq steal ...
                    "cpu1 5 0 5 500 0 0 0 0 0 0\nintr 1 2 3\n")
    tick = os.sysconf("SC_CLK_TCK")
    assert perf.busy_seconds({0}, stat) == pytest.approx(36 / tick)  # idle, iowait and steal left out
    assert perf.busy_seconds({0, 1}, stat) == pytest.approx(46 / tick)
    assert perf.busy_seconds({0, 2}, stat) is None
    assert perf.busy_seconds({0}, tmp_path / "absent") is None


def test_governor_follows_what_other_processes_use(monkeypatch):
    """Scripted readings (wall, machine busy, own CPU seconds): threads go to the free CPUs and back."""
    import torch

    before = torch.get_num_threads()
    readings = iter([(0.0, 0.0, 0.0), (1.0, 3.0, 1.5), (2.0, 5.0, 2.5), (3.0, 6.8, 3.5), (4.0, 8.0, 4.5)])
    governor = perf.ThreadGovernor(cap=2, cpus={0, 1}, interval=0.0)
    monkeypatch.setattr(governor, "_sample", lambda: next(readings))
    try:
        torch.set_num_threads(2)
        assert governor.step() == 2  # the first look only takes a reading
        assert governor.step() == 1  # others used 1.5 CPUs
        assert governor.step() == 1  # others used 1.0
        assert governor.step() == 1  # others used 0.8: 1.2 CPUs free round to one
        assert governor.step() == 2  # others used 0.2
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(perf.available_cpus() < 2 or perf.busy_seconds({0}) is None, reason="needs 2 CPUs and /proc/stat")
def test_a_process_busy_beside_this_one_takes_its_threads_down_to_the_free_cpus():
    """Issue 14: two processes with two spinning threads each on 2 cores ran 70x slower."""
    import torch

    before = torch.get_num_threads()
    cpus = sorted(os.sched_getaffinity(0))[:2]
    competitor = subprocess.Popen([sys.executable, "-c", "import os, time\n"
                                   f"os.sched_setaffinity(0, {{{cpus[0]}}})\n"
                                   "end = time.time() + 20\nwhile time.time() < end: pass"])
    try:
        torch.set_num_threads(2)
        governor = perf.ThreadGovernor(cap=2, cpus=set(cpus), interval=0.5)
        threads = [governor.step()]
        for _ in range(16):  # a few looks: the competitor needs a moment to get going
            time.sleep(0.5)
            threads.append(governor.step())
            if threads[-1] == 1:
                break
        assert threads[-1] == 1, threads
    finally:
        competitor.kill()
        competitor.wait()
        torch.set_num_threads(before)


def test_thread_tuning_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(perf, "_governor", None)  # restored after the test
    monkeypatch.setenv(perf.THREAD_SWITCH, "0")
    assert perf.start_sharing(2) is None
    monkeypatch.setenv(perf.THREAD_SWITCH, "1")
    assert perf.start_sharing(1) is None  # one thread has nothing to share


@pytest.mark.parametrize(("files", "want"), [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota_is_read(tmp_path, files, want):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert perf._cgroup_cpus(tmp_path) == want


def test_threads_never_exceed_the_cpus_available(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(perf, "available_cpus", lambda: 1)
    try:
        torch.set_num_threads(2)
        assert perf.configure_threads() == 1 and torch.get_num_threads() == 1
        assert perf.configure_threads(2) == 2  # an explicit count is the user's choice
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_available_cpus_follows_the_affinity_mask():
    code = "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); " \
           "from suite.core import perf; print(perf.available_cpus())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split()[-1] == "1"
