"""The Triton backend on a real GPU (marker `gpu`; skipped without CUDA or triton).

The same checks as tests/unit/test_triton.py (which runs the kernels interpreted on CPU), now
compiled: the fast stacks on CUDA run on the Triton kernels, and match the float64 reference
loop at small shapes and at the paper's smnist and ptb shapes. Run by run_device_checks.sh.
"""

from __future__ import annotations

import copy

import pytest
import torch

from suite.core import variants
from suite.core.backends import choose
from suite.core.backends.triton import loop
from suite.core.cells.norms import BATCH, batch_norms, reestimate_statistics, statistics_mode

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.skipif(not loop.available(), reason="needs triton")]

VARIANTS = ["lstm", "bn_vertical", "bn_lstm", "ln_lstm"]
DEVICE = "cuda"  # a dry run of the checks' logic may set "cpu" (kernels interpreted)


def pair(name: str, features: int, hidden: int, t_max: int, **kwargs):
    """(float64 reference on CUDA, fast stack on CUDA) with identical non-default parameters."""
    if "t_max" in variants.option_fields(name):
        kwargs["t_max"] = t_max
    torch.manual_seed(0)
    ref = variants.build(name, features, hidden, impl="reference", **kwargs).double()
    fast = variants.build(name, features, hidden, impl="fast", **kwargs).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fast.load_state_dict(ref.state_dict())
    return ref.to(DEVICE), fast.to(DEVICE)


def run(model, x, **kwargs):
    model.zero_grad(set_to_none=True)
    out, (h, c) = model(x, **kwargs)
    gen = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)).sum() for t in (out, h, c))
    loss.backward()
    tensors = [out, h, c] + [p.grad for p in model.parameters()] + list(model.buffers())
    return [t.detach().double() for t in tensors]


def worst_error(model, truth, x, **kwargs) -> float:
    """Largest error of every output, state, gradient and buffer relative to its largest value."""
    got = run(model, x, **kwargs)
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) for a, b in zip(got, truth))


def assert_float32_like_reference(ref32, fast32, truth, x, **kwargs) -> None:
    """Float32 on the kernels: worst error within 4x the float32 reference loop's (and 1e-5 at least).
    ref32 and fast32 are float32 copies taken before `truth` moved the running averages."""
    ref_error = worst_error(ref32, truth, x.float(), **kwargs)
    fast_error = worst_error(fast32, truth, x.float(), **kwargs)
    assert fast_error <= max(4 * ref_error, 1e-5), (fast_error, ref_error)


def test_self_check_passes_on_the_gpu():
    """The fail-safe's self-check compiles and passes here (else every CUDA layer would take the
    PyTorch loop), and the run's record says so; the second check is the warm (cached) cost."""
    import time

    from suite.core.provenance import environment

    device = torch.device(DEVICE, torch.cuda.current_device())
    started = time.perf_counter()
    assert loop.self_check(device) is None
    cold = time.perf_counter() - started
    started = time.perf_counter()
    assert loop.self_check(device) is None
    print(f"triton self-check: {cold:.2f} s first (compiles), {time.perf_counter() - started:.3f} s again")
    assert environment()["triton_kernels"] == "available"


@pytest.mark.parametrize("name", VARIANTS)
def test_cuda_fast_path_is_triton_and_matches_float64(name):
    """Small stack, bidirectional, 2 layers, lengths: float64 on the kernels is exact to 1e-9
    (relative to each tensor's largest value), float32 as close as the reference loop's own."""
    ref, fast = pair(name, 3, 16, t_max=20, num_layers=2, bidirectional=True)
    x = torch.randn(20, 8, 3, dtype=torch.float64, device=DEVICE)
    lengths = torch.tensor([20, 7, 1, 20, 3, 12, 20, 9], device=DEVICE)
    assert choose(fast.layers[0], x, masked=True) is loop.run_layer
    ref32, fast32 = copy.deepcopy(ref).float(), copy.deepcopy(fast).float()
    truth = run(ref, x, lengths=lengths)
    assert worst_error(fast, truth, x, lengths=lengths) < 1e-9
    assert_float32_like_reference(ref32, fast32, truth, x, lengths=lengths)


@pytest.mark.parametrize("name", ["bn_vertical", "bn_lstm"])
def test_cuda_statistics_modes(name):
    ref, fast = pair(name, 3, 16, t_max=6)
    x = torch.randn(10, 8, 3, dtype=torch.float64, device=DEVICE)  # T > T_max: the last row is reused
    ref.eval(), fast.eval()
    assert worst_error(fast, run(ref, x), x) < 1e-9
    with statistics_mode(ref, BATCH), statistics_mode(fast, BATCH):
        assert worst_error(fast, run(ref, x), x) < 1e-9
    for model in (ref, fast):
        reestimate_statistics(model, lambda m=model: [m(x), m(-x)])
    for a, b in zip(batch_norms(ref), batch_norms(fast)):
        torch.testing.assert_close(b.running_mean, a.running_mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b.running_var, a.running_var, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "shape"), [("bn_lstm", "smnist"), ("ln_lstm", "smnist"), ("bn_lstm", "ptb"),
                                             ("ln_lstm", "ptb"), ("lstm", "ptb")])
def test_paper_shapes_float32(name, shape):
    """The benchmark shapes in float32 (the tiles and grids the benchmarks use) against the float64
    reference loop on the GPU, as close as the reference loop's own float32 after T steps."""
    steps, batch, features, hidden = {"smnist": (784, 100, 1, 100), "ptb": (100, 64, 50, 1000)}[shape]
    ref, fast = pair(name, features, hidden, t_max=steps)
    x = torch.randn(steps, batch, features, dtype=torch.float64, device=DEVICE)
    ref32, fast32 = copy.deepcopy(ref).float(), copy.deepcopy(fast).float()
    assert_float32_like_reference(ref32, fast32, run(ref, x), x)
