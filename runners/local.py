"""Run a study as one Ray Tune experiment, on an embedded local Ray or on an existing cluster.

The study's tables live in `<results>/<study>/` (curve/, summary/; see suite.core.results) and
Tune's experiment state in `<results>/<study>/tune/`, so `--resume` finds both. Trials
write their own tables; the driver writes summary rows only for trials that could not
(failed for good, or interrupted), then prints a summary and says where the study's report
should go (runners never render reports: the `suite run` command calls `reports` with it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyarrow import fs as pafs

from runners.cluster import check_resources, connect
from runners.lock import study_lock
from runners.study import Study, Trial, load_study
from runners.trainable import DONE, POINT, RESULTS, STUDY, point, recorded_point, study_root, train_trial, written_end
from suite.core import device
from suite.core.errors import SuiteError
from suite.core.provenance import environment
from suite.core.results import SUMMARY, check_writable, filesystem, to_table, write_table
from tasks.base import create, get_task_class

TUNE_DIR = "tune"
# Tune's own console output is replaced by runners.progress; its snapshot warnings are noise
# here because every evaluation checkpoints (num_to_keep=1 forces a state snapshot each time).
QUIET_TUNE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
STUDY_FILE = "study.json"


@dataclass(frozen=True)
class StudyRun:
    """How a study run ended: the exit code, its results directory, and where its report goes (if it should)."""

    code: int  # 0: every trial finished or diverged; 1: some failed; 130: interrupted
    root: str | None = None  # None for a dry run
    report: str | None = None  # set only when the run ended and a report was asked for


@dataclass
class Outcome:
    """How one trial ended, as the driver saw it."""

    trial: Trial
    status: str  # finished | diverged | failed | interrupted
    metrics: dict[str, Any]
    error: str | None = None
    seconds: float | None = None  # wall time as Tune saw it (this run only)


def plan(study: Study, trials: Sequence[Trial]) -> str:
    """The trials a study would launch and what each asks for (what --dry-run prints)."""
    res = study.resources
    lines = [f"study {study.name}: {len(trials)} trials, each cpu={res.cpu:g} gpu={res.gpu:g}; "
             f"max_failures={study.failure.max_failures}"
             + (f"; early stopping after {study.early_stopping.patience} evaluations without improvement"
                if study.early_stopping.patience else "")]
    for trial in trials:
        c = trial.config
        lines.append(f"  {trial.trial_id:40s} task={c.task.name} {dict(c.task.options) or ''} variant={c.model.variant} "
                     f"hidden={c.model.hidden_size} steps={c.train.steps} batch={c.train.batch_size} "
                     f"{c.optim.name} lr={c.optim.lr:g} device={c.train.device}")
    return "\n".join(lines)


def _exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _read_text(location: str) -> str | None:
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _write_text(location: str, text: str) -> None:
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as fh:
        fh.write(text.encode())


def prepare_root(root: str, study: Study, resume: bool) -> None:
    """Refuse to mix two runs of a study in one place; record the study being run."""
    from ray import tune  # Ray loads only when a study runs (--dry-run never needs it)

    tune_dir = f"{root}/{TUNE_DIR}"
    had_results = any(_exists(f"{root}/{name}") for name in ("summary", "curve", TUNE_DIR))
    if resume:
        # A tuned study keeps one experiment per phase under tune/ (runners.phases).
        if not (tune.Tuner.can_restore(tune_dir) or (study.search is not None and _exists(tune_dir))):
            raise SuiteError(f"nothing to resume: {root} holds no started run of study {study.name}; "
                             f"run it without --resume")
        saved = _read_text(f"{root}/{STUDY_FILE}")
        if saved is not None and json.loads(saved).get("fingerprint") != study.fingerprint():
            raise SuiteError(f"{study.source} changed since study {study.name} started in {root}; "
                             f"resume it with the same study file, or run the new one into another --results")
        return
    if had_results:
        raise SuiteError(f"{root} already holds results of study {study.name}; continue that run with --resume, "
                         f"or choose another --results (or delete {root})")
    fs, path = filesystem(root)
    fs.create_dir(path, recursive=True)
    _write_text(f"{root}/{STUDY_FILE}", json.dumps({"fingerprint": study.fingerprint(), "study": study.to_dict()},
                                                   indent=2, sort_keys=True))


def _absolute(location: str) -> str:
    return location if "://" in location else os.path.abspath(os.path.expanduser(location))


def _error_line(error: BaseException | None) -> str | None:
    """The last meaningful line of a trial's error (e.g. 'ValueError: ...')."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and not lines:
        return _error_line(cause)
    return (lines[-1] if lines else type(error).__name__)[:500]


