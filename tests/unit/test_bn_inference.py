"""`suite diagnose bn-inference` on a saved model: the numbers agree with the run and with the reference loop."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from reports.bn_inference import markdown
from runners import bn_inference
from runners.saved import load
from suite.core import checkpoints
from suite.core.cells.norms import BATCH, statistics_mode
from suite.core.errors import SuiteError
from suite.core.results import BN_INFERENCE
from suite.core.train import fit
from tasks.base import create
from tasks.resolve import load_run_config

TINY = ["task.length=10", "task.train_size=200", "task.eval_size=64", "model.hidden_size=8",
        "train.batch_size=16", "train.steps=12", "train.eval_every=6", "train.reestimate_batches=3",
        "optim.lr=0.01", "train.device='cpu'"]


def saved(root, variant="bn_lstm"):
    cfg = load_run_config(overrides=TINY + [f"model.variant='{variant}'"])
    result = fit(create(cfg.task.name, cfg.task.options), cfg)
    checkpoints.save_models(str(root), "t1", result.models, cfg.to_dict() | {"task_facts": {}},
                            {"best": result.summary["best_step"], "last": 12})
    return cfg, result


def test_diagnostic_on_a_saved_model(tmp_path):
    cfg, result = saved(tmp_path)
    run = load("t1", str(tmp_path), "best")
    table, path = bn_inference.diagnose(run, str(tmp_path), "valid", (1, 3), draws=2)
    assert pq.read_schema(path).metadata[b"table"] == b"bn_inference" and table.schema.equals(BN_INFERENCE)
    rows = table.to_pylist()
    batches = {(r["reference"], r["batches"], r["draw"]): r["value"] for r in rows if r["kind"] == "batches"}
    # Re-estimated as the run did (its batches, draw 0) on the loaded best model: the run's best validation value.
    assert batches[("reestimate", 3, 0)] == pytest.approx(result.summary["best_valid"], rel=1e-9)
    assert batches[("reestimate", 1, 0)] != batches[("reestimate", 1, 1)]
    assert set(batches) == {("batch", None, None), ("running", None, None)} | {
        ("reestimate", n, d) for n in (1, 3) for d in (0, 1)}
    # Divergence from the running averages, recomputed with the reference loop.
    reference = create(cfg.task.name, cfg.task.options).build_model(
        load_run_config(overrides=TINY + ["model.variant='bn_lstm'", "model.impl='reference'"]).model)
    reference.load_state_dict(result.models["best"])
    reference.eval()
    batch = next(iter(run.task.loader("valid", 16, 0)))
    with torch.no_grad():
        with statistics_mode(reference, BATCH):
            h_b, _ = reference.rnn(batch.inputs)
        h_p, _ = reference.rnn(batch.inputs)
    expected = ((h_b - h_p).norm(dim=-1) / h_b.norm(dim=-1)).mean(dim=1)
    divergence = {r["t"]: r["value"] for r in rows if r["kind"] == "divergence" and r["reference"] == "running"}
    assert sorted(divergence) == list(range(10))
    for t in (0, 9):
        assert divergence[t] == pytest.approx(float(expected[t]), rel=1e-4)
    text = "\n".join(markdown(table, "t1", lambda v: f"{v:.4f}"))
    assert f"| 3 | {batches[('reestimate', 3, 0)] / 2 + batches[('reestimate', 3, 1)] / 2:.4f} ±" in text


def test_diagnostic_refuses_a_model_without_batch_norm(tmp_path):
    saved(tmp_path, "ln_lstm")
    with pytest.raises(SuiteError, match="has no batch norm"):
        bn_inference.diagnose(load("t1", str(tmp_path)), str(tmp_path))


def test_a_model_file_that_disagrees_with_its_trials_summary_is_refused(tmp_path):
    import json

    from suite.core.results import SUMMARY, to_table, write_table

    cfg, _ = saved(tmp_path)
    other = cfg.to_dict()
    other["model"] = dict(other["model"], hidden_size=16)
    row = {"study": "s", "trial_id": "t1", "task": "adding", "variant": "bn_lstm", "seed": 0, "status": "finished",
           "stats_mode": "reestimate", "config_json": json.dumps(other)}
    write_table(to_table([row], SUMMARY), str(tmp_path), "summary", "t1")
    with pytest.raises(SuiteError, match=r"its \[model\] config differs from the one in .*summary/t1.parquet"):
        load("t1", str(tmp_path))
    # A study directory as the target: its first BN trial (by the summary) is found, then refused the same way.
    with pytest.raises(SuiteError, match="belongs to another run"):
        load(str(tmp_path))
