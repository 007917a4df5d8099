"""A study's `[search]` table: search spaces, equal budgets per variant, searcher and scheduler.

A comparison at one shared learning rate favours the variant that rate suits; Melis et al.
(2018) and Dodge et al. (2019, "Show Your Work") show tuning moves results more than
architecture changes. So a study may tune each variant with the same budget first (the
search phase), then re-run each variant's best configuration, chosen by *validation*, on
the study's seeds (the final phase; runners.phases runs both). Layout:

    [search]
    samples = 8                  # trials per (task, variant): the equal budget
    searcher = "random"          # "random" (seeded by `seed`) or "optuna" (TPE, the `tune` extra)
    scheduler = "asha"           # "none" or "asha": stop poor trials at evaluation points
    grace_steps = 100            # ASHA: steps every trial gets before it can be stopped
    reduction_factor = 3         # ASHA: keep the best 1/reduction_factor at each rung
    seed = 0                     # optional: draws and the search trials' training seed (first study seed)

    [search.space]               # every variant
    "optim.lr" = { loguniform = [1e-4, 1e-2] }

    [search.variants.bn_lstm]    # one variant's own options (refused where it lacks them)
    "model.gamma_init" = { uniform = [0.05, 1.0] }

Spaces: `loguniform = [low, high]` (0 < low < high), `uniform = [low, high]`,
`quniform = [low, high, q]`, `choice = [v1, v2, ...]`. The random searcher draws value i of a
key from a generator seeded by (seed, key, i), so every variant and task sees the same draws
of a shared key (paired samples: differences between variants are not draw luck).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from suite.core.errors import ConfigError

KINDS = ("loguniform", "uniform", "quniform", "choice")
SEARCHERS = ("random", "optuna")
SCHEDULERS = ("none", "asha")
KEYS = ("samples", "searcher", "scheduler", "grace_steps", "reduction_factor", "seed", "space", "variants")
# Keys that define the budget or the arm itself: searching them would break the equal budget.
FIXED = ("train.steps", "train.seed", "train.eval_every", "model.variant", "task.name")


@dataclass(frozen=True)
class Space:
    """One searched key: its kind and arguments ([low, high], [low, high, q] or the choices)."""

    key: str
    kind: str
    args: tuple[Any, ...]

    @property
    def log(self) -> bool:
        """Whether the space is log-scaled (its sensitivity figure uses a log axis)."""
        return self.kind == "loguniform"

    def probes(self) -> list[Any]:
        """Values that together exercise the whole space (for validation before any trial)."""
        return list(self.args) if self.kind == "choice" else [self.args[0], self.args[1]]

    def draw(self, seed: int, index: int) -> Any:
        """Value number `index` of the random searcher: a function of (seed, key, index) only."""
        import numpy as np

        rng = np.random.default_rng([seed, zlib.crc32(self.key.encode()), index])
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = float(self.args[0]), float(self.args[1])
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        value = float(rng.uniform(low, high))
        if self.kind == "quniform":
            q = float(self.args[2])
            value = min(high, max(low, round(value / q) * q))
        return value

    def tune_domain(self):
        """The same space as a Ray Tune domain (for searchers that draw through Tune, e.g. Optuna)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "quniform":
            return tune.quniform(*self.args)
        return getattr(tune, self.kind)(self.args[0], self.args[1])

    def to_dict(self) -> dict[str, list[Any]]:
        """The TOML form, `{kind: args}`."""
        return {self.kind: list(self.args)}


@dataclass(frozen=True)
class Search:
    """A parsed `[search]` table (module docstring)."""

    samples: int
    spaces: Mapping[str, Space]
    per_variant: Mapping[str, Mapping[str, Space]] = field(default_factory=dict)
    searcher: str = "random"
    scheduler: str = "none"
    grace_steps: int = 1
    reduction_factor: int = 3
    seed: int = 0

    def spaces_of(self, variant: str) -> dict[str, Space]:
        """The spaces searched for one variant: the shared ones, then its own (which may override)."""
        return dict(self.spaces) | dict(self.per_variant.get(variant, {}))

    def point(self, variant: str, index: int) -> dict[str, Any]:
        """Sample `index` of the random searcher for one variant."""
        return {key: space.draw(self.seed, index) for key, space in sorted(self.spaces_of(variant).items())}

    def to_dict(self) -> dict[str, Any]:
        """The TOML form (what travels to each trial and into the study's fingerprint)."""
        return {"samples": self.samples, "searcher": self.searcher, "scheduler": self.scheduler,
                "grace_steps": self.grace_steps, "reduction_factor": self.reduction_factor, "seed": self.seed,
                "space": {k: s.to_dict() for k, s in self.spaces.items()},
                "variants": {v: {k: s.to_dict() for k, s in spaces.items()} for v, spaces in self.per_variant.items()}}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_space(key: str, raw: Any, where: str) -> Space:
    """One `"section.key" = { kind = [...] }` entry, with its bounds checked."""
    example = '{ loguniform = [1e-4, 1e-2] }'
    if "." not in key:
        raise ConfigError(f"{where}: key {key!r} must be SECTION.KEY, e.g. \"optim.lr\" = {example}")
    if key in FIXED:
        raise ConfigError(f"{where}: {key!r} cannot be searched: every variant gets the same {key} "
                          f"(the equal budget); set it in [config]")
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ConfigError(f"{where}: {key!r} must be one of {', '.join(KINDS)}, e.g. {key!r} = {example}")
    kind, args = next(iter(raw.items()))
    if kind not in KINDS:
        raise ConfigError(f"{where}: {key!r} has unknown space {kind!r}; known: {', '.join(KINDS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {key!r}: {kind} takes a list, e.g. {kind} = "
                          f"{'[0.1, 0.3]' if kind == 'choice' else '[low, high]'}")
    if kind == "choice":
        return Space(key, kind, tuple(args))
    wanted = 3 if kind == "quniform" else 2
    if len(args) != wanted or not all(_number(a) for a in args):
        raise ConfigError(f"{where}: {key!r}: {kind} takes {wanted} numbers "
                          f"[low, high{', q' if kind == 'quniform' else ''}], got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise ConfigError(f"{where}: {key!r}: {kind} bounds are inverted or equal ({low} >= {high}); "
                          f"write [low, high] with low < high")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: {key!r}: loguniform needs 0 < low < high, got [{low}, {high}]; "
                          f"use uniform for a range that includes zero or negative values")
    if kind == "quniform" and not args[2] > 0:
        raise ConfigError(f"{where}: {key!r}: quniform's step q must be > 0, got {args[2]}")
    return Space(key, kind, tuple(args))


