"""Tuned studies without Ray: the [search] table's validation, the random draws, the best-config choice,
Dodge et al.'s estimator against brute force, old result files, and the report section (golden)."""

from __future__ import annotations

import itertools
import math
import os
import statistics
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reports.load import load_study as load_results
from reports.render import write_report
from reports.tuning import expected_best
from runners.phases import best_points
from runners.study import load_study
from suite.core.errors import ConfigError
from suite.core.results import SUMMARY, read_table, to_table, write_table
from tests.unit.tuning_fixtures import write_tuned_study

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "report_tuning.md"

TUNED = """
name = "tuned"
variants = ["lstm", "bn_lstm"]
seeds = [0, 1]

[config]
model.hidden_size = 8
train = { steps = 40, eval_every = 10, batch_size = 10 }

[tasks.adding]
task = { length = 6, train_size = 40, eval_size = 20 }

[search]
samples = 6
scheduler = "asha"
grace_steps = 10
"""
LR = '\n[search.space]\n"optim.lr" = { loguniform = [1e-4, 1e-2] }\n'


def study_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(text))
    return path


# ---- Dodge et al.'s estimator ----------------------------------------------------------------------

def brute_force(values: list[float], n: int, best=max) -> tuple[float, float]:
    """Mean and population std of the best of n draws with replacement, over all len(values)^n draws."""
    outcomes = [best(draw) for draw in itertools.product(values, repeat=n)]
    return statistics.fmean(outcomes), statistics.pstdev(outcomes)


@pytest.mark.parametrize("values", [[0.3, 0.1, 0.5, 0.5, 0.2], [1.0], [2.0, -1.0, 0.25, 7.5]])
@pytest.mark.parametrize("mode", ["max", "min"])
def test_expected_best_matches_brute_force(values, mode):
    for n in range(1, 5):
        mean, std = expected_best(values, n, mode)
        want_mean, want_std = brute_force(values, n, max if mode == "max" else min)
        assert mean == pytest.approx(want_mean, abs=1e-12) and std == pytest.approx(want_std, abs=1e-9)


def test_expected_best_limits_and_failures():
    values = [0.2, 0.9, 0.4]
    assert expected_best(values, 1) == pytest.approx((statistics.fmean(values), statistics.pstdev(values)))
    assert expected_best(values, 200)[0] == pytest.approx(0.9)  # many draws: the best value, almost surely
    # A failed trial counts as the worst value: it can be the best of n only if every draw hits it.
    assert expected_best([-math.inf, 1.0], 1)[0] == -math.inf
    with pytest.raises(ValueError):
        expected_best([], 1)


# ---- the [search] table -------------------------------------------------------------------------------

def test_search_study_parses_and_draws_are_reproducible_and_paired(tmp_path):
    study = load_study(study_file(tmp_path, TUNED + LR + '\n[search.variants.bn_lstm]\n'
                                  '"model.gamma_init" = { uniform = [0.05, 1.0] }\n'))
    s = study.search
    assert (s.samples, s.scheduler, s.searcher, s.seed) == (6, "asha", "random", 0)
    lstm = [s.point("lstm", i) for i in range(6)]
    bn = [s.point("bn_lstm", i) for i in range(6)]
    assert [p["optim.lr"] for p in lstm] == [p["optim.lr"] for p in bn]  # the same draws of a shared key
    assert set(lstm[0]) == {"optim.lr"} and set(bn[0]) == {"optim.lr", "model.gamma_init"}
    assert all(1e-4 <= p["optim.lr"] <= 1e-2 and 0.05 <= p["model.gamma_init"] <= 1.0 for p in bn)
    assert len({p["optim.lr"] for p in lstm}) == 6
    again = load_study(study_file(tmp_path, TUNED + LR))
    assert [again.search.point("lstm", i) for i in range(6)] == lstm
    other = load_study(study_file(tmp_path, TUNED.replace("samples = 6", "samples = 6\nseed = 5") + LR))
    assert other.search.point("lstm", 0) != lstm[0]


