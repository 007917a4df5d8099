"""The Task protocol and the task registry.

A task declares its shape (input size, output size, sequence length = BN's T_max, vocabulary
for token inputs), its judgement (metric, mode, score as sums and counts so validation and
test metrics are exact over the whole split) and its paper settings, and hands out batches.
Built-in tasks are listed in `tasks.catalog.BUILTIN`; outside packages add tasks through the
entry-point group `recnorm.tasks` (`name = "package.module:TaskClass"`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from suite.core.config import build_dataclass
from suite.core.errors import ConfigError
from suite.core.model import SequenceModel
from tasks.catalog import BUILTIN, ENTRY_POINT_GROUP, Listing

DATA_DIR_ENV = "RECNORM_DATA_DIR"


@dataclass(frozen=True)
class NoOptions:
    """Options of a task that takes none."""


@dataclass
class Batch:
    """One minibatch, time-major: inputs (T, B, F) floats or (T, B) token ids; targets per task."""

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """The batch on `device`."""
        move = (lambda t: None if t is None else t.to(device, non_blocking=True))
        return Batch(move(self.inputs), move(self.targets), move(self.lengths))

    @property
    def size(self) -> int:
        """Number of sequences in the batch."""
        return self.inputs.shape[1]


@dataclass(frozen=True)
class DataStatus:
    """What `suite data status` shows for a task: whether it can train now, and one line saying why."""

    ready: bool
    detail: str


@dataclass(frozen=True)
class Score:
    """Sums over a batch: loss (nats), metric numerator, and the count both are divided by."""

    loss_sum: float
    metric_sum: float
    count: float


class LastStepHead(nn.Module):
    """Classifier on the top layer's final hidden state (the last unpadded step)."""

    def __init__(self, hidden_size: int, output_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, output_size)

    def forward(self, output: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Logits (B, output_size); a bidirectional top layer contributes both directions' final states."""
        directions = self.linear.in_features // state[0].shape[-1]
        return self.linear(torch.cat(list(state[0][-directions:]), dim=-1))


class PerStepHead(nn.Module):
    """Linear readout at every step (language modelling)."""

    def __init__(self, hidden_size: int, output_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, output_size)

    def forward(self, output: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Logits (T, B, output_size)."""
        return self.linear(output)


class Task:
    """Base class of every task plugin; subclasses set the class attributes and `loader`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"
    mode: ClassVar[str] = "max"  # "max" for accuracy, "min" for errors and bits per character
    Options: ClassVar[type] = NoOptions
    # The paper's settings, as nested config sections (see tasks.resolve).
    defaults: ClassVar[Mapping[str, Any]] = {}
    # The paper's settings for one variant only, over `defaults`: the authors' scripts differ per variant.
    variant_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    carry_state: ClassVar[bool] = False  # evaluation carries (h, c) and the time index across batches
    splits: ClassVar[tuple[str, ...]] = ("train", "valid", "test")

    input_size: int
    output_size: int
    seq_len: int
    vocab_size: int | None = None  # token inputs are one-hot encoded to `input_size`

    def __init__(self, options: Any, data_dir: Path | None = None, data_path: Path | None = None):
        self.options = options
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_path = Path(data_path) if data_path is not None else None

    @classmethod
    def check_options(cls, options: Mapping[str, Any], where: str) -> Any:
        """Validated Options dataclass for this task."""
        return build_dataclass(cls.Options, options, where)

    def prepare(self) -> None:
        """Make the data available (locate, verify, cache); idempotent. Default: nothing to do."""

    def fetch(self, fetch: Any = None) -> None:
        """Download missing source files (`suite data prepare`; `fetch(url, dest)` is injectable).

        Never called by training: `prepare` only locates files, so a run never touches the network.
        """

    def data_status(self) -> DataStatus:
        """Whether the data is present and cached, for `suite data status`."""
        return DataStatus(True, "no files needed")

    def loader(self, split: str, batch_size: int, seed: int, epoch: int = 0) -> Iterator[Batch]:
        """Batches of one pass over `split`; deterministic given (seed, epoch)."""
        raise NotImplementedError

    def build_model(self, config: Any) -> nn.Module:
        """The model trained on this task: by default one-hot/raw inputs -> recurrent stack -> `head`.

        A task with its own architecture (e.g. an attentive reader) returns a module with the
        same call contract: `model(batch, state=None, time_offset=0) -> (logits, state)`.
        """
        return SequenceModel(self, config)

    def head(self, hidden_size: int) -> nn.Module:
        """The output module on top of the recurrent stack: (output, state) -> logits."""
        return LastStepHead(hidden_size, self.output_size)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean training loss of a batch (cross-entropy by default)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1))

    def score(self, logits: torch.Tensor, batch: Batch) -> Score:
        """Sums for an exact metric over a split (accuracy by default)."""
        flat = logits.reshape(-1, logits.shape[-1])
        targets = batch.targets.reshape(-1)
        loss = F.cross_entropy(flat, targets, reduction="sum")
        correct = (flat.argmax(-1) == targets).sum()
        return Score(float(loss), float(correct), float(targets.numel()))

    def describe(self) -> dict[str, Any]:
        """Facts about this task instance worth recording with results (e.g. a permutation seed)."""
        return {}


def batch_indices(size: int, batch_size: int, split: str, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Index chunks of one pass over a split of `size` examples: shuffled by (seed, epoch) for
    training, in order for evaluation (so validation and test batches never depend on a seed)."""
    order = torch.arange(size)
    if split == "train":
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    yield from order.split(batch_size)


_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator adding a task to the registry; a duplicate name is an error."""
    if not cls.name:
        raise ValueError(f"task class {cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered by {_REGISTRY[cls.name].__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def _import(target: str, origin: str) -> type[Task]:
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as exc:  # a broken plugin must be loud, never silently skipped
        raise ConfigError(f"task plugin {origin} ({target}) failed to import: {type(exc).__name__}: {exc}") from exc


def registry() -> dict[str, type[Task]]:
    """All tasks: built-ins plus those from the `recnorm.tasks` entry points."""
    for name, listing in BUILTIN.items():
        if name not in _REGISTRY:
            cls = _import(listing.target, f"built-in {name!r}")
            said = Listing(listing.target, cls.metric, cls.mode, cls.description)
            if cls.name != name or said != listing:
                raise ConfigError(f"built-in task {name!r}: tasks/catalog.py lists {listing}, the class says "
                                  f"name={cls.name!r}, {said}; make them agree")
            register(cls)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in _REGISTRY:
            cls = _import(entry.value, f"entry point {entry.name!r}")
            if cls.name != entry.name:
                raise ConfigError(f"entry point {entry.name!r} points to task class named {cls.name!r}")
            register(cls)
    return dict(_REGISTRY)


def get_task_class(name: str) -> type[Task]:
    """The task class called `name`, or a ConfigError listing the known tasks."""
    tasks = registry()
    if name not in tasks:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(tasks))}")
    return tasks[name]


def default_data_dir() -> Path:
    """--data-dir, else $RECNORM_DATA_DIR, else the user cache directory."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "recnorm" / "data"


def create(name: str, options: Mapping[str, Any] | None = None, data_dir: str | Path | None = None,
           data_path: str | Path | None = None) -> Task:
    """Instantiate task `name` with validated options."""
    cls = get_task_class(name)
    opts = cls.check_options(options or {}, f"task {name} options")
    return cls(opts, Path(data_dir).expanduser() if data_dir else default_data_dir(),
               Path(data_path).expanduser() if data_path else None)
