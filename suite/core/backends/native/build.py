"""Build and load the native kernels (`norm_lstm.cpp`) with the system C++ compiler.

The source has no PyTorch headers, so one `g++` call builds it in about a second at first use;
the shared library is cached under `~/.cache/recnorm/native` (or `$RECNORM_NATIVE_CACHE`),
keyed by the source, the flags and the compiler, and written atomically so that parallel
trials can race to build it. Nothing is downloaded. Where there is no compiler, or the build
fails, or `RECNORM_NATIVE=0`, `load()` returns None and the fast paths use their pure-PyTorch
loops; `reason()` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from suite.core.perf import switched_off

SOURCE = Path(__file__).with_name("norm_lstm.cpp")
ENV_SWITCH = "RECNORM_NATIVE"
ENV_CACHE = "RECNORM_NATIVE_CACHE"
ABI_VERSION = 2

_library: ctypes.CDLL | None = None
_reason: str | None = None
_tried = False


def enabled() -> bool:
    """False when RECNORM_NATIVE is 0/false/no/off."""
    return not switched_off(ENV_SWITCH)


def _flags() -> list[str]:
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    # The library is built on the machine that runs it, so it may use what this CPU has;
    # the capability is part of the cache key, so a shared cache serves mixed nodes.
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if capability == "AVX512":  # 16 floats per vector: layer norm's steps measured 10-15% faster on an AVX-512 EPYC VM
        flags += ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mprefer-vector-width=512"]
    return flags


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def library_path(compiler: str) -> Path:
    """Where the library built from the current source, flags and compiler is cached."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(_flags()).encode() + version.encode()).hexdigest()[:16]
    cache = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "recnorm" / "native")
    return cache / f"norm_lstm-{key}.so"


def build(compiler: str) -> Path:
    """Compile the kernels unless the cached library exists; return its path."""
    target = library_path(compiler)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *_flags(), str(SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None (see `reason()`) where it cannot be had."""
    global _library, _reason, _tried
    if not enabled():
        _reason = f"switched off by {ENV_SWITCH}=0"
        return None
    if _tried:
        return _library
    _tried = True
    compiler = _compiler()
    if compiler is None:
        _reason = f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH"
        return None
    try:
        library = ctypes.CDLL(str(build(compiler)))
        if library.recnorm_abi_version() != ABI_VERSION:
            raise RuntimeError("ABI version mismatch")
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _reason = f"native kernels unavailable: {error}"
        return None
    for name in ("recnorm_forward_f32", "recnorm_forward_f64", "recnorm_backward_f32", "recnorm_backward_f64"):
        getattr(library, name).argtypes = [ctypes.c_void_p]
        getattr(library, name).restype = None
    _library = library
    return library


def reason() -> str | None:
    """Why `load()` gave None, or None when the library is loaded (or not yet tried)."""
    return _reason


def status() -> str:
    """For the record of a run: "available" (the fast paths of this process use them) or why not."""
    return "available" if load() is not None else str(_reason)
