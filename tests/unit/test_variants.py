"""Every variant through the same checks: shapes, gradients, state, modes, stacks, lengths, gradcheck."""

from __future__ import annotations

import io

import pytest
import torch

from suite.core import variants

NAMES = variants.names()
T, B, F, H = 6, 5, 3, 4


def build(name: str, **kwargs):
    torch.manual_seed(0)
    return variants.build(name, F, H, **kwargs)


@pytest.fixture
def x():
    return torch.randn(T, B, F, generator=torch.Generator().manual_seed(1))


def test_registry_has_the_six_variants():
    assert set(NAMES) == {"lstm", "cudnn_lstm", "bn_vertical", "bn_lstm", "ln_lstm", "wn_lstm"}


def test_unknown_variant_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown variant 'bnlstm'; known variants: bn_lstm"):
        variants.build("bnlstm", 1, 2)
    with pytest.raises(ValueError, match="unknown key 'gama'"):
        variants.build("bn_lstm", 1, 2, gama=0.3)
    with pytest.raises(ValueError, match="expected float"):
        variants.build("bn_lstm", 1, 2, gamma_init="big")


@pytest.mark.parametrize("name", NAMES)
def test_shapes_time_major_and_batch_first(name, x):
    rnn = build(name, num_layers=2)
    out, (h, c) = rnn(x)
    assert out.shape == (T, B, H) and h.shape == c.shape == (2, B, H)
    torch.testing.assert_close(out[-1], h[-1])
    rnn_bf = build(name, num_layers=2, batch_first=True)
    rnn_bf.load_state_dict(rnn.state_dict())
    out_bf, (h_bf, _) = rnn_bf(x.transpose(0, 1))
    assert out_bf.shape == (B, T, H)
    torch.testing.assert_close(out_bf.transpose(0, 1), out)
    torch.testing.assert_close(h_bf, h)


@pytest.mark.parametrize("name", NAMES)
def test_explicit_initial_state_is_used(name, x):
    rnn = build(name)
    h0, c0 = torch.randn(1, B, H), torch.randn(1, B, H)
    out_given, _ = rnn(x, (h0, c0))
    out_default, _ = rnn(x)
    assert not torch.allclose(out_given, out_default)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name, x):
    rnn = build(name, num_layers=2)
    out, (h, c) = rnn(x)
    (out.square().sum() + c.sum()).backward()
    for pname, p in rnn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name, x):
    rnn = build(name, num_layers=2)
    rnn(x)  # moves running statistics away from their initial values
    buffer = io.BytesIO()
    torch.save(rnn.state_dict(), buffer)
    torch.manual_seed(123)
    twin = variants.build(name, F, H, num_layers=2)
    buffer.seek(0)
    twin.load_state_dict(torch.load(buffer))
    rnn.eval(), twin.eval()
    torch.testing.assert_close(twin(x)[0], rnn(x)[0])


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_and_does_not_touch_buffers(name, x):
    rnn = build(name, num_layers=2, dropout=0.5)
    rnn(x)
    rnn.eval()
    before = {k: v.clone() for k, v in rnn.state_dict().items()}
    first, second = rnn(x)[0], rnn(x)[0]
    torch.testing.assert_close(first, second)
    for key, value in rnn.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_dropout_between_layers_acts_only_in_training(name, x):
    rnn = build(name, num_layers=2, dropout=0.5)
    torch.manual_seed(5)
    a = rnn(x)[0]
    torch.manual_seed(6)
    b = rnn(x)[0]
    assert not torch.allclose(a, b)
    single = build(name, num_layers=1, dropout=0.0)
    torch.testing.assert_close(single(x)[0], single(x)[0])


