"""`suite run STUDY.toml --results DIR`: a study as one Ray Tune experiment (see runners/)."""

from __future__ import annotations

import argparse

from suite.core.errors import SuiteError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `suite run`."""
    parser.add_argument("study", metavar="STUDY.toml", help="a study file (see studies/)")
    parser.add_argument("--results", required=True, metavar="DIR",
                        help="results location: a local or shared path, or a URI such as s3://bucket/path; "
                             "tables go to DIR/<study>/")
    parser.add_argument("--address", metavar="ADDRESS",
                        help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                             "(default: start an embedded local Ray)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of this study in DIR, skipping finished trials")
    parser.add_argument("--dry-run", action="store_true", help="print the trials and their resources, run nothing")
    parser.add_argument("--report", metavar="FILE",
                        help="write the report to FILE at the end (default: the study's `report`)")
    parser.add_argument("--num-cpus", type=int, metavar="N",
                        help="CPUs of the embedded Ray (default: all of this machine's)")


def main(args: argparse.Namespace) -> int:
    """Run the study, then write its report when it ended and one is asked for (runners never render)."""
    from runners.local import run_study

    outcome = run_study(args.study, args.results, args.address, args.resume, args.dry_run, args.report,
                        args.num_cpus)
    if outcome.report:
        from reports.render import write_report

        try:
            path = write_report(outcome.root, outcome.report)
        except SuiteError as exc:
            raise SuiteError(f"the study finished but writing its report {outcome.report} failed: {exc}") from None
        print(f"report written to {path}")
    return outcome.code
