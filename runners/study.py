"""Studies: a TOML file that expands to a grid of trials (tasks x variants x seeds x grid).

A study fixes what to compare and how much each trial may use; it never samples. Seeds and
variants are grid axes, as in the paper's comparisons (Cooijmans et al. 2016, Section 5),
so every variant sees the same seeds. Layout of a study file:

    name = "quickstart"                  # results go to <results>/<name>/
    description = "..."
    variants = ["lstm", "bn_lstm"]
    seeds = [0, 1]
    report = "report.md"                 # optional: written by `suite report` at the end

    [config]                             # run-config sections for every trial, over the
    model.hidden_size = 32               #   task's paper settings (Task.defaults)

    [tasks.pmnist]                       # one table per task: run-config sections for it
    task = { source = "sample", pool = 2 }

    [grid]                               # optional hyperparameter grid: key -> values
    "optim.lr" = [1e-3, 1e-2]

    [variant_grid.bn_lstm]               # optional: a grid for one variant only, on top of [grid]
    "model.gamma_init" = [0.1, 1.0]      #   (a variant's own options; other variants run once)

    [resources]                          # what one trial asks of a node
    cpu = 1
    gpu = 0.25

    [early_stopping]                     # optional
    patience = 5                         # evaluations without a better validation metric
    min_steps = 0

    [failure]
    max_failures = 2                     # retries from the last checkpoint after a crash

    [search]                             # optional: tune each variant first (runners.search)
    samples = 8
    [search.space]
    "optim.lr" = { loguniform = [1e-4, 1e-2] }

Every trial's config is resolved (and so validated) before any trial starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.search import Search, check_steps, parse_search, probe_points
from suite.core import device
from suite.core.config import RunConfig, build_dataclass, load_toml, merge
from suite.core.errors import ConfigError
from tasks.resolve import resolve

KEYS = ("name", "description", "variants", "seeds", "report", "config", "tasks", "grid", "variant_grid",
        "resources", "early_stopping", "failure", "search")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Resources:
    """What one trial asks of one node: CPUs and a fraction (or count) of GPUs."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class EarlyStopping:
    """Stop a trial after `patience` evaluations without a better validation metric."""

    patience: int = 0  # 0 disables early stopping
    min_steps: int = 0


@dataclass(frozen=True)
class Failure:
    """How often a trial whose worker died is retried from its last checkpoint."""

    max_failures: int = 2


@dataclass(frozen=True)
class Trial:
    """One point of the study's grid and its resolved run config."""

    trial_id: str
    task: str
    variant: str
    seed: int
    grid: Mapping[str, Any]
    config: RunConfig
    phase: str | None = None  # "search" | "final" in tuned studies (runners.phases)

    def keys(self, study: str) -> dict[str, Any]:
        """The key columns every result row of this trial carries."""
        return {"study": study, "trial_id": self.trial_id, "task": self.task, "variant": self.variant,
                "seed": self.seed, "phase": self.phase}


