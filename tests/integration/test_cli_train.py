"""`suite train` end to end in a subprocess: progress, Parquet tables readable by pyarrow and pandas, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.dataset as ds
import pytest

from tests.conftest import ROOT
from suite.core.results import SCHEMA_VERSION

TINY = ["--set", "task.length=6", "--set", "task.train_size=64", "--set", "task.eval_size=32",
        "--set", "model.hidden_size=6", "--set", "train.steps=4", "--set", "train.eval_every=2",
        "--set", "train.batch_size=16", "--set", "train.reestimate_batches=1"]


def suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_train_writes_curve_and_summary_tables(tmp_path):
    done = suite("train", "--task", "adding", "--variant", "bn_lstm", "--seed", "3", *TINY,
                 "--results", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "step 2/4" in done.stdout and "finished: best valid mse" in done.stdout
    curve = ds.dataset(tmp_path / "curve").to_table()
    summary = ds.dataset(tmp_path / "summary").to_table().to_pandas()
    assert curve.schema.metadata[b"schema_version"] == SCHEMA_VERSION.encode()
    assert sorted(set(zip(curve["step"].to_pylist(), curve["split"].to_pylist()))) == [
        (2, "train"), (2, "valid"), (4, "train"), (4, "valid")]
    row = summary.iloc[0]
    assert (row.task, row.variant, row.seed, row.status) == ("adding", "bn_lstm", 3, "finished")
    config = json.loads(row.config_json)
    assert config["model"]["options"] == {} and config["train"]["seed"] == 3
    assert "torch" in json.loads(row.env_json)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--task", "adding", "--variant", "bnlstm"], "error: unknown variant 'bnlstm'; known variants:"),
    (["--task", "adding", "--variant", "lstm", "--set", "optim.lr=fast"], "expected float, got str 'fast'"),
    (["--task", "adding", "--variant", "lstm", "--set", "train.stepz=3"], "unknown key 'stepz'"),
    (["--task", "smnist", "--variant", "lstm", "--data-dir", "/nonexistent"], "/nonexistent"),
    (["--task", "adding", "--variant", "lstm", "--config", "/nonexistent.toml"], "not found"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    done = suite("train", *args, "--results", str(tmp_path / "out"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_unwritable_results_location_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = suite("train", "--task", "adding", "--variant", "lstm", *TINY, "--results", str(blocker / "sub"))
    assert done.returncode == 2 and "not writable" in done.stderr and "Traceback" not in done.stderr


def test_listings():
    assert "bn_lstm" in suite("variants").stdout
    assert "smnist" in suite("tasks").stdout