def run_study(path: str, results: str, address: str | None = None, resume: bool = False, dry_run: bool = False,
              report: str | None = None, num_cpus: int | None = None) -> StudyRun:
    """Run (or resume) a study. Its code is 0 when every trial finished or diverged, 1 when some failed,
    130 when interrupted; its `report` is where the report should be written (`report`, else the study's
    own), absolute or under the study's results directory."""
    study = load_study(path)
    trials = study.trials()
    if address is None and not os.environ.get("RAY_ADDRESS"):  # trials run on this machine: check its torch
        for name in sorted({t.config.train.device for t in trials}):
            device.check_available(name, f"{study.source}: train.device")
    if dry_run:
        if study.search is not None:  # the final trials' settings are not known before the search
            from runners.phases import budget

            print(f"study {study.name}: cpu={study.resources.cpu:g} gpu={study.resources.gpu:g} per trial; "
                  f"max_failures={study.failure.max_failures}\n{budget(study)}")
        else:
            print(plan(study, trials))
        return StudyRun(0)
    results = _absolute(results)
    root = study_root(results, study.name)
    check_writable(results)
    with study_lock(root, study.name):  # one driver per study; released however this process ends
        return _run(study, trials, path, results, root, address, resume, report, num_cpus)


def _run(study: Study, trials: Sequence[Trial], path: str, results: str, root: str, address: str | None,
         resume: bool, report: str | None, num_cpus: int | None) -> StudyRun:
    """The study's run once its driver holds the lock: data, Ray, the Tuner, the summary."""
    from tasks.base import create

    if address is None:  # on a cluster the data may live on the workers only
        for name in study.tasks:
            config = next(t.config for t in trials if t.task == name)
            create(config.task.name, config.task.options, config.data.dir, config.data.path).prepare()
    prepare_root(root, study, resume)
    for key, value in QUIET_TUNE.items():
        os.environ.setdefault(key, value)
    started = time.monotonic()
    with connect(address, num_cpus) as session:
        described = check_resources(study.resources.cpu, study.resources.gpu)
        count = len(trials) + (len(study.variants) * len(study.tasks) * study.search.samples if study.search else 0)
        print(f"study {study.name}: {count} trials on {described} ({'embedded' if session.embedded else session.address}); "
              f"results in {root}", flush=True)
        if study.search is not None:
            from runners.phases import run_phases

            outcomes = run_phases(study, results, root, resume)
        else:
            outcomes = _fit(study, trials, results, root, resume)
    wall = time.monotonic() - started
    _record_unfinished(root, study, outcomes)
    print(summary_text(study, outcomes, wall), flush=True)
    interrupted = [o for o in outcomes if o.status == "interrupted"]
    if interrupted:
        print(f"interrupted: {len(interrupted)} trial(s) unfinished; continue with "
              f"`suite run {path} --results {results} --resume`", file=sys.stderr)
        return StudyRun(130, root)
    report = report if report is not None else study.report
    target = (report if os.path.isabs(report) or "://" in report else f"{root}/{report}") if report else None
    return StudyRun(1 if any(o.status == "failed" for o in outcomes) else 0, root, target)


def _fit(study: Study, trials: Sequence[Trial], results: str, root: str, resume: bool) -> list[Outcome]:
    """Build (or restore) the Tuner, run it, and tell how each trial ended."""
    from ray import tune

    tune_dir = f"{root}/{TUNE_DIR}"
    tuner = restore_tuner(study, tune_dir) if resume else None
    if tuner is None:
        param_space = {
            STUDY: study.to_dict(), RESULTS: results,
            # Grid axes, never sampled: every variant sees every seed (and every point of its grid).
            POINT: tune.grid_search([point(t.task, t.variant, t.seed, t.grid) for t in study.trials()]),
        }
        tuner = new_tuner(study, param_space, root, TUNE_DIR)
    by_id = {t.trial_id: t for t in trials}
    outcomes = outcomes_of(tuner, lambda name, config: by_id.get(name), root)
    seen = {o.trial.trial_id for o in outcomes}
    outcomes += [Outcome(t, "interrupted", {}) for t in trials if t.trial_id not in seen]
    order = {t.trial_id: i for i, t in enumerate(trials)}
    return sorted(outcomes, key=lambda o: order[o.trial.trial_id])


