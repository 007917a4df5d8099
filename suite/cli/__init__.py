"""`suite` command line: one entry point, subcommands registered in COMMANDS.

Each subcommand lives in a module exposing `configure(parser)` and `main(args) -> int`;
COMMANDS maps the name to that module, imported only when the command runs. Errors the
user can fix (SuiteError, ValueError from bad input) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from suite.core.errors import SuiteError

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("suite.cli.commands.train", "train one run of a task with a variant"),
    "run": ("suite.cli.commands.run", "run a study (tasks x variants x seeds) as a Ray Tune experiment"),
    "variants": ("suite.cli.commands.listing", "list the registered variants"),
    "tasks": ("suite.cli.commands.listing", "list the registered tasks"),
    "report": ("suite.cli.commands.report", "write a study's markdown report with figures"),
    "evaluate": ("suite.cli.commands.evaluate", "evaluate a saved model under a chosen way of taking BN statistics"),
    "diagnose": ("suite.cli.commands.diagnose", "diagnostics: gradient flow at initialization (paper Figure 1)"),
    "data": ("suite.cli.commands.data", "prepare task data (download, verify, cache) or show its status"),
    "bench": ("suite.cli.commands.bench", "time every variant against cudnn_lstm; write the throughput table"),
}


def parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand configured."""
    top = argparse.ArgumentParser(prog="suite", description="recnorm-suite: normalization in recurrent networks")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(command, name)
        command.set_defaults(module=module)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        return int(importlib.import_module(args.module).main(args) or 0)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
