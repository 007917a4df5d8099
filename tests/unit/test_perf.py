"""`suite bench` (the throughput table) and the malloc settings of suite/core/perf.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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
_IDLE_BURN = textwrap.dedent("""
    import sys, time
    if sys.argv[1] == "suite":
        import suite  # noqa: F401 -- the suite's OpenMP settings, before torch
    import torch
    torch.set_num_threads(2)
    a, b = torch.randn(4_000_000), torch.randn(4_000_000)
    burnt = []
    for _ in range(15):
        torch.add(a, b)
        start = time.process_time()
        time.sleep(0.02)
        burnt.append(time.process_time() - start)
    print(sorted(burnt)[len(burnt) // 2] * 1e3)
""")


def _idle_burn_ms(how: str, env: dict[str, str]) -> float:
    clean = {k: v for k, v in os.environ.items() if k not in perf.THREAD_ENV} | env
    done = subprocess.run([sys.executable, "-c", _IDLE_BURN, how], capture_output=True, text=True, env=clean,
                          timeout=120, check=True)
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp wait policy")
def test_idle_openmp_threads_sleep_once_suite_is_imported():
    """Issue 14: spinning OpenMP workers made two processes on shared cores 70x slower."""
    spinning = _idle_burn_ms("plain", {"OMP_WAIT_POLICY": "ACTIVE"})  # the measurement can see a spin
    sleeping = _idle_burn_ms("suite", {})
    assert sleeping < 1.0 and sleeping < spinning / 4, (sleeping, spinning)


def test_thread_env_keeps_the_users_choice(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert perf.thread_env()["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert perf.thread_env()["OMP_WAIT_POLICY"] == "PASSIVE"


def test_wait_policy_is_in_force_in_this_process():
    # tests/conftest.py imports suite before torch, as every entry point of the suite does.
    assert perf.wait_policy() == os.environ["OMP_WAIT_POLICY"].upper()


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


def test_thread_tuning_can_be_switched_off():
    code = "import os, suite, torch; from suite.core import perf; print(os.environ.get('OMP_WAIT_POLICY'), perf.wait_policy())"
    env = {k: v for k, v in os.environ.items() if k not in perf.THREAD_ENV}
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env=env | {perf.THREAD_SWITCH: "0"})
    assert on.stdout.split() == ["PASSIVE", "PASSIVE"]
    assert off.stdout.strip() == "None default (spinning)"
