"""`suite run` on a real embedded local Ray: statuses, Arrow tables, a killed worker, interrupted drivers.

Each test runs the CLI in a subprocess whose TMPDIR is a short folder of the test's own, so
the Ray it starts can be found (and stopped) by that folder alone, by pid.
"""

from __future__ import annotations

import contextlib

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from runners.cluster import processes_of, stop_processes, stop_ray_in
from suite.core.checkpoints import file_config, model_path, read_model
from suite.core.results import SUMMARY, read_table, read_trial_row, to_table, write_table

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def study_text(name: str, extra: str = "", steps: int = 200, eval_every: int = 20, max_failures: int = 1) -> str:
    """A small adding-problem study; `extra` adds tables such as [grid]."""
    return textwrap.dedent(f"""
        name = "{name}"
        variants = ["lstm"]
        seeds = [0]

        [config]
        model.hidden_size = 12
        train = {{ steps = {steps}, eval_every = {eval_every}, batch_size = 20, reestimate_batches = 2 }}

        [tasks.adding]
        task = {{ length = 30, train_size = 400, eval_size = 100 }}

        [failure]
        max_failures = {max_failures}
    """) + textwrap.dedent(extra)


@pytest.fixture
def ray_tmp():
    """A short TMPDIR for the Ray that the test's driver starts; its processes are stopped afterwards."""
    folder = tempfile.mkdtemp(prefix="rnt", dir="/tmp")
    yield folder
    stop_ray_in(folder)
    shutil.rmtree(folder, ignore_errors=True)


