"""The Triton backend (suite/core/backends/triton) under Triton's interpreter, on CPU tensors.

Triton decides at import whether kernels are interpreted, so tests/conftest.py sets
TRITON_INTERPRET=1 at start-up on machines without CUDA. Every check builds the
reference loop (`impl="reference"`) and the fast stack from one state_dict, lets the fast
stack's layers run on the Triton kernels (the backend's device list gains "cpu" for the test),
and compares outputs, final states, every parameter gradient and the BN buffers. Tolerances:
float64 rtol 1e-9 / atol 1e-10 (the kernels sum in another order than torch); float32 against
the float64 reference, no worse than 4x the reference loop's own float32 error (and < 2e-4). Shapes are tiny: the
interpreter runs every program in numpy.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from suite.core.backends.triton import kernels  # noqa: E402

if not isinstance(kernels.step_forward, InterpretedFunction):
    raise RuntimeError("the Triton kernels were compiled, not interpreted: TRITON_INTERPRET=1 must be set before "
                       "triton is imported (tests/conftest.py does so without CUDA)")

from suite.core import variants  # noqa: E402
from suite.core.backends import choose  # noqa: E402
from suite.core.backends.slots import BN_BATCH, BN_POPULATION, LAYER, NONE, Slot  # noqa: E402
from suite.core.backends.triton import loop  # noqa: E402
from suite.core.cells.norms import (  # noqa: E402
    BATCH, LayerNorm, batch_norms, reestimate_statistics, statistics_mode)
from suite.core.provenance import environment  # noqa: E402

VARIANTS = ["lstm", "bn_vertical", "bn_lstm", "ln_lstm"]
BN = ["bn_vertical", "bn_lstm"]
T, B, F, H = 5, 3, 2, 4
TIGHT = {"rtol": 1e-9, "atol": 1e-10}


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch):
    """Let the backend take CPU tensors (its kernels run interpreted here)."""
    monkeypatch.setattr(loop, "DEVICES", ("cuda", "cpu"))


def pair(name: str, dtype=torch.float64, t_max: int = T, **kwargs):
    """(reference, fast) stacks with identical non-default parameters and buffers."""
    if "t_max" in variants.option_fields(name):
        kwargs["t_max"] = t_max
    torch.manual_seed(0)
    ref = variants.build(name, F, H, impl="reference", **kwargs).double()
    fast = variants.build(name, F, H, impl="fast", **kwargs).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fast.load_state_dict(ref.state_dict())
    return ref.to(dtype), fast.to(dtype)


def run(model, x, **kwargs):
    """Output, final state and the gradients of a fixed random loss of all three."""
    model.zero_grad(set_to_none=True)
    out, (h, c) = model(x, **kwargs)
    gen = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum() for t in (out, h, c))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), h.detach(), c.detach(), grads


def assert_same(ref, fast, x, close=TIGHT, **kwargs):
    r, f = run(ref, x, **kwargs), run(fast, x, **kwargs)
    for a, b in zip(r[:3], f[:3]):
        torch.testing.assert_close(b, a, **close)
    assert r[3].keys() == f[3].keys()
    for name in r[3]:
        torch.testing.assert_close(f[3][name], r[3][name], msg=name, **close)
    for (name, a), (_, b) in zip(ref.named_buffers(), fast.named_buffers()):
        torch.testing.assert_close(b, a, msg=name, **close)


def data(dtype=torch.float64, steps: int = T):
    return torch.randn(steps, B, F, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_fast_stack_runs_on_the_triton_kernels(name):
    _, fast = pair(name)
    assert choose(fast.layers[0], data()) is loop.run_layer


@pytest.mark.parametrize("name", VARIANTS)
def test_training_steps_match_the_reference(name):
    """Two training batches: outputs, states, gradients, then running averages."""
    ref, fast = pair(name)
    for seed in (1, 2):
        x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert_same(ref, fast, x)


@pytest.mark.parametrize("name", VARIANTS)
def test_float32_error_is_the_reference_loops(name):
    """Float32 against the float64 reference: every output, state and gradient's largest error
    (relative to its largest value) within 4x the reference loop's own worst float32 error and
    below 2e-4. Batch statistics of 3 examples amplify rounding (bn_lstm's reference: ~3e-5)."""
    ref, fast = pair(name)
    ref32, fast32 = copy.deepcopy(ref).float(), copy.deepcopy(fast).float()
    x = data()
    truth, r32, f32 = run(ref, x), run(ref32, x.float()), run(fast32, x.float())

    def errors(result):
        pairs = list(zip(result[:3], truth[:3])) + [(result[3][n], truth[3][n]) for n in truth[3]]
        return [float((a.double() - b).abs().max() / b.abs().max()) for a, b in pairs]

    bound = min(4 * max(errors(r32)), 2e-4)
    assert max(errors(f32)) <= bound


@pytest.mark.parametrize("name", BN)
def test_statistics_modes(name):
    """Population (eval), batch statistics without updates, and exact re-estimation; steps
    beyond T_max (t_max=3 < T) reuse the last row in every mode."""
    ref, fast = pair(name, t_max=3)
    x = data()
    ref.eval(), fast.eval()
    assert_same(ref, fast, x)
    with statistics_mode(ref, BATCH), statistics_mode(fast, BATCH):
        assert_same(ref, fast, x)
    for model in (ref, fast):
        reestimate_statistics(model, lambda m=model: [m(x), m(-x)])
    for a, b in zip(batch_norms(ref), batch_norms(fast)):
        torch.testing.assert_close(b.running_mean, a.running_mean, **TIGHT)
        torch.testing.assert_close(b.running_var, a.running_var, **TIGHT)
    ref.train(), fast.train()
    assert_same(ref, fast, x)


@pytest.mark.parametrize("name", VARIANTS)
def test_lengths(name):
    """Padded steps hold the state, output zeros and stay out of the batch statistics."""
    ref, fast = pair(name)
    lengths = torch.tensor([T, 2, 4])
    assert_same(ref, fast, data(), lengths=lengths)
    ref.eval(), fast.eval()
    assert_same(ref, fast, data(), lengths=lengths)


@pytest.mark.parametrize("name", VARIANTS)
def test_no_grad_evaluation(name):
    """Without grad the loop keeps one step's buffers (two cells in turn): same outputs and states."""
    ref, fast = pair(name)
    ref.eval(), fast.eval()
    lengths = torch.tensor([T, 2, 4])
    with torch.no_grad():
        expected, got = ref(data(), lengths=lengths), fast(data(), lengths=lengths)
    for a, b in zip([expected[0], *expected[1]], [got[0], *got[1]]):
        torch.testing.assert_close(b, a, **TIGHT)


@pytest.mark.parametrize("name", ["bn_lstm", "ln_lstm"])
def test_bidirectional_two_layer_stack(name):
    ref, fast = pair(name, num_layers=2, bidirectional=True)
    assert_same(ref, fast, data(), lengths=torch.tensor([T, 1, 3]))


def test_batch_norm_and_layer_norm_in_one_layer():
    """No built-in variant mixes them, but a tile holding the whole batch and every unit computes it."""
    ref, fast = pair("bn_lstm")
    for model in (ref, fast):
        torch.manual_seed(5)
        model.layers[0].norm_c = LayerNorm(H, 0.7, 1e-5, bias=True).double()
        with torch.no_grad():
            model.layers[0].norm_c.bias.normal_()
    assert choose(fast.layers[0], data()) is loop.run_layer
    assert_same(ref, fast, data())


def test_time_offset_reads_later_statistics_rows():
    ref, fast = pair("bn_lstm", t_max=8)
    assert_same(ref, fast, data(), time_offset=2)


def test_gradcheck_every_norm_kind():
    """The hand-written backward against finite differences (float64, gradcheck's fast mode):
    each norm kind for norm_h and norm_c, with and without padding. The kernels read gamma
    and beta through the slots, so the slots hold the very tensors being perturbed."""
    torch.manual_seed(0)
    steps, batch, hidden = 2, 3, 2
    dt = torch.float64
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=dt)
    for kind, padding in [(NONE, None), (BN_BATCH, None), (BN_BATCH, (mask, mask.sum(1))),
                          (BN_POPULATION, None), (LAYER, (mask, mask.sum(1)))]:
        slots, params, owners = [], [], []
        for index, width in enumerate((4 * hidden, hidden)):
            slot = Slot(kind)
            if kind != NONE:
                gamma, beta = torch.rand(width, dtype=dt) + 0.5, torch.randn(width, dtype=dt)
                slot = Slot(kind, gamma, beta, 1e-5)
                rows = (steps, batch) if kind == LAYER else (steps, width)
                if kind == BN_POPULATION:
                    slot.mean, slot.invstd = torch.randn(rows, dtype=dt), torch.rand(rows, dtype=dt) + 0.5
                else:
                    slot.mean, slot.invstd, slot.var = (torch.empty(rows, dtype=dt) for _ in range(3))
                params += [gamma.requires_grad_(), beta.requires_grad_()]
                owners += [(index, "gamma"), (index, "beta")]
            slots.append(slot)
        inputs = [torch.randn(steps, batch, 4 * hidden, dtype=dt), torch.randn(4 * hidden, hidden, dtype=dt),
                  torch.randn(batch, hidden, dtype=dt), torch.randn(batch, hidden, dtype=dt)]
        inputs = [v.requires_grad_() for v in inputs]

        def f(*args):
            return loop.TritonLoop.apply(True, slots, owners, padding, *args)

        assert torch.autograd.gradcheck(f, (*inputs, *params), fast_mode=True), (kind, padding is not None)


