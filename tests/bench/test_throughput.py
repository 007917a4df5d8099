"""Throughput of every variant against cudnn_lstm: one training batch (fwd+bwd) and one evaluation batch.

Parametrized over the variant registry (a variant with an `impl` option is measured once per
implementation) and the shapes of `suite.throughput.SHAPES`. `extra_info` holds the ratio to
cudnn_lstm's median from the same session, and the peak memory beside the reference's.
"""

from __future__ import annotations

import os

import pytest
import torch

from suite import throughput as tp

CASES = list(tp.grid(None, list(tp.PAPER_SHAPES), list(tp.DIRECTIONS)))
IDS = [f"{shape.name}-{direction}-{entry.label}" for entry, shape, direction in CASES]
GPU_ROUNDS = 10


def _measure(benchmark, reference_times: dict, entry: tp.Entry, shape: tp.Shape, direction: str,
             device: str, rounds: int) -> None:
    run = tp.workload(entry, shape, direction, device)
    memory = tp.peak_memory(run, device)  # also the warm-up call
    benchmark.group = f"{device} {shape.describe()} {direction}"
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=0, iterations=1)
    med = benchmark.stats.stats.median
    key = (shape.name, direction, device)
    if entry.variant == tp.REFERENCE:
        reference_times[key] = (med, memory)
    elif key not in reference_times:  # run alone (-k): measure the reference here, same rounds
        ref_run = tp.workload(tp.Entry(tp.REFERENCE), shape, direction, device)
        ref_memory = tp.peak_memory(ref_run, device)
        reference_times[key] = (tp.median(tp.time_rounds(ref_run, rounds, warmup=0)), ref_memory)
    ref_med, ref_memory = reference_times[key]
    benchmark.extra_info.update({
        "variant": entry.variant, "label": entry.label, "options": dict(entry.options), "shape": shape.name,
        "steps": shape.steps, "batch": shape.batch, "input_size": shape.input_size,
        "hidden_size": shape.hidden_size, "direction": direction, "device": device,
        "ratio_to_cudnn": med / ref_med, "peak_memory_bytes": memory,
        "memory_ratio_to_cudnn": memory / ref_memory if memory and ref_memory else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # other jobs on the machine
    })


@pytest.mark.bench
@pytest.mark.parametrize(("entry", "shape", "direction"), CASES, ids=IDS)
def test_cpu(benchmark, reference_times, entry, shape, direction):
    """CPU time of one batch."""
    rounds = shape.cpu_rounds if direction == "fwd+bwd" else shape.cpu_rounds + 2
    _measure(benchmark, reference_times, entry, shape, direction, "cpu", rounds)


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("entry", "shape", "direction"), CASES, ids=IDS)
def test_gpu(benchmark, reference_times, entry, shape, direction):
    """CUDA time of one batch, synchronized inside the timed call."""
    _measure(benchmark, reference_times, entry, shape, direction, "cuda", GPU_ROUNDS)
