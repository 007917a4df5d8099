"""Arrow schemas of the suite's result tables and their atomic Parquet writer.

Layout of a results location: `<root>/<table>/<trial_id>.parquet`, one file per trial per
table, so parallel trials never touch the same file and `pyarrow.dataset.dataset(root/table)`
(or DuckDB, Polars, pandas) reads a whole table. Files are written under a temporary name
and renamed. Every schema carries `schema_version` in its metadata; the summary row
carries the resolved config and the environment that produced it (written by
`suite.core.provenance.write_run`, which needs torch; this module needs only pyarrow, so
reports can read results without torch).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from suite.core.errors import SuiteError

SCHEMA_VERSION = "2"
# Columns added since an older version: a file of that version may lack them (read as nulls).
# Version 2 added `phase` to curve, summary and lengths (tuned studies: "search" or "final"; null otherwise).
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
    _PHASE,  # trials write their key columns, phase included, into every per-trial table
], "lengths")

# BN variants at the end of a run: every way of taking statistics at inference (suite.core.inference),
# at the best-validation and the last step, on validation and test (issue 13).
INFERENCE = _schema([
    pa.field("checkpoint", pa.string()),  # "best" or "last"
    pa.field("step", pa.int64()),  # training step of that checkpoint
    pa.field("split", pa.string()),
    pa.field("stats_mode", pa.string()),  # "batch", "reestimate" or "running"
    pa.field("batch_size", pa.int64()),  # evaluation batch size (batch statistics depend on it)
    pa.field("draw", pa.int64()),  # independent re-estimation draw (null for batch and running)
    pa.field("reestimate_batches", pa.int64()),  # training batches per re-estimation (0 when none)
    pa.field("metric", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("loss", pa.float64()),
    pa.field("seconds", pa.float64()),  # evaluation time (re-estimation excluded): the cost of measuring
    _PHASE,
], "inference")

# `suite diagnose bn-inference` on one saved BN model (runners/bn_inference.py; not in TABLES: a diagnostic).
BN_INFERENCE = _schema([
    pa.field("kind", pa.string()),  # "divergence" (per time step) or "batches" (metric vs re-estimation batches)
    pa.field("checkpoint", pa.string()),  # "best" or "last"
    pa.field("step", pa.int64()),  # training step of the model
    pa.field("split", pa.string()),
    pa.field("reference", pa.string()),  # divergence: population statistics compared with batch statistics
    #                                      ("reestimate" or "running"); batches: the mode of the row
    pa.field("t", pa.int64()),  # divergence: time step (0-based)
    pa.field("batches", pa.int64()),  # training batches per re-estimation (batches rows of reestimate)
    pa.field("draw", pa.int64()),
    pa.field("batch_size", pa.int64()),  # evaluation batch size
    pa.field("metric", pa.string()),  # divergence: "relative_l2"; batches: the task's metric
    pa.field("value", pa.float64()),  # divergence: mean over the batch of ||h_batch - h_pop|| / ||h_batch||
    pa.field("q25", pa.float64()),
    pa.field("q75", pa.float64()),
    pa.field("config_json", pa.string()),
], "bn_inference")

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

# Paper Figure 1 (written by `suite diagnose gradient-flow`, runners.gradient_flow): one table for both
# panels, "1a" rows have gamma and t, "1b" rows have sigma. Not a per-trial table, so not in TABLES.
GRADIENT_FLOW_TABLE = "gradient_flow"
GRADIENT_FLOW = _schema([
    pa.field("figure", pa.string()),  # "1a" gradient norm per step, "1b" tanh derivative per sigma
    pa.field("gamma", pa.float64()),
    pa.field("t", pa.int64()),
    pa.field("sigma", pa.float64()),
    pa.field("value", pa.float64()),  # 1a: mean over the batch of ||dL/dh_t||_2; 1b: E[tanh'(x)]
    pa.field("q25", pa.float64()),
    pa.field("q75", pa.float64()),
    pa.field("source", pa.string()),  # which inputs: MNIST files, the offline sample, or random
    pa.field("config_json", pa.string()),
], GRADIENT_FLOW_TABLE)

TABLES: dict[str, pa.Schema] = {"curve": CURVE, "summary": SUMMARY, "lengths": LENGTHS, "inference": INFERENCE,
                                 "throughput": THROUGHPUT}


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
    try:
        pq.write_table(table, temp, filesystem=fs)
        fs.move(temp, final)
    except BaseException:
        # A full disk or a quota leaves a truncated temporary file: remove it (readers skip dot-files anyway).
        with contextlib.suppress(OSError):
            fs.delete_file(temp)
        raise
    return final


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
    fs, base = filesystem(root)
    data = ds.dataset(f"{base}/{name}", filesystem=fs, format="parquet", schema=TABLES[name],
                      exclude_invalid_files=False)
    return data.to_table()


def check_writable(location: str) -> None:
    """Fail before any work when the results location cannot be written (a SuiteError naming the fix)."""
    fs, path = filesystem(location)
    try:
        fs.create_dir(path, recursive=True)
        probe = f"{path}/.write-probe"
        with fs.open_output_stream(probe) as fh:
            fh.write(b"ok")
        fs.delete_file(probe)
    except (OSError, PermissionError) as exc:
        raise SuiteError(f"results location {location} is not writable ({exc}); choose another --results") from None
