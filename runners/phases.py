"""The two phases of a tuned study (a `[search]` table, runners.search) in one `suite run`.

1. Search: one Tune experiment per (task, variant) under `tune/search-<task>-<variant>`,
   `samples` trials each (the equal budget; Dodge et al. 2019 show rankings flip with the
   budget), drawn by the random searcher (seeded, as a grid of pre-drawn points) or by
   Optuna's TPE through Tune's OptunaSearch, optionally with ASHA (Li et al. 2020) on the
   task's validation metric at evaluation points. A trial ASHA stops gets a summary row
   with status `stopped`, written by the driver at the moment of the decision (runners.asha).
2. Final: each variant's best search configuration by *validation* (never test), read back
   from the written summary rows, re-run on the study's seeds (`tune/final`), as a plain
   study's grid.

Every row carries its phase. `--resume` restores each experiment that had started (finished
trials are skipped) and starts the ones that had not; the best points are recomputed from
the rows, and must equal those recorded in `best.json` when the final phase began.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from runners.local import TUNE_DIR, Outcome, _exists, _read_text, _write_text, new_tuner, \
    outcomes_of, restore_tuner
from runners.study import Study, Trial, search_trial_id, tuned_trial_id
from runners.trainable import PHASE, POINT, RESULTS, SAMPLE, STUDY, TUNED, name_index, point, point_of, \
    trial_identity
from suite.core.errors import SuiteError
from suite.core.results import CURVE, read_table, read_trial_rows, to_table, write_table
from tasks.base import get_task_class

BEST_FILE = "best.json"


def experiment_name(task: str, variant: str) -> str:
    """The Tune experiment of one (task, variant)'s search, under `<root>/tune/`."""
    return f"search-{task}-{variant}"


def _mode(task: str) -> str:
    return get_task_class(task).mode


def _steps(study: Study, task: str) -> int:
    return study.resolve_trial(task, study.variants[0], study.seeds[0], {}).config.train.steps


def budget(study: Study) -> str:
    """What --dry-run adds for a tuned study: the search budget and the final trials."""
    s = study.search
    assert s is not None
    lines = [f"search: {s.samples} samples x {len(study.variants)} variants x {len(study.tasks)} tasks = "
             f"{s.samples * len(study.variants) * len(study.tasks)} trials ({s.searcher} searcher, "
             + (f"ASHA grace {s.grace_steps} steps, reduction factor {s.reduction_factor}" if s.scheduler == "asha"
                else "no scheduler") + f", training seed {s.seed}); max steps "
             + ", ".join(f"{task} {_steps(study, task)}" for task in study.tasks),
             f"final: each variant's best configuration by validation x {len(study.seeds)} seeds = "
             f"{len(study.variants) * len(study.tasks) * len(study.seeds)} trials"]
    for variant in study.variants:
        spaces = ", ".join(f"{k} {sp.kind} {list(sp.args)}" for k, sp in sorted(s.spaces_of(variant).items()))
        lines.append(f"  {variant}: {spaces}")
    return "\n".join(lines)


def _study_trial(study: Study, name: str, config: dict[str, Any], phase: str) -> Trial | None:
    """The study's Trial of a Tune trial of a phase (None when the config cannot tell it)."""
    if config.get(PHASE) != phase:
        return None
    trial_id, seed, values = trial_identity(config, name_index(name))
    task, variant, _, _ = point_of(config)
    trial = study.resolve_trial(task, variant, seed, values)
    return dataclasses.replace(trial, trial_id=trial_id, phase=phase)


def trim_curve(root: str, trial_id: str, step: int) -> list[dict[str, Any]]:
    """Drop a stopped trial's curve rows after `step` (the trial trains on while the driver decides, and
    can write one more evaluation before Tune ends it); returns the rows kept."""
    rows = read_trial_rows(root, "curve", trial_id)
    kept = [r for r in rows if r["step"] <= step]
    if len(kept) < len(rows):
        write_table(to_table(kept, CURVE), root, "curve", trial_id)
    return kept


def _fit_experiment(study: Study, root: str, name: str, resume: bool, phase: str, fresh) -> list[Outcome]:
    """Restore experiment `name` when --resume finds it started, else build it with `fresh()`; fit it."""
    from ray import tune

    path = f"{root}/{TUNE_DIR}/{name}"
    tuner = (restore_tuner(study, path) if resume and tune.Tuner.can_restore(path) else None) or fresh()
    outcomes = outcomes_of(tuner, lambda n, config: _study_trial(study, n, config, phase), root)
    for o in outcomes:  # the experiment is over: no stopped trial can write again
        if o.status == "stopped" and isinstance(o.metrics.get("step"), int):
            trim_curve(root, o.trial.trial_id, o.metrics["step"])
    return outcomes


