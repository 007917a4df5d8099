"""Inference statistics (issue 13): every mode measured at best and last, against independent recomputations;
saved models round-trip, and corrupted or mismatched files are refused with one line."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from suite.core import checkpoints
from suite.core.cells.norms import BATCH, batch_norms, statistics_mode
from suite.core.errors import SuiteError
from suite.core.train import fit
from tasks.base import create
from tasks.resolve import load_run_config

TINY = ["task.length=8", "task.train_size=200", "task.eval_size=70", "model.hidden_size=8",
        "train.batch_size=32", "train.steps=12", "train.eval_every=4", "train.reestimate_batches=2",
        "optim.lr=0.01", "model.variant='bn_lstm'", "train.device='cpu'"]


def config(*extra: str):
    return load_run_config(overrides=TINY + list(extra))


def task_for(cfg):
    return create(cfg.task.name, cfg.task.options)


@pytest.fixture(scope="module")
def run():
    cfg = config()
    return cfg, fit(task_for(cfg), cfg)


def rows_of(result, **match):
    return [r for r in result.inference if all(r[k] == v for k, v in match.items())]


def by_hand(model, task, split: str, batch_size: int, batch_stats: bool) -> float:
    """Mean squared error over a split, every batch through the reference loop, no suite evaluation code."""
    model.eval()
    total = count = 0.0
    with torch.no_grad(), (statistics_mode(model, BATCH) if batch_stats else contextlib.nullcontext()):
        for batch in task.loader(split, batch_size, 0):
            out, _ = model(batch)
            total += float(((out.reshape(-1) - batch.targets.reshape(-1)) ** 2).sum())
            count += batch.targets.numel()
    return total / count


def test_every_mode_at_best_and_last_on_valid_and_test(run):
    cfg, result = run
    keys = {(r["checkpoint"], r["split"], r["stats_mode"], r["batch_size"], r["draw"]) for r in result.inference}
    expected = {(c, s, m, b, d) for c in ("best", "last") for s in ("valid", "test")
                for m, b, d in [("batch", 32, None), ("batch", 128, None), ("running", 32, None),
                                ("reestimate", 32, 0), ("reestimate", 32, 1), ("reestimate", 32, 2)]}
    assert keys == expected and len(result.inference) == len(expected)
    assert {r["step"] for r in rows_of(result, checkpoint="last")} == {12}
    assert {r["step"] for r in rows_of(result, checkpoint="best")} == {result.summary["best_step"]}
    # Draw 0 is the re-estimation the curve and the summary use.
    assert rows_of(result, checkpoint="best", split="test", stats_mode="reestimate", draw=0)[0]["value"] == \
        pytest.approx(result.summary["test_at_best"], rel=1e-12)
    assert rows_of(result, checkpoint="last", split="test", stats_mode="reestimate", draw=0)[0]["value"] == \
        pytest.approx(result.summary["test_at_last"], rel=1e-12)
    draws = [r["value"] for r in rows_of(result, checkpoint="last", split="valid", stats_mode="reestimate")]
    assert len(set(draws)) == 3, "independent draws must use different training batches"


def test_batch_and_running_modes_match_the_reference_loop(run):
    cfg, result = run
    task = task_for(cfg)
    task.prepare()
    reference = task.build_model(config("model.impl='reference'").model)
    reference.load_state_dict(result.models["last"])
    for size in (32, 128):
        row = rows_of(result, checkpoint="last", split="valid", stats_mode="batch", batch_size=size)[0]
        assert row["value"] == pytest.approx(by_hand(reference, task, "valid", size, True), rel=1e-5)
    row = rows_of(result, checkpoint="last", split="test", stats_mode="running")[0]
    assert row["value"] == pytest.approx(by_hand(reference, task, "test", 32, False), rel=1e-5)


def test_reestimation_leaves_the_running_averages_as_training_made_them():
    # eval_stats=batch never touches the buffers; reestimate must end with the very same ones.
    kept = fit(task_for(config("train.eval_stats='batch'")), config("train.eval_stats='batch'"))
    reest = fit(task_for(config()), config())
    for name, value in kept.models["last"].items():
        assert torch.equal(value, reest.models["last"][name]), name
    assert any("running_mean" in name and value.abs().sum() > 0 for name, value in kept.models["last"].items())


def test_measurement_can_be_turned_off_and_is_absent_without_batch_norm():
    assert fit(task_for(config("train.inference_draws=0")), config("train.inference_draws=0")).inference == []
    cfg = config("model.variant='ln_lstm'")
    result = fit(task_for(cfg), cfg)
    assert result.inference == [] and set(result.models) == {"best", "last"}


def test_save_load_round_trip(tmp_path, run):
    cfg, result = run
    recorded = cfg.to_dict() | {"task_facts": {}}
    paths = checkpoints.save_models(str(tmp_path), "t1", result.models, recorded, {"best": 8, "last": 12})
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["best.pt", "last.pt"]
    assert not [p for p in (tmp_path / "models" / "t1").iterdir() if p.name.startswith(".")], "temporary file left"
    payload = checkpoints.read_model(checkpoints.model_path(str(tmp_path), "t1", "last"))
    assert payload["step"] == 12 and checkpoints.file_config(payload) == json.loads(json.dumps(recorded))
    task = task_for(cfg)
    task.prepare()
    model = task.build_model(cfg.model)
    checkpoints.load_into(model, payload, "last.pt", cfg.to_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(value, result.models["last"][name])
    assert len(batch_norms(model)) > 0
    # The file is a weights-only torch.save: plain torch.load with weights_only=True reads it.
    raw = torch.load(paths[1], weights_only=True)
    assert raw["format"] == checkpoints.FORMAT


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_corrupted_or_foreign_files_are_refused_cleanly(tmp_path, run):
    cfg, result = run
    path = checkpoints.save_model(str(tmp_path), "t1", "last", result.models["last"], cfg.to_dict(), 12)
    data = bytearray(open(path, "rb").read())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(SuiteError) as exc:
        checkpoints.read_model(str(truncated))
    assert "corrupted" in one_line(exc)
    # One flipped bit inside a tensor's bytes: the zip container may still read, the digest catches it.
    state = {k: v.clone() for k, v in result.models["last"].items()}
    payload = {"format": checkpoints.FORMAT, "version": checkpoints.VERSION, "config_json": "{}", "step": 1,
               "digest": checkpoints.digest(state), "state": state}
    name = next(k for k in state if k.endswith("weight_hh") or "weight" in k)
    state[name].view(-1)[0] += 1.0
    flipped = tmp_path / "flipped.pt"
    torch.save(payload, flipped)
    with pytest.raises(SuiteError) as exc:
        checkpoints.read_model(str(flipped))
    assert "digest" in one_line(exc)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(SuiteError) as exc:
        checkpoints.read_model(str(foreign))
    assert "not a recnorm-suite model file" in one_line(exc)
    # An arbitrary pickle is never unpickled (weights_only), only refused.
    evil = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"format": checkpoints.FORMAT, "thing": io.StringIO}, buffer)
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(SuiteError) as exc:
        checkpoints.read_model(str(evil))
    assert "corrupted or not a model file" in one_line(exc)
    with pytest.raises(SuiteError) as exc:
        checkpoints.read_model(str(tmp_path / "absent.pt"))
    assert "no such model file" in one_line(exc)


def test_a_file_for_another_model_is_refused(tmp_path, run):
    cfg, result = run
    path = checkpoints.save_model(str(tmp_path), "t1", "best", result.models["best"], cfg.to_dict(), 8)
    payload = checkpoints.read_model(path)
    other = config("model.hidden_size=16")
    task = task_for(other)
    task.prepare()
    with pytest.raises(SuiteError) as exc:
        checkpoints.load_into(task.build_model(other.model), payload, path, other.to_dict())
    assert "different [model] config (differs in hidden_size)" in one_line(exc)
    with pytest.raises(SuiteError) as exc:  # without a config to compare, the tensors still disagree
        checkpoints.load_into(task.build_model(other.model), payload, path)
    assert "does not match the model" in one_line(exc) and "other shape" in str(exc.value)
