"""The one training loop: `fit(task, config, on_report)`, `train_step` and exact `evaluate`.

No Ray here: runners call `fit` with a callback that receives every evaluation's curve rows
and a function returning a resumable checkpoint. Validation and test metrics are exact
over the whole split (sums and counts). For BN variants the evaluation takes population
statistics re-estimated over training batches just before it (default), the batch's own
statistics, or the running averages (`train.eval_stats`); the mode is stored with every row.
At the end, BN variants are also evaluated under every mode at the best and the last step
(`suite.core.inference`), and both model states are returned for saving (`suite.core.checkpoints`).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from suite.core import perf
from suite.core.cells.norms import batch_norms
from suite.core.config import OptimConfig, RunConfig
from suite.core.device import pick_device  # noqa: F401 -- also part of this module's API
from suite.core.errors import ConfigError
from suite.core.inference import REESTIMATE_SEED_OFFSET, evaluate, measure_modes, refresh_statistics

__all__ = ["REESTIMATE_SEED_OFFSET", "Evaluation", "LoopState", "RunResult", "evaluate", "fit", "refresh_statistics", "train_step"]


@dataclass
class Evaluation:
    """What `fit` hands its callback after each evaluation."""

    step: int
    total_steps: int
    rows: list[dict[str, Any]]
    checkpoint: Callable[[], dict[str, Any]]


@dataclass
class LoopState:
    """Where `fit`'s loop stands; saved (as a plain dict) in every checkpoint and restored on resume."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # position in the epoch's batches
    best: float | None = None  # best validation metric so far
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None  # the model's state_dict at the best step (CPU)
    train_at_best: float | None = None
    last_valid: float | None = None
    train_seconds: float = 0.0  # training time so far, evaluations excluded
    examples: int = 0
    # Training loss sum, metric sum and count since the last evaluation.
    interval: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


@dataclass
class RunResult:
    """Outcome of `fit`: status, every curve row produced in this call, the summary, length evaluations,
    every inference-statistics evaluation (BN variants) and the model states to keep ("best", "last";
    CPU tensors, running averages as training left them)."""

    status: str
    curve: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    lengths: list[dict[str, Any]] = field(default_factory=list)
    inference: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params, config: OptimConfig) -> torch.optim.Optimizer:
    """Adam, RMSProp or SGD as configured."""
    kinds = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
    return kinds[config.name](params, lr=config.lr, weight_decay=config.weight_decay)


