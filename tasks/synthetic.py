"""Synthetic long-range problems that need no files, any length, seeded.

`adding`: the adding problem (Hochreiter & Schmidhuber 1997). `copy`: the copy-memory problem
(Hochreiter & Schmidhuber 1997; in the form of Arjovsky et al. 2016): remember a few symbols
over a long blank stretch and reproduce them after a marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from suite.core.errors import ConfigError
from tasks.base import Batch, PerStepHead, Score, Task, batch_indices, register


@dataclass(frozen=True)
class AddingOptions:
    """Sequence length, split sizes and the seed that fixes the data set."""

    length: int = 100
    train_size: int = 10_000
    eval_size: int = 1_000
    data_seed: int = 1234


class GeneratedTask(Task):
    """A task whose splits are generated in memory from `options.data_seed` (one seed per split)."""

    _splits: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def generate(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of `size` examples, batch dimension first."""
        raise NotImplementedError

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._splits:
            size = self.options.train_size if split == "train" else self.options.eval_size
            offset = {"train": 0, "valid": 1, "test": 2}[split]
            self._splits[split] = self.generate(size, self.options.data_seed * 3 + offset)
        return self._splits[split]

    def loader(self, split: str, batch_size: int, seed: int, epoch: int = 0) -> Iterator[Batch]:
        """Shuffled batches for train, in order for valid and test; time-major inputs and per-step targets."""
        inputs, targets = self._split(split)
        for idx in batch_indices(len(targets), batch_size, split, seed, epoch):
            chunk = targets[idx]
            yield Batch(inputs[idx].transpose(0, 1), chunk.transpose(0, 1) if chunk.dim() > 1 else chunk)


@register
class AddingTask(GeneratedTask):
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
        self._splits = {}

    def generate(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` examples drawn with `seed`."""
        return make_adding(size, self.options.length, seed)

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


@dataclass(frozen=True)
class CopyOptions:
    """length: blank steps between the symbols and the marker; symbols to copy; alphabet size."""

    length: int = 100
    symbols: int = 10
    alphabet: int = 8
    train_size: int = 10_000
    eval_size: int = 1_000
    data_seed: int = 1234


@register
class CopyTask(GeneratedTask):
    """Input: `symbols` random symbols, `length - 1` blanks, a marker, `symbols` blanks; the target is
    blank everywhere except the last `symbols` steps, which must reproduce the symbols. Scored on
    those steps: accuracy, and a loss per recalled symbol (guessing costs log(alphabet))."""

    name = "copy"
    description = "copy-memory problem: recall symbols after a long delay (synthetic, any length)"
    metric = "accuracy"
    mode = "max"
    Options = CopyOptions
    # Common settings for this problem (Arjovsky et al. 2016); the paper does not run it.
    defaults = {"model": {"hidden_size": 128}, "optim": {"name": "rmsprop", "lr": 1e-3, "clip": 1.0},
                "train": {"batch_size": 50, "steps": 2000, "eval_every": 100}}

    def __init__(self, options: CopyOptions, data_dir=None, data_path=None):
        super().__init__(options, data_dir, data_path)
        if options.length < 1 or options.symbols < 1 or options.alphabet < 1:
            raise ConfigError(f"copy: length, symbols and alphabet must be >= 1, got {options}")
        # Tokens: 0 blank, 1..alphabet symbols, alphabet + 1 the marker (one-hot encoded by the model).
        self.vocab_size = self.input_size = options.alphabet + 2
        self.output_size = options.alphabet + 1
        self.seq_len = options.length + 2 * options.symbols
        self._splits = {}

    def generate(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` examples drawn with `seed`: tokens (size, T), targets (size, T)."""
        o = self.options
        return make_copy(size, o.length, o.symbols, o.alphabet, seed)

    def head(self, hidden_size: int) -> PerStepHead:
        """A prediction at every step."""
        return PerStepHead(hidden_size, self.output_size)

    def score(self, logits: torch.Tensor, batch: Batch) -> Score:
        """Accuracy and summed cross-entropy over the recall steps only."""
        recall = slice(logits.shape[0] - self.options.symbols, None)
        flat = logits[recall].reshape(-1, logits.shape[-1])
        targets = batch.targets[recall].reshape(-1)
        loss = F.cross_entropy(flat, targets, reduction="sum")
        return Score(float(loss), float((flat.argmax(-1) == targets).sum()), float(targets.numel()))


def make_copy(size: int, length: int, symbols: int, alphabet: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` copy-problem examples: input tokens and targets, each (size, length + 2 * symbols)."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(1, alphabet + 1, (size, symbols), generator=gen)
    steps = length + 2 * symbols
    inputs = torch.zeros(size, steps, dtype=torch.long)
    inputs[:, :symbols] = data
    inputs[:, symbols + length - 1] = alphabet + 1  # the marker: "recall now"
    targets = torch.zeros(size, steps, dtype=torch.long)
    targets[:, steps - symbols:] = data
    return inputs, targets
