"""The model: input encoding -> recurrent stack of any variant -> the task's head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from suite.core import variants
from suite.core.config import ModelConfig


class SequenceModel(nn.Module):
    """One-hot or raw inputs, a recurrent stack built by name, and a task head."""

    def __init__(self, task, config: ModelConfig):
        super().__init__()
        self.vocab_size = task.vocab_size
        options = dict(config.options)
        if "t_max" in variants.option_fields(config.variant):
            options.setdefault("t_max", task.seq_len)
        self.rnn = variants.build(config.variant, task.input_size, config.hidden_size, config.num_layers,
                                  dropout=config.dropout, bidirectional=config.bidirectional, **options)
        self.head = task.head(config.hidden_size * (2 if config.bidirectional else 1))

    def forward(self, batch, state=None, time_offset: int = 0):
        """Logits for a batch, and the final recurrent state (h_n, c_n)."""
        x = batch.inputs
        if self.vocab_size:
            x = F.one_hot(x, self.vocab_size).to(torch.get_default_dtype())
        output, state = self.rnn(x, state, lengths=batch.lengths, time_offset=time_offset)
        return self.head(output, state), state
