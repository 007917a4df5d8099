"""The copy-memory task: sequence layout, determinism, scoring on the recall steps only,
and the task registry's shape declarations for every task."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.resolve import resolve
from suite.core.errors import ConfigError
from tasks.base import create, registry


def test_copy_layout():
    t = create("copy", {"length": 6, "symbols": 3, "alphabet": 4, "train_size": 20, "eval_size": 5})
    assert (t.vocab_size, t.input_size, t.output_size, t.seq_len) == (6, 6, 5, 12)
    batch = next(t.loader("valid", 5, seed=0))
    assert batch.inputs.shape == batch.targets.shape == (12, 5)
    for x, y in zip(batch.inputs.T.tolist(), batch.targets.T.tolist()):
        data = x[:3]
        assert all(1 <= s <= 4 for s in data)
        assert x[3:8] == [0] * 5 and x[8] == 5 and x[9:] == [0] * 3  # blanks, the marker, blanks
        assert y[:9] == [0] * 9 and y[9:] == data  # blank until the recall steps, then the symbols


def test_copy_is_seeded():
    options = {"length": 10, "train_size": 30, "eval_size": 10}
    a, b = create("copy", options), create("copy", options)
    assert torch.equal(next(a.loader("test", 10, 0)).inputs, next(b.loader("test", 10, 5)).inputs)
    assert not torch.equal(next(a.loader("valid", 10, 0)).inputs, next(a.loader("test", 10, 0)).inputs)
    first = [x.targets for x in a.loader("train", 10, seed=1)]
    assert all(torch.equal(p, q) for p, q in zip(first, [x.targets for x in b.loader("train", 10, seed=1)]))
    assert not torch.equal(first[0], next(a.loader("train", 10, seed=2)).targets)
    other = create("copy", options | {"data_seed": 7})
    assert not torch.equal(next(other.loader("test", 10, 0)).inputs, next(a.loader("test", 10, 0)).inputs)


def test_copy_scores_recall_steps_only():
    t = create("copy", {"length": 8, "symbols": 4, "alphabet": 6, "eval_size": 7})
    batch = next(t.loader("test", 7, 0))
    perfect = torch.nn.functional.one_hot(batch.targets, t.output_size).float() * 50
    score = t.score(perfect, batch)
    assert score.count == 28 and score.metric_sum == 28 and score.loss_sum < 1e-6
    blind = perfect.clone()
    blind[-4:] = 0.0  # right about every blank, uniform on the recall steps
    score = t.score(blind, batch)
    assert math.isclose(score.loss_sum / score.count, math.log(7), rel_tol=1e-6)
    assert t.loss(blind, batch) < score.loss_sum / score.count  # training loss averages over every step


def test_copy_option_checks():
    with pytest.raises(ConfigError):
        create("copy", {"symbols": 0})
    with pytest.raises(ConfigError, match="unknown key 'delay'"):
        create("copy", {"delay": 3})


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_task_declares_its_shape_and_paper_settings(name: str, tmp_path):
    cls = registry()[name]
    assert cls.metric and cls.mode in ("min", "max") and cls.description
    task = create(name, {}, data_dir=tmp_path)
    assert task.input_size >= 1 and task.output_size >= 1 and task.seq_len >= 1
    config = resolve({"task": {"name": name}})  # the paper's settings resolve into a valid config
    for section, values in cls.defaults.items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) == value


def test_paper_settings():
    tasks = registry()
    for name in ("smnist", "pmnist", "sfmnist"):
        assert tasks[name].defaults["model"]["hidden_size"] == 100
        assert tasks[name].defaults["optim"] == {"name": "rmsprop", "lr": 1e-3, "clip": 1.0}
        assert tasks[name].defaults["train"]["batch_size"] == 100
    ptb = tasks["ptb_char"].defaults
    assert (ptb["model"]["hidden_size"], ptb["optim"]["lr"], ptb["train"]["batch_size"]) == (1000, 2e-3, 64)
    t8 = tasks["text8"].defaults
    assert (t8["model"]["hidden_size"], t8["optim"]["lr"], t8["train"]["batch_size"]) == (2000, 1e-3, 128)
    assert create("ptb_char", {}).seq_len == 100 and create("text8", {}).seq_len == 180
    assert create("smnist", {}).seq_len == 784 and create("pmnist", {"pool": 2}).seq_len == 196
