"""Config resolution: layering, overrides, and one clear error per kind of bad input."""

from __future__ import annotations

import pytest

from suite.core.config import RunConfig, parse_override
from tasks.resolve import load_run_config
from suite.core.errors import ConfigError


def test_task_paper_settings_sit_between_defaults_and_user_values(tmp_path):
    config = load_run_config(overrides=["task.name='smnist'"])
    assert (config.optim.name, config.optim.lr, config.train.batch_size) == ("rmsprop", 1e-3, 100)
    path = tmp_path / "run.toml"
    path.write_text('[task]\nname = "smnist"\npool = 4\n[optim]\nlr = 2e-3\n')
    config = load_run_config(path, ["optim.lr=5e-4", "model.gamma_init=0.3", "model.variant='bn_lstm'"])
    assert config.optim.lr == 5e-4 and config.optim.name == "rmsprop"
    assert config.task.options == {"pool": 4}
    assert config.model.options == {"h0_noise": 0.1, "gamma_init": 0.3}  # smnist's bn_lstm primes h0


def test_variant_paper_settings_apply_to_their_variant_and_task_only():
    """smnist's BN-LSTM and LN-LSTM start from a noisy h0 (the authors' script); the user's value wins."""
    def options(task: str, variant: str, *more: str) -> dict:
        return load_run_config(overrides=[f"task.name='{task}'", f"model.variant='{variant}'", *more]).model.options

    assert options("smnist", "bn_lstm") == {"h0_noise": 0.1}
    assert options("smnist", "ln_lstm") == {"h0_noise": 0.1}
    assert options("sfmnist", "bn_lstm") == {"h0_noise": 0.1}
    assert options("smnist", "lstm") == {} and options("smnist", "bn_vertical") == {}
    assert options("pmnist", "bn_lstm") == {}
    assert options("smnist", "bn_lstm", "model.h0_noise=0.0") == {"h0_noise": 0.0}


def test_round_trip_through_a_plain_dict():
    config = load_run_config(overrides=["model.variant=\"bn_lstm\"", "model.t_max=50", "train.eval_lengths=[5, 10]"])
    assert isinstance(config, RunConfig)
    plain = config.to_dict()
    assert plain["model"]["options"] == {"t_max": 50}
    assert plain["train"]["eval_lengths"] == [5, 10]


def test_override_values_are_read_as_toml_else_strings():
    assert parse_override("optim.lr=1e-3") == (["optim", "lr"], 1e-3)
    assert parse_override("train.device=cpu") == (["train", "device"], "cpu")
    assert parse_override("model.learn_init=false") == (["model", "learn_init"], False)
    assert parse_override("train.eval_stats=batch") == (["train", "eval_stats"], "batch")


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], r"\[optim\]: unknown key 'lrr'; known keys: clip, lr, name, weight_decay"),
    (["optim.lr=fast"], r"\[optim\].lr: expected float, got str 'fast'"),
    (["train.steps=1.5"], r"\[train\].steps: expected int"),
    (["model.variant='nope'"], "unknown variant 'nope'; known variants: bn_lstm, bn_vertical"),
    (["task.name='nope'"], "unknown task 'nope'; known tasks:"),
    (["model.gama=0.2", "model.variant='bn_lstm'"], "other model keys: variant, hidden_size, num_layers, dropout, bidirectional.*unknown key 'gama'; known keys: eps, forget_bias, gamma_init"),
    (["task.pool=3", "task.name='smnist'"], "pool must divide 28"),
    (["task.bogus=1"], r"unknown key 'bogus'"),
    (["nosection.x=1"], "unknown section 'nosection'"),
    (["optim.lr"], "expected KEY=VALUE"),
    (["train.eval_stats='mean'"], "train.eval_stats must be one of reestimate, batch, running"),
    (["model.dropout=1.5"], r"model.dropout must be in \[0, 1\)"),
    (["optim.name='adagrad'"], "optim.name must be one of"),
    (["train.eval_lengths=[10, 'x']"], r"eval_lengths\[1\]: expected int"),
])
def test_bad_values_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config = load_run_config(overrides=overrides)
        # task options are checked when the task is built
        from tasks.base import create
        create(config.task.name, config.task.options)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_run_config(bad)
    section = tmp_path / "section.toml"
    section.write_text("[trian]\nsteps = 1\n")
    with pytest.raises(ConfigError, match=r"section.toml: unknown section \[trian\]"):
        load_run_config(section)
