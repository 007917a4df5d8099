"""`suite evaluate`: a saved model scored again under a chosen way of taking BN statistics, without training."""

from __future__ import annotations

import argparse

from suite.core.config import EVAL_STATS
from suite.core.errors import ConfigError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `suite evaluate`."""
    parser.add_argument("target", metavar="TRIAL",
                        help="a saved model: a trial id (with --results), a <results>/models/<trial> folder, "
                             "or a .pt file")
    parser.add_argument("--results", metavar="DIR", help="results or study directory holding models/<trial> "
                                                          "(default: the current directory)")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="the model at the best validation step or at the last step (default: best)")
    parser.add_argument("--stats", choices=list(EVAL_STATS), default=None,
                        help="BN statistics: each evaluation batch's own, re-estimated from training batches, or "
                             "the running averages (default: the run's train.eval_stats)")
    parser.add_argument("--split", choices=["valid", "test"], default="valid")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    parser.add_argument("--draws", type=int, default=1,
                        help="with --stats reestimate: independent re-estimations, each reported (default 1)")
    parser.add_argument("--reestimate-batches", type=int, help="training batches per re-estimation (default: the "
                                                               "run's train.reestimate_batches)")
    parser.add_argument("--data-dir", help="where the task's data is (default: the directory saved with the run)")


def main(args: argparse.Namespace) -> int:
    """Load the model, evaluate it, print one line per evaluation."""
    import dataclasses

    from runners.saved import load
    from suite.core.cells.norms import batch_norms, kept_statistics
    from suite.core.inference import eval_batch_size, evaluate_split, refresh_statistics
    from suite.core.device import pick_device

    if args.draws < 1 or (args.batch_size is not None and args.batch_size < 1) or \
            (args.reestimate_batches is not None and args.reestimate_batches < 1):
        raise ConfigError("--draws, --batch-size and --reestimate-batches must be >= 1")
    run = load(args.target, args.results, args.checkpoint, args.data_dir)
    train = run.config.train
    device = pick_device(train.device)
    run.model.to(device)
    if args.reestimate_batches:
        train = dataclasses.replace(train, reestimate_batches=args.reestimate_batches)
    stats = args.stats or train.eval_stats
    size = args.batch_size or eval_batch_size(train)
    has_bn = bool(batch_norms(run.model))
    metric = run.task.metric
    print(f"{run.trial_id} ({run.config.model.variant} on {run.config.task.name}), {run.checkpoint} model "
          f"(step {run.step}), {args.split} split, batch {size}:")
    if not has_bn:
        value = evaluate_split(run.model, run.task, args.split, size, device, "population")[0]
        print(f"  {metric} {value:.4f} (no batch norm: --stats does not apply)")
        return 0
    if stats != "reestimate":
        value = evaluate_split(run.model, run.task, args.split, size, device,
                               "batch" if stats == "batch" else "population")[0]
        print(f"  {stats}: {metric} {value:.4f}")
        return 0
    with kept_statistics(run.model):
        for draw in range(args.draws):
            refresh_statistics(run.model, run.task, train, device, draw)
            value = evaluate_split(run.model, run.task, args.split, size, device, "population")[0]
            print(f"  reestimate ({train.reestimate_batches} training batches, draw {draw}): {metric} {value:.4f}")
    return 0
