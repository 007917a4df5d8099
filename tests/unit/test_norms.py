"""Normalization statistics checked by hand: per-step BN, masking, T > T_max, re-estimation, layer norm."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from suite.core import variants
from suite.core.cells.norms import LayerNorm, StepBatchNorm, reestimate_statistics, statistics_mode

T, B, F_IN, H = 5, 7, 3, 4


def bn(x, gamma, beta=None, eps=1e-5):
    """Batch norm of a (B, C) tensor with statistics of that batch, written out by hand."""
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)
    out = gamma * (x - mean) / torch.sqrt(var + eps)
    return out if beta is None else out + beta


def reference_bn_lstm(layer, x, h, c):
    """The paper's Eq. 6-8 step by step, batch statistics per step; returns outputs and per-step stats."""
    outputs, stats = [], {"x": [], "h": [], "c": []}
    for t in range(x.shape[0]):
        wx, wh = x[t] @ layer.weight_ih.T, h @ layer.weight_hh.T
        stats["x"].append((wx.mean(0), wx.var(0, unbiased=True)))
        stats["h"].append((wh.mean(0), wh.var(0, unbiased=True)))
        gates = bn(wh, layer.norm_h.weight) + bn(wx, layer.norm_x.weight) + layer.bias
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        stats["c"].append((c.mean(0), c.var(0, unbiased=True)))
        h = torch.sigmoid(o) * torch.tanh(bn(c, layer.norm_c.weight, layer.norm_c.bias))
        outputs.append(h)
    return torch.stack(outputs), stats


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_bn_lstm_matches_the_paper_equations_and_its_statistics_are_the_batch_statistics(impl):
    torch.manual_seed(0)
    rnn = variants.build("bn_lstm", F_IN, H, t_max=T, momentum=1.0, impl=impl).double()
    layer = rnn.layers[0]
    with torch.no_grad():  # non-default affine parameters, so a swapped gamma/beta would show
        for norm in (layer.norm_x, layer.norm_h, layer.norm_c):
            norm.weight.uniform_(0.05, 0.5)
        layer.norm_c.bias.uniform_(-0.2, 0.2)
    x = torch.randn(T, B, F_IN, dtype=torch.float64)
    h0, c0 = torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)
    out, _ = rnn(x, (h0, c0))
    expected, stats = reference_bn_lstm(layer, x, h0[0], c0[0])
    torch.testing.assert_close(out, expected)
    # momentum 1: the running statistics of step t are exactly the batch statistics of step t
    for key, norm in (("x", layer.norm_x), ("h", layer.norm_h), ("c", layer.norm_c)):
        for t, (mean, var) in enumerate(stats[key]):
            torch.testing.assert_close(norm.running_mean[t], mean, msg=f"{key} mean at step {t}")
            torch.testing.assert_close(norm.running_var[t], var, msg=f"{key} var at step {t}")


def test_paper_defaults():
    rnn = variants.build("bn_lstm", F_IN, H)
    layer = rnn.layers[0]
    for norm in (layer.norm_x, layer.norm_h, layer.norm_c):
        assert torch.all(norm.weight == 0.1) and norm.eps == 1e-5
    assert layer.norm_x.bias is None and layer.norm_h.bias is None and torch.all(layer.norm_c.bias == 0)
    assert torch.all(layer.bias[H:2 * H] == 1.0) and torch.all(layer.bias[:H] == 0)


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_eval_beyond_t_max_reuses_the_last_steps_statistics(impl):
    torch.manual_seed(0)
    short = variants.build("bn_lstm", F_IN, H, t_max=3, impl=impl).double()
    long = variants.build("bn_lstm", F_IN, H, t_max=8, impl=impl).double()
    with torch.no_grad():
        for norm in [m for m in short.modules() if isinstance(m, StepBatchNorm)]:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    state = short.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            # the long model holds rows 0..2 and then row 2 repeated: what "reuse step T_max" means
            state[key] = torch.cat([value, value[-1:].expand(5, -1)])
    long.load_state_dict(state)
    short.eval(), long.eval()
    x = torch.randn(8, B, F_IN, dtype=torch.float64)
    torch.testing.assert_close(short(x)[0], long(x)[0])
    # and the rows beyond T_max really differ from a model that did not reuse them
    long.layers[0].norm_h.running_mean[5:].add_(1.0)
    assert not torch.allclose(short(x)[0], long(x)[0])


def test_masked_statistics_ignore_padding():
    norm = StepBatchNorm(3, t_max=4, gamma_init=1.0, eps=1e-5, momentum=1.0, bias=False)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    norm.double()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]).bool()
    out = norm.sequence(x, mask)
    for t in range(4):
        rows = x[t][mask[t]]
        mean, var = rows.mean(0), rows.var(0, unbiased=False)
        torch.testing.assert_close(out[t][mask[t]], (rows - mean) / torch.sqrt(var + 1e-5))
        torch.testing.assert_close(norm.running_mean[t], mean)
        torch.testing.assert_close(norm.running_var[t], rows.var(0, unbiased=True))


