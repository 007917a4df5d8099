"""`suite diagnose bn-inference`: where batch-statistics and population-statistics dynamics part (issue 13).

On one saved BN model (runners.saved), two measurements, written as one `bn_inference`
Arrow table (schema in `suite.core.results`):

- divergence: one evaluation batch runs through the recurrent stack twice, with the batch's
  own statistics and with population statistics (re-estimated as the run did, draw 0; and
  the running averages). Per time step t, the relative norm ||h_t^batch - h_t^pop|| /
  ||h_t^batch|| of the top layer's output, per example; the mean and quartiles over the batch.
  Cooijmans et al. (2016), Section 3, normalize with per-step population statistics at test
  time; this shows how far along the sequence the two dynamics agree.
- batches: the metric on a split after re-estimating from n training batches, for each n and
  each of several independent draws, beside batch statistics and the running averages.

The figure and markdown are drawn by `reports.bn_inference` (no torch there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from runners.saved import SavedRun, require_batch_norm
from suite.core.cells.norms import BATCH, kept_statistics, statistics_mode
from suite.core.errors import SuiteError
from suite.core.inference import eval_batch_size, evaluate_split, refresh_statistics
from suite.core.results import BN_INFERENCE, to_table, write_table

TABLE = "bn_inference"
DEFAULT_BATCHES = (1, 2, 5, 10, 20, 50)


@torch.no_grad()
def top_outputs(run: SavedRun, batch) -> torch.Tensor:
    """The recurrent stack's output (T, B, H) for a batch, read with a forward hook on `model.rnn`."""
    rnn = getattr(run.model, "rnn", None)
    if rnn is None:
        raise SuiteError(f"{run.path}: the model of task {run.config.task.name} has no recurrent stack `rnn` to "
                         f"compare hidden states of")
    seen: list[torch.Tensor] = []
    handle = rnn.register_forward_hook(lambda module, args, out: seen.append(out[0].detach()))
    try:
        run.model.eval()
        run.model(batch)
    finally:
        handle.remove()
    return seen[0]


def relative_divergence(h_batch: torch.Tensor, h_pop: torch.Tensor) -> torch.Tensor:
    """(T, B) relative L2 distance per step and example; 0 where the batch-statistics state is all zero."""
    diff = torch.linalg.vector_norm(h_batch - h_pop, dim=-1)
    norm = torch.linalg.vector_norm(h_batch, dim=-1)
    return torch.where(norm > 0, diff / norm.clamp(min=torch.finfo(norm.dtype).tiny), torch.zeros_like(diff))


def divergence_rows(run: SavedRun, split: str, device) -> list[dict[str, Any]]:
    """Per-step relative divergence of population (re-estimated, running) from batch statistics."""
    size = eval_batch_size(run.config.train)
    batch = next(iter(run.task.loader(split, size, 0))).to(device)
    with statistics_mode(run.model, BATCH):
        h_batch = top_outputs(run, batch)
    rows = []
    with kept_statistics(run.model):
        for reference in ("running", "reestimate"):
            if reference == "reestimate":
                refresh_statistics(run.model, run.task, run.config.train, device, 0)
            rel = relative_divergence(h_batch, top_outputs(run, batch)).double().cpu()
            q = torch.quantile(rel, torch.tensor([0.25, 0.75], dtype=rel.dtype), dim=1)
            for t in range(rel.shape[0]):
                rows.append({"kind": "divergence", "split": split, "reference": reference, "t": t,
                             "batches": run.config.train.reestimate_batches if reference == "reestimate" else 0,
                             "draw": 0 if reference == "reestimate" else None, "batch_size": batch.size,
                             "metric": "relative_l2", "value": float(rel[t].mean()), "q25": float(q[0, t]),
                             "q75": float(q[1, t])})
    return rows


def batches_rows(run: SavedRun, split: str, device, counts: Sequence[int], draws: int,
                 say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The metric after re-estimating from each count of training batches, per draw; batch and running beside."""
    size = eval_batch_size(run.config.train)
    metric = run.task.metric
    base = {"kind": "batches", "split": split, "batch_size": size, "metric": metric}
    rows = [dict(base, reference="batch", value=evaluate_split(run.model, run.task, split, size, device, "batch")[0]),
            dict(base, reference="running",
                 value=evaluate_split(run.model, run.task, split, size, device, "population")[0])]
    with kept_statistics(run.model):
        for n in counts:
            for draw in range(draws):
                refresh_statistics(run.model, run.task, run.config.train, device, draw, batches=n)
                value = evaluate_split(run.model, run.task, split, size, device, "population")[0]
                rows.append(dict(base, reference="reestimate", batches=n, draw=draw, value=value))
            say(f"  {n} batches: " + ", ".join(f"{r['value']:.4f}" for r in rows[-draws:]))
    return rows


def diagnose(run: SavedRun, out: str, split: str = "valid", counts: Sequence[int] = DEFAULT_BATCHES,
             draws: int = 3, say: Callable[[str], None] | None = None) -> tuple[pa.Table, str]:
    """Run both measurements on a saved BN model; write `out/bn_inference/<trial>.parquet`; return (table, path)."""
    require_batch_norm(run, "bn-inference")
    if draws < 1 or not counts or min(counts) < 1:
        raise SuiteError("bn-inference: --draws and every --batches count must be >= 1")
    say = say or (lambda message: None)
    device = next(run.model.parameters()).device
    rows = divergence_rows(run, split, device)
    say(f"divergence over {max(r['t'] for r in rows) + 1} steps measured; re-estimation batches:")
    rows += batches_rows(run, split, device, counts, draws, say)
    c = run.config
    keys = {"study": "diagnose", "trial_id": run.trial_id, "task": c.task.name, "variant": c.model.variant,
            "seed": c.train.seed, "checkpoint": run.checkpoint, "step": run.step,
            "config_json": json.dumps(c.to_dict(), sort_keys=True)}
    table = to_table([dict(keys, **row) for row in rows], BN_INFERENCE)
    return table, write_table(table, out, TABLE, run.trial_id)


def default_out(run: SavedRun) -> str:
    """The results root the model came from (so `suite report` there includes the diagnostic)."""
    return str(Path(run.path).parent.parent.parent)
