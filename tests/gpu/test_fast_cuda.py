"""The fast paths on CUDA against the reference loop there (marker `gpu`, skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_fast import FAST, inputs, pair, run


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FAST)
def test_fast_on_cuda_matches_reference(name):
    """On CUDA (cuDNN for the fused path, native CUDA norm kernels for the loops) as on the CPU."""
    ref, fast = pair(name, num_layers=2)
    ref.cuda(), fast.cuda()
    x = inputs().cuda()
    for mode in (True, False):
        ref.train(mode), fast.train(mode)
        r, f = run(ref, x), run(fast, x)
        for a, b in zip(r[:3], f[:3]):
            torch.testing.assert_close(b, a)
        for key in r[3]:
            torch.testing.assert_close(f[3][key], r[3][key], msg=key)
    for (key, a), (_, b) in zip(ref.named_buffers(), fast.named_buffers()):
        torch.testing.assert_close(b, a, msg=key)
