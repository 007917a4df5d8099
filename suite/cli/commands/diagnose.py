"""`suite diagnose gradient-flow`: the paper's Figure 1 (gradient flow through a BN tanh RNN; tanh' vs sigma).
`suite diagnose bn-inference RESULTS_OR_TRIAL`: batch vs population statistics on a saved BN model (issue 13)."""

from __future__ import annotations

import argparse
from pathlib import Path

from suite.core.errors import ConfigError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `suite diagnose`."""
    parser.add_argument("which", choices=["gradient-flow", "bn-inference"], help="which diagnostic")
    parser.add_argument("target", nargs="?", metavar="RESULTS_OR_TRIAL",
                        help="bn-inference: a study/results directory (its first saved BN model), a trial id (with "
                             "--results), a <results>/models/<trial> folder or a .pt file")
    parser.add_argument("--out", metavar="DIR",
                        help="where the Arrow table (DIR/gradient_flow/ or DIR/bn_inference/) and figures go; a study "
                             "directory has `suite report` include them (default: ./diagnostics for gradient-flow, "
                             "the model's results directory for bn-inference)")
    parser.add_argument("--results", metavar="DIR", help="bn-inference: where models/<trial> is, for a trial id")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best", help="bn-inference: which model")
    parser.add_argument("--split", choices=["valid", "test"], default="valid", help="bn-inference: which split")
    parser.add_argument("--batches", default="1,2,5,10,20,50",
                        help="bn-inference: comma-separated counts of re-estimation batches")
    parser.add_argument("--draws", type=int, default=3, help="bn-inference: independent draws per count")
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
    """Run the chosen diagnostic."""
    if args.which == "bn-inference":
        return bn_inference(args)
    if args.target:
        raise ConfigError(f"gradient-flow takes no {args.target!r}: it runs on a fresh network, not a saved model")
    return gradient_flow(args)


def bn_inference(args: argparse.Namespace) -> int:
    """Divergence per step and metric vs re-estimation batches on a saved model; table, figure and markdown."""
    import torch

    from reports.bn_inference import figure, markdown
    from reports.render import metric_format
    from runners import bn_inference as experiment
    from runners.saved import load

    if not args.target:
        raise ConfigError("bn-inference needs RESULTS_OR_TRIAL: a study directory, a trial id with --results, "
                          "or a model file")
    try:
        counts = tuple(int(n) for n in args.batches.split(","))
    except ValueError:
        raise ConfigError(f"--batches {args.batches!r}: expected comma-separated integers") from None
    run = load(args.target, args.results, args.checkpoint, args.data_dir)
    out = args.out or experiment.default_out(run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-step ops: one thread avoids oversubscribing shared cores
    try:
        table, path = experiment.diagnose(run, out, args.split, counts, args.draws, say=print)
    finally:
        torch.set_num_threads(threads)
    fmt = metric_format(run.task.metric, run.task.mode)
    picture = figure(table, run.trial_id, Path(out) / f"bn_inference-{run.trial_id}.png", fmt.scale, fmt.label)
    text = "\n".join(markdown(table, run.trial_id, fmt.num))
    (Path(out) / f"bn_inference-{run.trial_id}.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {path}, {picture} and {Path(out) / f'bn_inference-{run.trial_id}.md'}")
    return 0


def gradient_flow(args: argparse.Namespace) -> int:
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
    out = args.out or "diagnostics"
    # Hundreds of small ops per step: one thread avoids oversubscription when processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = diagnose(out, data_dir, gammas, config)
    finally:
        torch.set_num_threads(threads)
    paths = figures(table, Path(out))
    a = table.filter(pc.equal(table["figure"], "1a"))
    print(f"inputs: {a['source'][0].as_py()}")
    last = config.length - 1
    for gamma in gammas:
        rows = {r["t"]: r["value"] for r in a.to_pylist() if r["gamma"] == gamma and r["t"] in (0, last)}
        print(f"gamma {gamma:.2f}: ||dL/dh_t|| {rows[last]:.3e} at t={last}, {rows[0]:.3e} at t=0")
    print(f"wrote {Path(out) / 'gradient_flow'} and " + ", ".join(str(p) for p in paths))
    return 0
