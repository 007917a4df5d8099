"""Process-level performance settings: OpenMP threads that sleep instead of spinning, a thread
count that fits the CPUs this process may use, and glibc malloc tuning.

Threads. torch's CPU build and the native kernels share one OpenMP runtime (torch's libgomp).
By default its idle workers spin for milliseconds after every parallel region; a recurrent
time loop enters several regions per step, so two processes on the same cores burn each
other's time slices spinning, and every barrier then waits a whole slice for a descheduled
thread (issue 14: 70x slower training for two `suite train` at once on 2 cores).
`set_thread_env()` sets `OMP_WAIT_POLICY=PASSIVE` (and Intel OpenMP's `KMP_BLOCKTIME=0`) in the
environment; the runtime reads it once, when torch is imported, so `suite/__init__.py` calls
it before anything imports torch, and Ray workers inherit it. A value the user set wins;
`RECNORM_THREAD_TUNING=0` leaves OpenMP's default (to compare, or on a machine of one's own). `configure_threads()` caps torch's intra-op threads at `available_cpus()`
(the affinity mask and a cgroup CPU quota, not the machine's core count).
`tune_process()` applies threads and malloc settings; `fit`, `suite bench` and the benchmarks
call it, so `suite train` and every Ray Tune trial run alike.

Malloc.

A recurrent time loop allocates and frees thousands of mid-sized tensors per batch. With
glibc's defaults, blocks above the (dynamic) mmap threshold are mmap'ed and unmapped every
time, and a freed heap top is trimmed back to the OS, so every batch page-faults its memory
in again. Keeping everything on the heap (`M_MMAP_MAX = 0`) and trimming only very large free
tops (`M_TRIM_THRESHOLD`) removes that; the measurement is in README.md ("Speed").

`apply_malloc_tuning()` sets this in the running process through `mallopt`; `suite.core.train.fit`
calls it, so `suite train` and every Ray Tune trial run tuned. `malloc_env()` returns the
`GLIBC_TUNABLES` equivalent for other child processes. `RECNORM_MALLOC_TUNING=0` turns both off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
from pathlib import Path

ENV_VAR = "RECNORM_MALLOC_TUNING"
# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Free heap tops below 2 GiB stay mapped: one smnist BN-LSTM batch frees ~1.2 GB at once.
TRIM_THRESHOLD = 2**31 - 1
TUNABLES = {"glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": str(TRIM_THRESHOLD)}

_state = "default"


def malloc_tuning_enabled() -> bool:
    """False when RECNORM_MALLOC_TUNING is 0/false/no/off."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt  # noqa: B018 -- musl and non-glibc systems lack it
        libc.gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def apply_malloc_tuning() -> bool:
    """Apply the malloc settings in this process unless switched off; True when they are in force."""
    global _state
    if not malloc_tuning_enabled():
        _state = "disabled"
        return False
    libc = _libc()
    if libc is None:
        _state = "unsupported"
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state = "mallopt" if ok else "mallopt-failed"
    return ok


def malloc_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables giving a child process (or Ray worker) the same malloc settings.

    Existing GLIBC_TUNABLES entries in `base` (default: os.environ) are kept; settings of our
    own keys there win over ours. Empty when tuning is switched off.
    """
    source = os.environ if base is None else base
    if not malloc_tuning_enabled():
        return {ENV_VAR: "0"}
    existing = [item for item in source.get("GLIBC_TUNABLES", "").split(":") if item]
    present = {item.split("=", 1)[0] for item in existing}
    merged = existing + [f"{k}={v}" for k, v in TUNABLES.items() if k not in present]
    return {"GLIBC_TUNABLES": ":".join(merged), ENV_VAR: "1"}


def malloc_tuning_state() -> str:
    """How malloc is set up in this process: mallopt, tunables (inherited), disabled, default, ..."""
    if _state != "default":
        return _state
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if all(f"{k}={v}" in tunables for k, v in TUNABLES.items()):
        return "tunables"
    return "disabled" if not malloc_tuning_enabled() else "default"


# Idle OpenMP workers sleep at once instead of spinning (libgomp; Intel OpenMP reads KMP_BLOCKTIME).
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
# Whether the wait policy above was in the environment when torch (and so OpenMP) was loaded.
_policy_at_torch_import: str | None = None


THREAD_SWITCH = "RECNORM_THREAD_TUNING"


def thread_tuning_enabled() -> bool:
    """False when RECNORM_THREAD_TUNING is 0/false/no/off (OpenMP keeps its spinning default)."""
    return os.environ.get(THREAD_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def thread_env() -> dict[str, str]:
    """The OpenMP settings for a child process (or Ray worker); the user's own values win."""
    if not thread_tuning_enabled():
        return {THREAD_SWITCH: "0"}
    return {key: os.environ.get(key, value) for key, value in THREAD_ENV.items()}


def set_thread_env() -> None:
    """Put `thread_env()` into os.environ; in force only if torch is not imported yet (module doc)."""
    global _policy_at_torch_import
    already = "torch" in sys.modules
    policy_before = os.environ.get("OMP_WAIT_POLICY")
    if thread_tuning_enabled():
        for key, value in THREAD_ENV.items():
            os.environ.setdefault(key, value)
    _policy_at_torch_import = policy_before if already else os.environ.get("OMP_WAIT_POLICY")


def wait_policy() -> str:
    """OpenMP's wait policy as torch loaded it: PASSIVE, ACTIVE, or 'default (spinning)' when unset then."""
    return _policy_at_torch_import.upper() if _policy_at_torch_import else "default (spinning)"


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup CPU quota (v2 cpu.max or v1 cfs quota), None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, lowered by a cgroup quota (at least 1)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads`, else its current count capped at `available_cpus()`."""
    import torch

    chosen = threads if threads is not None else min(torch.get_num_threads(), available_cpus())
    if chosen != torch.get_num_threads():
        torch.set_num_threads(chosen)
    return chosen


def tune_process(threads: int | None = None) -> None:
    """Every process-level setting of a training or benchmark process: threads, then malloc."""
    configure_threads(threads)
    apply_malloc_tuning()


def thread_state() -> dict[str, object]:
    """What a result records about threads: the count, the CPUs available, OpenMP's wait policy."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "available_cpus": available_cpus(),
            "omp_wait_policy": wait_policy()}
