"""Compact progress lines for a running study (instead of Tune's wide status tables).

One line per event: a trial started, reported an evaluation, finished, failed or was
retried from its checkpoint, each with the study's counts (running / done / failed /
pending). The callback also times every trial as Tune sees it, so the runner can tell
Tune's overhead (trial wall time minus the time spent inside `fit`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from ray import tune

from runners.trainable import point_of, trial_identity


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "-" if value is None else str(value)


class Progress(tune.Callback):
    """Prints one line per trial event; times each trial from its start to its end.

    Counts come from the trials Tune passes to every hook, so they are right after a
    resume too (this object is pickled with the experiment and restored with it).
    """

    # The instance running in this process (set by `setup`; restored experiments bring their own).
    current: Progress | None = None

    def __init__(self, metric: dict[str, str] | None = None):
        self.metric = dict(metric or {})  # task name -> metric name, for the labels
        self.setup()

    def setup(self, **info) -> None:
        """Called by Tune when the experiment (re)starts."""
        self.started_at = time.monotonic()
        self.trial_started: dict[str, float] = {}
        self.trial_seconds: dict[str, float] = {}
        Progress.current = self

    def _say(self, trials: list, text: str) -> None:
        states = Counter(trial.status for trial in trials)
        line = (f"[{time.monotonic() - self.started_at:6.0f}s] {text}  | {states['RUNNING']} running, "
                f"{states['TERMINATED']} done, {states['ERROR']} failed, {states['PENDING'] + states['PAUSED']} pending")
        print(line, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial got a worker."""
        name = trial_name(trial)
        self.trial_started.setdefault(name, time.monotonic())
        self._say(trials, f"{name} started")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        """An evaluation came in."""
        if result.get("status", "running") != "running":
            return  # the closing report; on_trial_complete prints it
        metric = self.metric.get(point_of(trial.config)[0], "metric")
        self._say(trials, f"{trial_name(trial)} step {result.get('step')}/{result.get('total_steps')} valid {metric} "
                          f"{_fmt(result.get('valid'))} (best {_fmt(result.get('best_valid'))})")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial returned."""
        name = trial_name(trial)
        if name in self.trial_started:
            self.trial_seconds[name] = time.monotonic() - self.trial_started[name]
        last = trial.last_result or {}
        self._say(trials, f"{name} {last.get('status', 'done')}: best valid {_fmt(last.get('best_valid'))} at step "
                          f"{_fmt(last.get('best_step'))}, test {_fmt(last.get('test_at_best'))}")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial's worker failed and Tune retries it from its last checkpoint."""
        self._say(trials, f"{trial_name(trial)} worker failed; retrying from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial failed for good."""
        self._say(trials, f"{trial_name(trial)} failed")


def trial_name(trial) -> str:
    """The study's trial id of a Tune trial (from its config; a search trial drawn by a Tune searcher is
    numbered by the order Tune created it, which its experiment tag starts with and a restore keeps)."""
    index = int(str(trial.experiment_tag).split("_", 1)[0]) - 1 if str(trial.experiment_tag)[:1].isdigit() else None
    return trial_identity(trial.config, index)[0]