def _trainable(study: Study):
    from ray import tune

    return tune.with_resources(train_trial, {"cpu": study.resources.cpu, "gpu": study.resources.gpu})


def restore_tuner(study: Study, experiment: str):
    """The Tuner of an interrupted experiment: finished trials are skipped, the rest resume from their
    checkpoints (trials that failed by themselves too: `reopen_failed`). None when Tune's saved state
    is damaged: the caller starts a fresh Tuner, in which trials whose tables say they ended report
    those (trainable.written_end) and the others start again from their first step."""
    from ray import tune

    if reopen_failed(experiment) is None:
        # Tune saves its state to the results' disk; a full one cuts it short and Tune cannot restore it.
        print(f"note: Tune's saved state in {experiment} is damaged (was the disk full?); trials that ended "
              f"keep their tables, unfinished ones start again from their first step", file=sys.stderr)
        return None
    return tune.Tuner.restore(experiment, _trainable(study), resume_unfinished=True, resume_errored=True)


def new_tuner(study: Study, param_space: dict[str, Any], storage: str, name: str, **tune_config: Any):
    """A Tuner for one experiment of a study under `<storage>/<name>`; `tune_config` adds TuneConfig
    arguments (searcher, scheduler, num_samples) to the study's own."""
    from ray import tune

    from runners.progress import Progress, trial_name  # a Tune callback: imports Ray

    metric = {task: _task_metric(task) for task in study.tasks}
    return tune.Tuner(
        _trainable(study), param_space=param_space,
        # reuse_actors: a finished trial's worker takes the next trial (saves a process start and imports).
        tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                    reuse_actors=True, **tune_config),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=[Progress(metric)],
            failure_config=tune.FailureConfig(max_failures=study.failure.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def outcomes_of(tuner, trial_of: Callable[[str, dict[str, Any]], Trial | None], root: str) -> list[Outcome]:
    """Fit a Tuner and tell how each of its trials ended; `trial_of(name, config)` gives the study's Trial
    of a Tune trial (None: unknown, left out; the caller records it as interrupted, and resumable)."""
    from runners.progress import Progress

    sync_log = logging.getLogger("ray.tune.execution.experiment_state")
    one_line = _OneLineSyncErrors()
    sync_log.addFilter(one_line)
    try:
        grid = tuner.fit()
    finally:
        sync_log.removeFilter(one_line)
    timing = Progress.current.trial_seconds if Progress.current else {}
    outcomes = []
    for result in grid:
        config = result.config or {}
        # The trial's directory is named by its trial id (trial_dirname_creator), config or not.
        name = (result.path or "").rstrip("/").rsplit("/", 1)[-1]
        trial = trial_of(name, config)
        if trial is None:
            continue
        metrics = dict(result.metrics or {})
        status = metrics.get("status")
        ended = written_end(root, name, trial.config.train.steps) if status not in DONE else None
        if ended is not None:  # the trial wrote its summary, but its last report never reached us
            status, metrics = ended["status"], ended
        error = metrics.get("error") if status == "failed" else None  # a trial that ended itself (trainable)
        if status not in DONE:
            status = "failed" if result.error is not None or error else "interrupted"
            error = error or (_error_line(result.error) if status == "failed" else None)
        outcomes.append(Outcome(trial, status, metrics, error, timing.get(name)))
    return outcomes


class _OneLineSyncErrors(logging.Filter):
    """Tune logs a failed save of its experiment state (a full disk, a lost bucket) with a whole traceback,
    at every save; keep the first as one line (the trial that met the same error says what to do)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        error = record.exc_info[1]
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"{record.getMessage().rstrip(': ')}: {str(error).splitlines()[-1] if str(error) else type(error).__name__}",
            None, None, None)
        first, self.seen = not self.seen, True
        return first


def reopen_failed(tune_dir: str) -> list[str] | None:
    """Mark trials that ended themselves `failed` (runners.trainable: a write failed, a bad setting) as
    errored in Tune's saved experiment state, so that `--resume` resumes them from their last checkpoint
    as it does trials whose worker crashed. Tune counts a trial that returned as terminated for good.
    Returns the trial ids reopened; None when the state is unreadable (then moved aside to *.damaged)."""
    fs, path = filesystem(tune_dir)
    states = [info.path for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
              if info.base_name.startswith("experiment_state") and info.base_name.endswith(".json")]
    if not states:
        return []
    latest = max(states)  # named experiment_state-<timestamp>.json
    try:
        with fs.open_input_stream(latest) as fh:
            state = json.loads(fh.read().decode())
    except ValueError:  # truncated JSON
        fs.move(latest, f"{latest}.damaged")
        return None
    reopened = []
    for pair in state.get("trial_data", []):
        trial, meta = json.loads(pair[0]), json.loads(pair[1])
        last = meta.get("last_result") or meta.get("_last_result") or {}
        if trial.get("status") == "TERMINATED" and last.get("status") == "failed":
            trial["status"] = "ERROR"
            pair[0] = json.dumps(trial, indent=2)
            reopened.append(str(trial.get("trial_id")))
    if reopened:
        with fs.open_output_stream(latest) as fh:
            fh.write(json.dumps(state).encode())
    return reopened


def _task_metric(name: str) -> str:
    return get_task_class(name).metric


def _record_unfinished(root: str, study: Study, outcomes: Sequence[Outcome]) -> None:
    """Summary rows for trials that could not write their own: failed for good, or interrupted."""
    for o in outcomes:
        if o.status in DONE:
            continue
        m = o.metrics
        # A tuned study's trial records its point as its own rows do (reports.load tells arms by it).
        config = o.trial.config.to_dict() | (recorded_point(o.trial.phase, o.trial.grid) if o.trial.phase else {})
        row = dict(o.trial.keys(study.name), status=o.status, error=o.error, metric=_task_metric(o.trial.task),
                   best_valid=_float(m.get("best_valid")), valid_at_last=_float(m.get("valid")),
                   steps=m.get("step"), config_json=json.dumps(config, sort_keys=True),
                   env_json=json.dumps(environment(), sort_keys=True))
        try:
            write_table(to_table([row], SUMMARY), root, "summary", o.trial.trial_id)
        except OSError as error:  # e.g. the disk that failed the trial is still full: the summary below says it
            print(f"warning: could not record trial {o.trial.trial_id} as {o.status} in {root}/summary: {error}",
                  file=sys.stderr)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "-" if value is None else str(value)


def summary_text(study: Study, outcomes: Sequence[Outcome], wall: float) -> str:
    """The end-of-study table: one line per trial, counts, and Tune's overhead per trial."""
    lines = [f"study {study.name} summary ({wall:.0f}s wall):",
             f"  {'trial':40s} {'status':11s} {'best valid':>10s} {'step':>6s} {'test@best':>9s} {'fit s':>7s}"]
    overheads = []
    for o in outcomes:
        m = o.metrics
        fit_seconds = m.get("fit_seconds")
        if o.seconds is not None and isinstance(fit_seconds, int | float):
            overheads.append(o.seconds - fit_seconds)
        lines.append(f"  {o.trial.trial_id:40s} {o.status:11s} {_fmt(m.get('best_valid')):>10s} "
                     f"{_fmt(m.get('best_step')):>6s} {_fmt(m.get('test_at_best')):>9s} "
                     f"{fit_seconds if fit_seconds is not None else float('nan'):7.1f}"
                     + (f"  {o.error}" if o.error else ""))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "diverged", "failed", "interrupted")}
    if any(o.status == "stopped" for o in outcomes):
        counts["stopped by ASHA"] = sum(o.status == "stopped" for o in outcomes)
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if overheads:
        lines.append(f"  Tune overhead per trial (trial wall time outside fit): mean {sum(overheads) / len(overheads):.1f}s, "
                     f"max {max(overheads):.1f}s over {len(overheads)} trials")
    return "\n".join(lines)
