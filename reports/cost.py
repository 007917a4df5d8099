"""Cost: training throughput and model size per arm, and the benchmark figures (`suite bench`, pytest-benchmark).

A pytest-benchmark JSON (`pytest tests/bench --benchmark-only --benchmark-json FILE`) is read
for its `benchmarks` list: name, group, timing statistics in seconds, and `extra_info`
(e.g. the ratio to `cudnn_lstm` measured in the same session). A malformed file is a
SuiteError naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.core.errors import SuiteError


@dataclass(frozen=True)
class Benchmark:
    """One pytest-benchmark entry."""

    name: str
    group: str
    median: float
    minimum: float
    rounds: int
    extra: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class BenchmarkRun:
    """A pytest-benchmark JSON: its entries and a few machine facts (no host names)."""

    source: str
    machine: tuple[tuple[str, str], ...]
    benchmarks: list[Benchmark]


def read_benchmark_json(path: str | Path) -> BenchmarkRun:
    """Parse a pytest-benchmark JSON file; SuiteError naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read benchmark JSON ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise SuiteError(f"{path}: not a pytest-benchmark JSON (no 'benchmarks' list)")
    entries = []
    for i, entry in enumerate(data["benchmarks"]):
        try:
            stats = entry["stats"]
            extra = entry.get("extra_info") or {}
            entries.append(Benchmark(str(entry["name"]), str(entry.get("group") or ""), float(stats["median"]),
                                     float(stats["min"]), int(stats["rounds"]),
                                     tuple(sorted((str(k), v) for k, v in extra.items()
                                                  if isinstance(v, (int, float, str, bool))))))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SuiteError(f"{path}: benchmark entry {i} lacks name/stats.median/min/rounds ({exc!r})") from None
    info = data.get("machine_info") or {}
    machine = []
    for key in ("python_implementation", "python_version", "machine", "system"):
        if isinstance(info.get(key), str):
            machine.append((key, info[key]))
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
    if isinstance(cpu.get("brand_raw"), str):
        machine.append(("cpu", cpu["brand_raw"]))
    for key in sorted(k for k in info if isinstance(info[k], (str, int, float)) and ("torch" in k or "cuda" in k)):
        machine.append((key, str(info[key])))
    return BenchmarkRun(path.name, tuple(machine),
                        sorted(entries, key=lambda b: (b.group, b.name)))