def test_one_launch_per_step_each_way(monkeypatch):
    """The design: one Triton launch per time step forward and one backward, per layer."""
    launches: dict[str, int] = {}
    original = InterpretedFunction.run

    def counted(self, *args, **kwargs):
        launches[self.fn.__name__] = launches.get(self.fn.__name__, 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", counted)
    for name in VARIANTS:
        _, fast = pair(name, num_layers=2)
        launches.clear()
        out, _ = fast(data(steps=3))
        assert launches == {"step_forward": 2 * 3}, name
        out.sum().backward()
        assert launches == {"step_forward": 2 * 3, "step_backward": 2 * 3}, name


def test_unsupported_cases_take_another_path():
    _, fast = pair("bn_lstm")
    layer = fast.layers[0]
    assert not loop.supports(layer, data(torch.float32))  # parameters float64, input float32
    assert not loop.supports(layer, data().half())
    # Batch statistics of 16384 examples would need a tile over MAX_TILE values.
    assert loop.tiling((BN_BATCH, BN_BATCH), 16384, 4) is None
    assert loop.tiling((LAYER, BN_BATCH), 64, 1000) is None  # whole rows and whole batch at once
    assert loop.tiling((LAYER, LAYER), 64, 1000).block_h == 1024
    assert loop.tiling((BN_BATCH, BN_BATCH), 100, 100).block_b == 128


CPU = torch.device("cpu")


@pytest.fixture
def unchecked(monkeypatch):
    """The backend as in a new process: no device self-checked yet, no switch set."""
    monkeypatch.setattr(loop, "_checks", {})
    monkeypatch.delenv(loop.ENV_SWITCH, raising=False)


def triton_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "Triton kernels" in str(w.message)]