@pytest.mark.parametrize("space, message", [
    ('"optim.lrx" = { loguniform = [1e-4, 1e-2] }', "unknown key 'lrx'"),
    ('"optim.lr" = { uniform = [0.1, 0.01] }', "bounds are inverted"),
    ('"optim.lr" = { loguniform = [0.0, 0.01] }', "loguniform needs 0 < low < high"),
    ('"optim.lr" = { gaussian = [0.0, 0.01] }', "unknown space 'gaussian'"),
    ('"optim.lr" = { uniform = [0.01] }', "takes 2 numbers"),
    ('"train.steps" = { choice = [10, 20] }', "cannot be searched"),
    ('"model.gamma_init" = { uniform = [0.1, 0.5] }', "unknown key 'gamma_init'"),  # lstm has no gamma_init
    ('"optim.lr" = { uniform = [-1.0, 0.01] }', "optim.lr must be"),  # resolved at its bounds
])
def test_bad_spaces_are_refused_before_any_trial(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("<", "<")) as info:
        load_study(study_file(tmp_path, TUNED + f'\n[search.space]\n{space}\n'))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change, message", [
    (("samples = 6", "samples = 0"), "samples"),
    (("samples = 6", "samples = 6\nsearcher = \"hyperopt\""), "unknown searcher 'hyperopt'"),
    (("scheduler = \"asha\"", "scheduler = \"pbt\""), "unknown scheduler 'pbt'"),
    (("samples = 6", "samples = 6\nbudget = 3"), "unknown key 'budget'"),
    (("grace_steps = 10", "grace_steps = 40"), "grace_steps 40 must be below"),
])
def test_bad_search_settings_are_refused(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_study(study_file(tmp_path, TUNED.replace(*change) + LR))


def test_search_refuses_grid_unknown_variant_and_missing_optuna(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="either a \\[grid\\] \\(or \\[variant_grid\\]\\) or a \\[search\\]"):
        load_study(study_file(tmp_path, TUNED + LR + '\n[grid]\n"optim.clip" = [1.0, 2.0]\n'))
    with pytest.raises(ConfigError, match="names a variant the study does not run"):
        load_study(study_file(tmp_path, TUNED + LR + '\n[search.variants.wn_lstm]\n"optim.lr" = { choice = [0.1] }\n'))
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now fails
    with pytest.raises(ConfigError, match="needs the optuna package: pip install"):
        load_study(study_file(tmp_path, TUNED.replace("samples = 6", 'samples = 6\nsearcher = "optuna"') + LR))


def test_optuna_searcher_accepted_when_installed(tmp_path):
    pytest.importorskip("optuna")
    study = load_study(study_file(tmp_path, TUNED.replace("samples = 6", 'samples = 6\nsearcher = "optuna"') + LR))
    assert study.search.searcher == "optuna" and study.search.spaces["optim.lr"].tune_domain().lower == 1e-4


def test_dry_run_prints_the_budget(tmp_path, capsys):
    from suite import cli

    code = cli.main(["run", str(study_file(tmp_path, TUNED + LR)), "--results", str(tmp_path / "r"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "search: 6 samples x 2 variants x 1 tasks = 12 trials" in out and "max steps adding 40" in out
    assert "final: each variant's best configuration by validation x 2 seeds = 4 trials" in out
    assert not (tmp_path / "r").exists()


# ---- choosing the best configuration, and the tables ------------------------------------------------------

def test_best_points_use_validation_never_test(tmp_path):
    study_dir = write_tuned_study(tmp_path)
    study = SimpleNamespace(tasks={"smnist": {}}, variants=("lstm", "bn_lstm"))  # what best_points reads
    best = best_points(str(study_dir), study)
    # lstm: search001 has the best validation (0.92) although search002 has the better test score.
    assert best == {"smnist": {"lstm": {"optim.lr": 1e-3}, "bn_lstm": {"model.gamma_init": 0.5, "optim.lr": 1e-3}}}


def test_version_1_files_still_read(tmp_path):
    """A summary file written before the phase column (schema_version 1) reads with phase = null."""
    row = {"study": "old", "trial_id": "t", "task": "adding", "variant": "lstm", "seed": 0, "status": "finished",
           "metric": "mse", "mode": "min", "best_valid": 0.1}
    old = pa.schema([f for f in SUMMARY if f.name != "phase"], metadata={"schema_version": "1", "table": "summary"})
    (tmp_path / "old" / "summary").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{n: row.get(n) for n in old.names}], schema=old),
                   tmp_path / "old" / "summary" / "t.parquet")
    assert read_table(str(tmp_path / "old"), "summary").to_pylist()[0]["phase"] is None
    study = load_results(tmp_path / "old")
    assert list(study.trials) == ["t"] and not study.search
    write_table(to_table([dict(row, trial_id="u", phase="final")], SUMMARY), str(tmp_path / "old"), "summary", "u")
    assert sorted(load_results(tmp_path / "old").trials) == ["t", "u"]


def tuning_section(text: str) -> str:
    """The report's tuning sections: from the first `## Tuning` heading to the next task section."""
    start = text.index("## Tuning on task")
    return text[start:text.index("\n## Task ", start) + 1]


def test_report_tuning_section_golden(tmp_path):
    study_dir = write_tuned_study(tmp_path)
    out = write_report(study_dir, tmp_path / "out" / "report.md")
    text = out.read_text()
    section = tuning_section(text)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(section)
    assert section == GOLDEN.read_text(), "tuning section differs from tests/golden/report_tuning.md " \
                                          "(UPDATE_GOLDEN=1 rewrites it)"
    # Hand checks: bn_lstm's best is search001; one stopped, one diverged (left out of the estimator).
    assert "| `bn_lstm` | model.gamma_init=0.5, optim.lr=0.001 | 94.00 | `smnist-bn_lstm-search001` | 4 | 1 | 1 |" \
        in section
    assert "left out: `bn_lstm` 1)" in section
    for variant, values in (("lstm", [0.80, 0.92, 0.90, 0.60]), ("bn_lstm", [0.85, 0.94, 0.50])):
        cells = [f"{m * 100:.2f} ± {s * 100:.2f}" for m, s in (brute_force(values, n) for n in range(1, 4))]
        assert f"| `{variant}` | {' | '.join(cells)} |" in section
    # The final comparison holds only the final trials, one arm per variant.
    assert "Finished seeds per arm: `lstm` n=2, `bn_lstm` n=2." in text
    assert (out.parent / "report-smnist-budget.png").stat().st_size > 0
    assert (out.parent / "report-smnist-sensitivity.png").stat().st_size > 0


def test_trial_names_of_each_phase():
    """Search trials are numbered by their sample (pre-drawn) or by Tune's creation order (a searcher's
    experiment tag starts with a counter from 1); final trials carry their seed and `-tuned`."""
    from runners.progress import trial_name
    from runners.trainable import name_index, point, trial_identity

    def config(phase, seed=7, grid=None, **extra):
        return {"study": {}, "phase": phase, "point": point("adding", "lstm", seed, grid or {})} | extra

    drawn = config("search", sample={"index": 4, "point": {"optim.lr": 0.01}})
    assert trial_identity(drawn) == ("adding-lstm-search004", 7, {"optim.lr": 0.01})
    searched = config("search", sample={"point": {"optim.lr": 0.02}})
    assert trial_name(SimpleNamespace(config=searched, experiment_tag="3_optim.lr=0.02")) == "adding-lstm-search002"
    assert name_index("adding-lstm-search002") == 2 and name_index("adding-lstm-s0") is None
    final = config("final", seed=1, tuned={"adding": {"lstm": {"optim.lr": 0.03}}})
    assert trial_identity(final) == ("adding-lstm-s1-tuned", 1, {"optim.lr": 0.03})
    grid = config(None, seed=0, grid={"optim.lr": 0.1})
    assert trial_name(SimpleNamespace(config=grid, experiment_tag="0_point=...")) == "adding-lstm-s0-lr=0.1"


def test_merged_report_keeps_each_studys_tuning_section(tmp_path):
    """`suite report A B --out`: the tuned study's search stays its own section, named by its study."""
    from suite.cli import main as cli
    from tests.unit.claims_fixtures import write_claims_study

    alone = tuning_section(write_report(write_tuned_study(tmp_path), tmp_path / "alone" / "report.md").read_text())
    out = tmp_path / "merged" / "report.md"
    assert cli(["report", str(tmp_path / "study-tuned"), str(write_claims_study(tmp_path, "other")),
                "--out", str(out)]) == 0
    merged = tuning_section(out.read_text())
    assert merged.count("## Tuning on task") == 1
    assert merged == (alone.replace("## Tuning on task `smnist`:", "## Tuning on task `smnist` (study `study-tuned`):")
                      .replace("(report-smnist-", "(report-study-tuned-smnist-")
                      .replace("![smnist:", "![smnist (study `study-tuned`):")
                      .replace("`smnist-bn_lstm-search001`", "`study-tuned/smnist-bn_lstm-search001`")
                      .replace("`smnist-lstm-search001`", "`study-tuned/smnist-lstm-search001`"))
    assert (out.parent / "report-study-tuned-smnist-budget.png").stat().st_size > 0