def start(args: list[str], tmp: str, **env: str) -> subprocess.Popen:
    """`suite ARGS` in a subprocess with its own TMPDIR; stdout and stderr together, as text."""
    environ = dict(os.environ, TMPDIR=tmp, PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen([sys.executable, "-m", "suite", *args], cwd=ROOT, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    """Wait for a subprocess; its exit code and output."""
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until `condition()`; fail with the driver's output if it ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"condition not reached (exit {proc.returncode}); driver output:\n{out}")
        time.sleep(0.1)


def curve_steps(root: Path, trial: str) -> list[int]:
    """Validation steps in a trial's curve file (empty when there is none yet)."""
    path = root / "curve" / f"{trial}.parquet"
    if not path.exists():
        return []
    table = pq.read_table(path)
    return [s for s, split in zip(table["step"].to_pylist(), table["split"].to_pylist(), strict=True)
            if split == "valid"]


def statuses(root: Path) -> dict[str, str]:
    """trial_id -> status from the study's summary table."""
    table = read_table(str(root), "summary")
    return dict(zip(table["trial_id"].to_pylist(), table["status"].to_pylist(), strict=True))


def worker_of(trial: str, tmp: str):
    """The Ray worker process running `trial` (Tune runs it in working_dirs/<trial>)."""
    for proc in processes_of(tmp):
        try:
            if proc.name().startswith("ray::ImplicitFunc") and proc.cwd().endswith(f"/{trial}"):
                return proc
        except Exception:  # noqa: BLE001 - a process may vanish while we look
            continue
    return None


def test_killed_worker_is_retried_from_its_checkpoint(tmp_path, ray_tmp):
    """kill -9 of the trial's worker mid-run: Tune restarts it from the last checkpoint, rows exactly once."""
    path = tmp_path / "kill.toml"
    # Long enough (about 10 s here) that the kill lands mid-run on a slow machine too.
    path.write_text(study_text("kill", steps=1000, eval_every=100, max_failures=2))
    root = tmp_path / "res" / "kill"
    trial = "adding-lstm-s0"
    proc = start(["run", str(path), "--results", str(tmp_path / "res")], ray_tmp)
    wait_for(lambda: len(curve_steps(root, trial)) >= 2 and worker_of(trial, ray_tmp) is not None, proc)
    killed_at = max(curve_steps(root, trial))
    assert killed_at < 1000, "the trial finished before it could be killed; make it longer"
    worker = worker_of(trial, ray_tmp)
    worker.kill()  # SIGKILL, by pid
    code, out = finish(proc)
    assert code == 0, out
    assert "worker failed; retrying from its last checkpoint" in out
    after = out.split("retrying from its last checkpoint", 1)[1]
    first_step_after = int(after.split(f"{trial} step ", 1)[1].split("/", 1)[0])
    assert first_step_after > 100, f"the retry started from scratch:\n{out}"
    assert curve_steps(root, trial) == list(range(100, 1001, 100))  # every point exactly once
    curve = read_table(str(root), "curve").to_pandas()
    assert not curve.duplicated(["trial_id", "step", "split"]).any()
    assert statuses(root) == {trial: "finished"}
    summary = read_table(str(root), "summary").to_pylist()[0]
    assert summary["steps"] == 1000 and summary["study"] == "kill" and summary["variant"] == "lstm"
    assert '"hidden_size": 12' in summary["config_json"] and '"torch"' in summary["env_json"]
    # The retried trial kept its models (issue 13), loadable with the config saved in them.
    saved = read_model(model_path(str(root), trial, "last"))
    assert saved["step"] == 1000 and file_config(saved)["model"]["hidden_size"] == 12
    assert read_model(model_path(str(root), trial, "best"))["step"] == summary["best_step"]


def test_sigint_then_resume_skips_finished_trials(tmp_path, ray_tmp):
    """Ctrl-C: finished and diverged trials keep their rows; --resume completes the rest, each row once."""
    path = tmp_path / "mixed.toml"
    # lr 1e30 makes Adam's first updates blow the weights up: those trials diverge. The slow
    # trial is long enough (about 15 s here) for the short ones to end while it still runs.
    path.write_text(study_text("mixed", steps=1500, eval_every=100) + '\n[grid]\n"optim.lr" = [0.01, 1e30]\n'
                    '"train.steps" = [20, 1500]\n')
    results = tmp_path / "res"
    root = results / "mixed"
    fast, slow = "adding-lstm-s0-lr=0.01-steps=20", "adding-lstm-s0-lr=0.01-steps=1500"
    diverged_fast, diverged_slow = "adding-lstm-s0-lr=1e+30-steps=20", "adding-lstm-s0-lr=1e+30-steps=1500"
    proc = start(["run", str(path), "--results", str(results)], ray_tmp)
    wait_for(lambda: all((root / "summary" / f"{t}.parquet").exists() for t in (fast, diverged_fast))
             and len(curve_steps(root, slow)) >= 1, proc)
    assert not (root / "summary" / f"{slow}.parquet").exists(), "the slow trial ended before Ctrl-C; make it longer"
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 130, out
    assert "--resume" in out
    first = statuses(root)
    assert first[fast] == "finished" and first[slow] == "interrupted" and first[diverged_fast] == "diverged"
    written = {t: (root / "summary" / f"{t}.parquet").stat().st_mtime_ns for t in (fast, diverged_fast)}

    code, out = finish(start(["run", str(path), "--results", str(results), "--resume"], ray_tmp))
    assert code == 0, out
    # Ended trials are not trained again (Tune may restart one whose end it had not heard of; it then
    # reports the summary it wrote).
    assert f"{fast} step " not in out and f"{diverged_fast} step " not in out
    assert {t: (root / "summary" / f"{t}.parquet").stat().st_mtime_ns for t in written} == written
    final = statuses(root)
    assert final == {fast: "finished", slow: "finished", diverged_fast: "diverged", diverged_slow: "diverged"}
    assert curve_steps(root, slow) == list(range(100, 1501, 100))
    assert curve_steps(root, fast) == [20]
    curve = read_table(str(root), "curve").to_pandas()
    assert not curve.duplicated(["trial_id", "step", "split"]).any()
    diverged = read_table(str(root), "summary").to_pandas().set_index("trial_id").loc[diverged_slow]
    assert diverged["steps"] < 1500


def test_sigkill_driver_then_resume(tmp_path, ray_tmp):
    """kill -9 of the driver: --resume keeps the tables of trials that ended, even one whose end the
    driver never heard of, and completes the rest."""
    path = tmp_path / "killed.toml"
    path.write_text(study_text("killed", steps=1500, eval_every=100) + '\n[grid]\n"train.steps" = [20, 1500, 1600]\n')
    results = tmp_path / "res"
    root = results / "killed"
    fast, slow, unheard = "adding-lstm-s0-steps=20", "adding-lstm-s0-steps=1500", "adding-lstm-s0-steps=1600"
    proc = start(["run", str(path), "--results", str(results)], ray_tmp, TUNE_GLOBAL_CHECKPOINT_S="1")
    wait_for(lambda: (root / "summary" / f"{fast}.parquet").exists() and len(curve_steps(root, slow)) >= 1, proc)
    import psutil

    children = psutil.Process(proc.pid).children(recursive=True)  # outlive the driver otherwise
    proc.kill()
    proc.communicate()
    stop_processes(children)
    stop_ray_in(ray_tmp)
    assert not (root / "summary" / f"{slow}.parquet").exists(), "the slow trial ended before the kill; make it longer"
    # The state a kill between a trial's last write and its last report leaves: its summary, unheard of.
    row = read_trial_row(str(root), "summary", fast) | {"trial_id": unheard, "steps": 1600}
    write_table(to_table([row], SUMMARY), str(root), "summary", unheard)
    written = {(kind, t): (root / kind / f"{t}.parquet").stat().st_mtime_ns
               for kind in ("summary", "curve") for t in (fast, unheard) if (root / kind / f"{t}.parquet").exists()}
    code, out = finish(start(["run", str(path), "--results", str(results), "--resume"], ray_tmp,
                             TUNE_GLOBAL_CHECKPOINT_S="1"))
    assert code == 0, out
    assert {key: (root / key[0] / f"{key[1]}.parquet").stat().st_mtime_ns for key in written} == written
    assert f"{unheard} step " not in out  # kept, not trained again
    assert statuses(root) == {fast: "finished", slow: "finished", unheard: "finished"}
    assert curve_steps(root, fast) == [20]
    assert curve_steps(root, slow) == list(range(100, 1501, 100))
    curve = read_table(str(root), "curve").to_pandas()
    assert not curve.duplicated(["trial_id", "step", "split"]).any()


def test_second_driver_is_refused_and_a_killed_driver_leaves_no_lock(tmp_path, ray_tmp):
    """Issue 14: a second `suite run` (--resume or fresh) on a running study is refused in one line;
    after kill -9 of the first driver, --resume is accepted and finishes the study."""
    path = tmp_path / "locked.toml"
    path.write_text(study_text("locked", steps=1500, eval_every=100))
    results = tmp_path / "res"
    root = results / "locked"
    trial = "adding-lstm-s0"
    proc = start(["run", str(path), "--results", str(results)], ray_tmp, TUNE_GLOBAL_CHECKPOINT_S="1")
    wait_for(lambda: len(curve_steps(root, trial)) >= 1, proc)
    import psutil

    # Frozen, the first run stays a running, unfinished study however fast its trial would go.
    children = psutil.Process(proc.pid).children(recursive=True)
    for process in [psutil.Process(proc.pid), *children]:
        process.suspend()
    for extra in (["--resume"], []):
        code, out = finish(start(["run", str(path), "--results", str(results), *extra], ray_tmp), timeout=120)
        lines = out.strip().splitlines()
        assert code == 2 and len(lines) == 1, out
        assert lines[0].startswith("error: study locked in ") and f"another driver (pid {proc.pid} on " in lines[0]
    assert proc.poll() is None, "the first driver must be unaffected"
    proc.kill()
    proc.communicate()
    for process in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.resume()
    stop_processes(children)
    stop_ray_in(ray_tmp)
    code, out = finish(start(["run", str(path), "--results", str(results), "--resume"], ray_tmp,
                             TUNE_GLOBAL_CHECKPOINT_S="1"))
    assert code == 0, out
    assert statuses(root) == {trial: "finished"}
    assert curve_steps(root, trial) == list(range(100, 1501, 100))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs of the test's own (needs root or CAP_SYS_ADMIN; skipped otherwise), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("state", ["saved", "truncated"])
def test_full_disk_fails_the_trial_once_and_resume_finishes(small_disk, ray_tmp, state):
    """Issue 14: a write that hits a full disk ends that trial `failed` with the reason, not retried; the
    driver ends with its summary; every Parquet file stays readable; --resume with space again finishes,
    also when the full disk cut Tune's own saved state short (it happens: Tune saves to the same disk)."""
    path = small_disk.parent / "full.toml"
    path.write_text(study_text("full", steps=600, eval_every=20, max_failures=2)
                    + '\n[grid]\n"train.steps" = [20, 600]\n')
    results = small_disk / "res"
    root = results / "full"
    fast, slow = "adding-lstm-s0-steps=20", "adding-lstm-s0-steps=600"
    proc = start(["run", str(path), "--results", str(results)], ray_tmp, TUNE_GLOBAL_CHECKPOINT_S="1")
    wait_for(lambda: (root / "summary" / f"{fast}.parquet").exists() and len(curve_steps(root, slow)) >= 1, proc,
             timeout=400)
    filler = fill(small_disk)
    code, out = finish(proc, timeout=400)
    assert code == 1, out
    assert "Traceback" not in out and "EOFError" not in out, out
    line = next(line for line in out.splitlines() if line.strip().startswith(slow))
    assert " failed " in line and "No space left on device" in line and "--resume" in line, out
    assert f"{slow} step " not in out.split("summary")[-1]
    assert out.count("cannot write results") <= 2  # the progress line and the summary, no retries
    for parquet in root.rglob("*.parquet"):
        pq.read_table(parquet)  # nothing half-written where a reader looks
    assert not [p for p in root.rglob("*.tmp") if "/tune/" not in str(p)]
    assert read_trial_row(str(root), "summary", fast)["status"] == "finished"
    steps_before = curve_steps(root, slow)
    assert steps_before and steps_before[-1] < 600, "the slow trial ended before the disk filled; make it longer"
    filler.unlink()
    if state == "truncated":
        saved = max((root / "tune").glob("experiment_state*.json"))
        saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    code, out = finish(start(["run", str(path), "--results", str(results), "--resume"], ray_tmp,
                             TUNE_GLOBAL_CHECKPOINT_S="1"), timeout=400)
    assert code == 0, out
    if state == "truncated":  # with "saved", the full disk may have cut it short too: either way is fine
        assert "is damaged" in out, out
    assert statuses(root) == {fast: "finished", slow: "finished"}
    assert curve_steps(root, slow) == list(range(20, 601, 20))
    curve = read_table(str(root), "curve").to_pandas()
    assert not curve.duplicated(["trial_id", "step", "split"]).any()
