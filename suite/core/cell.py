"""The cell: one LSTM layer, one direction, with three norm slots, and its reference time loop.

An `LSTMLayer` holds W_x, W_h, b and three norm slots (see `suite.core.cells.norms`):

    gates = norm_h(W_h h_{t-1}) + norm_x(W_x x_t) + b          (i, f, g, o as in torch.nn.LSTM)
    c_t   = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t   = sigmoid(o) * tanh(norm_c(c_t))

which is Cooijmans et al. (2016), Eq. 6-8, when the norms are per-step batch norms, and the
plain LSTM when they are identities. `LSTMLayer.forward` is the reference time loop: the
definition every recurrence backend (`suite.core.backends`) is checked against, and the one
that computes what no faster backend supports. The input term is computed for all steps
before the loop (one matmul, one vectorized normalization). With a mask, padded steps leave
the state unchanged, output zeros and are masked out of every statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from suite.core.cells.norms import Identity


@dataclass(frozen=True)
class LSTMOptions:
    """Options every own-loop variant shares (authors' defaults)."""

    forget_bias: float = 1.0
    learn_init: bool = True
    h0_noise: float = 0.0


class LSTMLayer(nn.Module):
    """One LSTM layer, one direction, with pluggable normalizations of its three terms."""

    def __init__(self, input_size: int, hidden_size: int, options: LSTMOptions,
                 norm_x: nn.Module | None = None, norm_h: nn.Module | None = None,
                 norm_c: nn.Module | None = None):
        super().__init__()
        self.input_size, self.hidden_size, self.options = input_size, hidden_size, options
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.norm_x = norm_x or Identity()
        self.norm_h = norm_h or Identity()
        self.norm_c = norm_c or Identity()
        init = torch.zeros(2, hidden_size)
        if options.learn_init:
            self.init_state = nn.Parameter(init)
        else:
            self.register_buffer("init_state", init)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's uniform init for weights; forget-gate bias set to `forget_bias`."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            self.weight_hh.uniform_(-bound, bound)
            self.bias.zero_()
            self.bias[self.hidden_size:2 * self.hidden_size].fill_(self.options.forget_bias)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(h0, c0) for a batch: the learned initial state, with optional noise on h0 in training."""
        h0, c0 = self.init_state.unsqueeze(1).expand(2, batch, self.hidden_size).unbind(0)
        if self.training and self.options.h0_noise > 0:
            h0 = h0 + self.options.h0_noise * torch.randn_like(h0)
        return h0, c0

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None, time_offset: int = 0):
        """Run the layer over x (T, B, F); returns outputs (T, B, H) and the final (h, c)."""
        w_ih, w_hh = self.weight_ih, self.weight_hh  # read once: a weight-norm reparametrization runs here only
        xg = self.norm_x.sequence(F.linear(x, w_ih), mask, time_offset) + self.bias
        w_hh_t = w_hh.t()
        h, c = state
        masks = mask.unsqueeze(-1).unbind(0) if mask is not None else [None] * x.shape[0]
        outputs = []
        # unbind, not xg[t]: indexing makes the backward pass quadratic in T.
        for step, (xg_t, keep) in enumerate(zip(xg.unbind(0), masks)):
            t = time_offset + step
            m_t = None if keep is None else keep.squeeze(-1)
            gates = xg_t + self.norm_h.step(h.mm(w_hh_t), t, m_t)
            i, f, g, o = gates.chunk(4, 1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(self.norm_c.step(c_new, t, m_t))
            if keep is None:
                h, c = h_new, c_new
                outputs.append(h)
            else:
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
                outputs.append(h_new * keep)
        return torch.stack(outputs), (h, c)