@pytest.mark.parametrize("name", NAMES)
def test_padded_positions_change_nothing(name, x):
    lengths = torch.tensor([6, 4, 1, 3, 6])
    rnn = build(name, num_layers=2)
    valid = (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(-1)
    garbage = torch.where(valid, x, torch.full_like(x, 1e3))
    for mode in ("train", "eval"):
        rnn.train(mode == "train")
        out_a, (h_a, c_a) = rnn(x, lengths=lengths)
        out_b, (h_b, c_b) = rnn(garbage, lengths=lengths)
        torch.testing.assert_close(out_a, out_b)
        torch.testing.assert_close(h_a, h_b)
        torch.testing.assert_close(c_a, c_b)
        assert (out_a[~valid.squeeze(-1)] == 0).all()
        # the final state is the state at each sequence's last real step
        torch.testing.assert_close(h_a[-1], out_a[lengths - 1, torch.arange(B)])


@pytest.mark.parametrize("name", ["lstm", "ln_lstm", "wn_lstm", "cudnn_lstm"])
def test_lengths_equal_running_each_sequence_alone(name, x):
    """Without batch statistics, a padded batch gives what each sequence gives on its own."""
    lengths = torch.tensor([6, 4, 1, 3, 6])
    rnn = build(name)
    out, (h, _) = rnn(x, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        alone, (h_alone, _) = rnn(x[:length, b:b + 1])
        torch.testing.assert_close(out[:length, b], alone[:, 0])
        torch.testing.assert_close(h[:, b], h_alone[:, 0])


@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_are_clear_errors(name, x):
    rnn = build(name)
    with pytest.raises(ValueError, match="features per step"):
        rnn(torch.randn(T, B, F + 1))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 6\]"):
        rnn(x, lengths=torch.tensor([7, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match="h0 has shape"):
        rnn(x, (torch.zeros(2, B, H), torch.zeros(2, B, H)))


def copy_into_torch_lstm(rnn, layers: int) -> torch.nn.LSTM:
    reference = torch.nn.LSTM(F, H, layers).double()
    with torch.no_grad():
        for i, layer in enumerate(rnn.layers):
            getattr(reference, f"weight_ih_l{i}").copy_(layer.weight_ih)
            getattr(reference, f"weight_hh_l{i}").copy_(layer.weight_hh)
            getattr(reference, f"bias_ih_l{i}").copy_(layer.bias)
            getattr(reference, f"bias_hh_l{i}").zero_()
    return reference


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_lstm_equals_torch_lstm_with_copied_weights(impl):
    torch.manual_seed(0)
    rnn = variants.build("lstm", F, H, num_layers=2, impl=impl).double()
    reference = copy_into_torch_lstm(rnn, 2)
    x = torch.randn(T, B, F, dtype=torch.float64, requires_grad=True)
    hx = (torch.randn(2, B, H, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64))
    out, (h, c) = rnn(x, hx)
    ref_out, (ref_h, ref_c) = reference(x, hx)
    for mine, theirs in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(out)
    mine = torch.autograd.grad((out * grad_out).sum() + c.sum(), [x, rnn.layers[0].weight_hh, rnn.layers[1].weight_ih])
    theirs = torch.autograd.grad((ref_out * grad_out).sum() + ref_c.sum(),
                                 [x, reference.weight_hh_l0, reference.weight_ih_l1])
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    rnn = variants.build(name, 2, 3, num_layers=2, t_max=4) if "bn" in name else variants.build(name, 2, 3, num_layers=2)
    rnn = rnn.double()
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 3])

    def run(x, h0, c0):
        out, (h, c) = rnn(x, (h0, c0), lengths=lengths)
        return out, c

    assert torch.autograd.gradcheck(run, (x, h0, c0), eps=1e-6, atol=1e-5)
    names = [n for n, _ in rnn.named_parameters()]

    def by_parameters(*params):
        return torch.func.functional_call(rnn, dict(zip(names, params)), (x.detach(), (h0.detach(), c0.detach())),
                                          {"lengths": lengths})[0]

    params = tuple(p.detach().clone().requires_grad_() for p in rnn.parameters())
    assert torch.autograd.gradcheck(by_parameters, params, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_shapes_and_padding(name, x):
    rnn = build(name, num_layers=2, bidirectional=True)
    lengths = torch.tensor([6, 4, 1, 3, 6])
    out, (h, c) = rnn(x, lengths=lengths)
    assert out.shape == (T, B, 2 * H) and h.shape == c.shape == (4, B, H)
    valid = (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(-1)
    garbage = torch.where(valid, x, torch.full_like(x, 1e3))
    torch.testing.assert_close(rnn(garbage, lengths=lengths)[0], out)
    out.sum().backward()
    assert all(p.grad is not None for p in rnn.parameters())


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_bidirectional_lstm_equals_torch_lstm_with_copied_weights(impl):
    torch.manual_seed(0)
    rnn = variants.build("lstm", F, H, num_layers=2, bidirectional=True, impl=impl).double()
    reference = torch.nn.LSTM(F, H, 2, bidirectional=True).double()
    with torch.no_grad():
        for index, layer in enumerate(rnn.layers):
            suffix = f"l{index // 2}" + ("_reverse" if index % 2 else "")
            getattr(reference, f"weight_ih_{suffix}").copy_(layer.weight_ih)
            getattr(reference, f"weight_hh_{suffix}").copy_(layer.weight_hh)
            getattr(reference, f"bias_ih_{suffix}").copy_(layer.bias)
            getattr(reference, f"bias_hh_{suffix}").zero_()
    x = torch.randn(T, B, F, dtype=torch.float64)
    lengths = torch.tensor([6, 4, 1, 3, 6])
    hx = tuple(torch.randn(4, B, H, dtype=torch.float64) for _ in range(2))
    out, (h, c) = rnn(x, hx, lengths=lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    ref_packed, (ref_h, ref_c) = reference(packed, hx)
    ref_out, _ = torch.nn.utils.rnn.pad_packed_sequence(ref_packed, total_length=T)
    for mine, theirs in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
