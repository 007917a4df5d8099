"""Recurrence backends: ways to run one `LSTMLayer` (suite.core.cell) over a sequence, and the one choice.

Each backend is a module with
    supports(layer, x) -> bool    whether it computes this layer on input x (T, B, F) exactly,
                                  in its norms' current statistics modes, on this machine;
    run_layer(layer, x, h0, c0, time_offset[, mask]) -> (out (T, B, H), (h_T, c_T));
    TAKES_MASK: bool              whether run_layer takes a (T, B) padding mask (`lengths`).
Norms describe themselves to backends through `kind()` and `mode()` (suite.core.cells.norms).

`choose` is the only place that decides which backend runs a layer: the first entry of
BACKENDS, in order of preference, whose `supports` says yes (and that takes a mask when the
batch is padded), else the reference loop (`reference`), which computes everything. To add a
backend, write such a module and add one entry. The fused stack of `wn_lstm`
(`backends/fused.py`) runs whole stacks on torch's fused kernel and is chosen by the variant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from suite.core.backends import reference

BACKENDS: tuple[str, ...] = (
    "suite.core.backends.triton.loop",  # Triton step kernels, CUDA (compiled on first use)
    "suite.core.backends.native.loop",  # C++ time-loop kernels, CPU (built on first use)
    "suite.core.backends.pytorch",  # NormLoop: pure PyTorch, any device
)

Runner = Callable[..., tuple]


def modules() -> list[ModuleType]:
    """The backend modules of BACKENDS, in order (imported on first use: some need a compiler or a GPU)."""
    return [importlib.import_module(name) for name in BACKENDS]


def status() -> dict[str, str]:
    """For the record of a run (`suite.core.provenance`): each kernel backend's state, "available"
    (this process's layers run on it where it computes them) or why not, under its STATUS_FIELD."""
    return {backend.STATUS_FIELD: backend.status() for backend in modules() if hasattr(backend, "status")}


def choose(layer, x, masked: bool = False) -> Runner:
    """`run_layer` of the first backend that computes `layer` on input x (T, B, F) exactly, taking a
    padding mask when `masked`; the reference loop's where none does."""
    for backend in modules():
        if (not masked or getattr(backend, "TAKES_MASK", False)) and backend.supports(layer, x):
            return backend.run_layer
    return reference.run_layer
