"""Print a pytest-benchmark JSON of tests/bench/test_throughput.py as a markdown table (issue 12's goals).

Usage: python tests/gpu/bench_table.py BENCH.json. One row per (shape, direction, variant): the
backend that ran it, the median seconds, the ratio to cudnn_lstm rounds taken beside it, and
the peak memory against cudnn_lstm's.
"""

from __future__ import annotations

import json
import sys


def table(path: str) -> str:
    """The markdown table of one benchmark JSON file."""
    with open(path) as fh:
        data = json.load(fh)
    info = data.get("machine_info", {})
    lines = [f"{info.get('gpu') or info.get('cpu', {}).get('brand_raw', '?')}, torch {info.get('torch')}, "
             f"CUDA {info.get('cuda')}, {data.get('datetime', '?')}", "",
             "| shape | direction | variant | backend | median (ms) | x cudnn_lstm | memory x cudnn_lstm |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = []
    for bench in data["benchmarks"]:
        extra = bench["extra_info"]
        memory = extra.get("memory_ratio_to_cudnn")
        rows.append((extra["shape"], extra["direction"], extra["label"], extra.get("backend", "?"),
                     f"{1000 * bench['stats']['median']:.2f}", f"{extra['ratio_to_cudnn']:.2f}",
                     "-" if memory is None else f"{memory:.2f}"))
    for row in sorted(rows):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
