"""Process-level performance settings: glibc malloc tuning for training processes.

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
import os

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
