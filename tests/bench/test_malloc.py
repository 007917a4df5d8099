"""glibc malloc, default vs the suite's settings (suite/core/perf.py), on real training batches.

Each setting runs in its own fresh process (GLIBC_TUNABLES set or not; the child never calls
`apply_malloc_tuning`, so that variable alone decides); the child reports the median seconds of its rounds and
the minor page faults per batch. The parent's benchmark time is the child's wall time;
the figures to read are in extra_info: child_median_s, faults_per_batch, speedup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from suite.core import perf

CHILD = textwrap.dedent("""
    import json, resource, sys, torch
    from runners import throughput as tp
    torch.set_num_threads(int(sys.argv[4]))
    entry = tp.Entry(sys.argv[1], tuple(json.loads(sys.argv[2]).items()))
    run = tp.workload(entry, tp.SHAPES[sys.argv[3]], "fwd+bwd")
    tp.time_rounds(run, 0, warmup=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = tp.time_rounds(run, int(sys.argv[5]), warmup=0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"median": tp.median(times), "faults_per_batch": faults / len(times)}))
""")

CASES = [("lstm", {"impl": "reference"}, "smnist", 3), ("bn_lstm", {}, "smnist", 2),
         ("cudnn_lstm", {}, "smnist", 3), ("bn_lstm", {}, "ptb256", 3)]
RESULTS: dict = {}


def child(variant: str, options: dict, shape: str, rounds: int, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", perf.ENV_VAR)}
    if tuned:
        env["GLIBC_TUNABLES"] = perf.malloc_env({})["GLIBC_TUNABLES"]
    threads = os.environ.get("RECNORM_BENCH_THREADS", "1")
    done = subprocess.run([sys.executable, "-c", CHILD, variant, json.dumps(options), shape, threads, str(rounds)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.bench
@pytest.mark.parametrize("tuned", [False, True], ids=["glibc-default", "tuned"])
@pytest.mark.parametrize(("variant", "options", "shape", "rounds"), CASES,
                         ids=[f"{v}-{s}" for v, _, s, _ in CASES])
def test_malloc(benchmark, variant, options, shape, rounds, tuned):
    """One child process per setting; extra_info has its median batch time and page faults."""
    out = benchmark.pedantic(child, args=(variant, options, shape, rounds, tuned), rounds=1, iterations=1)
    RESULTS[(variant, shape, tuned)] = out
    benchmark.extra_info.update({"variant": variant, "shape": shape, "tuned": tuned,
                                 "child_median_s": out["median"], "faults_per_batch": out["faults_per_batch"],
                                 "load_average": os.getloadavg()[0]})
    if tuned and (variant, shape, False) in RESULTS:
        benchmark.extra_info["speedup"] = RESULTS[(variant, shape, False)]["median"] / out["median"]
