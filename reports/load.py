"""Read a study's result tables (`<study>/<table>/<trial_id>.parquet`) for the report.

Every file's schema is checked against `suite.core.results` (table name, `schema_version`,
every column present with its type) before anything is read, so a malformed or foreign
file is a `SuiteError` that names the file. The tables are then read in one
`pyarrow.dataset` scan per table; nothing here loops over rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from suite.core.errors import SuiteError
from suite.core.results import ADDED_SINCE, SCHEMA_VERSION, TABLES

# Canonical display order; unknown names follow alphabetically.
VARIANT_ORDER = ["lstm", "cudnn_lstm", "bn_vertical", "bn_lstm", "ln_lstm", "wn_lstm"]
TASK_ORDER = ["smnist", "pmnist", "sfmnist", "ptb_char", "text8", "adding", "copy"]
BASELINE = "lstm"
# Config keys that never tell two arms of a study apart (per-trial or per-machine values).
_IGNORED_KEYS = ("data.", "train.device", "task_facts", "model.variant", "task.name", "grid.")


def ordered(names, order: list[str]) -> list[str]:
    """Names sorted by a canonical order, unknown ones alphabetically after it."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(order)), n))


def check_schema(actual: pa.Schema, expected: pa.Schema, path: Path) -> None:
    """Raise SuiteError naming `path` unless `actual` carries every column of `expected` with its type."""
    name = expected.metadata[b"table"].decode()
    meta = actual.metadata or {}
    table, version = meta.get(b"table"), meta.get(b"schema_version")
    if table is not None and table.decode() != name:
        raise SuiteError(f"{path}: holds a {table.decode()!r} table, expected {name!r}")
    if version is not None and version.decode() != SCHEMA_VERSION and version.decode() not in ADDED_SINCE:
        raise SuiteError(f"{path}: schema_version {version.decode()}, this suite reads versions "
                         f"{', '.join(sorted([*ADDED_SINCE, SCHEMA_VERSION]))}")
    newer = ADDED_SINCE.get(version.decode(), ()) if version is not None else ()
    for wanted in expected:
        index = actual.get_field_index(wanted.name)
        if index < 0 and wanted.name in newer:
            continue  # an older file: the column reads as nulls
        if index < 0:
            raise SuiteError(f"{path}: column {wanted.name!r} of the {name} schema is missing")
        if actual.field(index).type != wanted.type:
            raise SuiteError(f"{path}: column {wanted.name!r} has type {actual.field(index).type}, "
                             f"the {name} schema says {wanted.type}")


def read_folder(folder: Path, schema: pa.Schema) -> pa.Table | None:
    """All `*.parquet` files of one table folder (hidden temporary files skipped), or None if none."""
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        return None
    for path in files:
        try:
            actual = pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            raise SuiteError(f"{path}: not a readable Parquet file ({exc})") from None
        check_schema(actual, schema, path)
    try:
        table = ds.dataset([str(p) for p in files], schema=schema, format="parquet").to_table()
    except (pa.ArrowException, OSError) as exc:
        raise SuiteError(f"{folder}: cannot read the table ({exc})") from None
    return table.replace_schema_metadata(schema.metadata)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config dicts to {"section.key": value}."""
    if not isinstance(config, dict):
        return {prefix[:-1]: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


@dataclass(frozen=True)
class TrialSummary:
    """One trial's summary row, reduced to what the report needs; `arm` is its variant plus grid settings."""

    trial_id: str
    task: str
    variant: str
    seed: int
    arm: str
    settings: tuple[tuple[str, str], ...]
    status: str
    error: str
    row: dict[str, Any]
    source: str = ""  # the study it came from, when studies were merged (reports.merge)

    def config(self) -> dict[str, Any]:
        """The run config recorded in the summary row, flattened to {"section.key": value} ({} if unreadable)."""
        try:
            config = json.loads(self.row.get("config_json") or "{}")
        except json.JSONDecodeError:
            return {}
        return flatten(config) if isinstance(config, dict) else {}


@dataclass
class StudyTables:
    """The tables of one study and its trials grouped into (task, arm)."""

    name: str
    path: Path
    summary: pa.Table | None
    curve: pa.Table | None
    lengths: pa.Table | None
    throughput: pa.Table | None
    trials: dict[str, TrialSummary] = field(default_factory=dict)
    parts: tuple[tuple[str, Path], ...] = ()  # (name, directory) of each merged study; empty for one study
    inference: pa.Table | None = None  # BN arms under every statistics mode (issue 13)
    # Search-phase trials of a tuned study (runners.phases): read by reports.tuning only; `trials`,
    # `summary` and `curve` hold the rest (the final comparison), so every other section is unchanged.
    search: dict[str, TrialSummary] = field(default_factory=dict)

    def metric(self, task: str) -> tuple[str, str]:
        """(metric, mode) of a task from the first trial that recorded them (failed ones may not)."""
        for t in sorted(self.trials.values(), key=lambda t: t.trial_id):
            if t.task == task and t.row["metric"] and t.row["mode"] in ("max", "min"):
                return t.row["metric"], t.row["mode"]
        # Only unfinished trials without a metric: the tables stay empty, the problems section explains.
        return "value", "max"

    def tasks(self) -> list[str]:
        """Tasks with at least one summarized trial, in canonical order."""
        return ordered((t.task for t in self.trials.values()), TASK_ORDER)

    def arms(self, task: str) -> list[str]:
        """Arms of a task in variant order, then by their settings."""
        trials = [t for t in self.trials.values() if t.task == task]
        rank = {v: i for i, v in enumerate(ordered((t.variant for t in trials), VARIANT_ORDER))}
        return [a for _, _, a in sorted({(rank[t.variant], t.settings, t.arm) for t in trials})]

    def trials_of(self, task: str, arm: str, finished: bool = False) -> list[TrialSummary]:
        """Trials of one arm sorted by seed then id; only finished ones when asked."""
        out = [t for t in self.trials.values() if t.task == task and t.arm == arm
               and (not finished or t.status == "finished")]
        return sorted(out, key=lambda t: (t.seed, t.trial_id))

    def baseline(self, task: str, arm: str) -> str | None:
        """The `lstm` arm this arm is compared against: the one that agrees on every shared setting."""
        mine = dict(self.trials_of(task, arm)[0].settings)
        for candidate in self.arms(task):
            trial = self.trials_of(task, candidate)[0]
            if trial.variant != BASELINE:
                continue
            theirs = dict(trial.settings)
            if all(mine[k] == theirs[k] for k in mine.keys() & theirs.keys()):
                return candidate
        return None