def test_step_without_any_valid_entry_leaves_statistics_alone():
    norm = StepBatchNorm(3, t_max=2, gamma_init=1.0, eps=1e-5, momentum=0.5, bias=False)
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]).bool()
    out = norm.sequence(x, mask)
    assert torch.isfinite(out).all()
    assert torch.all(norm.running_mean[1] == 0) and torch.all(norm.running_var[1] == 1)


def test_sequence_wise_statistics_are_shared_over_time():
    norm = StepBatchNorm(3, t_max=10, gamma_init=1.0, eps=1e-5, momentum=1.0, bias=False, per_step=False)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    norm.double()
    out = norm.sequence(x, None)
    flat = x.reshape(-1, 3)
    torch.testing.assert_close(out, (x - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5))
    assert norm.running_mean.shape == (1, 3)
    rnn = variants.build("bn_vertical", F_IN, H, statistics="sequence")
    assert rnn.layers[0].norm_x.running_mean.shape == (1, 4 * H)


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_reestimate_gives_exact_population_statistics_over_all_batches(impl):
    torch.manual_seed(0)
    rnn = variants.build("bn_vertical", F_IN, H, t_max=T, impl=impl).double()
    batches = [torch.randn(T, n, F_IN, dtype=torch.float64) for n in (3, 5, 8)]
    rnn.eval()
    reestimate_statistics(rnn, lambda: [rnn(b) for b in batches])
    wx = torch.cat(batches, dim=1) @ rnn.layers[0].weight_ih.T  # (T, 16, 4H)
    norm = rnn.layers[0].norm_x
    torch.testing.assert_close(norm.running_mean, wx.mean(1))
    torch.testing.assert_close(norm.running_var, wx.var(1, unbiased=True))
    assert norm.mode_override is None


def test_batch_statistics_mode_in_eval_does_not_update_buffers():
    torch.manual_seed(0)
    rnn = variants.build("bn_lstm", F_IN, H, t_max=T)
    x = torch.randn(T, B, F_IN)
    train_out = rnn(x)[0]
    rnn.eval()
    before = {k: v.clone() for k, v in rnn.state_dict().items()}
    with statistics_mode(rnn, "batch"):
        batch_out = rnn(x)[0]
    torch.testing.assert_close(batch_out, train_out)
    for key, value in rnn.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not torch.allclose(rnn(x)[0], batch_out)  # population statistics differ from the batch's


def test_layer_norm_equals_torch_layer_norm():
    norm = LayerNorm(6, gain_init=0.7, eps=1e-5, bias=True).double()
    with torch.no_grad():
        norm.bias.uniform_()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(norm.sequence(x, None), F.layer_norm(x, (6,), norm.weight, norm.bias, 1e-5))


def test_ln_lstm_normalizes_per_example():
    """Layer norm needs no batch: one example alone gives the same output as inside a batch."""
    torch.manual_seed(0)
    rnn = variants.build("ln_lstm", F_IN, H)
    x = torch.randn(T, B, F_IN)
    torch.testing.assert_close(rnn(x)[0][:, 2], rnn(x[:, 2:3])[0][:, 0])


def test_weight_norm_weights_have_unit_direction_times_gain():
    torch.manual_seed(0)
    rnn = variants.build("wn_lstm", F_IN, H)
    layer = rnn.layers[0]
    g = layer.parametrizations.weight_hh.original0
    v = layer.parametrizations.weight_hh.original1
    with torch.no_grad():
        g.mul_(2.0)
    torch.testing.assert_close(layer.weight_hh, g * v / v.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("mode", ["nonsense"])
def test_unknown_statistics_mode(mode):
    with pytest.raises(ValueError, match="unknown statistics mode"):
        with statistics_mode(torch.nn.Linear(1, 1), mode):
            pass


def test_steps_past_t_max_update_the_last_row_in_order_and_padding_never():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 2)
    vectorized = StepBatchNorm(2, t_max=3, gamma_init=1.0, eps=1e-5, momentum=0.3, bias=False)
    stepwise = StepBatchNorm(2, t_max=3, gamma_init=1.0, eps=1e-5, momentum=0.3, bias=False)
    vectorized.sequence(x, None)
    for t in range(6):
        stepwise.step(x[t], t, None)
    torch.testing.assert_close(vectorized.running_mean, stepwise.running_mean)
    torch.testing.assert_close(vectorized.running_var, stepwise.running_var)
    # two fully padded steps past T_max leave the statistics as the real steps left them
    padded = StepBatchNorm(2, t_max=3, gamma_init=1.0, eps=1e-5, momentum=0.3, bias=False)
    mask = torch.ones(8, 5, dtype=torch.bool)
    mask[6:] = False
    padded.sequence(torch.cat([x, torch.randn(2, 5, 2)]), mask)
    torch.testing.assert_close(padded.running_mean, vectorized.running_mean)
    torch.testing.assert_close(padded.running_var, vectorized.running_var)
