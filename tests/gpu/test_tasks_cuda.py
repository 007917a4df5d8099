"""Every task trains on CUDA as on the CPU (marker `gpu`, skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from suite.core import variants
from tests.integration.test_tasks_train import TASK_OPTIONS, data, train  # noqa: F401 (data: a fixture)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", variants.names())
@pytest.mark.parametrize("task_name", sorted(TASK_OPTIONS))
def test_fit_on_gpu_matches_cpu(task_name: str, variant: str, data):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    on_gpu = train(task_name, variant, data, device="cuda")
    assert on_gpu.summary["device"].startswith("cuda")
    on_cpu = train(task_name, variant, data, device="cpu")
    for gpu_row, cpu_row in zip(on_gpu.curve, on_cpu.curve, strict=True):
        assert gpu_row["loss"] == pytest.approx(cpu_row["loss"], rel=1e-3), gpu_row