def train_step(model: torch.nn.Module, task, batch, optimizer: torch.optim.Optimizer, clip: float):
    """One update; returns (loss, logits, gradient norm). A non-finite loss is returned, not applied."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits, _ = model(batch)
    loss = task.loss(logits, batch)
    if not torch.isfinite(loss):
        return float(loss.detach()), logits, float("nan")
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    if math.isfinite(norm):
        optimizer.step()
    return float(loss.detach()), logits, norm


def _batches(task, split: str, batch_size: int, seed: int, device, epoch: int = 0, skip: int = 0):
    for index, batch in enumerate(task.loader(split, batch_size, seed, epoch)):
        if index >= skip:
            yield batch.to(device)


def _cycle(task, batch_size: int, seed: int, device, epoch: int = 0, skip: int = 0) -> Iterator[tuple]:
    """Endless (epoch, index, batch) over the training split, resumable at (epoch, skip)."""
    while True:
        empty = True
        for index, batch in enumerate(_batches(task, "train", batch_size, seed, device, epoch, skip), start=skip):
            empty = False
            yield epoch, index + 1, batch
        if empty and skip == 0:
            raise ValueError(f"task {task.name}: the training split yields no batches")
        epoch, skip = epoch + 1, 0


def _better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def fit(task, config: RunConfig, on_report: Callable[[Evaluation], bool | None] | None = None,
        resume: dict[str, Any] | None = None, log: Callable[[str], None] | None = None) -> RunResult:
    """Train one run; returns its curve rows and summary. `resume` is a checkpoint from an Evaluation.

    An `on_report` that returns True stops training there (early stopping); the run still ends
    with its summary and test metrics.
    """
    train = config.train
    perf.tune_process()  # threads and malloc of every training process, Ray workers included (README, Speed)
    device = pick_device(train.device)
    seed_everything(train.seed)
    task.prepare()
    if train.eval_lengths and not hasattr(task, "length_loader"):
        raise ConfigError(f"train.eval_lengths: task {task.name} cannot cut its data into other lengths; "
                          f"leave eval_lengths empty")
    model = task.build_model(config.model).to(device)
    optimizer = make_optimizer(model.parameters(), config.optim)
    s = LoopState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        s = LoopState(**resume["loop"])
        torch.set_rng_state(resume["rng"])
    stream = _cycle(task, train.batch_size, train.seed, device, s.epoch, s.batch_index)
    stats_mode = train.eval_stats if batch_norms(model) else "none"
    curve: list[dict[str, Any]] = []
    status, error, started = "finished", None, time.perf_counter()
    say = log or (lambda message: None)

    def checkpoint() -> dict[str, Any]:
        return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
                "loop": copy.deepcopy(vars(s)), "rng": torch.get_rng_state()}

    while s.step < train.steps:
        s.epoch, s.batch_index, batch = next(stream)
        perf.share_cores()
        tick = time.perf_counter()
        loss, logits, grad_norm = train_step(model, task, batch, optimizer, config.optim.clip)
        s.train_seconds += time.perf_counter() - tick
        s.step += 1
        s.examples += batch.size
        # A non-finite gradient is no update at all: going on would report a run that never trained.
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            status = "diverged"
            error = (f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}") + \
                f" at step {s.step}"
            say(f"{error}; run diverged")
            break
        score = task.score(logits.detach(), batch)
        s.interval = [s.interval[0] + score.loss_sum, s.interval[1] + score.metric_sum, s.interval[2] + score.count]
        if train.log_every and s.step % train.log_every == 0:
            say(f"step {s.step}/{train.steps} loss {loss:.4f}")
        if s.step % train.eval_every and s.step != train.steps:
            continue
        rows = _evaluate_interval(model, task, config, device, s, stats_mode, curve)
        valid = rows[-1]["value"]
        if _better(valid, s.best, task.mode):
            s.best, s.best_step, s.train_at_best = valid, s.step, rows[0]["value"]
            s.best_state = _cpu_state(model)
        say(f"step {s.step}/{train.steps} train loss {rows[0]['loss']:.4f} valid {task.metric} {valid:.4f} "
            f"(best {s.best if s.best is not None else float('nan'):.4f}) {s.train_seconds:.1f}s")
        if on_report and on_report(Evaluation(s.step, train.steps, rows, checkpoint)):
            break
    summary, lengths, inference, models = _summarize(model, task, config, device, s, status, stats_mode, started, say)
    return RunResult(status, curve, summary | {"error": error}, lengths, inference, models)


def _evaluate_interval(model, task, config: RunConfig, device, s: LoopState, stats_mode: str,
                       curve: list) -> list[dict[str, Any]]:
    """Curve rows for the training interval just ended and for the validation split."""
    loss_sum, metric_sum, count = s.interval
    s.interval = [0.0, 0.0, 0.0]
    valid_metric, valid_loss = evaluate(model, task, "valid", config.train, device)
    s.last_valid = valid_metric
    base = {"step": s.step, "metric": task.metric, "train_seconds": s.train_seconds, "examples": s.examples}
    rows = [dict(base, split="train", value=metric_sum / max(count, 1), loss=loss_sum / max(count, 1),
                 stats_mode="batch" if stats_mode != "none" else "none"),
            dict(base, split="valid", value=valid_metric, loss=valid_loss, stats_mode=stats_mode)]
    curve.extend(rows)
    return rows


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def _summarize(model, task, config: RunConfig, device, s: LoopState, status: str, stats_mode: str,
               started: float, say: Callable[[str], None]) -> tuple[dict[str, Any], list, list, dict]:
    """Test metric at the last and at the best validation step (and at other lengths), every
    inference-statistics mode at both (BN variants, `train.inference_draws` > 0), cost figures,
    and the two model states. Returns (summary, lengths rows, inference rows, models)."""
    nan = float("nan")
    train = config.train
    lengths: list[dict[str, Any]] = []
    inference: list[dict[str, Any]] = []
    models: dict[str, dict[str, torch.Tensor]] = {}

    def modes(checkpoint: str, step: int) -> None:
        if train.inference_draws > 0:
            inference.extend(dict(row, step=step) for row in
                             measure_modes(model, task, train, device, checkpoint, say=say))

    test_at_last = nan
    if status == "finished":
        models["last"] = _cpu_state(model)
        test_at_last = evaluate(model, task, "test", train, device)[0]
        modes("last", s.step)
    test_at_best = nan
    if s.best_state is not None:
        models["best"] = s.best_state
        model.load_state_dict(s.best_state)
        test_at_best = evaluate(model, task, "test", train, device)[0]
        lengths.extend({"checkpoint": "best", "split": "test", "length": length, "metric": task.metric,
                        "value": evaluate(model, task, "test", train, device, length)[0],
                        "stats_mode": stats_mode}
                       for length in train.eval_lengths)
        if s.best_step == s.step and "last" in models:  # the same weights: relabel, do not re-measure
            inference.extend([dict(row, checkpoint="best") for row in inference if row["checkpoint"] == "last"])
        else:
            modes("best", s.best_step)
    summary = {
        "status": status, "metric": task.metric, "mode": task.mode, "stats_mode": stats_mode,
        "best_step": s.best_step, "best_valid": s.best if s.best is not None else nan,
        "valid_at_last": s.last_valid if s.last_valid is not None else nan,
        "train_at_best": s.train_at_best if s.train_at_best is not None else nan,
        "test_at_best": test_at_best, "test_at_last": test_at_last, "steps": s.step,
        "train_seconds": s.train_seconds, "wall_seconds": time.perf_counter() - started,
        "examples_per_second": s.examples / s.train_seconds if s.train_seconds > 0 else nan,
        "num_params": sum(p.numel() for p in model.parameters()), "device": str(device),
    }
    return summary, lengths, inference, models
