"""Parity checks of a fast recurrence path against the reference time loop it replaces.

One place for what tests/unit/test_fast.py, test_native.py, test_triton.py and
tests/gpu/test_triton_cuda.py each need: a reference stack (`impl="reference"`) and a fast
stack with identical, non-default parameters and buffers; one fixed random loss over output
and final state whose gradients are compared; and the float64 comparison of two stacks.
"""

from __future__ import annotations

import torch

from suite.core import variants


def pair(name: str, dtype: torch.dtype = torch.float64, *, features: int, hidden: int, t_max: int,
         device: str | torch.device = "cpu", noise: float = 0.3, **kwargs):
    """(reference, fast) stacks of variant `name` with identical parameters and buffers.

    The reference's parameters get `noise` * N(0, 1) added (seeded, in float64) so that gamma,
    biases and the initial state all matter; the fast stack loads its state_dict. `t_max` goes
    only to variants that have the option; `kwargs` are further variant options.
    """
    if "t_max" in variants.option_fields(name):
        kwargs["t_max"] = t_max
    torch.manual_seed(0)
    ref = variants.build(name, features, hidden, impl="reference", **kwargs).double()
    fast = variants.build(name, features, hidden, impl="fast", **kwargs).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(noise * torch.randn_like(p))
    fast.load_state_dict(ref.state_dict())
    return ref.to(device=device, dtype=dtype), fast.to(device=device, dtype=dtype)


def run(model, x: torch.Tensor, **kwargs):
    """Output, final h and c, and the gradients (by name) of a fixed random loss of all three.

    The loss weights are drawn in float64 on the CPU and then cast, so every dtype and device
    sees the same loss.
    """
    model.zero_grad(set_to_none=True)
    out, (h, c) = model(x, **kwargs)
    gen = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)).sum() for t in (out, h, c))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), h.detach(), c.detach(), grads


def assert_same(ref, fast, x: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-10, **kwargs) -> None:
    """Outputs, states, gradients (see `run`) and buffers of the two stacks agree."""
    r, f = run(ref, x, **kwargs), run(fast, x, **kwargs)
    for a, b in zip(r[:3], f[:3]):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    assert r[3].keys() == f[3].keys()
    for name in r[3]:
        torch.testing.assert_close(f[3][name], r[3][name], rtol=rtol, atol=atol, msg=name)
    for (name, a), (_, b) in zip(ref.named_buffers(), fast.named_buffers()):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=name)
