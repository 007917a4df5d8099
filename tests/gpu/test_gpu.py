"""CUDA checks (marker `gpu`, skipped without a GPU): every variant on the GPU equals the CPU, and fit runs there."""

from __future__ import annotations

import pytest
import torch

from suite.core import variants
from tasks.resolve import load_run_config
from suite.core.train import fit
from tasks.base import create

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", variants.names())
def test_variant_on_cuda_matches_cpu(name):
    torch.manual_seed(0)
    cpu = variants.build(name, 3, 8, num_layers=2, bidirectional=True).double()
    gpu = variants.build(name, 3, 8, num_layers=2, bidirectional=True).double()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    x = torch.randn(12, 5, 3, dtype=torch.float64)
    lengths = torch.tensor([12, 7, 1, 12, 3])
    # CUDA kernels sum in another order (and weight norm's CUDA kernel differs): float64 agrees to ~1e-8.
    close = {"rtol": 1e-6, "atol": 1e-6}
    outputs = {}
    for mode in (False, True):  # training last: cuDNN has no backward in eval mode
        cpu.train(mode), gpu.train(mode)
        out_cpu, (h_cpu, _) = cpu(x, lengths=lengths)
        out_gpu, (h_gpu, _) = gpu(x.cuda(), lengths=lengths.cuda())
        torch.testing.assert_close(out_gpu.cpu(), out_cpu, **close)
        torch.testing.assert_close(h_gpu.cpu(), h_cpu, **close)
        outputs[mode] = out_cpu, out_gpu
    outputs[True][0].sum().backward()
    outputs[True][1].sum().backward()
    for (pname, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, msg=pname, **close)


@pytest.mark.parametrize("variant", ["bn_lstm", "cudnn_lstm"])
def test_fit_on_cuda(variant):
    cfg = load_run_config(overrides=[f"model.variant='{variant}'", "task.length=10", "task.train_size=128",
                                     "task.eval_size=64", "train.steps=6", "train.eval_every=3",
                                     "train.device='cuda'", "model.hidden_size=16"])
    result = fit(create("adding", cfg.task.options), cfg)
    assert result.status == "finished" and result.summary["device"].startswith("cuda")
