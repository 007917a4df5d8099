"""`suite diagnose gradient-flow`: the paper's Figure 1 (gradient flow through a BN tanh RNN; tanh' vs sigma)."""

from __future__ import annotations

import argparse
from pathlib import Path

from suite.core.errors import ConfigError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `suite diagnose`."""
    parser.add_argument("which", choices=["gradient-flow"], help="which diagnostic")
    parser.add_argument("--out", default="diagnostics", metavar="DIR",
                        help="where the Arrow table (DIR/gradient_flow/) and figures go; pass a study directory "
                             "to have `suite report` include them (default: ./diagnostics)")
    parser.add_argument("--data-dir", help="directory with MNIST IDX files (DIR or DIR/mnist); default: "
                                           "$RECNORM_DATA_DIR or ~/.cache/recnorm/data, then the offline sample, "
                                           "then random inputs")
    parser.add_argument("--gammas", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0", help="comma-separated BN gammas")
    parser.add_argument("--length", type=int, default=784, help="sequence length (last pixels of each image)")
    parser.add_argument("--hidden-size", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--h0-noise", type=float, default=1.0, help="std of the Gaussian noise added to h_0")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    """Run the diagnostic, write its table and figures, print a one-line summary per gamma."""
    import pyarrow.compute as pc
    import torch

    from reports.gradient_flow import figures
    from runners.gradient_flow import FlowConfig, diagnose
    from tasks.base import default_data_dir

    try:
        gammas = tuple(float(g) for g in args.gammas.split(","))
    except ValueError:
        raise ConfigError(f"--gammas {args.gammas!r}: expected comma-separated numbers") from None
    if not gammas or any(g <= 0 for g in gammas):
        raise ConfigError("--gammas must be positive numbers")
    if not 1 <= args.length <= 784 or args.hidden_size < 1 or args.batch_size < 2:
        raise ConfigError("--length must be 1..784, --hidden-size >= 1, --batch-size >= 2")
    config = FlowConfig(args.length, args.hidden_size, args.batch_size, args.h0_noise, seed=args.seed)
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    # Hundreds of small ops per step: one thread avoids oversubscription when processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = diagnose(args.out, data_dir, gammas, config)
    finally:
        torch.set_num_threads(threads)
    paths = figures(table, Path(args.out))
    a = table.filter(pc.equal(table["figure"], "1a"))
    print(f"inputs: {a['source'][0].as_py()}")
    last = config.length - 1
    for gamma in gammas:
        rows = {r["t"]: r["value"] for r in a.to_pylist() if r["gamma"] == gamma and r["t"] in (0, last)}
        print(f"gamma {gamma:.2f}: ||dL/dh_t|| {rows[last]:.3e} at t={last}, {rows[0]:.3e} at t=0")
    print(f"wrote {Path(args.out) / 'gradient_flow'} and " + ", ".join(str(p) for p in paths))
    return 0
