"""The fast paths (`impl = "fast"`, suite/core/backends/) against the reference time loop they replace.

Every check builds the reference and the fast stack from one state_dict and compares
outputs, final states, every parameter gradient and the BN statistics (train, population,
batch and re-estimated), in float64 (tight) and float32 (max relative error); the
hand-derived backwards are checked by gradcheck. Every test runs twice: on the native step
kernels (suite/core/backends/native) and on the pure-PyTorch loops they fall back to.
"""

from __future__ import annotations

import functools

import pytest
import torch

from suite.core import variants
from suite.core.backends import choose
from suite.core.backends.fused import FusedRecurrent
from suite.core.backends.native import build, loop
from suite.core.cells.norms import BATCH, batch_norms, reestimate_statistics, statistics_mode
from suite.core.errors import ConfigError
from suite.core.recurrent import LoopRecurrent, Recurrent
from tests import parity
from tests.parity import assert_same, run

FAST = ["lstm", "wn_lstm", "bn_vertical", "bn_lstm", "ln_lstm"]
BN = ["bn_vertical", "bn_lstm"]
T, B, F, H = 7, 5, 3, 4


@pytest.fixture(autouse=True, params=["native", "torch"])
def backend(request, monkeypatch) -> str:
    """Run the test on the native kernels (skipped where they do not build) and on the PyTorch loops."""
    if request.param == "torch":
        monkeypatch.setenv(build.ENV_SWITCH, "0")
    elif build.load() is None:
        pytest.skip(f"native kernels unavailable: {build.reason()}")
    return request.param


def test_the_backend_is_the_one_under_test(backend):
    layer = variants.build("bn_lstm", F, H, impl="fast").layers[0]
    runner = choose(layer, torch.zeros(T, B, F))
    assert (runner is loop.run_layer) == (backend == "native")


# the parity helpers (tests/parity.py) at this file's shapes
pair = functools.partial(parity.pair, features=F, hidden=H, t_max=T)


