"""Merge several studies into one for a single report (`suite report A B C --out claims.md`).

The claims (reports/claims.py) need seeds, and seeds of one arm may be spread over studies
(a quick study, the gamma study, the depth study). Studies merge when, for every task they
share, they agree on every setting that both record and that is not a grid axis, a seed,
the variant, a variant's own options or a data location (so the same protocol ran in both);
otherwise the merge is refused with one line naming the setting. Arms are relabelled with
the union of the studies' grid keys, each trial taking a key it lacks from its own config
(a study without a depth axis ran at its configured `model.num_layers`). A seed of an arm
present in two studies is refused: it would count twice. Trial ids become `<study>/<id>`,
and every trial remembers its study, so the report can say where each arm came from.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from reports.load import _IGNORED_KEYS, StudyTables, TrialSummary
from suite.core.errors import ConfigError



def _lookup(flat: dict[str, Any], key: str) -> Any:
    """A grid key's value in a flattened config; variant options live under `model.options.`."""
    if key in flat:
        return flat[key]
    section, _, rest = key.partition(".")
    return flat.get(f"{section}.options.{rest}")


def _protocol(trial: TrialSummary, grid_keys: set[str]) -> dict[str, str]:
    """The settings two studies must share for this trial's task: everything but per-arm and per-trial keys."""
    skip = set(grid_keys) | {f"{k.partition('.')[0]}.options.{k.partition('.')[2]}" for k in grid_keys}
    return {k: json.dumps(v, sort_keys=True) for k, v in trial.config().items()
            if k not in skip and not k.startswith(_IGNORED_KEYS + ("model.options.", "grid."))
            and "seed" not in k.rsplit(".", 1)[-1]}


def _retag(table: pa.Table | None, name: str) -> pa.Table | None:
    if table is None:
        return None
    ids = pc.binary_join_element_wise(pa.scalar(f"{name}/"), table["trial_id"], "")
    return table.set_column(table.schema.get_field_index("trial_id"), "trial_id", ids)


def _concat(tables: list[pa.Table | None]) -> pa.Table | None:
    present = [t for t in tables if t is not None]
    return pa.concat_tables(present).replace_schema_metadata(present[0].schema.metadata) if present else None


def merge(studies: Sequence[StudyTables]) -> StudyTables:
    """One StudyTables holding the trials of all `studies`; ConfigError (one line) when they are incompatible."""
    names = [s.name for s in studies]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"study {name!r} is given twice (or two studies share the name); a seed must count once")
    tasks = sorted({t.task for s in studies for t in s.trials.values()})
    keys = {task: {k for s in studies for t in s.trials.values() if t.task == task for k, _ in t.settings}
            for task in tasks}
    # Compatibility: per task, the first finished (else any) trial of each study stands for its protocol.
    for task in tasks:
        seen: list[tuple[str, dict[str, str]]] = []
        for s in studies:
            trials = sorted((t for t in s.trials.values() if t.task == task),
                            key=lambda t: (t.status != "finished", t.trial_id))
            if not trials:
                continue
            mine = _protocol(trials[0], keys[task])
            for other, theirs in seen:
                for key in sorted(mine.keys() & theirs.keys()):
                    if mine[key] != theirs[key]:
                        raise ConfigError(f"cannot merge studies {other!r} and {s.name!r}: task {task} ran with "
                                          f"{key} = {theirs[key]} vs {mine[key]}; merge only studies of the same "
                                          f"protocol (or add {key} as a grid axis)")
            seen.append((s.name, mine))
    trials: dict[str, TrialSummary] = {}
    owner: dict[tuple[str, str, int], str] = {}
    for s in studies:
        for t in sorted(s.trials.values(), key=lambda t: t.trial_id):
            own = dict(t.settings)
            flat = t.config()
            settings = []
            for key in sorted(keys[t.task]):
                if key in own:
                    settings.append((key, own[key]))
                elif _lookup(flat, key) is not None:
                    settings.append((key, json.dumps(_lookup(flat, key), sort_keys=True)))
            settings = tuple(settings)
            arm = t.variant + (f" ({', '.join(f'{k}={v}' for k, v in settings)})" if settings else "")
            where = (t.task, arm, t.seed)
            if where in owner:
                raise ConfigError(f"studies {owner[where]!r} and {s.name!r} both hold seed {t.seed} of task {t.task} "
                                  f"arm `{arm}`: a seed must count once; drop one study or rerun with other seeds")
            owner[where] = s.name
            trial_id = f"{s.name}/{t.trial_id}"
            trials[trial_id] = TrialSummary(trial_id, t.task, t.variant, t.seed, arm, settings, t.status, t.error, t.row,
                                     source=s.name)
    search = {f"{s.name}/{t.trial_id}": dataclasses.replace(t, trial_id=f"{s.name}/{t.trial_id}", source=s.name)
              for s in studies for t in s.search.values()}
    merged = StudyTables(" + ".join(names), studies[0].path,
                   _concat([_retag(s.summary, s.name) for s in studies]),
                   _concat([_retag(s.curve, s.name) for s in studies]),
                   _concat([_retag(s.lengths, s.name) for s in studies]),
                   _concat([_retag(s.throughput, s.name) for s in studies]),
                   trials, tuple((s.name, Path(s.path)) for s in studies),
                   inference=_concat([_retag(s.inference, s.name) for s in studies]), search=search)
    return merged
