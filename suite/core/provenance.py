"""What produced a result: the environment (library versions, machine, which kernel backends run) and the resolved
config, written with a run's curve, summary, lengths and inference tables (schemas in `suite.core.results`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import pyarrow as pa
import torch

from suite.core import backends, perf
from suite.core.results import CURVE, INFERENCE, LENGTHS, SUMMARY, to_table, write_table


def environment() -> dict[str, Any]:
    """Library versions and the machine, recorded with every result."""

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
           "torch": torch.__version__, "pyarrow": pa.__version__, "ray": version("ray"),
           "recnorm_suite": version("recnorm-suite"), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(),
           "cuda": torch.version.cuda} | backends.status() | perf.thread_state()
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def write_run(root: str, keys: Mapping[str, Any], curve: list[Mapping[str, Any]], summary: Mapping[str, Any],
              config: Mapping[str, Any], lengths: list[Mapping[str, Any]] = (),
              where: Mapping[str, Any] | None = None, inference: list[Mapping[str, Any]] = ()) -> None:
    """Write one trial's curve, summary (and lengths, inference) tables; `keys` holds study, trial_id, task,
    variant, seed.

    `where` adds facts about the process that ran the trial (e.g. its Ray node) to the environment.
    """
    trial_id = keys["trial_id"]
    write_table(to_table([dict(keys, **row) for row in curve], CURVE), root, "curve", trial_id)
    if lengths:
        write_table(to_table([dict(keys, **row) for row in lengths], LENGTHS), root, "lengths", trial_id)
    if inference:
        write_table(to_table([dict(keys, **row) for row in inference], INFERENCE), root, "inference", trial_id)
    row = dict(keys, **summary, config_json=json.dumps(config, sort_keys=True),
               env_json=json.dumps(environment() | dict(where or {}), sort_keys=True))
    write_table(to_table([row], SUMMARY), root, "summary", trial_id)
