"""A real Ray cluster: `ray start --head` on free loopback ports, `ray job submit` of a tiny study.

The job's driver is `suite run` itself; it finds the cluster through RAY_ADDRESS, which Ray
sets inside every job. The cluster is stopped through its own processes only (found by its
temp dir), never with `ray stop`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from runners.cluster import stop_ray_in
from suite.core.results import read_table

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A two-node Ray cluster (one CPU each) with a job server on 127.0.0.1; yields (dashboard, client, GCS
    addresses, env)."""
    temp_dir = tempfile.mkdtemp(prefix="rnc", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    dashboard, client, gcs = free_port(), free_port(), free_port()
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--port", str(free_port()), "--num-cpus", "1", "--num-gpus", "0",
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(client),
         # Agents on free ports too: another Ray on this machine may hold the defaults (52365 ...).
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()), "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=120)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        # The GCS binds the node's address, which `ray start` prints in its join command.
        node = re.search(r"--address='([^']+)'", start.stdout)
        gcs_address = node.group(1) if node else f"127.0.0.1:{gcs}"
        second = subprocess.run(
            [str(BIN / "ray"), "start", "--address", gcs_address, "--num-cpus", "1", "--num-gpus", "0",
             "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
             "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
             # A temp dir of its own (its name extends the head's, so stop_ray_in finds it): sharing the
             # head's, its runtime-env agent deleted the job's working directory under the driver.
             "--temp-dir", f"{temp_dir}-node2", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stdout + second.stderr
        yield f"http://127.0.0.1:{dashboard}", f"ray://127.0.0.1:{client}", gcs_address, env
    finally:
        stop_ray_in(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(f"{temp_dir}-node2", ignore_errors=True)


def test_job_submit_runs_a_study_on_the_cluster(tmp_path, cluster):
    address, _, _, env = cluster
    # A cuda trial on CPU-only nodes is now refused before anything starts (issue 14's device check, tested
    # in tests/unit/test_device.py), so the study asks for the CPU only.
    devices = '["cpu"]'
    study = tmp_path / "onjob.toml"
    study.write_text(textwrap.dedent(f"""
        name = "onjob"
        variants = ["lstm", "bn_lstm"]
        seeds = [0]

        [config]
        model.hidden_size = 6
        train = {{ steps = 10, eval_every = 5, batch_size = 20, reestimate_batches = 2 }}

        [tasks.adding]
        task = {{ length = 8, train_size = 100, eval_size = 40 }}

        [grid]
        "train.device" = {devices}

        [resources]
        cpu = 1

        [failure]
        max_failures = 0
    """))
    results = tmp_path / "shared-results"
    suite = BIN / "suite"
    entry = [str(suite)] if suite.exists() else [sys.executable, "-m", "suite"]
    for _ in range(30):  # the head's job agent comes up a little after `ray start` returns
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
             *entry, "run", str(study), "--results", str(results)],
            env=env, capture_output=True, text=True, timeout=300)
        out = submit.stdout + submit.stderr
        # Retry only a submission the job agent refused; with two nodes a job that did start can
        # still log the other node's "No available agent" while that agent comes up.
        if "No available agent" not in out or "submitted successfully" in out:
            break
        time.sleep(2)
    assert (results / "onjob" / "summary").is_dir(), out
    assert "2 trials on 2 node(s), 2 CPU" in out, out
    root = str(results / "onjob")
    summary = read_table(root, "summary").to_pandas().set_index("trial_id")
    assert summary.loc["adding-lstm-s0-device=cpu", "status"] == "finished"
    assert summary.loc["adding-bn_lstm-s0-device=cpu", "status"] == "finished"
    assert summary.loc["adding-bn_lstm-s0-device=cpu", "stats_mode"] == "reestimate"
    # Issue 13: the BN trial measured every inference mode, and both trials kept their models.
    inference = read_table(root, "inference").to_pandas()
    assert set(inference.trial_id) == {"adding-bn_lstm-s0-device=cpu"}
    assert set(inference.stats_mode) == {"batch", "reestimate", "running"}
    assert sorted(inference[inference.stats_mode == "reestimate"].draw.unique()) == [0, 1, 2]
    for variant in ("lstm", "bn_lstm"):
        assert sorted(p.name for p in (results / "onjob" / "models" / f"adding-{variant}-s0-device=cpu").iterdir()) \
            == ["best.pt", "last.pt"]
    curve = read_table(root, "curve").to_pandas()
    assert sorted(curve[curve.trial_id == "adding-lstm-s0-device=cpu"].step.unique()) == [5, 10]
    assert not curve.duplicated(["trial_id", "step", "split"]).any()
    # where each trial ran: every finished trial names a node of this two-node cluster
    nodes = {json.loads(summary.loc[f"adding-{v}-s0-device=cpu", "env_json"])["ray_node_id"] for v in ("lstm", "bn_lstm")}
    assert nodes and all(len(node) == 56 for node in nodes), nodes
    assert submit.returncode == 0 and "succeeded" in out, out


@pytest.mark.slow
def test_ray_client_address_runs_a_study(tmp_path, cluster):
    """`suite run --address ray://...` from outside the cluster (Ray Client)."""
    _, client, _, env = cluster
    study = tmp_path / "client.toml"
    study.write_text(textwrap.dedent("""
        name = "client"
        variants = ["lstm"]
        seeds = [0, 1]

        [config]
        model.hidden_size = 6
        train = { steps = 10, eval_every = 5, batch_size = 20 }

        [tasks.adding]
        task = { length = 8, train_size = 100, eval_size = 40 }
    """))
    results = tmp_path / "shared-results"
    run = subprocess.run([sys.executable, "-m", "suite", "run", str(study), "--results", str(results),
                          "--address", client], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = read_table(str(results / "client"), "summary").to_pandas()
    assert sorted(summary.trial_id) == ["adding-lstm-s0", "adding-lstm-s1"]
    assert set(summary.status) == {"finished"}


def test_resources_no_node_has_fail_before_any_trial(tmp_path, cluster):
    """A study asking for GPUs on a CPU-only cluster stops with one message; nothing is written."""
    _, _, gcs, env = cluster
    study = tmp_path / "greedy.toml"
    study.write_text(textwrap.dedent("""
        name = "greedy"
        variants = ["lstm"]
        seeds = [0]

        [tasks.adding]

        [resources]
        cpu = 1
        gpu = 1
    """))
    results = tmp_path / "res"
    run = subprocess.run([sys.executable, "-m", "suite", "run", str(study), "--results", str(results),
                          "--address", gcs], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "error: each trial asks for cpu=1, gpu=1, but no node of the cluster can ever hold that" in run.stderr
    assert not (results / "greedy" / "summary").exists()
