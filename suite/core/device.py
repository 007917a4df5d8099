"""Device names: `train.device` is checked as a name when a config is resolved, and against
this machine's torch before a run (or a study run on this machine) starts.

Names: `auto` (the GPU when there is one, else the CPU), `cpu`, `cuda`, `cuda:N`, `mps`.
Every problem is one `ConfigError` line that says what to use instead, raised before any
training starts -- never torch's own `AssertionError: Torch not compiled with CUDA enabled`
from inside the first `.to(device)` (issue 14).
"""

from __future__ import annotations

import re

from suite.core.errors import ConfigError

_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps(:0)?)$")
NAMES = "auto, cpu, cuda, cuda:N or mps"


def check_name(name: str, where: str = "train.device") -> None:
    """Raise ConfigError unless `name` is a device name the suite knows (no torch needed)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where} = {name!r} is not a device; use {NAMES}")


def index(name: str) -> int | None:
    """N of a 'cuda:N' name, else None."""
    return int(name.split(":")[1]) if name.startswith("cuda:") else None


def check_available(name: str, where: str = "train.device") -> None:
    """Raise ConfigError unless this process's torch can use device `name` (a checked name)."""
    import torch

    check_name(name, where)
    kind = name.split(":")[0]
    if kind == "cuda":
        if not torch.backends.cuda.is_built():
            raise ConfigError(f"{where} = {name!r}, but this torch ({torch.__version__}) is built without CUDA; "
                              f"use {where} = cpu (or auto), or install a CUDA build of torch")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{where} = {name!r}, but no CUDA device is visible to this process "
                              f"(driver missing, or CUDA_VISIBLE_DEVICES hides them); use {where} = cpu (or auto)")
        wanted = index(name)
        if wanted is not None and wanted >= count:
            raise ConfigError(f"{where} = {name!r}, but this process sees {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}; use one of those, or cuda")
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_built() or not mps.is_available():
            raise ConfigError(f"{where} = {name!r}, but MPS (Apple GPUs) is not available here; "
                              f"use {where} = cpu (or auto)")


def pick_device(name: str, where: str = "train.device"):
    """The torch.device for a name, after `check_available`; 'auto' means the GPU when there is one."""
    import torch

    check_available(name, where)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
