"""Run-config resolution: the task's paper settings under the user's settings, every plugin option checked.

Resolution order, later wins: dataclass defaults < the task's `defaults` < the task's
`variant_defaults` for the run's variant < the TOML file < command-line overrides. The config
types, TOML reading and type checks live in `suite.core.config`; this module adds what needs
the task registry, so the core never imports a task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from suite.core import variants
from suite.core.config import (ModelConfig, RunConfig, TaskConfig, build_run_config, check_ranges, check_sections,
                               merge, read_raw)
from tasks.base import get_task_class


def resolve(raw: Mapping[str, Any], source: str = "config") -> RunConfig:
    """Build a validated RunConfig from nested raw values, layering in the task's paper settings."""
    check_sections(raw, source)
    task_name = raw.get("task", {}).get("name", TaskConfig.name)
    task_cls = get_task_class(str(task_name))
    variant = raw.get("model", {}).get("variant", ModelConfig.variant)
    paper = merge(dict(task_cls.defaults), task_cls.variant_defaults.get(str(variant), {}))
    config = build_run_config(merge(paper, raw), source)
    task_cls.check_options(config.task.options, f"{source} [task] (options of task {config.task.name}; "
                           f"other task keys: name)")
    model_keys = ", ".join(f.name for f in dataclasses.fields(ModelConfig) if f.name != "options")
    variants.check_options(config.model.variant, config.model.options,
                           f"{source} [model] (options of variant {config.model.variant}; other model keys: "
                           f"{model_keys})")
    check_ranges(config, source)
    return config


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    base: Mapping[str, Any] | None = None) -> RunConfig:
    """Resolve a RunConfig from an optional TOML file, a base mapping and `--set` overrides."""
    raw, source = read_raw(path, overrides, base)
    return resolve(raw, source)
