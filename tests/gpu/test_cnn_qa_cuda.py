"""The attentive reader on CUDA trains as on the CPU (marker `gpu`, skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from suite.core import variants
from suite.core.train import fit
from tests.unit.test_cnn_qa_model import data_dir, make, source  # noqa: F401 (data_dir, source: fixtures)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", variants.names())
def test_reader_on_gpu_matches_cpu(source, data_dir, variant):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    curves = {}
    for device in ("cuda", "cpu"):
        task, config, _ = make(source, data_dir, variant, bidirectional=True, attention_bn=True,
                               sequence_statistics=True)
        config = config.replace(train=type(config.train)(**{**vars(config.train), "device": device}))
        result = fit(task, config)
        assert result.summary["device"].startswith(device)
        curves[device] = result.curve
    for gpu_row, cpu_row in zip(curves["cuda"], curves["cpu"], strict=True):
        assert gpu_row["loss"] == pytest.approx(cpu_row["loss"], rel=1e-3), gpu_row
        assert gpu_row["value"] == pytest.approx(cpu_row["value"], abs=1e-9), gpu_row
