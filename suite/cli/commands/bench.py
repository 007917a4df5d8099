"""`suite bench`: time every variant against cudnn_lstm and write the Arrow `throughput` table.

The workloads are those of the pytest-benchmark suite (`runners.throughput`): one training batch
(forward+backward) and one evaluation batch (forward only) at the paper's shapes. The rounds of
all variants at one shape and direction are taken in turn, so drift in the machine's speed
does not bias the ratios. One row per (variant implementation, shape, direction) goes to
`DIR/<name>/throughput/<id>.parquet`, with the ratio to cudnn_lstm measured in the same
process and the peak memory.
"""

from __future__ import annotations

import argparse
import json
import time

from suite.core.errors import ConfigError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `suite bench`."""
    from runners.shapes import DIRECTIONS, SHAPES

    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), dest="shapes",
                        help="benchmark shape (repeatable; default smnist)")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="variants to time (default: all)")
    parser.add_argument("--direction", action="append", choices=DIRECTIONS, dest="directions",
                        help="fwd+bwd (a training batch) or fwd (evaluation); repeatable; default both")
    parser.add_argument("--rounds", type=int, help="timed rounds per variant (default: the shape's CPU rounds, 10 on GPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, at most the CPUs this process may use)")
    parser.add_argument("--results", required=True, metavar="DIR", help="where the throughput table goes")
    parser.add_argument("--name", default="bench", help="study name: rows go to DIR/NAME/throughput/ (default bench)")
    parser.add_argument("--quiet", action="store_true", help="no table on stdout")


def main(args: argparse.Namespace) -> int:
    """Time the grid, print a table, write one Parquet file for the whole run."""
    import torch

    from runners import throughput as tp
    from suite.core import perf
    from suite.core.device import pick_device
    from suite.core.provenance import environment
    from suite.core.results import THROUGHPUT, check_writable, to_table, write_table

    device = pick_device(args.device, "--device")
    if args.rounds is not None and args.rounds < 1:
        raise ConfigError("--rounds must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be >= 1")
    cases = list(tp.grid(args.variants, args.shapes or ["smnist"], args.directions or list(tp.DIRECTIONS)))
    check_writable(args.results)
    perf.tune_process(args.threads)
    env = json.dumps(environment() | {"malloc_tuning": perf.malloc_tuning_state()}, sort_keys=True)
    trial_id = f"bench-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}"
    groups: dict[tuple[str, str], list[tuple[tp.Entry, tp.Shape, str]]] = {}
    for case in cases:
        groups.setdefault((case[1].name, case[2]), []).append(case)
    rows = []
    for (_, direction), group in groups.items():
        shape = group[0][1]
        rounds = args.rounds or (10 if device.type == "cuda" else shape.cpu_rounds)
        runs = [tp.workload(entry, shape, direction, device) for entry, _, _ in group]
        memories = [tp.peak_memory(run, device) for run in runs]  # doubles as the warm-up calls
        timings = tp.time_interleaved(runs, rounds)
        reference = tp.median(timings[0])  # grid() puts cudnn_lstm first in every group
        for (entry, _, _), memory, times in zip(group, memories, timings):
            med = tp.median(times)
            rows.append({"study": args.name, "trial_id": trial_id, "task": shape.name, "variant": entry.label,
                         "seed": 0, "shape": shape.name, "steps": shape.steps, "batch": shape.batch,
                         "input_size": shape.input_size, "hidden_size": shape.hidden_size, "direction": direction,
                         "device": str(device), "seconds_median": med, "seconds_min": min(times), "rounds": rounds,
                         "ratio_to_cudnn": med / reference, "peak_memory_bytes": memory, "env_json": env})
            if not args.quiet:
                mem = f"{memory / 2**20:8.1f} MiB" if memory is not None else "       ? MiB"
                print(f"{shape.name:7s} {direction:8s} {entry.label:24s} {med * 1e3:9.1f} ms  "
                      f"x{med / reference:5.2f}  {mem}", flush=True)
    path = write_table(to_table(rows, THROUGHPUT), f"{args.results.rstrip('/')}/{args.name}", "throughput", trial_id)
    if not args.quiet:
        print(f"wrote {len(rows)} rows to {path}")
    return 0