def _arms(rows: list[dict[str, Any]]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Arm label per summary row: the variant plus its grid settings.

    The runner records a trial's grid point in `config["grid"]`; those keys label the arm.
    Without one, the keys are inferred: config values that differ between trials of the
    same task and variant (seeds, data locations and per-trial facts excluded).
    """
    configs, grids = [], []
    for row in rows:
        try:
            config = json.loads(row["config_json"]) if row["config_json"] else {}
        except json.JSONDecodeError:
            config = {}
        config = config if isinstance(config, dict) else {}
        grid = config.get("grid") if isinstance(config.get("grid"), dict) else {}
        grids.append({k: json.dumps(v, sort_keys=True) for k, v in grid.items() if "seed" not in k})
        configs.append({k: json.dumps(v, sort_keys=True) for k, v in flatten(config).items()
                        if not k.startswith(_IGNORED_KEYS) and "seed" not in k.rsplit(".", 1)[-1]})
    has_grid = {row["task"] for row, grid in zip(rows, grids) if grid}
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row, flat in zip(rows, configs):
        groups.setdefault((row["task"], row["variant"]), []).append(flat)
    varying: dict[str, set[str]] = {}
    for (task, _), flats in groups.items():
        for key in set().union(*flats):
            if len({f.get(key) for f in flats}) > 1:
                varying.setdefault(task, set()).add(key)
    out = []
    for row, flat, grid in zip(rows, configs, grids):
        if row["task"] in has_grid:
            settings = tuple(sorted(grid.items()))
        else:
            settings = tuple(sorted((k, flat[k]) for k in varying.get(row["task"], set()) if k in flat))
        label = row["variant"] + (f" ({', '.join(f'{k}={v}' for k, v in settings)})" if settings else "")
        out.append((label, settings))
    return out


def load_study(study_dir: str | Path) -> StudyTables:
    """Read and check every table of a study directory; SuiteError when it holds no results."""
    text = str(study_dir)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise SuiteError(f"{text}: suite report reads a local study directory; copy the study there first "
                         f"(e.g. `aws s3 sync` / `gsutil rsync`)")
    path = Path(text)
    if not path.is_dir():
        raise SuiteError(f"{path}: no such study directory")
    tables = {name: read_folder(path / name, schema) for name, schema in TABLES.items()}
    if tables["summary"] is None and tables["curve"] is None:
        raise SuiteError(f"{path}: no summary or curve tables (expected {path}/summary/*.parquet)")
    # The study's own name as the runner recorded it, else the directory's name.
    recorded = sorted({n for t in (tables["summary"], tables["curve"]) if t is not None
                       for n in pc.unique(t["study"]).to_pylist() if n})
    name = recorded[0] if len(recorded) == 1 else path.resolve().name
    summary, curve = (_without_search(tables[n]) for n in ("summary", "curve"))
    searched = _search_only(tables["summary"])
    # lengths and inference carry no phase column: a search trial's rows go by its trial id.
    search_ids = pa.array(sorted(set(searched["trial_id"].to_pylist())) if searched is not None else [], pa.string())
    lengths, inference = (_without_trials(tables[n], search_ids) for n in ("lengths", "inference"))
    study = StudyTables(name, path, summary, curve, lengths, tables["throughput"], inference=inference)
    for source, target in ((summary, study.trials), (searched, study.search)):
        if source is None:
            continue
        rows = source.sort_by([("trial_id", "ascending")]).to_pylist()
        for row, (arm, settings) in zip(rows, _arms(rows)):
            target[row["trial_id"]] = TrialSummary(row["trial_id"], row["task"], row["variant"], int(row["seed"] or 0),
                                                   arm, settings, row["status"] or "unknown", row["error"] or "", row)
    return study


def _is_search(table: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(table["phase"], "search"), False)


def _without_search(table: pa.Table | None) -> pa.Table | None:
    """The rows of a table outside a study's search phase (all rows of an untuned study)."""
    if table is None:
        return None
    kept = table.filter(pc.invert(_is_search(table)))
    return kept if kept.num_rows else None


def _without_trials(table: pa.Table | None, trial_ids: pa.Array) -> pa.Table | None:
    """The rows of a table whose trial is not in `trial_ids` (None when none are left)."""
    if table is None or not len(trial_ids):
        return table
    kept = table.filter(pc.invert(pc.is_in(table["trial_id"], value_set=trial_ids)))
    return kept if kept.num_rows else None


def _search_only(table: pa.Table | None) -> pa.Table | None:
    """The search-phase rows of a table, or None."""
    if table is None:
        return None
    kept = table.filter(_is_search(table))
    return kept if kept.num_rows else None