@dataclass(frozen=True)
class Study:
    """A parsed study file; `trials()` expands and resolves its grid."""

    name: str
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    tasks: Mapping[str, Mapping[str, Any]]
    config: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    variant_grid: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    failure: Failure = field(default_factory=Failure)
    description: str = ""
    report: str | None = None
    source: str = "study"
    search: Search | None = None

    def raw_config(self, task: str, variant: str, seed: int, point: Mapping[str, Any]) -> dict[str, Any]:
        """The nested run config of one grid point, before resolution (paper defaults come in `resolve`)."""
        raw = merge(self.config, self.tasks[task])
        raw = merge(raw, {"task": {"name": task}, "model": {"variant": variant}, "train": {"seed": seed}})
        for key, value in point.items():
            nested: Any = value
            for part in reversed(key.split(".")):
                nested = {part: nested}
            raw = merge(raw, nested)
        return raw

    def resolve_trial(self, task: str, variant: str, seed: int, point: Mapping[str, Any]) -> Trial:
        """Resolve one grid point into a Trial (raises ConfigError naming the trial)."""
        trial_id = make_trial_id(task, variant, seed, point)
        config = resolve(self.raw_config(task, variant, seed, point), f"{self.source} (trial {trial_id})")
        return Trial(trial_id, task, variant, seed, dict(point), config)

    def grid_points(self, variant: str | None = None) -> list[dict[str, Any]]:
        """Every combination of the grid, with `variant`'s own grid on top ([{}] without a grid)."""
        grid = dict(self.grid) | dict(self.variant_grid.get(variant, {}) if variant else {})
        keys = list(grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]

    def trials(self) -> list[Trial]:
        """All trials, tasks x variants x seeds x grid (x the variant's grid), each config resolved and validated."""
        trials = [self.resolve_trial(task, variant, seed, point)
                  for task in self.tasks for variant in self.variants for seed in self.seeds
                  for point in self.grid_points(variant)]
        if not trials:
            raise ConfigError(f"{self.source}: the study expands to zero trials "
                              f"({len(self.tasks)} tasks x {len(self.variants)} variants x {len(self.seeds)} seeds"
                              f"{' x ' + str(len(self.grid_points())) + ' grid points' if self.grid else ''})")
        seen: dict[str, Trial] = {}
        for trial in trials:
            if trial.trial_id in seen:
                raise ConfigError(f"{self.source}: two trials share the id {trial.trial_id!r}; "
                                  f"make the seeds or grid values distinct")
            seen[trial.trial_id] = trial
            self._check_gpu(trial)
        return trials

    def _check_gpu(self, trial: Trial) -> None:
        """A CUDA device needs GPUs in [resources]: Ray shows a trial only the GPUs it was given,
        numbered from 0 (whatever the node has), and none at all with gpu = 0."""
        name = trial.config.train.device
        if not name.startswith("cuda"):
            return
        where = f"{self.source} (trial {trial.trial_id}): train.device = {name!r}"
        given = math.ceil(self.resources.gpu)
        if given == 0:
            raise ConfigError(f"{where}, but [resources] gpu = 0 gives trials no GPU; set [resources] gpu "
                              f"(e.g. 1, or 0.25 to share one) or use train.device = auto or cpu")
        wanted = device.index(name)
        if wanted is not None and wanted >= given:
            raise ConfigError(f"{where}, but each trial sees only its {given} GPU(s), numbered from cuda:0; "
                              f"use train.device = cuda")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (what travels to each Tune trial)."""
        data = {"name": self.name, "description": self.description, "variants": list(self.variants),
                "seeds": list(self.seeds), "report": self.report, "config": dict(self.config),
                "tasks": {k: dict(v) for k, v in self.tasks.items()},
                "grid": {k: list(v) for k, v in self.grid.items()},
                "variant_grid": {v: {k: list(x) for k, x in g.items()} for v, g in self.variant_grid.items()},
                "resources": vars(self.resources).copy(), "early_stopping": vars(self.early_stopping).copy(),
                "failure": vars(self.failure).copy(), "source": self.source}
        return data | ({"search": self.search.to_dict()} if self.search else {})

    def fingerprint(self) -> str:
        """A hash of everything that defines the study's trials (to refuse resuming a changed study)."""
        data = self.to_dict()
        data.pop("source")
        data.pop("description")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def search_trial_id(task: str, variant: str, index: int) -> str:
    """Id of search trial number `index` (from 0) of one (task, variant)."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{task}-{variant}-search{index:03d}")


def tuned_trial_id(task: str, variant: str, seed: int) -> str:
    """Id of a final-phase trial: one seed at the variant's best searched configuration."""
    return make_trial_id(task, variant, seed, {}) + "-tuned"


def make_trial_id(task: str, variant: str, seed: int, point: Mapping[str, Any]) -> str:
    """Readable, deterministic, file-name-safe id: task-variant-s<seed>[-key=value...]."""
    parts = [task, variant, f"s{seed}"] + [f"{key.split('.')[-1]}={value}" for key, value in point.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(str(p) for p in parts))


def _list(raw: Mapping[str, Any], key: str, kind: type, source: str) -> tuple[Any, ...]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise ConfigError(f"{source}: `{key}` must be a list, e.g. {key} = {[0, 1] if kind is int else ['lstm']}")
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise ConfigError(f"{source}: `{key}` must hold only {kind.__name__}s, got {item!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{source}: `{key}` lists a value twice: {value}")
    return tuple(value)


