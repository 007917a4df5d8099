"""Throughput of every variant against cudnn_lstm: one training batch (fwd+bwd) and one evaluation batch.

Parametrized over the variant registry (a variant with an `impl` option is measured once per
implementation) and the shapes of `runners.throughput.SHAPES`. `extra_info` holds the ratio of
the median to the median of cudnn_lstm batches run right before each round (same session,
same minutes), and the peak memory beside the reference's.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from runners import throughput as tp
from runners.shapes import PAPER_SHAPES

CASES = list(tp.grid(None, list(PAPER_SHAPES), list(tp.DIRECTIONS)))
IDS = [f"{shape.name}-{direction}-{entry.label}" for entry, shape, direction in CASES]
GPU_ROUNDS = 10


def _measure(benchmark, reference_runs: dict, entry: tp.Entry, shape: tp.Shape, direction: str,
             device: str, rounds: int) -> None:
    run = tp.workload(entry, shape, direction, device)
    memory = tp.peak_memory(run, device)  # also the warm-up call
    benchmark.group = f"{device} {shape.describe()} {direction}"
    key = (shape.name, direction, device)
    if key not in reference_runs:
        ref_run = tp.workload(tp.Entry(tp.REFERENCE), shape, direction, device)
        reference_runs[key] = (ref_run, tp.peak_memory(ref_run, device))
    ref_run, ref_memory = reference_runs[key]
    paired: list[float] = []

    def reference_round() -> None:
        """A cudnn_lstm batch right before each round (untimed by pytest-benchmark): the ratio
        compares rounds taken side by side, so a machine drifting faster or slower moves both."""
        tick = time.perf_counter()
        ref_run()
        paired.append(time.perf_counter() - tick)

    is_reference = entry.variant == tp.REFERENCE
    benchmark.pedantic(run, setup=None if is_reference else reference_round, rounds=rounds, warmup_rounds=0,
                       iterations=1)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "variant": entry.variant, "label": entry.label, "options": dict(entry.options), "shape": shape.name,
        "steps": shape.steps, "batch": shape.batch, "input_size": shape.input_size,
        "hidden_size": shape.hidden_size, "direction": direction, "device": device,
        "backend": tp.backend(entry, shape, device),
        "ratio_to_cudnn": 1.0 if is_reference else med / tp.median(paired),
        "cudnn_seconds_paired": paired, "peak_memory_bytes": memory,
        "memory_ratio_to_cudnn": memory / ref_memory if memory and ref_memory else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # other jobs on the machine
    })


@pytest.mark.bench
@pytest.mark.parametrize(("entry", "shape", "direction"), CASES, ids=IDS)
def test_cpu(benchmark, reference_runs, entry, shape, direction):
    """CPU time of one batch."""
    rounds = shape.cpu_rounds if direction == "fwd+bwd" else shape.cpu_rounds + 2
    _measure(benchmark, reference_runs, entry, shape, direction, "cpu", rounds)


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("entry", "shape", "direction"), CASES, ids=IDS)
def test_gpu(benchmark, reference_runs, entry, shape, direction):
    """CUDA time of one batch, synchronized inside the timed call."""
    _measure(benchmark, reference_runs, entry, shape, direction, "cuda", GPU_ROUNDS)
