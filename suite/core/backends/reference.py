"""The reference backend: the cell's own time loop (`LSTMLayer.forward` in `suite.core.cell`).

It computes every layer in every statistics mode, with or without padding, on any device:
the definition the other backends are checked against, and what runs where none of them
supports a layer. It lives with the cell because it is the cell's definition; this module
only gives it the backend interface.
"""

from __future__ import annotations

import torch

from suite.core.cell import LSTMLayer

TAKES_MASK = True


def supports(layer: LSTMLayer, x: torch.Tensor) -> bool:
    """Always True: the reference loop computes every layer."""
    return True


def run_layer(layer: LSTMLayer, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, time_offset: int,
              mask: torch.Tensor | None = None):
    """One layer over x (T, B, F) on the reference loop; returns outputs (T, B, H) and (h_T, c_T)."""
    return layer(x, (h0, c0), mask, time_offset)
