"""Arrow schemas of the suite's result tables and their atomic Parquet writer.

Layout of a results location: `<root>/<table>/<trial_id>.parquet`, one file per trial per
table, so parallel trials never touch the same file and `pyarrow.dataset.dataset(root/table)`
(or DuckDB, Polars, pandas) reads a whole table. Files are written under a temporary name
and renamed. Every schema carries `schema_version` in its metadata; the summary row
carries the resolved config and the environment that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import uuid
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = "2"
# Columns added since an older version: a file of that version may lack them (read as nulls).
# Version 2 added `phase` to curve and summary (tuned studies: "search" or "final"; null otherwise).
ADDED_SINCE: dict[str, tuple[str, ...]] = {"1": ("phase",)}
PHASES = ("search", "final")

_KEYS = [
    pa.field("study", pa.string()),
    pa.field("trial_id", pa.string()),
    pa.field("task", pa.string()),
    pa.field("variant", pa.string()),
    pa.field("seed", pa.int64()),
]
_PHASE = pa.field("phase", pa.string())  # "search" | "final" in studies with a [search]; null in plain grids


def _schema(fields: list[pa.Field], table: str) -> pa.Schema:
    return pa.schema(_KEYS + fields, metadata={"schema_version": SCHEMA_VERSION, "table": table})


CURVE = _schema([
    pa.field("step", pa.int64()),
    pa.field("split", pa.string()),  # "train" (mean over the interval) or "valid" (exact)
    pa.field("metric", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("loss", pa.float64()),
    pa.field("stats_mode", pa.string()),  # how BN statistics were taken; "none" without BN
    pa.field("train_seconds", pa.float64()),  # training time so far, evaluations excluded
    pa.field("examples", pa.int64()),
    _PHASE,
], "curve")

SUMMARY = _schema([
    pa.field("status", pa.string()),  # finished | diverged | stopped (by ASHA) | failed | interrupted
    pa.field("error", pa.string()),
    pa.field("metric", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("stats_mode", pa.string()),
    pa.field("best_step", pa.int64()),
    pa.field("best_valid", pa.float64()),
    pa.field("valid_at_last", pa.float64()),
    pa.field("train_at_best", pa.float64()),
    pa.field("test_at_best", pa.float64()),
    pa.field("test_at_last", pa.float64()),
    pa.field("steps", pa.int64()),
    pa.field("train_seconds", pa.float64()),
    pa.field("wall_seconds", pa.float64()),
    pa.field("examples_per_second", pa.float64()),
    pa.field("num_params", pa.int64()),
    pa.field("device", pa.string()),
    pa.field("config_json", pa.string()),
    pa.field("env_json", pa.string()),
    _PHASE,
], "summary")

# Evaluations on sequences of other lengths than the training length (paper Figure 3b).
LENGTHS = _schema([
    pa.field("checkpoint", pa.string()),  # "best" or "last"
    pa.field("split", pa.string()),
    pa.field("length", pa.int64()),
    pa.field("metric", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("stats_mode", pa.string()),
], "lengths")

# Throughput of one variant at one shape (written by `suite bench`); study/trial_id name the bench run.
THROUGHPUT = _schema([
    pa.field("shape", pa.string()),  # e.g. "smnist" (T=784, B=100, F=1, H=100)
    pa.field("steps", pa.int64()),
    pa.field("batch", pa.int64()),
    pa.field("input_size", pa.int64()),
    pa.field("hidden_size", pa.int64()),
    pa.field("direction", pa.string()),  # "fwd+bwd" or "fwd"
    pa.field("device", pa.string()),
    pa.field("seconds_median", pa.float64()),
    pa.field("seconds_min", pa.float64()),
    pa.field("rounds", pa.int64()),
    pa.field("ratio_to_cudnn", pa.float64()),
    pa.field("peak_memory_bytes", pa.int64()),
    pa.field("env_json", pa.string()),
], "throughput")

TABLES: dict[str, pa.Schema] = {"curve": CURVE, "summary": SUMMARY, "lengths": LENGTHS, "throughput": THROUGHPUT}


def environment() -> dict[str, Any]:
    """Library versions and the machine, recorded with every result."""
    import torch

    from suite.core.backends.native import build as native_build

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
           "torch": torch.__version__, "pyarrow": pa.__version__, "ray": version("ray"),
           "recnorm_suite": version("recnorm-suite"), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda,
           "native_kernels": native_build.status()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows to a table of `schema`; missing columns become nulls, unknown keys are an error."""
    rows = list(rows)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"row has columns not in the {schema.metadata[b'table'].decode()} schema: {sorted(extra)}")
    return pa.Table.from_pylist([{n: row.get(n) for n in schema.names} for row in rows], schema=schema)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or a URI (s3://, gs://, file://)."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def write_table(table: pa.Table, root: str, name: str, trial_id: str) -> str:
    """Write `root/name/trial_id.parquet` atomically (temporary name, then rename); returns the path."""
    fs, base = filesystem(root)
    folder = f"{base}/{name}"
    fs.create_dir(folder, recursive=True)
    final = f"{folder}/{trial_id}.parquet"
    temp = f"{folder}/.{trial_id}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, temp, filesystem=fs)
    fs.move(temp, final)
    return final


def write_run(root: str, keys: Mapping[str, Any], curve: list[Mapping[str, Any]], summary: Mapping[str, Any],
              config: Mapping[str, Any], lengths: list[Mapping[str, Any]] = (),
              where: Mapping[str, Any] | None = None) -> None:
    """Write one trial's curve, summary (and lengths) tables; `keys` holds study, trial_id, task, variant, seed.

    `where` adds facts about the process that ran the trial (e.g. its Ray node) to the environment.
    """
    trial_id = keys["trial_id"]
    write_table(to_table([dict(keys, **row) for row in curve], CURVE), root, "curve", trial_id)
    if lengths:
        write_table(to_table([dict(keys, **row) for row in lengths], LENGTHS), root, "lengths", trial_id)
    row = dict(keys, **summary, config_json=json.dumps(config, sort_keys=True),
               env_json=json.dumps(environment() | dict(where or {}), sort_keys=True))
    write_table(to_table([row], SUMMARY), root, "summary", trial_id)


def read_trial_rows(root: str, name: str, trial_id: str) -> list[dict[str, Any]]:
    """The rows of `root/name/trial_id.parquet` as dicts ([] where the trial wrote none)."""
    fs, base = filesystem(root)
    path = f"{base}/{name}/{trial_id}.parquet"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    return pq.read_table(path, filesystem=fs, schema=TABLES[name]).to_pylist()


def read_trial_row(root: str, name: str, trial_id: str) -> dict[str, Any] | None:
    """The first row of `root/name/trial_id.parquet` as a dict, or None where the trial wrote none."""
    rows = read_trial_rows(root, name, trial_id)
    return rows[0] if rows else None


def read_table(root: str, name: str) -> pa.Table:
    """Read one table of a results location, checking its schema version."""
    import pyarrow.dataset as ds

    fs, base = filesystem(root)
    data = ds.dataset(f"{base}/{name}", filesystem=fs, format="parquet", schema=TABLES[name],
                      exclude_invalid_files=False)
    return data.to_table()
