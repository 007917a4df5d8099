"""Synthetic long-range problems that need no files: the adding problem (Hochreiter & Schmidhuber 1997)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from suite.errors import ConfigError
from tasks.base import Batch, Score, Task, register


@dataclass(frozen=True)
class AddingOptions:
    """Sequence length, split sizes and the seed that fixes the data set."""

    length: int = 100
    train_size: int = 10_000
    eval_size: int = 1_000
    data_seed: int = 1234


@register
class AddingTask(Task):
    """Two channels: values in [0, 1] and a marker on two positions, one in each half;
    the target is the sum of the two marked values. Predicting 1 scores MSE ~0.167."""

    name = "adding"
    description = "adding problem: sum of two marked values (synthetic, any length)"
    metric = "mse"
    mode = "min"
    Options = AddingOptions
    defaults = {"model": {"hidden_size": 64}, "optim": {"name": "adam", "lr": 1e-3, "clip": 1.0},
                "train": {"batch_size": 50, "steps": 1000, "eval_every": 100}}

    def __init__(self, options: AddingOptions, data_dir=None, data_path=None):
        super().__init__(options, data_dir, data_path)
        if options.length < 2:
            raise ConfigError(f"adding: length must be >= 2, got {options.length}")
        self.input_size, self.output_size, self.seq_len = 2, 1, options.length
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._splits:
            size = self.options.train_size if split == "train" else self.options.eval_size
            offset = {"train": 0, "valid": 1, "test": 2}[split]
            self._splits[split] = make_adding(size, self.options.length, self.options.data_seed * 3 + offset)
        return self._splits[split]

    def loader(self, split: str, batch_size: int, seed: int, epoch: int = 0) -> Iterator[Batch]:
        """Shuffled batches for train, in order for valid and test."""
        inputs, targets = self._split(split)
        order = torch.arange(len(targets))
        if split == "train":
            order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield Batch(inputs[idx].transpose(0, 1), targets[idx])

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean squared error."""
        return F.mse_loss(logits.squeeze(-1), batch.targets)

    def score(self, logits: torch.Tensor, batch: Batch) -> Score:
        """Summed squared error over the batch."""
        sse = float(F.mse_loss(logits.squeeze(-1), batch.targets, reduction="sum"))
        return Score(sse, sse, float(batch.size))


def make_adding(size: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` adding-problem examples: inputs (size, length, 2) and targets (size,)."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(size, length, generator=gen)
    half = length // 2
    first = torch.randint(0, half, (size,), generator=gen)
    second = torch.randint(half, length, (size,), generator=gen)
    markers = torch.zeros(size, length)
    rows = torch.arange(size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), targets
