"""The built-in tasks: where each class lives and what `suite tasks` shows, readable without importing torch.

Importing a task imports torch (its loaders and heads are tensors and modules), which takes
seconds; `suite tasks` answers from this table instead. The table is checked against the
classes: `tasks.base.registry()` refuses a built-in whose class says otherwise. Outside tasks
(entry points, group `recnorm.tasks`) are classes only, so listing them imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

ENTRY_POINT_GROUP = "recnorm.tasks"


@dataclass(frozen=True)
class Listing:
    """A task as `suite tasks` lists it: the class (`module:Class`), its metric, mode and description."""

    target: str
    metric: str
    mode: str
    description: str


BUILTIN: dict[str, Listing] = {
    "adding": Listing("tasks.synthetic:AddingTask", "mse", "min",
                      "adding problem: sum of two marked values (synthetic, any length)"),
    "copy": Listing("tasks.synthetic:CopyTask", "accuracy", "max",
                    "copy-memory problem: recall symbols after a long delay (synthetic, any length)"),
    "smnist": Listing("tasks.mnist:SequentialMNIST", "accuracy", "max",
                      "sequential MNIST, 784 steps (pool=k: (28/k)^2), 10 classes"),
    "pmnist": Listing("tasks.mnist:PermutedMNIST", "accuracy", "max",
                      "permuted sequential MNIST: one fixed seeded pixel permutation"),
    "sfmnist": Listing("tasks.mnist:SequentialFashionMNIST", "accuracy", "max",
                       "sequential Fashion-MNIST, 784 steps (pool=k: (28/k)^2), 10 classes"),
    "ptb_char": Listing("tasks.ptb_char:PTBChar", "bpc", "min",
                        "Penn Treebank characters, 50 symbols, segments of 100, bits per character"),
    "text8": Listing("tasks.text8:Text8", "bpc", "min",
                     "text8 characters, 27 symbols, 90M/5M/5M, segments of 180, bits per character"),
    "cnn_qa": Listing("tasks.cnn_qa:CNNQA", "error", "min",
                      "DeepMind CNN questions, Attentive Reader over entities, error rate"),
}


def listings() -> dict[str, Listing]:
    """Every task as `suite tasks` shows it: the built-ins from the table, outside tasks from their classes."""
    out = dict(BUILTIN)
    if metadata.entry_points(group=ENTRY_POINT_GROUP):
        from tasks.base import registry  # outside tasks are known only by importing them

        for name, cls in registry().items():
            out.setdefault(name, Listing(f"{cls.__module__}:{cls.__qualname__}", cls.metric, cls.mode,
                                         cls.description))
    return out