def search_experiment(study: Study, task: str, variant: str, results: str, root: str, resume: bool) -> list[Outcome]:
    """Run (or resume) the search of one (task, variant) and tell how each of its trials ended."""
    from ray import tune

    s = study.search
    assert s is not None
    mode, steps = _mode(task), _steps(study, task)
    space: dict[str, Any] = {STUDY: study.to_dict(), RESULTS: results, PHASE: "search",
                             POINT: point(task, variant, s.seed, {})}
    extra: dict[str, Any] = {}
    if s.searcher == "random":  # pre-drawn, reproducible points: a grid over the samples
        space[SAMPLE] = tune.grid_search([{"index": i, "point": s.point(variant, i)} for i in range(s.samples)])
    else:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-study INFO lines break the progress lines

        space[SAMPLE] = {"point": {key: sp.tune_domain() for key, sp in sorted(s.spaces_of(variant).items())}}
        # best_valid: the trial's best validation value so far (a stopped trial's too).
        extra.update(search_alg=OptunaSearch(metric="best_valid", mode=mode, seed=s.seed), num_samples=s.samples)
    if s.scheduler == "asha":
        from runners.asha import StoppingASHA  # imports Ray: only when a study runs

        extra["scheduler"] = StoppingASHA(root, study.to_dict(), time_attr="step", metric="valid", mode=mode,
                                          grace_period=s.grace_steps, reduction_factor=s.reduction_factor,
                                          max_t=steps)
    name = experiment_name(task, variant)
    outcomes = _fit_experiment(study, root, name, resume, "search",
                               lambda: new_tuner(study, space, f"{root}/{TUNE_DIR}", name, **extra))
    known = {o.trial.trial_id for o in outcomes}
    outcomes += [o for o in search_placeholders(study, task, variant) if o.trial.trial_id not in known]
    return sorted(outcomes, key=lambda o: o.trial.trial_id)


def search_placeholders(study: Study, task: str, variant: str) -> list[Outcome]:
    """An `interrupted` outcome per search trial of one (task, variant): what is unfinished when its
    experiment did not report a trial (a random sample's point is known; a searcher's, not yet)."""
    s = study.search
    assert s is not None
    out = []
    for i in range(s.samples):
        point = s.point(variant, i) if s.searcher == "random" else {}
        trial = study.resolve_trial(task, variant, s.seed, point)
        out.append(Outcome(dataclasses.replace(trial, trial_id=search_trial_id(task, variant, i), phase="search"),
                           "interrupted", {}))
    return out


def final_placeholders(study: Study, best: dict[str, dict[str, dict[str, Any]]], variants: list[str]) -> list[Outcome]:
    """An `interrupted` outcome per final trial."""
    return [Outcome(dataclasses.replace(study.resolve_trial(task, v, seed, best[task][v]),
                                        trial_id=tuned_trial_id(task, v, seed), phase="final"), "interrupted", {})
            for task in study.tasks for v in variants for seed in study.seeds]


def best_points(root: str, study: Study) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {variant: point}}: each variant's search trial with the best validation metric (finished or
    stopped; ties go to the lower sample number), from the written summary rows."""
    rows = [r for r in read_table(root, "summary").to_pylist() if r["phase"] == "search"]
    best: dict[str, dict[str, dict[str, Any]]] = {}
    for task in study.tasks:
        sign = 1.0 if _mode(task) == "max" else -1.0
        for variant in study.variants:
            mine = [r for r in rows if r["task"] == task and r["variant"] == variant
                    and r["status"] in ("finished", "stopped") and r["best_valid"] is not None
                    and math.isfinite(r["best_valid"])]
            if mine:
                top = min(mine, key=lambda r: (-sign * r["best_valid"], r["trial_id"]))
                best.setdefault(task, {})[variant] = json.loads(top["config_json"]).get("grid", {})
    return best


def final_experiment(study: Study, best: dict[str, dict[str, dict[str, Any]]], results: str, root: str,
                     resume: bool) -> list[Outcome]:
    """Run (or resume) each variant's best point on the study's seeds."""
    from ray import tune

    variants = [v for v in study.variants if all(v in best.get(task, {}) for task in study.tasks)]
    for v in sorted(set(study.variants) - set(variants)):
        print(f"final phase: {v} left out: none of its search trials reached a finite validation metric", flush=True)
    if not variants:
        return []
    space = {STUDY: study.to_dict(), RESULTS: results, PHASE: "final", TUNED: best,
             POINT: tune.grid_search([point(task, v, seed, {}) for task in study.tasks for v in variants
                                      for seed in study.seeds])}
    try:
        outcomes = _fit_experiment(study, root, "final", resume, "final",
                                   lambda: new_tuner(study, space, f"{root}/{TUNE_DIR}", "final"))
    except KeyboardInterrupt:  # Ctrl-C outside Tune's own handler (building or restoring the experiment)
        outcomes = []
    known = {o.trial.trial_id for o in outcomes}
    return outcomes + [o for o in final_placeholders(study, best, variants) if o.trial.trial_id not in known]


def run_phases(study: Study, results: str, root: str, resume: bool) -> list[Outcome]:
    """Both phases; stops after the search when a search trial is unfinished (resumable)."""
    print(budget(study), flush=True)
    outcomes: list[Outcome] = []
    for task in study.tasks:
        for variant in study.variants:
            try:
                outcomes += search_experiment(study, task, variant, results, root, resume)
            except KeyboardInterrupt:  # Ctrl-C between experiments, outside Tune's own handler
                outcomes += search_placeholders(study, task, variant)
            if any(o.status == "interrupted" for o in outcomes):
                return outcomes  # Ctrl-C: the driver says how to resume
    best = best_points(root, study)
    recorded = _read_text(f"{root}/{BEST_FILE}")
    if recorded is not None and json.loads(recorded) != best:
        raise SuiteError(f"{root}/{BEST_FILE} records other best configurations than the search rows give now; "
                         f"the summary tables changed since the final phase began: rerun the study into a new "
                         f"--results")
    if recorded is None:
        _write_text(f"{root}/{BEST_FILE}", json.dumps(best, indent=2, sort_keys=True))
    for task, points in best.items():
        for variant, values in points.items():
            print(f"best {task} {variant} by validation: {values}", flush=True)
    return outcomes + final_experiment(study, best, results, root, resume and _exists(f"{root}/{TUNE_DIR}/final"))