def inputs(dtype=torch.float64, batch_first=False):
    """The same numbers in every dtype: drawn in float64, then cast (randn draws others in float32)."""
    x = torch.randn(T, B, F, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    return x.transpose(0, 1).contiguous() if batch_first else x


def test_impl_selects_the_class_and_rejects_unknown_values():
    for name in FAST:  # the fast paths are the defaults; the reference stays one option away
        assert type(variants.build(name, F, H)) is type(variants.build(name, F, H, impl="fast"))
        assert type(variants.build(name, F, H, impl="reference")) is Recurrent
    assert isinstance(variants.build("wn_lstm", F, H), FusedRecurrent)
    for name in ("lstm", "bn_vertical", "bn_lstm", "ln_lstm"):  # one loop machinery, norms or not
        assert isinstance(variants.build(name, F, H), LoopRecurrent)
    with pytest.raises(ConfigError, match="impl must be one of"):
        variants.build("lstm", F, H, impl="turbo")


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("layers", [1, 2])
def test_training_batch_matches_reference(name, layers):
    ref, fast = pair(name, num_layers=layers)
    assert_same(ref, fast, inputs())


@pytest.mark.parametrize("name", FAST)
def test_eval_and_given_state_and_batch_first(name):
    ref, fast = pair(name, num_layers=2, batch_first=True)
    ref.eval()
    fast.eval()
    state = tuple(torch.randn(2, B, H, dtype=torch.float64) for _ in range(2))
    assert_same(ref, fast, inputs(batch_first=True), hx=state, time_offset=2)


@pytest.mark.parametrize("name", FAST)
def test_lengths_and_bidirectional(name):
    ref, fast = pair(name, num_layers=2, bidirectional=True)
    assert_same(ref, fast, inputs(), lengths=torch.tensor([7, 3, 5, 1, 7]))
    assert_same(ref, fast, inputs())


@pytest.mark.parametrize("name", FAST)
def test_dropout_between_layers(name):
    ref, fast = pair(name, num_layers=2, dropout=0.5)
    ref.eval()
    fast.eval()
    assert_same(ref, fast, inputs())  # no dropout at evaluation
    fast.train()
    torch.manual_seed(5)
    a, _ = fast(inputs())
    torch.manual_seed(6)
    b, _ = fast(inputs())
    assert not torch.allclose(a, b)  # dropout is active in training


@pytest.mark.parametrize("name", BN)
@pytest.mark.parametrize(("statistics", "t_max", "offset"), [
    ("per_step", 7, 0),  # every step has its own row: the one-kernel input BN of pytorch.input_term
    ("per_step", 4, 1),  # steps beyond T_max share the last row: the reference's input BN
    ("sequence", 7, 0),
])
def test_bn_statistics_in_every_mode(name, statistics, t_max, offset):
    ref, fast = pair(name, num_layers=2, statistics=statistics, t_max=t_max)
    for _ in range(2):
        assert_same(ref, fast, inputs(), time_offset=offset)  # running averages updated identically
    assert not torch.equal(batch_norms(fast)[0].running_mean, torch.zeros_like(batch_norms(fast)[0].running_mean))
    for model in (ref, fast):
        model.eval()
        reestimate_statistics(model, lambda m=model: [m(inputs()), m(inputs() * 2)])
    assert_same(ref, fast, inputs())  # population statistics
    with statistics_mode(ref, BATCH), statistics_mode(fast, BATCH):
        assert_same(ref, fast, inputs())


def max_relative_error(got, want) -> float:
    """Largest |got - want| / max|want| over outputs, states and every gradient."""
    pairs = list(zip(got[:3], want[:3])) + [(got[3][k], want[3][k]) for k in want[3]]
    return max(((g.double() - w).abs().max() / w.abs().max()).item() for g, w in pairs)


@pytest.mark.parametrize("name", FAST)
def test_float32_error_is_small(name):
    """float32 fast vs the float64 reference: max relative error of the float32 reference's order."""
    ref64, _ = pair(name, num_layers=2)
    ref32, fast32 = pair(name, torch.float32, num_layers=2)
    want = run(ref64, inputs())
    fast_error = max_relative_error(run(fast32, inputs(torch.float32)), want)
    ref_error = max_relative_error(run(ref32, inputs(torch.float32)), want)
    assert fast_error < max(1e-5, 10 * ref_error), (fast_error, ref_error)


@pytest.mark.parametrize("name", ["lstm", "bn_vertical", "bn_lstm", "ln_lstm"])
def test_loop_gradcheck(name):
    """gradcheck of the hand-written backward, through norm_h and norm_c where present (batch statistics)."""
    _, fast = pair(name, num_layers=1)
    x = inputs().requires_grad_(True)
    h0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    with statistics_mode(fast, BATCH):
        assert torch.autograd.gradcheck(lambda *a: fast(a[0], (a[1], a[2]))[0], (x, h0, c0))


def test_batch_of_one():
    """Batch statistics of one example: the native kernels compute them; the PyTorch loop falls back
    to the reference (torch's batch-norm kernel refuses them)."""
    ref, fast = pair("bn_lstm")
    assert_same(ref, fast, inputs()[:, :1])


def saved_bytes(model, x) -> int:
    """Bytes of the distinct storages autograd keeps for backward of one batch."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = model(x)
    return sum(storages.values())


@pytest.mark.parametrize("name", ["bn_vertical", "bn_lstm", "ln_lstm"])
def test_loop_memory_within_budget(name):
    """The hand-written loops save at most 1.5x the reference's activations (issue 6, Memory)."""
    ref, fast = pair(name, torch.float32)
    x = torch.randn(50, 16, F)
    assert saved_bytes(fast, x) <= 1.5 * saved_bytes(ref, x)


def test_fused_memory_is_the_fused_kernels():
    """The fused path saves exactly what torch.nn.LSTM (cudnn_lstm) saves at the same shape.

    On CPU that is oneDNN's workspace, about 2.4x the reference loop's saved activations
    (peak memory of a whole batch differs less; see the bench's extra_info).
    """
    x = torch.randn(50, 16, F)
    fused = variants.build("wn_lstm", F, H, impl="fast")
    assert saved_bytes(fused, x) <= 1.01 * saved_bytes(variants.build("cudnn_lstm", F, H), x)


@pytest.mark.parametrize("name", FAST)
def test_forward_without_gradients(name):
    """Under no_grad the loops reuse their per-step buffers; results and statistics stay the same."""
    ref, fast = pair(name, num_layers=2)
    for mode in (True, False):
        ref.train(mode), fast.train(mode)
        with torch.no_grad():
            (a, (ha, ca)), (b, (hb, cb)) = ref(inputs()), fast(inputs())
        for want, got in ((a, b), (ha, hb), (ca, cb)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for (key, want), (_, got) in zip(ref.named_buffers(), fast.named_buffers()):
        torch.testing.assert_close(got, want, msg=key)


@pytest.mark.parametrize("name", ["lstm", "bn_vertical", "bn_lstm", "ln_lstm"])
def test_no_grad_keeps_one_step_of_buffers(name, monkeypatch):
    """Under no_grad the loops hold one step's gate arrays, not every step's (parameters still
    require grad there, so only the grad mode can tell); with gradients they keep all of them."""
    steps, gates = 50, 4 * H
    sizes = []
    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *size, **kw: sizes.append(
        torch.Size(size[0] if len(size) == 1 and not isinstance(size[0], int) else size).numel())
        or new_empty(self, *size, **kw))
    _, fast = pair(name)
    x = torch.randn(steps, B, F, dtype=torch.float64)
    with torch.no_grad():
        fast(x)
    assert max(sizes) < steps * B * gates
    sizes.clear()
    fast(x)
    assert max(sizes) >= steps * B * gates