def _table(raw: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: [{key}] must be a table")
    return dict(value)


def _grid(table: dict[str, Any], where: str, source: str) -> dict[str, tuple[Any, ...]]:
    """Check a grid table (SECTION.KEY -> non-empty list) and freeze its lists."""
    for key, values in table.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: {where} {key!r} must be a non-empty list of values")
        if "." not in key:
            raise ConfigError(f"{source}: {where} key {key!r} must be SECTION.KEY, e.g. \"optim.lr\"")
    return {k: tuple(v) for k, v in table.items()}


def parse_study(raw: Mapping[str, Any], source: str = "study") -> Study:
    """Validate the study's own keys (trial configs are checked by `Study.trials`)."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{source}: `name` must be a simple name (letters, digits, . _ -), got {name!r}")
    tasks = _table(raw, "tasks", source)
    if not tasks:
        raise ConfigError(f"{source}: no tasks; add a table per task, e.g. [tasks.adding]")
    for task, settings in tasks.items():
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{source}: [tasks.{task}] must be a table of run-config sections")
    grid = _grid(_table(raw, "grid", source), "[grid]", source)
    variants = _list(raw, "variants", str, source)
    variant_grid = {}
    for variant, table in _table(raw, "variant_grid", source).items():
        where = f"[variant_grid.{variant}]"
        if variant not in variants:
            raise ConfigError(f"{source}: {where} names a variant the study does not run; variants: "
                              f"{', '.join(variants)}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: {where} must be a table of key -> values")
        variant_grid[variant] = _grid(dict(table), where, source)
        both = sorted(set(grid) & set(variant_grid[variant]))
        if both:
            raise ConfigError(f"{source}: {both[0]!r} is in both [grid] and {where}; keep it in one")
    report = raw.get("report")
    if "search" in raw and (grid or variant_grid):
        raise ConfigError(f"{source}: a study has either a [grid] (or [variant_grid]) or a [search], not both; "
                          f"turn grid axes into `choice` spaces of the search")
    if report is not None and not isinstance(report, str):
        raise ConfigError(f"{source}: `report` must be a file name, e.g. report = \"report.html\"")
    study = Study(
        name=name, variants=variants, seeds=_list(raw, "seeds", int, source),
        tasks=tasks, config=_table(raw, "config", source), grid=grid, variant_grid=variant_grid,
        resources=build_dataclass(Resources, _table(raw, "resources", source), f"{source} [resources]"),
        early_stopping=build_dataclass(EarlyStopping, _table(raw, "early_stopping", source),
                                       f"{source} [early_stopping]"),
        failure=build_dataclass(Failure, _table(raw, "failure", source), f"{source} [failure]"),
        description=str(raw.get("description", "")), report=report, source=source,
        search=(parse_search(_table(raw, "search", source), tuple(raw.get("variants") or ()),
                             (raw.get("seeds") or [0])[0], source) if "search" in raw else None))
    checks = [
        (study.resources.cpu > 0, "[resources] cpu must be > 0"),
        (study.resources.gpu >= 0, "[resources] gpu must be >= 0"),
        (study.resources.gpu <= 1 or study.resources.gpu == int(study.resources.gpu),
         "[resources] gpu above 1 must be a whole number"),
        (study.early_stopping.patience >= 0, "[early_stopping] patience must be >= 0"),
        (study.failure.max_failures >= 0, "[failure] max_failures must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    return study


def load_study(path: str | Path) -> Study:
    """Read and validate a study file, including every trial's run config."""
    study = parse_study(load_toml(path), str(path))
    study.trials()
    if study.search is not None:
        check_search(study)
    return study


def check_search(study: Study) -> None:
    """Resolve every searched key at its bounds (and every choice) for every task and variant, before any
    trial starts: unknown keys, wrong types, out-of-range values, and a variant's own options on a variant
    that lacks them are refused here, naming the key."""
    assert study.search is not None
    check_steps(study, study.search)
    for task in study.tasks:
        for variant in study.variants:
            for point in probe_points(study.search, variant):
                try:
                    study.resolve_trial(task, variant, study.search.seed, point)
                except ConfigError as exc:
                    raise ConfigError(f"[search] of variant {variant} on task {task} at {point}: {exc}") from None


def from_dict(data: Mapping[str, Any]) -> Study:
    """Inverse of `Study.to_dict` (inside a trial)."""
    raw = {k: v for k, v in data.items() if k != "source"}
    return parse_study(raw, data.get("source", "study"))
