"""The measurement behind the default `train.eval_stats` (issue 13; README, "Inference statistics").

Trains one BN run and, at every evaluation, scores the validation split under every way of
taking statistics: batch statistics (evaluation batch size, and 4x), population statistics
re-estimated from K independent draws of training batches (batches run one by one, the
suite's estimator, and the same examples in one joint forward pass), re-estimated from many
more batches, and the running averages. Writes one Arrow-friendly row per evaluation and
estimator to a Parquet file, and prints per estimator: how much the validation curve swings
between evaluations against the training curve, the spread over draws, and the final value.

    python -m runners.inference_choice --config run.toml --set ... --out choice.parquet
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from suite.core.cells.norms import kept_statistics
from suite.core.inference import eval_batch_size, evaluate_split, refresh_statistics
from suite.core.train import fit
from tasks.base import create
from tasks.resolve import load_run_config


def estimators(train, draws: int, many: int) -> list[tuple[str, int, int, bool]]:
    """(label, draw, batches, joint) of every population estimator measured."""
    out = []
    for draw in range(draws):
        out.append(("reestimate", draw, train.reestimate_batches, False))
        out.append(("reestimate-joint", draw, train.reestimate_batches, True))
    out.append(("reestimate-many", 0, many, False))
    out.append(("reestimate-many-joint", 0, many, True))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--many", type=int, default=100, help="batches of the large re-estimation")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on shared cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_run_config(args.config, args.overrides + ["train.inference_draws=0"])
    train = config.train
    task = create(config.task.name, config.task.options, config.data.dir, config.data.path)
    task.prepare()
    probe = task.build_model(config.model)
    size = eval_batch_size(train)
    rows = []

    def measure(step: int, split: str, label: str, draw, batches: int, batch_size: int, stats: str) -> None:
        value = evaluate_split(probe, task, split, batch_size, "cpu", stats)[0]
        rows.append({"step": step, "split": split, "estimator": label, "draw": draw, "batches": batches,
                     "batch_size": batch_size, "value": value})

    def on_report(report) -> None:
        tick = time.perf_counter()
        probe.load_state_dict(report.checkpoint()["model"])
        rows.append({"step": report.step, "split": "train", "estimator": "train-batch", "draw": None,
                     "batches": 0, "batch_size": train.batch_size, "value": report.rows[0]["value"]})
        for multiple in (1, 4):
            measure(report.step, "valid", f"batch-x{multiple}", None, 0, size * multiple, "batch")
        measure(report.step, "valid", "running", None, 0, size, "population")
        with kept_statistics(probe):
            for label, draw, batches, joint in estimators(train, args.draws, args.many):
                refresh_statistics(probe, task, train, "cpu", draw, batches, joint)
                measure(report.step, "valid", label, draw, batches, size, "population")
        print(f"step {report.step}: measured in {time.perf_counter() - tick:.1f}s", flush=True)

    result = fit(task, config, on_report=on_report, log=print)
    pq.write_table(pa.Table.from_pylist(rows), args.out)
    labels = sorted({(r["estimator"]) for r in rows})
    print(f"{'estimator':24} {'mean |Δ| between evals':>22} {'final':>8} {'draw spread (final)':>20}")
    for label in labels:
        mine = [r for r in rows if r["estimator"] == label]
        steps = sorted({r["step"] for r in mine})
        swings = []
        for draw in sorted({r["draw"] for r in mine}, key=lambda d: -1 if d is None else d):
            curve = [r["value"] for s in steps for r in mine if r["step"] == s and r["draw"] == draw]
            swings += [abs(a - b) for a, b in zip(curve[1:], curve)]
        final = [r["value"] for r in mine if r["step"] == steps[-1]]
        swing = statistics.mean(swings) if swings else float("nan")
        print(f"{label:24} {swing:22.4f} {statistics.mean(final):8.4f} {max(final) - min(final):20.4f}")
    print(f"run {result.status}; best step {result.summary['best_step']}; {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
