"""`cudnn_lstm`: `torch.nn.LSTM` itself, the fused reference (cuDNN on GPU, oneDNN on CPU).

Wrapped only to share the suite's conventions: learned initial state, forget-gate bias,
`lengths` (through a packed sequence) and `time_offset` (accepted and unused).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from suite.core.cell import LSTMOptions
from suite.core.cells import register
from suite.core.recurrent import check_inputs


class FusedLSTM(nn.Module):
    """torch.nn.LSTM with a learned initial state and the suite's call signature."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
                 options: LSTMOptions, bidirectional: bool = False):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.options = batch_first, options
        self.states = num_layers * (2 if bidirectional else 1)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, dropout=dropout, bidirectional=bidirectional)
        with torch.no_grad():
            for name, bias in self.lstm.named_parameters():
                if name.startswith("bias_hh"):
                    bias.zero_()
                elif name.startswith("bias_ih"):
                    bias.zero_()
                    bias[hidden_size:2 * hidden_size].fill_(options.forget_bias)
        init = torch.zeros(2, self.states, hidden_size)
        if options.learn_init:
            self.init_state = nn.Parameter(init)
        else:
            self.register_buffer("init_state", init)

    def forward(self, input: torch.Tensor, hx=None, lengths: torch.Tensor | None = None, time_offset: int = 0):
        """Same contract as suite.core.recurrent.Recurrent.forward."""
        x = input.transpose(0, 1) if self.batch_first else input
        mask = check_inputs(x, hx, lengths, self.input_size, self.hidden_size, self.states)
        if hx is None:
            h0, c0 = self.init_state.unsqueeze(2).expand(2, self.states, x.shape[1], self.hidden_size)
            if self.training and self.options.h0_noise > 0:
                h0 = h0 + self.options.h0_noise * torch.randn_like(h0)
            hx = (h0.contiguous(), c0.contiguous())
        if mask is None:
            out, state = self.lstm(x, hx)
        else:
            packed = pack_padded_sequence(x, mask.sum(0).cpu(), enforce_sorted=False)
            out, state = self.lstm(packed, hx)
            out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return (out.transpose(0, 1) if self.batch_first else out), state


@register("cudnn_lstm", LSTMOptions, "torch.nn.LSTM, the fused reference")
def build_cudnn_lstm(input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
                     options: LSTMOptions, bidirectional: bool = False) -> nn.Module:
    """torch.nn.LSTM behind the suite's API."""
    return FusedLSTM(input_size, hidden_size, num_layers, batch_first, dropout, options, bidirectional)
