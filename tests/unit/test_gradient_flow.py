"""Gradient-flow diagnostic (paper Figure 1): the effect of gamma, an independent autograd reference, tanh'."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from matplotlib import image as mpimg

from reports.render import write_report
from runners.gradient_flow import FlowConfig, gradient_norms, load_inputs, tanh_derivative
from suite.cli import main as cli
from tests.unit.report_fixtures import write_study


def test_large_gamma_vanishes_the_gradient_over_a_long_sequence():
    """Paper Figure 1a: at t=0, gamma=1.0 leaves orders of magnitude less gradient than gamma=0.1."""
    config = FlowConfig(length=300, hidden_size=16, batch_size=16)
    x, y, source = load_inputs(None, config.batch_size, config.length, config.seed)
    norms = gradient_norms(x, y, (0.1, 1.0), config).mean(axis=-1)  # (gamma, t)
    small, large = norms
    assert large[0] < 1e-3 * small[0], (source, small[0], large[0])
    # ...while at the last step, where the loss is, the two are of the same order.
    assert 0.1 < large[-1] / small[-1] < 10
    assert np.isfinite(norms).all()


def _reference_norms(x, y, gamma, config):
    """The same network written out with plain tensor ops and retain_grad (no StepBatchNorm, no grouping)."""
    steps, batch, _ = x.shape
    g = torch.Generator().manual_seed(config.seed)
    w_x = torch.randn(1, config.hidden_size, generator=g, dtype=torch.float64)
    w_x = w_x / w_x.norm()
    w_y = torch.nn.init.orthogonal_(torch.empty(config.hidden_size, 10, dtype=torch.float64), generator=g)
    h = config.h0_noise * torch.randn(batch, config.hidden_size, generator=g, dtype=torch.float64)
    h.requires_grad_(True)
    states = []
    for t in range(steps):
        a = h + x[t] @ w_x
        mean, var = a.mean(0, keepdim=True), a.var(0, unbiased=False, keepdim=True)
        h = torch.tanh(gamma * (a - mean) / torch.sqrt(var + config.eps))
        h.retain_grad()
        states.append(h)
    torch.nn.functional.cross_entropy(h @ w_y, y).backward()
    return np.stack([s.grad.norm(dim=1).numpy() for s in states])


def test_gradient_norms_match_a_plain_autograd_reference():
    config = FlowConfig(length=20, hidden_size=6, batch_size=5, seed=3)
    x, y, _ = load_inputs(None, config.batch_size, config.length, config.seed)
    ours = gradient_norms(x, y, (0.1, 0.5, 1.0), config)
    for i, gamma in enumerate((0.1, 0.5, 1.0)):
        np.testing.assert_allclose(ours[i], _reference_norms(x, y, gamma, config), rtol=1e-9, atol=1e-300)


def test_tanh_derivative_matches_sampling():
    sigmas = np.array([0.0, 0.25, 0.5, 1.0])
    mean, q25, q75 = tanh_derivative(sigmas)
    assert mean[0] == pytest.approx(1.0) and q25[0] == pytest.approx(1.0)
    z = np.random.default_rng(0).standard_normal(400_000)
    for s, m, lo, hi in zip(sigmas, mean, q25, q75):
        d = 1 - np.tanh(s * z) ** 2
        assert m == pytest.approx(d.mean(), abs=2e-3)
        assert (lo, hi) == pytest.approx(tuple(np.percentile(d, [25, 75])), abs=2e-3)
    assert mean[-1] < 0.65  # "at unit standard deviation, the expected derivative is much smaller than 1"


def test_real_mnist_inputs(shared_data):
    x, y, source = load_inputs(shared_data, 8, 784, 0)
    assert x.shape == (784, 8, 1) and y.shape == (8,) and "t10k" in source
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_diagnose_command_and_report(tmp_path):
    study = write_study(tmp_path)
    code = cli(["diagnose", "gradient-flow", "--out", str(study), "--data-dir", str(tmp_path / "nothing"),
                "--length", "40", "--hidden-size", "8", "--batch-size", "8", "--gammas", "0.1,1.0"])
    assert code == 0
    table = pq.read_table(study / "gradient_flow" / "gradient-flow.parquet")
    assert table.schema.metadata[b"table"] == b"gradient_flow"
    assert sorted(set(table["figure"].to_pylist())) == ["1a", "1b"]
    for name in ("gradient_flow.png", "tanh_derivative.png"):
        assert (study / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = write_report(study, tmp_path / "out" / "r.md").read_text()
    assert "## Gradient flow at initialization (paper Figure 1)" in text
    assert mpimg.imread(tmp_path / "out" / "r-gradient_flow.png").ndim == 3
    assert cli(["diagnose", "gradient-flow", "--out", str(study), "--gammas", "0.1,x"]) == 2
