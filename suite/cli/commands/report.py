"""`suite report STUDY_DIR [STUDY_DIR ...]`: Arrow tables -> a markdown report with PNG figures beside it.

Several studies are merged into one report (reports.merge) so the claims use every seed.
"""

from __future__ import annotations

import argparse

from suite.core.errors import ConfigError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `suite report`."""
    parser.add_argument("study", metavar="RESULTS_DIR/STUDY", nargs="+",
                        help="a study's results directory (holds summary/, curve/, ...); several are merged into one "
                             "report (same tasks and settings) so the claims use every seed")
    parser.add_argument("--out", metavar="FILE.md", help="where the markdown goes (default: STUDY/report.md; required "
                                                        "for several studies); figures are written beside it")
    parser.add_argument("--benchmark-json", metavar="FILE", help="a pytest-benchmark JSON to include as a throughput table")
    parser.add_argument("--target-fraction", type=float, default=0.95, metavar="F",
                        help="convergence target: F x the best mean LSTM validation value (1/F x for "
                             "lower-is-better metrics); default 0.95")
    parser.add_argument("--target", action="append", default=[], metavar="TASK=VALUE",
                        help="a fixed validation target for a task, in the metric's table units (repeatable)")


def parse_targets(items: list[str]) -> dict[str, float]:
    """TASK=VALUE strings to a dict; ConfigError on a malformed one."""
    targets = {}
    for item in items:
        task, sep, value = item.partition("=")
        try:
            if not sep or not task:
                raise ValueError
            targets[task.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--target {item!r}: expected TASK=VALUE, e.g. --target smnist=0.9") from None
    return targets


def main(args: argparse.Namespace) -> int:
    """Write the report and print where it is."""
    from reports.render import write_report

    if not 0.0 < args.target_fraction <= 1.0:
        raise ConfigError(f"--target-fraction must be in (0, 1], got {args.target_fraction}")
    path = write_report(args.study, args.out, args.benchmark_json, args.target_fraction, parse_targets(args.target))
    print(f"report written to {path}")
    return 0