def test_self_check_passes_on_the_kernels(unchecked):
    """Identity, batch-norm and layer-norm layers, forward and backward, agree with the reference:
    no warning, the device is marked usable and the layer runs on the kernels."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loop.self_check(CPU) is None
        _, fast = pair("bn_lstm")
        assert choose(fast.layers[0], data()) is loop.run_layer
    assert triton_warnings(caught) == []
    assert loop._checks == {CPU: None}


class Broken:
    """A step kernel whose launch raises (`how="raise"`, as a compile or launch error would) or
    returns wrong numbers (`"wrong"`: 0.1 added to the h buffer forward, the d gates backward)."""

    OUTPUT = {"step_forward": 5, "step_backward": 9}  # the positional argument it writes

    def __init__(self, name: str, how: str):
        self.name, self.how, self.kernel = name, how, getattr(kernels, name)

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            if self.how == "raise":
                raise RuntimeError("PTX assembly failed (simulated)\nsecond line")
            launch(*args, **kwargs)
            args[self.OUTPUT[self.name]].add_(0.1)

        return run


@pytest.mark.parametrize("name, how, reason", [
    ("step_forward", "raise", "self-check: RuntimeError: PTX assembly failed (simulated)"),
    ("step_forward", "wrong", "self-check: identity layer off the reference loop"),
    ("step_backward", "wrong", "self-check: identity layer off the reference loop"),
])
def test_a_broken_kernel_falls_back_with_one_warning(unchecked, monkeypatch, name, how, reason):
    """The self-check catches it; one warning names the reason; every layer then takes the next
    backend, which computes the reference's outputs, gradients and statistics; the run's
    environment records the reason."""
    monkeypatch.setattr(kernels, name, Broken(name, how))
    ref, fast = pair("bn_lstm", num_layers=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert choose(fast.layers[0], data()) is not loop.run_layer
        assert_same(ref, fast, data())
        assert_same(ref, fast, data(), lengths=torch.tensor([T, 2, 4]))
    messages = triton_warnings(caught)
    assert len(messages) == 1 and reason in messages[0] and "PyTorch loop instead" in messages[0], messages
    assert "\n" not in messages[0]
    assert environment()["triton_kernels"].startswith(reason)


def test_switch_turns_the_backend_off(unchecked, monkeypatch):
    """RECNORM_TRITON=0: no self-check, no warning, the next backend, and the run's record says so."""
    monkeypatch.setenv("RECNORM_TRITON", "0")
    ref, fast = pair("ln_lstm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert choose(fast.layers[0], data()) is not loop.run_layer
        assert_same(ref, fast, data())
    assert triton_warnings(caught) == [] and loop._checks == {}
    assert environment()["triton_kernels"] == "not used: switched off by RECNORM_TRITON=0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the record of a machine without CUDA")
def test_record_without_cuda(unchecked):
    assert environment()["triton_kernels"] == "not used: no CUDA"
