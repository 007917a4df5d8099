"""Shared test settings: benchmarks are collected only with --benchmark-only; paths to shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import suite  # noqa: F401 -- its OpenMP settings must be in the environment before torch is imported

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread for tests: their tiny tensors run faster without intra-op threads, and Ray
    workers started by the tests need the other core. Benchmarks keep torch's default. Without
    CUDA, Triton runs interpreted."""
    import torch

    if not config.getoption("benchmark_only", default=False):
        torch.set_num_threads(1)
    if not torch.cuda.is_available():
        # Triton kernels run on CPU tensors under its interpreter (tests/unit/test_triton.py).
        # triton reads the switch when it is imported (its own library functions are decorated
        # then) and again at every launch, so it is set for the whole session, before any import.
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Keep tests/bench out of the default run; `pytest tests/bench --benchmark-only` runs it."""
    if "bench" in collection_path.parts and not config.getoption("benchmark_only", default=False):
        return True
    return None


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip when this machine does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
