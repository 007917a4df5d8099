"""The training loop: determinism, resume, exact metrics, selection, divergence, statistics modes."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.resolve import load_run_config
from suite.core.errors import ConfigError
from suite.core.model import SequenceModel
from suite.core.train import evaluate, fit
from tasks.base import create
from tasks.synthetic import AddingTask

TINY = ["task.length=8", "task.train_size=200", "task.eval_size=70", "model.hidden_size=8",
        "train.batch_size=32", "train.steps=12", "train.eval_every=4", "train.reestimate_batches=2",
        "optim.lr=0.01"]


def config(*extra: str):
    return load_run_config(overrides=TINY + list(extra))


def task_for(cfg):
    return create(cfg.task.name, cfg.task.options)


@pytest.mark.parametrize("variant", ["lstm", "bn_lstm"])
def test_same_seed_same_run_and_other_seed_other_run(variant):
    cfg = config(f"model.variant='{variant}'")
    first, second = fit(task_for(cfg), cfg), fit(task_for(cfg), cfg)
    assert [r["value"] for r in first.curve] == [r["value"] for r in second.curve]
    other = fit(task_for(cfg), config(f"model.variant='{variant}'", "train.seed=1"))
    assert [r["value"] for r in first.curve] != [r["value"] for r in other.curve]


def test_curve_and_summary_are_consistent():
    cfg = config("model.variant='bn_lstm'")
    result = fit(task_for(cfg), cfg)
    assert result.status == "finished"
    valid = [(r["step"], r["value"]) for r in result.curve if r["split"] == "valid"]
    assert [s for s, _ in valid] == [4, 8, 12]
    best_step, best_value = min(valid, key=lambda sv: sv[1])  # mse: lower is better
    assert result.summary["best_step"] == best_step and result.summary["best_valid"] == best_value
    assert result.summary["valid_at_last"] == valid[-1][1]
    assert {r["stats_mode"] for r in result.curve if r["split"] == "valid"} == {"reestimate"}
    assert result.summary["steps"] == 12 and result.summary["num_params"] > 0
    for key in ("test_at_best", "test_at_last", "examples_per_second"):
        assert math.isfinite(result.summary[key]) and result.summary[key] > 0


def test_statistics_mode_is_recorded_and_none_without_batch_norm():
    cfg = config("model.variant='bn_lstm'", "train.eval_stats='batch'")
    assert {r["stats_mode"] for r in fit(task_for(cfg), cfg).curve if r["split"] == "valid"} == {"batch"}
    cfg = config("model.variant='ln_lstm'")
    assert fit(task_for(cfg), cfg).summary["stats_mode"] == "none"


def test_resume_from_a_checkpoint_continues_the_same_run():
    cfg = config("model.variant='bn_lstm'")
    straight = fit(task_for(cfg), cfg)
    saved = {}

    def keep_first(report):
        saved.setdefault("ckpt", report.checkpoint())

    fit(task_for(cfg), cfg, on_report=keep_first)
    resumed = fit(task_for(cfg), cfg, resume=saved["ckpt"])
    assert [r["step"] for r in resumed.curve] == [4, 4, 8, 8, 12, 12][2:]
    assert [r["value"] for r in resumed.curve] == pytest.approx([r["value"] for r in straight.curve][2:], rel=1e-6)
    assert resumed.summary["test_at_best"] == pytest.approx(straight.summary["test_at_best"], rel=1e-6)


def test_validation_metric_is_exact_over_the_whole_split():
    cfg = config("model.variant='lstm'")
    task = task_for(cfg)
    torch.manual_seed(0)
    model = SequenceModel(task, cfg.model)
    metric, loss = evaluate(model, task, "valid", cfg.train, "cpu")  # 70 examples, batches of 32
    inputs, targets = task._split("valid")
    with torch.no_grad():
        out, _ = model.rnn(inputs.transpose(0, 1))
        predictions = model.head(out, (out[-1:], out[-1:])).squeeze(-1)
    assert metric == pytest.approx(float(((predictions - targets) ** 2).mean()), rel=1e-5)
    assert loss == pytest.approx(metric, rel=1e-9)


class ExplodingAdding(AddingTask):
    """Adding whose training inputs turn to NaN after a few batches."""

    def loader(self, split, batch_size, seed, epoch=0):
        for index, batch in enumerate(super().loader(split, batch_size, seed, epoch)):
            if split == "train" and (epoch > 0 or index >= 5):
                batch.inputs.fill_(float("nan"))
            yield batch


def test_a_nan_loss_ends_the_run_as_diverged():
    cfg = config("model.variant='lstm'")
    result = fit(ExplodingAdding(task_for(cfg).options), cfg)
    assert result.status == "diverged"
    assert result.summary["steps"] == 6
    assert result.summary["best_step"] == 4 and math.isfinite(result.summary["test_at_best"])
    assert math.isnan(result.summary["test_at_last"])


def test_early_stop_through_the_callback():
    cfg = config("model.variant='lstm'")
    result = fit(task_for(cfg), cfg, on_report=lambda report: report.step >= 8)
    assert result.summary["steps"] == 8 and result.status == "finished"


def test_eval_lengths_need_a_task_that_can_cut_lengths():
    cfg = config("train.eval_lengths=[4]")
    with pytest.raises(ConfigError, match="eval_lengths"):
        fit(task_for(cfg), cfg)


def test_bidirectional_model_trains_and_reads_both_directions():
    cfg = config("model.variant='bn_lstm'", "model.bidirectional=true", "train.steps=4")
    task = task_for(cfg)
    model = task.build_model(cfg.model)
    assert model.head.linear.in_features == 16
    assert fit(task, cfg).status == "finished"


class SilentAdding(AddingTask):
    """Adding with every input zero: the layer-normalized pre-activations are exactly zero vectors."""

    def generate(self, size, seed):
        inputs, targets = super().generate(size, seed)
        return torch.zeros_like(inputs), targets


def test_a_non_finite_gradient_ends_the_run_as_diverged_instead_of_silently_skipping_updates():
    # Layer norm of an all-zero vector has gradient gain/sqrt(eps) ~ 316x; through h and c at every
    # step of a 60-step sequence this overflows float32 (found on pooled pMNIST, 75% zero pixels).
    cfg = config("model.variant='ln_lstm'", "task.length=60")
    result = fit(SilentAdding(task_for(cfg).options), cfg)
    assert result.status == "diverged"
    assert result.summary["error"] == "gradient norm is nan at step 1"
    assert result.summary["steps"] == 1
