"""Study files: parsing, grid expansion, validation messages, dry run, and the trial-side helpers."""

from __future__ import annotations

import math
import os
import socket
import stat
import textwrap
from pathlib import Path

import pytest

from runners.study import load_study, make_trial_id, parse_study
from runners.trainable import EarlyStopper, merge_rows, written_end
from suite import cli
from suite.core.errors import ConfigError, SuiteError
from suite.core.results import SUMMARY, to_table, write_table

ROOT = Path(__file__).resolve().parents[2]

TINY = """
name = "tiny"
variants = ["lstm", "bn_lstm"]
seeds = [0, 1]

[config]
model.hidden_size = 8
train = { steps = 4, eval_every = 2, batch_size = 10 }

[tasks.adding]
task = { length = 6, train_size = 40, eval_size = 20 }
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_grid_expands_tasks_variants_seeds_and_grid(tmp_path):
    study = load_study(write(tmp_path, TINY + '\n[grid]\n"optim.lr" = [0.001, 0.01]\n'))
    trials = study.trials()
    assert len(trials) == 2 * 2 * 2
    ids = [t.trial_id for t in trials]
    assert len(set(ids)) == len(ids)
    assert "adding-bn_lstm-s1-lr=0.01" in ids
    trial = next(t for t in trials if t.trial_id == "adding-bn_lstm-s1-lr=0.01")
    assert (trial.config.model.variant, trial.config.train.seed, trial.config.optim.lr) == ("bn_lstm", 1, 0.01)
    # Study settings sit over the task's paper defaults, which fill in the rest.
    assert trial.config.model.hidden_size == 8 and trial.config.task.options["length"] == 6
    assert trial.config.train.batch_size == 10 and trial.config.optim.clip == 1.0


def test_task_table_overrides_study_config_and_defaults_apply(tmp_path):
    study = load_study(write(tmp_path, TINY.replace('task = { length = 6', 'model = { hidden_size = 5 }\ntask = { length = 6')))
    assert {t.config.model.hidden_size for t in study.trials()} == {5}


def test_round_trip_through_dict_keeps_trials(tmp_path):
    from runners.study import from_dict

    study = load_study(write(tmp_path, TINY))
    again = from_dict(study.to_dict())
    assert [t.config for t in again.trials()] == [t.config for t in study.trials()]
    assert again.fingerprint() == study.fingerprint()


@pytest.mark.parametrize("change, message", [
    (('variants = ["lstm", "bn_lstm"]', 'variants = ["lstm", "bogus"]'), "unknown variant 'bogus'"),
    (("[tasks.adding]", "[tasks.nosuchtask]"), "unknown task 'nosuchtask'"),
    (("[config]", "colour = 1\n[config]"), "unknown key 'colour'"),
    (("model.hidden_size = 8", "model.hidden_sise = 8"), "hidden_sise"),
    (("task = { length = 6", "task = { lenght = 6"), "lenght"),
    (('seeds = [0, 1]', 'seeds = []'), "zero trials"),
    (('seeds = [0, 1]', 'seeds = [0, 0]'), "lists a value twice"),
    (('seeds = [0, 1]', 'seeds = [0.5]'), "only ints"),
    (("[config]", "[resources]\ncpu = 0\n[config]"), "cpu must be > 0"),
    (("[config]", "[resources]\ngpu = 1.5\n[config]"), "whole number"),
    (("[config]", "[resources]\ntpu = 1\n[config]"), "unknown key 'tpu'"),
    (('name = "tiny"', 'name = "a b/c"'), "simple name"),
    (("[config]", '[grid]\nlr = [1]\n[config]'), "SECTION.KEY"),
    (("[config]", '[grid]\n"model.gamma_init" = [0.1]\n[config]'), "gamma_init"),  # lstm has no gamma
    (("[config]", '[grid]\n"optim.lr" = []\n[config]'), "non-empty list"),
])
def test_bad_studies_fail_with_one_clear_message(tmp_path, change, message):
    path = write(tmp_path, TINY.replace(*change))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        load_study(path)
    assert "\n" not in str(info.value)


def test_dry_run_prints_trials_and_resources(tmp_path, capsys):
    path = write(tmp_path, TINY + "\n[resources]\ncpu = 1\ngpu = 0.25\n")
    assert cli.main(["run", str(path), "--results", str(tmp_path / "res"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials, each cpu=1 gpu=0.25" in out
    assert "adding-bn_lstm-s1" in out and "hidden=8" in out and "steps=4" in out
    assert not (tmp_path / "res").exists()  # nothing ran, nothing written


def test_cli_reports_bad_study_as_one_line(tmp_path, capsys):
    path = write(tmp_path, TINY.replace('"bn_lstm"]', '"bogus"]'))
    assert cli.main(["run", str(path), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown variant 'bogus'" in err and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_fail_before_ray(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    assert cli.main(["run", str(write(tmp_path, TINY)), "--results", str(locked / "res")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_results_under_a_file_fail_before_ray(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert cli.main(["run", str(write(tmp_path, TINY)), "--results", str(blocker / "res")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_existing_results_are_not_overwritten_without_resume(tmp_path, capsys):
    (tmp_path / "res" / "tiny" / "summary").mkdir(parents=True)
    marker = tmp_path / "res" / "tiny" / "summary" / "x.parquet"
    marker.write_bytes(b"keep")
    assert cli.main(["run", str(write(tmp_path, TINY)), "--results", str(tmp_path / "res")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert marker.read_bytes() == b"keep"


def test_resume_without_a_started_run_is_an_error(tmp_path, capsys):
    assert cli.main(["run", str(write(tmp_path, TINY)), "--results", str(tmp_path / "res"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_unreachable_address_fails_fast(tmp_path, capsys):
    with socket.socket() as sock:  # a port nothing listens on: bind, then close
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = cli.main(["run", str(write(tmp_path, TINY)), "--results", str(tmp_path / "res"),
                     "--address", f"ray://127.0.0.1:{port}"])
    assert code == 2
    assert f"cannot reach a Ray cluster at ray://127.0.0.1:{port}" in capsys.readouterr().err


def test_malformed_address_is_an_error():
    from runners.cluster import probe

    with pytest.raises(SuiteError, match="HOST:PORT"):
        probe("nowhere")


def test_trial_ids_are_file_name_safe():
    assert make_trial_id("ptb", "bn_lstm", 3, {"optim.lr": 0.002, "data.path": "/a b"}) == \
        "ptb-bn_lstm-s3-lr=0.002-path=_a_b"


@pytest.mark.parametrize("written", [None, "interrupted", "failed", "finished", "diverged"])
def test_driver_takes_an_ended_status_from_the_trials_summary(tmp_path, written):
    """A trial that wrote its summary before the driver heard its last report (Ctrl-C in between)
    keeps that status; other rows on disk are the driver's own and change nothing."""
    trial = load_study(write(tmp_path, TINY)).trials()[0]
    root = str(tmp_path / "res")
    if written is not None:
        row = dict(trial.keys("tiny"), status=written, steps=3, best_valid=0.5, best_step=2, valid_at_last=0.6,
                   test_at_best=0.55, wall_seconds=1.5)
        write_table(to_table([row], SUMMARY), root, "summary", trial.trial_id)
    ended = written_end(root, trial.trial_id, trial.config.train.steps)
    if written in ("finished", "diverged"):
        assert ended | {"pid": 0} == {"status": written, "step": 3, "total_steps": 4, "valid": 0.6, "best_valid": 0.5,
                                      "best_step": 2, "test_at_best": 0.55, "fit_seconds": 1.5, "pid": 0}
    else:
        assert ended is None