def _spaces(raw: Any, where: str) -> dict[str, Space]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table of \"section.key\" = {{ kind = [...] }}")
    return {key: parse_space(key, value, where) for key, value in raw.items()}


def parse_search(raw: Mapping[str, Any], variants: Sequence[str], default_seed: int, source: str) -> Search:
    """Validate a `[search]` table's own shape (keys, kinds, bounds, names; configs come in `check_search`)."""
    where = f"{source} [search]"
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(KEYS)}")
    samples = raw.get("samples")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigError(f"{where}: `samples` (trials per variant) must be an integer >= 1, got {samples!r}")
    searcher = raw.get("searcher", "random")
    if searcher not in SEARCHERS:
        raise ConfigError(f"{where}: unknown searcher {searcher!r}; known: {', '.join(SEARCHERS)}")
    scheduler = raw.get("scheduler", "none")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"{where}: unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}")
    ints = {}
    for key, default, low in (("grace_steps", 1, 1), ("reduction_factor", 3, 2), ("seed", default_seed, 0)):
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{where}: `{key}` must be an integer >= {low}, got {value!r}")
        ints[key] = value
    spaces = _spaces(raw.get("space", {}), f"{where} space")
    per_variant_raw = raw.get("variants", {})
    if not isinstance(per_variant_raw, Mapping):
        raise ConfigError(f"{where}: `variants` must hold one table per variant, e.g. [search.variants.bn_lstm]")
    per_variant = {}
    for variant, table in per_variant_raw.items():
        if variant not in variants:
            raise ConfigError(f"{where}: [search.variants.{variant}] names a variant the study does not run; "
                              f"its variants: {', '.join(variants)}")
        per_variant[variant] = _spaces(table, f"{source} [search.variants.{variant}]")
    if not spaces and not any(per_variant.values()):
        raise ConfigError(f"{where}: nothing to search; add e.g. [search.space] \"optim.lr\" = "
                          f"{{ loguniform = [1e-4, 1e-2] }}")
    if searcher == "optuna":
        require_optuna(where)
    return Search(samples=samples, spaces=spaces, per_variant=per_variant, searcher=searcher, scheduler=scheduler,
                  **ints)


def require_optuna(where: str) -> None:
    """Refuse the Optuna searcher, in one line, when optuna is not installed."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(f"{where}: searcher \"optuna\" needs the optuna package: "
                          f"pip install 'recnorm-suite[tune]' (or use searcher = \"random\")") from None


def probe_points(search: Search, variant: str) -> list[dict[str, Any]]:
    """Points that put every searched key of a variant at each bound (or choice) at least once."""
    spaces = search.spaces_of(variant)
    if not spaces:
        return [{}]
    width = max(len(s.probes()) for s in spaces.values())
    return [{key: s.probes()[min(i, len(s.probes()) - 1)] for key, s in spaces.items()} for i in range(width)]


def check_steps(study: Any, search: Search) -> None:
    """The equal budget: every variant of a task trains for the same maximum number of steps,
    and ASHA's grace period fits inside it."""
    for task in study.tasks:
        steps = {v: study.resolve_trial(task, v, study.seeds[0], {}).config.train.steps for v in study.variants}
        if len(set(steps.values())) > 1:
            raise ConfigError(f"{study.source}: task {task!r}: variants train for different numbers of steps "
                              f"({steps}); a search needs the same maximum for all (the equal budget)")
        if search.scheduler == "asha" and search.grace_steps >= min(steps.values()):
            raise ConfigError(f"{study.source} [search]: grace_steps {search.grace_steps} must be below the "
                              f"task's {min(steps.values())} training steps, or ASHA can never stop a trial")
