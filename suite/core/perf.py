"""Process-level performance settings: a thread count that fits the CPUs this process may use
and that other processes leave free, and glibc malloc tuning.

Threads. torch's CPU build and the native kernels share one OpenMP runtime (torch's libgomp),
whose idle workers spin for a while after every parallel region and at every barrier; a
recurrent time loop enters several regions per step (torch's) or meets barriers within one
region (the native kernels' batch statistics). Two processes with two threads each on 2 cores therefore burn each
other's time slices spinning, and every barrier waits a whole slice for a descheduled thread
(issue 14: 70x slower training for two `suite train` at once on 2 cores). Making the workers
sleep instead (`OMP_WAIT_POLICY=PASSIVE`) cured that but made one process alone 1.5-3x slower
on this VM (waking a sleeping vCPU costs tens of microseconds, thousands of times per batch),
so the suite keeps OpenMP's default and changes the thread count instead:
`configure_threads()` caps torch's intra-op threads at `available_cpus()` (the affinity mask
and a cgroup CPU quota, not the machine's core count), and `ThreadGovernor` (through
`share_cores()`, called once per training step and benchmark round) re-reads, at most every
half second, how much of those CPUs other processes used (`/proc/stat` minus this process's own CPU
time) and runs on the CPUs left free, at least one. A single thread enters no parallel region,
so nothing spins; when the other process ends, the threads come back.
`tune_process()` applies threads and malloc settings; `fit`, `suite bench` and the benchmarks
call it, so `suite train` and every Ray Tune trial run alike. `RECNORM_THREAD_TUNING=0` keeps the
thread count fixed (to compare, or on a machine of one's own).

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
import time
from pathlib import Path

ENV_VAR = "RECNORM_MALLOC_TUNING"
# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Free heap tops below 2 GiB stay mapped: one smnist BN-LSTM batch frees ~1.2 GB at once.
TRIM_THRESHOLD = 2**31 - 1
TUNABLES = {"glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": str(TRIM_THRESHOLD)}

_state = "default"


def switched_off(variable: str) -> bool:
    """True when an environment switch of the suite (RECNORM_MALLOC_TUNING, RECNORM_THREAD_TUNING,
    RECNORM_NATIVE, RECNORM_TRITON) is 0/false/no/off; unset means on."""
    return os.environ.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def malloc_tuning_enabled() -> bool:
    """False when RECNORM_MALLOC_TUNING is 0/false/no/off."""
    return not switched_off(ENV_VAR)


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


THREAD_SWITCH = "RECNORM_THREAD_TUNING"
# How often the governor looks at the machine: /proc/stat moves in 10 ms ticks, so half a
# second gives a steady reading (50 ticks a CPU) at a cost (~0.1 ms) nobody sees, and a new
# competitor collapses at most that long.
CHECK_SECONDS = 0.5
PROC_STAT = Path("/proc/stat")


def thread_tuning_enabled() -> bool:
    """False when RECNORM_THREAD_TUNING is 0/false/no/off (the thread count then stays fixed)."""
    return not switched_off(THREAD_SWITCH)


def wait_policy() -> str:
    """OpenMP's wait policy as set in the environment: PASSIVE, ACTIVE, or 'default (spinning)'."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    return policy.upper() if policy else "default (spinning)"


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


def affinity() -> set[int]:
    """The CPUs this process may run on (all of them where there is no affinity mask: not Linux)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, lowered by a cgroup quota (at least 1)."""
    count = len(affinity())
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


def busy_seconds(cpus: set[int], stat: Path = PROC_STAT) -> float | None:
    """CPU seconds spent working (user, nice, system, irq, softirq) since boot on the given CPUs,
    by every process; None where /proc/stat is missing or lacks one of them."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
            ticks[int(name[3:])] = user + nice + system + irq + softirq
    if not cpus <= ticks.keys():
        return None
    return sum(ticks[cpu] for cpu in cpus) / os.sysconf("SC_CLK_TCK")


def fitting_threads(cap: int, others: float) -> int:
    """Threads for `cap` CPUs of which other processes keep `others` busy: the free ones, rounded
    to the nearest, at least one."""
    return max(1, min(cap, math.floor(cap - others + 0.5)))


class ThreadGovernor:
    """Keeps torch's intra-op thread count at the CPUs that other processes leave free (module doc)."""

    def __init__(self, cap: int, cpus: set[int], interval: float = CHECK_SECONDS):
        self.cap, self.cpus, self.interval = cap, cpus, interval
        self._last: tuple[float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float] | None:
        busy = busy_seconds(self.cpus)
        return None if busy is None else (time.monotonic(), busy, time.process_time())

    def step(self) -> int:
        """Re-fit the thread count when `interval` has passed since the last look; returns it."""
        import torch

        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.interval:
            return torch.get_num_threads()
        sample = self._sample()
        if sample is None:
            return torch.get_num_threads()
        if self._last is not None:
            wall, busy, own = (a - b for a, b in zip(sample, self._last))
            others = max(0.0, busy - own) / wall
            threads = fitting_threads(self.cap, others)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        self._last = sample
        return torch.get_num_threads()


_governor: ThreadGovernor | None = None


def start_sharing(cap: int) -> ThreadGovernor | None:
    """Let `share_cores()` fit this process's threads to the free CPUs, up to `cap`. Nothing when
    switched off, with one CPU, or where the CPUs' use cannot be read (no /proc/stat, or a cgroup
    quota below the affinity mask, where /proc/stat does not show what the quota leaves)."""
    global _governor
    cpus = affinity()
    _governor = None
    if thread_tuning_enabled() and cap > 1 and len(cpus) == available_cpus() and busy_seconds(cpus) is not None:
        _governor = ThreadGovernor(cap, cpus)
        _governor.step()
    return _governor


def share_cores() -> None:
    """Once per training step or benchmark batch: re-fit the thread count (cheap between looks)."""
    if _governor is not None:
        _governor.step()


def tune_process(threads: int | None = None) -> None:
    """Every process-level setting of a training or benchmark process: threads (fitted to the free
    CPUs unless `threads` is given: an explicit count is the user's choice), then malloc."""
    chosen = configure_threads(threads)
    start_sharing(chosen if threads is None else 1)
    apply_malloc_tuning()


def thread_state() -> dict[str, object]:
    """What a result records about threads: the count, the CPUs available, OpenMP's wait policy."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "available_cpus": available_cpus(),
            "omp_wait_policy": wait_policy()}
