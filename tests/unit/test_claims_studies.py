"""The studies behind the claims (claims-quick, depth, paper-depth, gamma-sensitivity) and `[variant_grid]`."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from runners.study import load_study
from runners.trainable import point, point_of
from suite import cli
from suite.core.errors import ConfigError

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def test_claims_quick_dry_run(tmp_path, capsys):
    assert cli.main(["run", str(STUDIES / "claims-quick.toml"), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "study claims-quick: 40 trials, each cpu=1 gpu=0" in out
    assert not (tmp_path / "r").exists()
    trials = load_study(STUDIES / "claims-quick.toml").trials()
    arms = Counter((t.variant, t.config.model.options.get("gamma_init")) for t in trials)
    assert arms == {("lstm", None): 8, ("bn_vertical", None): 8, ("bn_lstm", 0.1): 8, ("bn_lstm", 1.0): 8,
                    ("ln_lstm", None): 8}
    assert {t.config.task.options["source"] for t in trials} == {"sample"}  # offline data only
    assert "pmnist-bn_lstm-s7-gamma_init=1.0" in {t.trial_id for t in trials}
    assert "pmnist-lstm-s7" in {t.trial_id for t in trials}


def test_claims_fashion_is_claims_quick_on_another_task():
    quick, fashion = (load_study(STUDIES / f"{n}.toml") for n in ("claims-quick", "claims-fashion"))
    assert len(fashion.trials()) == 40 and list(fashion.tasks) == ["sfmnist"]
    assert (fashion.variants, fashion.seeds, fashion.variant_grid) == (quick.variants, quick.seeds, quick.variant_grid)


@pytest.mark.parametrize("name, count, layers", [("depth", 36, {1, 3, 5}), ("paper-depth", 36, {1, 3, 5})])
def test_depth_studies(name, count, layers):
    trials = load_study(STUDIES / f"{name}.toml").trials()
    assert len(trials) == count
    assert {t.config.model.num_layers for t in trials} == layers
    assert {t.variant for t in trials} == {"lstm", "bn_vertical", "bn_lstm", "ln_lstm"}


def test_cpu_claims_studies_have_distinct_tasks_so_they_merge():
    tasks = [list(load_study(STUDIES / f"{n}.toml").tasks) for n in ("claims-quick", "depth", "claims-fashion")]
    assert tasks == [["pmnist"], ["smnist"], ["sfmnist"]]


def test_gamma_study_has_lstm_once_per_seed():
    trials = load_study(STUDIES / "gamma-sensitivity.toml").trials()
    arms = Counter((t.variant, t.config.model.options.get("gamma_init")) for t in trials)
    assert arms[("lstm", None)] == 2 and sum(arms.values()) == 12
    assert {g for v, g in arms if v == "bn_lstm"} == {0.1, 0.3, 0.5, 0.7, 1.0}


TINY = """
name = "tiny"
variants = ["lstm", "bn_lstm"]
seeds = [0]

[config]
model.hidden_size = 8

[tasks.adding]
task = { length = 6, train_size = 40, eval_size = 20 }

[grid]
"optim.lr" = [0.001, 0.01]
"""


def test_variant_grid_multiplies_only_its_variant(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(TINY + '\n[variant_grid.bn_lstm]\n"model.gamma_init" = [0.1, 1.0]\n'))
    trials = load_study(path).trials()
    assert sorted(t.trial_id for t in trials) == sorted(
        ["adding-lstm-s0-lr=0.001", "adding-lstm-s0-lr=0.01"]
        + [f"adding-bn_lstm-s0-lr={lr}-gamma_init={g}" for lr in (0.001, 0.01) for g in (0.1, 1.0)])
    for t in trials:  # what Tune carries round-trips to the same trial
        carried = {"point": point(t.task, t.variant, t.seed, t.grid)}
        assert point_of(carried) == (t.task, t.variant, t.seed, dict(t.grid))


@pytest.mark.parametrize("extra, message", [
    ('[variant_grid.ln_lstm]\n"model.gain_init" = [1.0]', "names a variant the study does not run"),
    ('[variant_grid.bn_lstm]\n"optim.lr" = [0.1]', "in both [grid] and [variant_grid.bn_lstm]"),
    ('[variant_grid.bn_lstm]\n"model.gamma_init" = []', "non-empty list"),
    ('[variant_grid.bn_lstm]\n"model.gama_init" = [0.1]', "gama_init"),
    ('[variant_grid]\nbn_lstm = 3', "must be a table"),
])
def test_bad_variant_grid_is_one_line(tmp_path, extra, message):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(TINY + "\n" + extra + "\n"))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        load_study(path)
    assert "\n" not in str(info.value)
