"""The variant registry: one factory builds every recurrent variant by name.

Each variant module registers a builder with its Options dataclass (the paper's defaults):
`build("bn_lstm", 1, 100, t_max=784)` returns an `nn.Module` called like `torch.nn.LSTM`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from suite.core.config import build_dataclass
from suite.core.errors import ConfigError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Variant:
    """A registered variant: its name, Options dataclass, builder and one-line description."""

    name: str
    options: type
    builder: Builder
    description: str


_REGISTRY: dict[str, Variant] = {}
# Modules that register the built-in variants when imported.
_BUILTIN = ("lstm", "cudnn", "bn_vertical", "bn_lstm", "ln_lstm", "wn_lstm")


def register(name: str, options: type, description: str) -> Callable[[Builder], Builder]:
    """Decorator registering `builder(input_size, hidden_size, num_layers, batch_first, dropout, options,
    bidirectional=False)`."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"variant {name!r} is already registered")
        _REGISTRY[name] = Variant(name, options, builder, description)
        return builder

    return wrap


def _load_builtins() -> None:
    for module in _BUILTIN:
        importlib.import_module(f"suite.core.cells.{module}")


def registry() -> dict[str, Variant]:
    """All registered variants by name."""
    _load_builtins()
    return dict(_REGISTRY)


def get(name: str) -> Variant:
    """The variant called `name`, or a ConfigError listing the known ones."""
    variants = registry()
    if name not in variants:
        raise ConfigError(f"unknown variant {name!r}; known variants: {', '.join(sorted(variants))}")
    return variants[name]


def option_fields(name: str) -> set[str]:
    """Names of the options a variant accepts."""
    return {f.name for f in dataclasses.fields(get(name).options)}


def make_options(name: str, options: Mapping[str, Any], where: str | None = None) -> Any:
    """Validated Options dataclass of variant `name`."""
    return build_dataclass(get(name).options, options, where or f"variant {name} options")


def check_options(name: str, options: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError if `options` do not fit variant `name`."""
    make_options(name, options, where)


def build(name: str, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
          dropout: float = 0.0, bidirectional: bool = False, **options: Any) -> nn.Module:
    """Build variant `name`, called like torch.nn.LSTM (plus optional `lengths`)."""
    variant = get(name)
    return variant.builder(input_size, hidden_size, num_layers, batch_first, dropout, make_options(name, options),
                           bidirectional=bidirectional)
