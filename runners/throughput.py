"""Throughput workloads: one training batch (forward+backward) or one evaluation batch of a variant.

Used by the pytest-benchmark suite (`tests/bench/`) and by `suite bench`, so both time exactly
the same thing. Shapes are the paper's (Section 5): sequential MNIST (T=784, B=100, one pixel
per step, H=100) and Penn Treebank characters (T=100, B=64, 50 one-hot symbols, H=1000), plus
a CPU-sized ptb variant with H=256. Every workload is measured against `cudnn_lstm`
(`torch.nn.LSTM`) at the same shape, in the same process.
"""

from __future__ import annotations

import ctypes
import dataclasses
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from runners.shapes import DIRECTIONS, SHAPES, Shape
from suite.core import perf, variants
from suite.core.backends import choose
from suite.core.recurrent import LoopRecurrent
from suite.core.errors import ConfigError

REFERENCE = "cudnn_lstm"
# Values of the `impl` option of variants that have a fast path beside the reference loop.
IMPLEMENTATIONS = ("reference", "fast")


@dataclass(frozen=True)
class Entry:
    """One benchmarked implementation: a variant name and the options that select its code path."""

    variant: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """The variant name, with the implementation when one is chosen: 'bn_lstm[fast]'."""
        impl = dict(self.options).get("impl")
        return f"{self.variant}[{impl}]" if impl else self.variant


def entries(names: list[str] | None = None) -> list[Entry]:
    """Benchmark entries, `cudnn_lstm` first; variants with an `impl` option appear once per implementation."""
    known = variants.names()
    chosen = names or known
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; known variants: {', '.join(known)}")
    out = [Entry(REFERENCE)]
    for name in chosen:
        if name == REFERENCE:
            continue
        impl = next((f for f in dataclasses.fields(variants.get(name).options) if f.name == "impl"), None)
        if impl is None:
            out.append(Entry(name))
        else:
            out.extend(Entry(name, (("impl", choice),)) for choice in IMPLEMENTATIONS)
    return out


def build(entry: Entry, shape: Shape, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The entry's module at a shape, on a device, seeded."""
    torch.manual_seed(seed)
    options = dict(entry.options)
    if "t_max" in variants.option_fields(entry.variant):
        options.setdefault("t_max", shape.steps)
    return variants.build(entry.variant, shape.input_size, shape.hidden_size, **options).to(device)


def backend(entry: Entry, shape: Shape, device: torch.device | str = "cpu") -> str:
    """What runs the entry's first layer at this shape in training mode: the backend module chosen
    for per-layer stacks ('triton.loop', 'native.loop', 'pytorch', 'reference'), else the class."""
    device = torch.device(device)
    model = build(entry, shape, device)
    if not isinstance(model, LoopRecurrent):
        return type(model).__name__
    runner = choose(model.layers[0], make_input(shape, device))
    return runner.__module__.removeprefix("suite.core.backends.")


def make_input(shape: Shape, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A time-major (T, B, F) batch: Gaussian pixels, or one-hot symbols like `SequenceModel` feeds."""
    gen = torch.Generator().manual_seed(seed)
    if shape.one_hot:
        symbols = torch.randint(shape.input_size, (shape.steps, shape.batch), generator=gen)
        x = torch.nn.functional.one_hot(symbols, shape.input_size).float()
    else:
        x = torch.randn(shape.steps, shape.batch, shape.input_size, generator=gen)
    return x.to(device)


def workload(entry: Entry, shape: Shape, direction: str, device: torch.device | str = "cpu") -> Callable[[], None]:
    """A callable running one batch; on CUDA it synchronizes before returning, so timing it is honest."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    device = torch.device(device)
    model = build(entry, shape, device)
    x = make_input(shape, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if direction == "fwd":
        model.eval()

        def run() -> None:
            with torch.no_grad():
                model(x)
            sync()
    else:
        model.train()
        grad = torch.randn(shape.steps, shape.batch, shape.hidden_size, generator=torch.Generator().manual_seed(1))
        grad = grad.to(device)

        def run() -> None:
            for p in model.parameters():
                p.grad = None
            out, _ = model(x)
            out.backward(grad)
            sync()
    return run


# --- peak memory -----------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS so the RSS baseline is not inflated by earlier runs."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(run: Callable[[], None], device: torch.device | str = "cpu") -> int | None:
    """Peak extra memory (bytes) of one call of `run`.

    CUDA: `max_memory_allocated` above what was allocated before. CPU: the rise of the
    process's peak resident set (VmHWM, reset through /proc/self/clear_refs) over the
    resident set before, after `malloc_trim` -- tracemalloc does not see torch's allocations.
    None where /proc does not allow this (not Linux).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        return int(torch.cuda.max_memory_allocated(device) - base)
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return None
    base = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    if base is None or peak is None:
        return None
    return (peak - base) * 1024


# --- plain timing, for `suite bench` and the malloc benchmark ---------------------------------

def time_rounds(run: Callable[[], None], rounds: int, warmup: int = 1) -> list[float]:
    """Seconds of `rounds` calls of `run` after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    out = []
    for _ in range(rounds):
        perf.share_cores()
        tick = time.perf_counter()
        run()
        out.append(time.perf_counter() - tick)
    return out


def time_interleaved(runs: list[Callable[[], None]], rounds: int) -> list[list[float]]:
    """Seconds of `rounds` calls of each run, taken in turn (run 0, 1, ..., then 0 again), so that
    a machine getting slower or faster meanwhile moves every run's figures alike."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, out in zip(runs, times):
            perf.share_cores()
            tick = time.perf_counter()
            run()
            out.append(time.perf_counter() - tick)
    return times


def median(values: list[float]) -> float:
    """The median of a list of timings."""
    return statistics.median(values)


def grid(names: list[str] | None, shapes: list[str], directions: list[str]) -> Iterator[tuple[Entry, Shape, str]]:
    """Every (entry, shape, direction), reference first within each shape and direction."""
    for shape in shapes:
        if shape not in SHAPES:
            raise ConfigError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
        for direction in directions:
            for entry in entries(names):
                yield entry, SHAPES[shape], direction
