"""pytest-benchmark settings for the throughput suite: library versions and threads in machine_info.

Run with `pytest tests/bench --benchmark-only [--benchmark-json out.json]`; the default test
run does not collect this folder (see tests/conftest.py). RECNORM_BENCH_THREADS=N sets
torch's intra-op threads first (default: torch's, capped at the CPUs this process may use).
OpenMP's idle threads sleep (suite.core.perf), so a busy machine slows the figures down but no
longer makes two-thread timings swing by 5x.
"""

from __future__ import annotations

import os

import pytest

THREADS_ENV = "RECNORM_BENCH_THREADS"


def pytest_configure(config: pytest.Config) -> None:
    """Apply the suite's process settings (threads, malloc) before anything runs."""
    from suite.core import perf

    perf.tune_process(int(os.environ[THREADS_ENV]) if os.environ.get(THREADS_ENV) else None)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Record torch, CUDA/cuDNN, thread counts and the allocator settings with every benchmark file."""
    import torch

    from suite.core import backends, perf

    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["torch_interop_threads"] = torch.get_num_interop_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["mkldnn"] = torch.backends.mkldnn.is_available()
    machine_info["malloc_tuning"] = perf.malloc_tuning_state()
    machine_info["omp_wait_policy"] = perf.wait_policy()
    machine_info["available_cpus"] = perf.available_cpus()
    machine_info.update(backends.status())  # native_kernels, triton_kernels: "available" or why not
    machine_info["load_average_at_start"] = os.getloadavg() if hasattr(os, "getloadavg") else None


@pytest.fixture(scope="session")
def reference_runs() -> dict:
    """cudnn_lstm's workload and peak memory per (shape, direction, device), built once per session."""
    return {}
