"""`suite variants` and `suite tasks`: what is registered, one line each."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """No arguments."""
    parser.set_defaults(listing=name)


def main(args: argparse.Namespace) -> int:
    """Print the registry asked for."""
    if args.listing == "variants":
        from suite.core import variants

        for name, variant in sorted(variants.registry().items()):
            print(f"{name:12s} {variant.description}")
    else:
        from tasks.catalog import listings  # not tasks.base: importing a task imports torch

        for name, task in sorted(listings().items()):
            print(f"{name:12s} {task.metric} ({task.mode})  {task.description}")
    return 0
