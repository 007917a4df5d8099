"""The native step kernels (suite/core/backends/native): where test_fast.py does not reach.

Both ways of forming the input term (in the kernel for few features, a matrix multiply before
the loop for many), several threads over units that do not divide evenly, padding and
bidirectional stacks, float64 gradcheck of every parameter for every kind of norm, and the
build: cached, keyed, and a clean fallback where there is no compiler or it is switched off.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from suite.core import variants
from suite.core.backends import choose
from suite.core.backends.native import build, loop
from suite.core.cells.norms import BATCH, POPULATION, reestimate_statistics, statistics_mode
from suite.core.provenance import environment

from tests import parity
from tests.parity import assert_same

NORMED = ["bn_vertical", "bn_lstm", "ln_lstm"]


@pytest.fixture(autouse=True)
def native():
    if build.load() is None:
        pytest.skip(f"native kernels unavailable: {build.reason()}")


def pair64(name: str, features: int, hidden: int, steps: int, **kwargs):
    """(reference, fast) float64 stacks with the same randomized parameters (tests/parity.py)."""
    return parity.pair(name, features=features, hidden=hidden, t_max=steps, **kwargs)


@pytest.mark.parametrize("name", NORMED)
@pytest.mark.parametrize("features", [1, loop.SMALL_INPUT, loop.SMALL_INPUT + 1, 20])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matches_reference_for_any_input_width_and_thread_count(name, features, threads, monkeypatch):
    """Batch 7 splits unevenly over threads (batch statistics combine their parts), 4H = 52 units
    over panels of vectors with a partial last one; both input-term paths are taken."""
    steps, batch, hidden = 6, 7, 13
    ref, fast = pair64(name, features, hidden, steps, num_layers=2)
    x = torch.randn(steps, batch, features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert choose(fast.layers[0], x) is loop.run_layer
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert_same(ref, fast, x)  # training: batch statistics, running averages
        ref.eval(), fast.eval()
        assert_same(ref, fast, x)  # population statistics
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", NORMED)
@pytest.mark.parametrize("features", [2, loop.SMALL_INPUT + 1])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_lengths_and_bidirectional_run_on_the_kernels(name, features, threads, monkeypatch):
    """Padded steps hold the state, output zeros and stay out of every statistic; the last step
    has no real example at all, and at step 5 of 3 threads one thread's rows are all padding;
    reverse layers see each sequence reversed."""
    steps, batch, hidden = 6, 7, 13
    lengths = torch.tensor([5, 3, 2, 1, 5, 4, 2])
    calls = []
    run_layer = loop.run_layer
    monkeypatch.setattr(loop, "run_layer", lambda *a, **k: calls.append(k) or run_layer(*a, **k))
    ref, fast = pair64(name, features, hidden, steps, num_layers=2, bidirectional=True)
    x = torch.randn(steps, batch, features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    # Steps with one or two real examples make batch norm ill-conditioned: the same sums taken
    # in another order (per-thread parts, another product) move float64 gradients ~1e-10 relative.
    tolerance = dict(rtol=1e-8, atol=1e-9)
    try:
        assert_same(ref, fast, x, lengths=lengths, **tolerance)
        assert len(calls) == 4 and all("mask" in k for k in calls)
        for model in (ref, fast):
            model.eval()
            reestimate_statistics(model, lambda m=model: [m(x, lengths=lengths), m(2 * x, lengths=lengths)])
        assert_same(ref, fast, x, lengths=lengths, **tolerance)
    finally:
        torch.set_num_threads(before)


def _params_gradcheck(name: str, features: int, mode: str | None, **kwargs) -> None:
    steps, batch, hidden = 4, 5, 3
    _, fast = pair64(name, features, hidden, steps)
    names = [n for n, _ in fast.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in fast.named_parameters()]
    x = torch.randn(steps, batch, features, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        out, (h, c) = functional_call(fast, dict(zip(names, ps)), (x,), kwargs)
        return out, h, c

    if mode is None:
        assert torch.autograd.gradcheck(f, (x, *params))
    else:
        with statistics_mode(fast, mode):
            assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("name", NORMED)
@pytest.mark.parametrize("features", [2, loop.SMALL_INPUT + 2])
def test_gradcheck_every_parameter(name, features):
    """float64 gradcheck of the kernels' backward: input, W_x, W_h, b, initial state, every gamma/beta."""
    _params_gradcheck(name, features, BATCH if name != "ln_lstm" else None)


@pytest.mark.parametrize("name", NORMED)
def test_gradcheck_with_lengths(name):
    _params_gradcheck(name, 2, BATCH if name != "ln_lstm" else None, lengths=torch.tensor([4, 2, 3, 1, 4]))


@pytest.mark.parametrize("name", ["bn_vertical", "bn_lstm"])
def test_gradcheck_with_population_statistics(name):
    _params_gradcheck(name, 2, POPULATION)


