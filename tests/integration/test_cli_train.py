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
    # Issue 13: every BN inference mode at best and last, and both models, kept beside the tables.
    inference = ds.dataset(tmp_path / "inference").to_table().to_pylist()
    assert {(r["checkpoint"], r["stats_mode"]) for r in inference} == {
        (c, m) for c in ("best", "last") for m in ("batch", "reestimate", "running")}
    assert sorted({r["batch_size"] for r in inference if r["stats_mode"] == "batch"}) == [16, 64]
    models = tmp_path / "models" / row.trial_id
    assert sorted(p.name for p in models.iterdir()) == ["best.pt", "last.pt"]
    assert "models in" in done.stdout


def test_evaluate_a_saved_model_under_each_mode_and_refuse_a_bad_file(tmp_path, capsys):
    # In-process (suite.cli.main) to keep the default run fast; the subprocess path is tested above.
    from suite.cli import main

    assert main(["train", "--task", "adding", "--variant", "bn_lstm", *TINY, "--set", "train.inference_draws=3",
                 "--results", str(tmp_path), "--quiet"]) == 0
    trial = next((tmp_path / "models").iterdir()).name
    inference = ds.dataset(tmp_path / "inference").to_table().to_pylist()

    def table(mode: str, **match) -> float:
        rows = [r for r in inference if r["checkpoint"] == "last" and r["split"] == "test" and r["stats_mode"] == mode
                and all(r[k] == v for k, v in match.items())]
        return rows[0]["value"]

    def evaluate(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["evaluate", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    # The saved model, evaluated later, gives what the run measured at its end, mode by mode.
    for mode, match in (("batch", {"batch_size": 16}), ("running", {})):
        code, out, err = evaluate(trial, "--results", str(tmp_path), "--checkpoint", "last", "--stats", mode,
                                  "--split", "test")
        assert code == 0, err
        assert f"{mode}: mse {table(mode, **match):.4f}" in out
    code, out, err = evaluate(str(tmp_path / "models" / trial), "--checkpoint", "last", "--stats", "reestimate",
                              "--split", "test", "--draws", "3")
    assert code == 0, err
    for draw in range(3):
        assert f"draw {draw}): mse {table('reestimate', draw=draw):.4f}" in out
    # A corrupted file and an unknown trial: one line, exit 2.
    last = tmp_path / "models" / trial / "last.pt"
    last.write_bytes(last.read_bytes()[:300])
    code, out, err = evaluate(str(last), "--stats", "batch")
    assert code == 2 and err.count("\n") == 1 and "corrupted" in err, err
    code, out, err = evaluate("no-such-trial", "--results", str(tmp_path))
    assert code == 2 and "saved trials there: " + trial in err, err


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
