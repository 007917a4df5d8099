"""`suite data prepare TASK...` and `suite data status`: fetch, verify and cache task data; show what is there.

`prepare` downloads a task's canonical files from their usual public locations into the data
directory (checksums verified, each file written under a temporary name and renamed),
unpacks them and builds the compact split cache, under per-data-set file locks. Training
never downloads: a run with missing files stops with an error that names this command.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from suite.core.config import parse_override
from suite.core.errors import ConfigError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Sub-commands `prepare` and `status`."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prepare = sub.add_parser("prepare", help="download, verify and cache the data of tasks",
                             description="Download, verify and cache the data of the named tasks.")
    prepare.add_argument("tasks", nargs="+", metavar="TASK", help="task names (see `suite tasks`)")
    status = sub.add_parser("status", help="show which tasks have their data, and where",
                            description="Show which tasks have their data, and where.")
    status.add_argument("tasks", nargs="*", metavar="TASK", help="task names (default: every task)")
    for command in (prepare, status):
        command.add_argument("--data-dir", help="data directory (default: $RECNORM_DATA_DIR or ~/.cache/recnorm/data)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="task option or data path, e.g. --set task.source=sample, --set data.path=DIR")


def parse_settings(overrides: list[str]) -> tuple[dict[str, Any], str | None, str | None]:
    """Task options, data.path and data.dir from `--set` values."""
    options: dict[str, Any] = {}
    path = directory = None
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 2 and keys[0] == "task" and keys[1] != "name":
            options[keys[1]] = value
        elif keys == ["data", "path"]:
            path = str(value)
        elif keys == ["data", "dir"]:
            directory = str(value)
        else:
            raise ConfigError(f"--set {text!r}: `suite data` takes task.OPTION, data.path or data.dir")
    return options, path, directory


def main(args: argparse.Namespace) -> int:
    """Prepare the named tasks, or print the status table."""
    from tasks.base import create, default_data_dir, registry
    from tasks.data import locked

    options, path, directory = parse_settings(args.overrides)
    data_dir = args.data_dir or directory
    names = args.tasks or sorted(registry())
    tasks = [create(name, options if args.tasks else {}, data_dir, path) for name in names]
    print(f"data directory: {tasks[0].data_dir if tasks else data_dir or default_data_dir()}")
    if args.data_command == "status":
        for task in tasks:
            state = task.data_status()
            print(f"{task.name:10s} {'ready  ' if state.ready else 'missing'}  {state.detail}")
        return 0
    for task in tasks:
        started = time.perf_counter()
        # Tasks sharing files (smnist, pmnist) share a folder name: one lock per set of files.
        with locked(task.data_dir, f"fetch-{getattr(task, 'folder', '') or task.name}"):
            task.fetch()
        task.prepare()
        print(f"{task.name:10s} ready    {task.data_status().detail} ({time.perf_counter() - started:.1f} s)")
    return 0
