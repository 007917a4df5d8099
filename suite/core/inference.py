"""Evaluation of a model under each way of taking batch-norm statistics at inference.

Cooijmans et al. (2016), Section 3: at test time a BN-LSTM normalizes with population
statistics per time step, estimated in an extra pass over training data (the authors warn
that this "may require tweaking"). What the evaluation uses moves the verdict (issue 13),
so every mode is measured, never silently chosen:

- `batch`: each evaluation batch's own statistics (depends on the evaluation batch size);
- `reestimate`: population statistics re-estimated exactly from training batches just
  before the evaluation; draw d uses an independent stream of training batches;
- `running`: the running averages kept during training (momentum `model.momentum`).

Evaluation is exact over a whole split (sums and counts). Every re-estimation runs inside
`kept_statistics`, so the running averages survive it: a model's buffers always hold what
training made them, and `running` stays measurable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch

from suite.core.cells.norms import BATCH, batch_norms, kept_statistics, reestimate_statistics, statistics_mode
from suite.core.config import TrainConfig

# Training-data stream used for re-estimating statistics, apart from the training stream itself.
REESTIMATE_SEED_OFFSET = 7919
# Draw d of the re-estimation reads the training split shuffled with seed + REESTIMATE_SEED_OFFSET + d * DRAW_STRIDE.
DRAW_STRIDE = 1_000_003
# Batch-statistics evaluations are measured at the evaluation batch size times each of these.
BATCH_MULTIPLES = (1, 4)


def eval_batch_size(train: TrainConfig) -> int:
    """The evaluation batch size: `train.eval_batch_size`, else the training batch size."""
    return train.eval_batch_size or train.batch_size


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, task, split: str, batch_size: int, device, stats: str,
                   length: int | None = None) -> tuple[float, float]:
    """Exact (metric, mean loss) over a split with BN statistics `stats`: "batch" or "population"
    (whatever the buffers hold now: re-estimated or running averages). No re-estimation here.

    With `length`, the split is cut into independent segments of that length (the task's
    `length_loader`), for the paper's evaluation beyond the training length (Figure 3b).
    """
    model.eval()
    mode = statistics_mode(model, BATCH) if stats == "batch" else contextlib.nullcontext()
    carry = task.carry_state and length is None
    source = task.loader(split, batch_size, 0) if length is None else task.length_loader(split, length, batch_size)
    loss_sum = metric_sum = count = 0.0
    state, offset = None, 0
    with mode:
        for batch in source:
            batch = batch.to(device)
            logits, state = model(batch, state, offset) if carry else model(batch)
            offset += batch.inputs.shape[0]
            score = task.score(logits, batch)
            loss_sum, metric_sum, count = loss_sum + score.loss_sum, metric_sum + score.metric_sum, count + score.count
    if count == 0:
        raise ValueError(f"task {task.name}: split {split!r} is empty")
    return metric_sum / count, loss_sum / count


@torch.no_grad()
def refresh_statistics(model: torch.nn.Module, task, train: TrainConfig, device, draw: int = 0,
                       batches: int | None = None, joint: bool = False) -> None:
    """Exact population statistics of every BN over `batches` (default `train.reestimate_batches`)
    training batches of draw `draw`; overwrites the buffers (callers keep them with `kept_statistics`).

    `joint`: the same number of examples in ONE forward pass, so the statistics of step t are
    taken from hidden states that earlier steps produced with the pooled statistics of all
    those examples (close to the population dynamics used at inference) rather than with
    each training batch's own, noisier ones.
    """
    wanted = train.reestimate_batches if batches is None else batches
    seed = train.seed + REESTIMATE_SEED_OFFSET + draw * DRAW_STRIDE

    def run() -> None:
        model.eval()  # dropout off; the norms are put in accumulate mode by reestimate_statistics
        if joint:
            model(next(iter(task.loader("train", train.batch_size * wanted, seed, 0))).to(device))
            return
        done, epoch = 0, 0
        while done < wanted:
            before = done
            for batch in task.loader("train", train.batch_size, seed, epoch):
                model(batch.to(device))
                done += 1
                if done == wanted:
                    return
            if done == before:
                raise ValueError(f"task {task.name}: the training split yields no batches")
            epoch += 1

    reestimate_statistics(model, run)


def evaluate(model: torch.nn.Module, task, split: str, train: TrainConfig, device,
             length: int | None = None) -> tuple[float, float]:
    """Exact (metric, mean loss) over a split, statistics taken as `train.eval_stats` says (draw 0)."""
    size = eval_batch_size(train)
    if train.eval_stats == "reestimate" and batch_norms(model):
        with kept_statistics(model):
            refresh_statistics(model, task, train, device)
            return evaluate_split(model, task, split, size, device, "population", length)
    return evaluate_split(model, task, split, size, device, "batch" if train.eval_stats == "batch" else "population",
                          length)


def measure_modes(model: torch.nn.Module, task, train: TrainConfig, device, checkpoint: str,
                  splits: tuple[str, ...] = ("valid", "test"), draws: int | None = None,
                  say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every statistics mode on `splits` for the model as it is (`checkpoint` labels the rows):
    batch statistics at each of BATCH_MULTIPLES x the evaluation batch size, `draws` (default
    `train.inference_draws`) independent re-estimations, and the running averages.
    Returns one row per (mode, batch size, draw, split); none for a model without BN."""
    if not batch_norms(model):
        return []
    draws = train.inference_draws if draws is None else draws
    say = say or (lambda message: None)
    size = eval_batch_size(train)
    rows: list[dict[str, Any]] = []

    def measure(mode: str, batch_size: int, draw: int | None, stats: str) -> None:
        for split in splits:
            tick = time.perf_counter()
            value, loss = evaluate_split(model, task, split, batch_size, device, stats)
            rows.append({"checkpoint": checkpoint, "split": split, "stats_mode": mode, "batch_size": batch_size,
                         "draw": draw, "reestimate_batches": train.reestimate_batches if mode == "reestimate" else 0,
                         "metric": task.metric, "value": value, "loss": loss,
                         "seconds": time.perf_counter() - tick})

    started = time.perf_counter()
    for multiple in BATCH_MULTIPLES:
        measure("batch", size * multiple, None, "batch")
    measure("running", size, None, "population")
    with kept_statistics(model):
        for draw in range(draws):
            refresh_statistics(model, task, train, device, draw)
            measure("reestimate", size, draw, "population")
    say(f"inference statistics at {checkpoint}: {len(rows)} evaluations ({draws} re-estimation draws of "
        f"{train.reestimate_batches} batches) in {time.perf_counter() - started:.1f}s")
    return rows