def test_other_dtypes_and_autocast_leave_the_kernels():
    """The kernels read float32/float64 memory: anything else goes to the PyTorch loops or the reference."""
    ref, fast = pair64("bn_lstm", 2, 3, 4)
    x = torch.randn(4, 5, 2, dtype=torch.float64)
    assert choose(fast.layers[0], x) is loop.run_layer
    assert choose(fast.layers[0], x.float()) is not loop.run_layer  # mixed dtypes
    with pytest.raises(RuntimeError):  # and the same error as the reference gives
        fast(x.float())
    with pytest.raises(RuntimeError):
        ref(x.float())
    want = ref(x)[0]
    got = fast.bfloat16()(x.bfloat16())[0]  # the PyTorch loop, in bfloat16's precision
    torch.testing.assert_close(got.double(), want, atol=0.05, rtol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert choose(fast.layers[0], x) is not loop.run_layer


def test_kernel_threads_split_the_batch(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert loop.kernel_threads(100) == 4
    assert loop.kernel_threads(3) == 3  # at most one thread per example
    monkeypatch.setattr(torch, "get_num_threads", lambda: 500)
    assert loop.kernel_threads(1000) == loop.MAX_THREADS


def one_step_cell(which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """c_1 = sigmoid(i) tanh(g) of the float32 kernel with one factor saturated to 1 and the other's
    pre-activation swept exactly over [-80, 80] (eps 0, unit population statistics), and its float64 truth."""
    batch, hidden = 512, 4
    layer = variants.build("bn_vertical", 1, hidden, impl="fast", eps=0.0).layers[0].eval()
    w_x, bias = torch.zeros(4, hidden), torch.zeros(4, hidden)
    w_x[0 if which == "sigmoid" else 2] = 80.0
    bias[2 if which == "sigmoid" else 0] = 40.0
    with torch.no_grad():
        layer.weight_hh.zero_()
        layer.norm_x.weight.fill_(1.0)
        layer.weight_ih.copy_(w_x.reshape(-1, 1))
        layer.bias.copy_(bias.reshape(-1))
    x = (torch.arange(batch) - batch // 2).float().div(batch // 2).reshape(1, batch, 1)  # exact in float32
    zeros = torch.zeros(batch, hidden)
    with torch.no_grad():
        _, (_, c) = loop.run_layer(layer, x, zeros, zeros, 0)
    pre = (x.double() * 80.0).reshape(batch, 1).expand(batch, hidden)
    return c.double(), torch.sigmoid(pre) if which == "sigmoid" else torch.tanh(pre)


def test_float32_gates_are_accurate():
    """The kernel's own exp: sigmoid within 4e-7 relative (a few ulp), tanh = 2 sigmoid(2z) - 1 within 2e-7."""
    got, want = one_step_cell("sigmoid")
    assert ((got - want).abs() / want).max() < 4e-7
    got, want = one_step_cell("tanh")
    assert (got - want).abs().max() < 2e-7


def test_build_is_cached_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv(build.ENV_CACHE, str(tmp_path))
    compiler = build._compiler()
    first = build.build(compiler)
    stamp = first.stat().st_mtime_ns
    assert build.build(compiler) == first and first.stat().st_mtime_ns == stamp  # no second compile
    assert first.parent == tmp_path and list(tmp_path.iterdir()) == [first]  # no temporary files left
    monkeypatch.setattr(build, "_flags", lambda: ["-O0", "-std=c++17", "-fPIC", "-shared", "-fopenmp"])
    assert build.library_path(compiler) != first  # other flags, another library


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """The loader as in a new process, with an empty cache."""
    monkeypatch.setattr(build, "_library", None)
    monkeypatch.setattr(build, "_reason", None)
    monkeypatch.setattr(build, "_tried", False)
    monkeypatch.setenv(build.ENV_CACHE, str(tmp_path))
    return tmp_path


def test_no_compiler_falls_back_with_a_reason(fresh_loader, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert build.load() is None
    assert "no C++ compiler (no-such-compiler-here)" in build.reason()
    layer = variants.build("bn_lstm", 2, 3, impl="fast").layers[0]
    with pytest.warns(UserWarning, match="slower PyTorch loop: no C\\+\\+ compiler"):
        assert choose(layer, torch.zeros(4, 5, 2)) is not loop.run_layer  # the PyTorch loop instead
    assert "no C++ compiler" in environment()["native_kernels"]  # and every result row says so


def test_failed_compile_falls_back_with_a_reason(fresh_loader, monkeypatch, tmp_path):
    fake = tmp_path / "broken-cxx"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo fake 1.0 && exit 0\necho 'cannot compile' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert build.load() is None
    assert "cannot compile" in build.reason()
    assert not list(fresh_loader.glob("*.so"))  # no half-written library left in the cache


def test_switched_off(monkeypatch):
    monkeypatch.setenv(build.ENV_SWITCH, "0")
    assert build.load() is None and build.ENV_SWITCH in build.reason()