def test_merge_rows_keeps_each_step_once():
    old = [{"step": s, "split": sp, "value": s} for s in (10, 20) for sp in ("train", "valid")]
    new = [{"step": 20, "split": "valid", "value": -1}, {"step": 30, "split": "valid", "value": 30}]
    merged = merge_rows(old, new)
    assert [(r["step"], r["split"]) for r in merged] == [(10, "train"), (10, "valid"), (20, "train"),
                                                        (20, "valid"), (30, "valid")]
    assert merged[3]["value"] == -1


@pytest.mark.parametrize("mode, values, stop_at", [
    ("max", [0.1, 0.2, 0.2, 0.15], 3),   # two evaluations without a better value
    ("min", [1.0, 0.5, 0.6, 0.4, 0.45, 0.5], 5),
    ("min", [1.0, math.nan, math.nan], 2),  # nan is never an improvement
])
def test_early_stopper(mode, values, stop_at):
    stopper = EarlyStopper(patience=2, min_steps=0, mode=mode)
    stops = [stopper.update(step, value) for step, value in enumerate(values)]
    assert stops.index(True) == stop_at


def test_early_stopper_respects_min_steps_and_zero_patience():
    stopper = EarlyStopper(patience=1, min_steps=100, mode="max")
    assert not stopper.update(10, 0.5) and not stopper.update(20, 0.4) and stopper.update(100, 0.3)
    off = EarlyStopper(patience=0, min_steps=0, mode="max")
    assert not any(off.update(s, 0.0) for s in range(10))


def test_early_stopping_ends_fit_early():
    """fit stops when the callback says so and still evaluates the test split."""
    from tasks.resolve import resolve
    from suite.core.train import fit
    from tasks.base import create

    config = resolve({"task": {"name": "adding", "length": 5, "train_size": 40, "eval_size": 20},
                      "model": {"hidden_size": 4}, "train": {"steps": 50, "eval_every": 5, "batch_size": 10}})
    task = create("adding", config.task.options)
    result = fit(task, config, on_report=lambda report: report.step >= 10)
    assert result.summary["steps"] == 10 and result.status == "finished"
    assert math.isfinite(result.summary["test_at_last"])


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "studies").glob("*.toml")))
def test_shipped_studies_resolve(name):
    study = load_study(ROOT / "studies" / name)
    assert study.trials()
    assert study.name == Path(name).stem


def test_parse_rejects_non_table_task_settings():
    with pytest.raises(ConfigError, match=r"\[tasks.adding\] must be a table"):
        parse_study({"name": "x", "variants": ["lstm"], "seeds": [0], "tasks": {"adding": 3}})
