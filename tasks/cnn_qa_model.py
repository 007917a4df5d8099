"""The Attentive Reader (Hermann et al. 2015, Section 4) with encoders of any registered variant,
and the BN-everywhere / BN-e* / BN-e** options of Cooijmans et al. (2016), Section 5.4.

    y_d(t) = document encoder output at position t          (both directions when bidirectional)
    u      = question encoder's final states                (forward end and backward start)
    m(t)   = tanh(N_ym(W_ym y_d(t)) + N_um(W_um u) + b_m)
    s(t)   = softmax over the document's unpadded positions of w_ms . m(t)
    r      = sum_t s(t) y_d(t)
    g      = tanh(N_rg(W_rg r) + N_ug(W_ug u) + b_g)
    p(a)   = softmax of W_a g over the entities present in the document

The N's are identities, or with `attention_bn` (BN-everywhere) batch norms: the paper
normalizes "each term going into the tanh nonlinearities". N_ym sees every unpadded position
of every document: its statistics are per position (like the recurrent terms) or, with
`sequence_statistics` (BN-e*), shared over positions and batch, as the input terms of the
recurrent variant are then too. Padded positions enter no statistic and get attention 0.
`model.dropout` drops embedding units too (the recurrent stack applies it between layers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from suite.core import variants
from suite.core.cells.norms import Identity, StepBatchNorm

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # the paper's BN constants (Section 3)


def encoder_options(variant: str, options: dict[str, Any], t_max: int, sequence_statistics: bool) -> dict[str, Any]:
    """Variant options for one encoder: its T_max, and sequence-wise input statistics where the variant has them."""
    fields = variants.option_fields(variant)
    out = dict(options)
    if "t_max" in fields:
        out.setdefault("t_max", t_max)
    if sequence_statistics and "statistics" in fields:
        out.setdefault("statistics", "sequence")
    return out


class AttentiveReader(nn.Module):
    """Embeddings, a document and a question encoder, attention over the document, an entity classifier."""

    def __init__(self, task, config):
        super().__init__()
        opts = task.options
        hidden, layers = config.hidden_size, config.num_layers
        directions = 2 if config.bidirectional else 1
        size = hidden * directions
        self.directions, self.dropout = directions, config.dropout
        self.embed = nn.Embedding(task.vocab_size, opts.embed_size, padding_idx=0)
        self.doc_rnn = variants.build(
            config.variant, opts.embed_size, hidden, layers, dropout=config.dropout,
            bidirectional=config.bidirectional,
            **encoder_options(config.variant, config.options, task.seq_len, opts.sequence_statistics))
        self.query_rnn = variants.build(
            config.variant, opts.embed_size, hidden, layers, dropout=config.dropout,
            bidirectional=config.bidirectional,
            **encoder_options(config.variant, config.options, task.query_len, opts.sequence_statistics))
        self.w_ym = nn.Linear(size, size, bias=False)
        self.w_um = nn.Linear(size, size, bias=False)
        self.b_m = nn.Parameter(torch.zeros(size))
        self.w_ms = nn.Linear(size, 1, bias=False)
        self.w_rg = nn.Linear(size, size, bias=False)
        self.w_ug = nn.Linear(size, size, bias=False)
        self.b_g = nn.Parameter(torch.zeros(size))
        self.out = nn.Linear(size, task.output_size)
        if opts.attention_bn:
            def bn(t_max: int, per_step: bool) -> StepBatchNorm:
                return StepBatchNorm(size, t_max, opts.attention_gamma, BN_EPS, BN_MOMENTUM, bias=False,
                                     per_step=per_step)

            self.n_ym = bn(task.seq_len, per_step=not opts.sequence_statistics)
            self.n_um, self.n_rg, self.n_ug = bn(1, False), bn(1, False), bn(1, False)
        else:
            self.n_ym, self.n_um, self.n_rg, self.n_ug = Identity(), Identity(), Identity(), Identity()

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word embeddings, with `model.dropout` applied to them in training (as between layers)."""
        return F.dropout(self.embed(tokens), self.dropout, self.training)

    def read(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over entities (B, E), non-candidates at the lowest finite value, and the attention (T, B)."""
        doc, lengths = batch.inputs, batch.lengths
        y, _ = self.doc_rnn(self._embed(doc), lengths=lengths)
        _, (h_q, _) = self.query_rnn(self._embed(batch.query), lengths=batch.query_lengths)
        u = torch.cat(list(h_q[-self.directions:]), dim=-1)  # top layer: forward end, backward start
        mask = torch.arange(doc.shape[0], device=doc.device).unsqueeze(1) < lengths.unsqueeze(0)
        m = torch.tanh(self.n_ym.sequence(self.w_ym(y), mask) + self.n_um.step(self.w_um(u), 0, None) + self.b_m)
        scores = self.w_ms(m).squeeze(-1).masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=0)
        r = (attention.unsqueeze(-1) * y).sum(0)
        g = torch.tanh(self.n_rg.step(self.w_rg(r), 0, None) + self.n_ug.step(self.w_ug(u), 0, None) + self.b_g)
        logits = self.out(g).masked_fill(~batch.candidates, torch.finfo(g.dtype).min)
        return logits, attention

    def forward(self, batch, state=None, time_offset: int = 0):
        """The task contract: (logits, state); the reader keeps no state across batches."""
        return self.read(batch)[0], None
