"""Run configuration: frozen dataclasses, TOML loading, `--set key=value` overrides, validation.

Resolution order, later wins: dataclass defaults < the task's paper settings < the TOML
file < command-line overrides. Layering in the task's settings and checking the task's and
the variant's options needs the plugins, so it lives a layer up, in `tasks.resolve`; this
module has the pieces. Unknown keys and wrong types are `ConfigError`s that name the key and
where it came from.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.core import device as devices
from suite.core.errors import ConfigError


@dataclass(frozen=True)
class TaskConfig:
    """Which task, and the task's own options (validated by the task's Options dataclass)."""

    name: str = "adding"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """The recurrent stack; `options` go to the variant's Options dataclass."""

    variant: str = "lstm"
    hidden_size: int = 100
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and global gradient-norm clipping (clip <= 0 disables it)."""

    name: str = "adam"
    lr: float = 1e-3
    clip: float = 1.0
    weight_decay: float = 0.0


EVAL_STATS = ("reestimate", "batch", "running")


@dataclass(frozen=True)
class TrainConfig:
    """Length of training, evaluation schedule and how BN statistics are taken at evaluation.

    eval_stats: "reestimate" (exact population statistics over `reestimate_batches` training
    batches just before each evaluation), "batch" (each evaluation batch's own statistics),
    or "running" (the running averages kept during training).
    inference_draws: after training, BN variants are evaluated at the best and the last step
    under every mode (`suite.core.inference.measure_modes`) with this many independent
    re-estimations; 0 skips that measurement.
    """

    steps: int = 1000
    batch_size: int = 64
    eval_every: int = 100
    eval_batch_size: int | None = None
    eval_stats: str = "reestimate"
    reestimate_batches: int = 20
    inference_draws: int = 3  # re-estimation draws when every statistics mode is measured at the end; 0: none
    seed: int = 0
    device: str = "auto"
    log_every: int = 0
    eval_lengths: tuple[int, ...] = ()  # test-set evaluations at these lengths after training (LM tasks)


@dataclass(frozen=True)
class DataConfig:
    """Where task data lives: a data directory, or an explicit path to the user's own copy."""

    dir: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/TOML-serialisable) of the resolved config."""
        return to_plain(self)

    def replace(self, **sections: Any) -> RunConfig:
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)


SECTIONS: dict[str, type] = {
    "task": TaskConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "data": DataConfig,
}
# Sections whose unknown keys are collected into `options` and validated by a plugin.
OPEN_SECTIONS = ("task", "model")


def to_plain(obj: Any) -> Any:
    """Dataclasses and mappings to plain dicts, recursively."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    return obj


def check_value(value: Any, hint: Any, where: str) -> Any:
    """Return `value` if it fits the type hint (ints are accepted as floats), else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return check_value(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[-1]
    if hint is type(None):
        if value is None:
            return None
    elif hint is Any:
        return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (str, bool):
        if isinstance(value, hint):
            return value
    elif origin in (Mapping, dict) or hint in (Mapping, dict):
        if isinstance(value, Mapping):
            return dict(value)
    elif origin in (tuple, list):
        if isinstance(value, list | tuple):
            item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
            return tuple(check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {name}, got {type(value).__name__} {value!r}")


def build_dataclass(cls: type, values: Mapping[str, Any], where: str, extra: str | None = None) -> Any:
    """Instantiate dataclass `cls` from a mapping with key and type checks.

    With `extra` set, unknown keys are gathered into that field (a plugin validates them);
    otherwise they are errors listing the known keys.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    leftovers: dict[str, Any] = dict(values.get(extra, {})) if extra else {}
    for key, value in values.items():
        if key == extra:
            continue
        if key not in known:
            if extra:
                leftovers[key] = value
                continue
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        kwargs[key] = check_value(value, hints[key], f"{where}.{key}")
    if extra:
        kwargs[extra] = leftovers
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], value); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-3")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested mappings; values of `update` win."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to a nested mapping."""
    out = dict(raw)
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] not in SECTIONS:
            raise ConfigError(f"--set {text!r}: unknown section {keys[0]!r}; known: {', '.join(SECTIONS)}")
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        out = merge(out, nested)
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, with a clear error for a missing or malformed file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def check_sections(raw: Mapping[str, Any], source: str) -> None:
    """Every top-level key of `raw` must be a known section holding a table."""
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(raw[section], Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table")


def build_run_config(values: Mapping[str, Any], source: str) -> RunConfig:
    """A RunConfig from nested values, key and type checked; the open sections' unknown keys go to `options`.

    The plugin options are checked by the caller that knows the plugins (`tasks.resolve`).
    """
    check_sections(values, source)
    return RunConfig(**{
        name: build_dataclass(cls, values.get(name, {}), f"{source} [{name}]",
                              extra="options" if name in OPEN_SECTIONS else None)
        for name, cls in SECTIONS.items()
    })


def check_ranges(config: RunConfig, source: str) -> None:
    """Value ranges that the types cannot express (sizes >= 1, known names, ...)."""
    checks = [
        (config.model.hidden_size >= 1, "model.hidden_size must be >= 1"),
        (config.model.num_layers >= 1, "model.num_layers must be >= 1"),
        (0.0 <= config.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (config.optim.name in ("adam", "rmsprop", "sgd"), "optim.name must be one of adam, rmsprop, sgd"),
        (config.optim.lr > 0, "optim.lr must be > 0"),
        (config.train.steps >= 1, "train.steps must be >= 1"),
        (config.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (config.train.eval_every >= 1, "train.eval_every must be >= 1"),
        (config.train.eval_stats in EVAL_STATS, f"train.eval_stats must be one of {', '.join(EVAL_STATS)}"),
        (config.train.reestimate_batches >= 1, "train.reestimate_batches must be >= 1"),
        (config.train.inference_draws >= 0, "train.inference_draws must be >= 0 (0 skips the inference measurement)"),
        (all(n >= 1 for n in config.train.eval_lengths), "train.eval_lengths must all be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    devices.check_name(config.train.device, f"{source}: train.device")


def read_raw(path: str | Path | None = None, overrides: list[str] | None = None,
             base: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """Nested raw values from a base mapping, an optional TOML file and `--set` overrides, and their source."""
    raw: dict[str, Any] = dict(base or {})
    source = "command line"
    if path is not None:
        raw = merge(raw, load_toml(path))
        source = str(path)
    return apply_overrides(raw, overrides or []), source
