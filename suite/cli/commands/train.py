"""`suite train`: one run of a task with a variant, progress on stdout, results as Parquet, models under models/."""

from __future__ import annotations

import argparse
import time

from suite.core.errors import ConfigError


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `suite train`."""
    parser.add_argument("--task", help="task name (see `suite tasks`)")
    parser.add_argument("--variant", help="variant name (see `suite variants`)")
    parser.add_argument("--config", metavar="FILE.toml", help="a run config file ([task], [model], [optim], [train], [data])")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
    parser.add_argument("--data-dir", help="data directory (default: $RECNORM_DATA_DIR or ~/.cache/recnorm/data)")
    parser.add_argument("--results", required=True, metavar="DIR", help="where the Parquet tables go")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def main(args: argparse.Namespace) -> int:
    """Resolve the config, train, write curve and summary tables."""
    from suite.core.checkpoints import save_models
    from tasks.resolve import load_run_config
    from suite.core.provenance import write_run
    from suite.core.results import check_writable
    from suite.core.device import check_available
    from suite.core.train import fit
    from tasks.base import create

    overrides = list(args.overrides)
    if args.task:
        overrides.insert(0, f"task.name={args.task!r}".replace("'", '"'))
    if args.variant:
        overrides.insert(0, f"model.variant={args.variant!r}".replace("'", '"'))
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir!r}".replace("'", '"'))
    config = load_run_config(args.config, overrides)
    check_available(config.train.device)  # before data and training: one line naming the fix
    task = create(config.task.name, config.task.options, config.data.dir, config.data.path)
    check_writable(args.results)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
    log(f"training {config.model.variant} on {config.task.name} (seed {config.train.seed}, "
        f"{config.train.steps} steps) -> {args.results}")
    result = fit(task, config, log=log)
    trial_id = f"{config.task.name}-{config.model.variant}-s{config.train.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    keys = {"study": "train", "trial_id": trial_id, "task": config.task.name,
            "variant": config.model.variant, "seed": config.train.seed}
    recorded = config.to_dict() | {"task_facts": task.describe()}
    saved = save_models(args.results, trial_id, result.models, recorded,
                        {"best": result.summary["best_step"], "last": result.summary["steps"]})
    write_run(args.results, keys, result.curve, result.summary, recorded, result.lengths,
              inference=result.inference)
    s = result.summary
    print(f"{result.status}: best valid {s['metric']} {s['best_valid']:.4f} at step {s['best_step']}, "
          f"test {s['test_at_best']:.4f} (at best) / {s['test_at_last']:.4f} (last); "
          f"{s['examples_per_second']:.0f} examples/s; tables in {args.results}"
          + (f", models in {args.results}/models/{trial_id}/ ({len(saved)} saved)" if saved else ""))
    return 0 if result.status == "finished" else 1


__all__ = ["ConfigError", "configure", "main"]
