"""Normalizations plugged into the LSTM layer: per-time-step batch norm, layer norm, identity.

Each norm has two entry points that the reference time loop (`suite.core.cell`) calls:
`sequence(x, mask)` normalizes a whole `(T, B, C)` tensor at once (the input term, hoisted
out of the loop) and `step(x, t, mask_t)` normalizes one `(B, C)` step inside the loop.
Each also describes itself to the recurrence backends (`suite.core.backends`) through
`kind()` (IDENTITY, LAYER, STEP_BATCH or SHARED_BATCH) and, for batch norms, `mode()` (the
statistics mode in force), so no backend needs to know these classes.

`StepBatchNorm` implements BN as in Cooijmans et al. (2016), Section 3: statistics over the
minibatch, separately for every time step 1..T_max, gamma and beta shared over time,
population statistics per step at inference with step T_max's reused beyond it. Padded
positions are masked out of the mean and the variance (the mask sits outside the squared
difference so a padded value can never leak in).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# How a StepBatchNorm normalizes and whether it updates its population statistics.
TRAIN = "train"  # batch statistics, running averages updated
BATCH = "batch"  # batch statistics, nothing updated (the authors' evaluation for selection)
POPULATION = "population"  # stored per-step population statistics
ACCUMULATE = "accumulate"  # batch statistics, exact sums gathered for `finish_estimate`
STATS_MODES = (TRAIN, BATCH, POPULATION, ACCUMULATE)

# What a norm is, as the recurrence backends see it (`kind()`).
IDENTITY = "identity"  # no normalization
LAYER = "layer"  # per example over units
STEP_BATCH = "step_batch"  # per unit over the batch, statistics per time step (rows 0..T_max-1)
SHARED_BATCH = "shared_batch"  # per unit over the batch and all steps (one statistics row)


class Identity(nn.Module):
    """No normalization; the plain LSTM's three norm slots."""

    def kind(self) -> str:
        """IDENTITY (see the module doc)."""
        return IDENTITY

    def sequence(self, x: torch.Tensor, mask: torch.Tensor | None, t0: int = 0) -> torch.Tensor:
        """Return x unchanged."""
        return x

    def step(self, x: torch.Tensor, t: int, mask_t: torch.Tensor | None) -> torch.Tensor:
        """Return x unchanged."""
        return x


class LayerNorm(nn.Module):
    """Layer norm over units, per example (Ba et al. 2016); needs no mask or time index."""

    def __init__(self, size: int, gain_init: float, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((size,), float(gain_init)))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None

    def kind(self) -> str:
        """LAYER (see the module doc)."""
        return LAYER

    def sequence(self, x: torch.Tensor, mask: torch.Tensor | None, t0: int = 0) -> torch.Tensor:
        """Normalize every position of a (T, B, C) tensor."""
        return self.step(x, t0, mask)

    def step(self, x: torch.Tensor, t: int, mask_t: torch.Tensor | None) -> torch.Tensor:
        """Normalize one (B, C) step."""
        # Two-pass mean and variance: F.layer_norm's backward measured several times slower here.
        mean = x.mean(-1, keepdim=True)
        centered = x - mean
        out = centered * torch.rsqrt(centered.square().mean(-1, keepdim=True) + self.eps) * self.weight
        return out + self.bias if self.bias is not None else out


class StepBatchNorm(nn.Module):
    """Batch norm with statistics kept per time step (or shared over time when `per_step=False`).

    Buffers `running_mean` and `running_var` have shape (T_max, C) (or (1, C)); a step t >=
    T_max reads and updates row T_max - 1, which is the paper's rule for t > T_max.
    """

    def __init__(
        self,
        size: int,
        t_max: int,
        gamma_init: float,
        eps: float,
        momentum: float,
        bias: bool,
        per_step: bool = True,
    ):
        super().__init__()
        if t_max < 1:
            raise ValueError(f"t_max must be at least 1, got {t_max}")
        self.eps, self.momentum, self.per_step = eps, momentum, per_step
        rows = t_max if per_step else 1
        self.weight = nn.Parameter(torch.full((size,), float(gamma_init)))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None
        self.register_buffer("running_mean", torch.zeros(rows, size))
        self.register_buffer("running_var", torch.ones(rows, size))
        self.mode_override: str | None = None
        self._sums: list[torch.Tensor] | None = None

    @property
    def t_max(self) -> int:
        """Number of time steps that have their own statistics."""
        return self.running_mean.shape[0]

    def kind(self) -> str:
        """STEP_BATCH with statistics per time step, else SHARED_BATCH (see the module doc)."""
        return STEP_BATCH if self.per_step else SHARED_BATCH

    def mode(self) -> str:
        """The statistics mode now in force: an override, else train/population by `training`."""
        if self.mode_override is not None:
            return self.mode_override
        return TRAIN if self.training else POPULATION

    def _rows(self, t0: int, steps: int) -> torch.Tensor:
        idx = torch.arange(t0, t0 + steps, device=self.running_mean.device)
        return idx.clamp_(max=self.t_max - 1) if self.per_step else torch.zeros_like(idx)

    def _affine(self, xhat: torch.Tensor) -> torch.Tensor:
        out = xhat * self.weight
        return out + self.bias if self.bias is not None else out

    def sequence(self, x: torch.Tensor, mask: torch.Tensor | None, t0: int = 0) -> torch.Tensor:
        """Normalize a (T, B, C) tensor, each step with its own statistics (vectorized)."""
        mode = self.mode()
        rows = self._rows(t0, x.shape[0])
        if mode == POPULATION:
            mean, var = self.running_mean[rows].unsqueeze(1), self.running_var[rows].unsqueeze(1)
            return self._affine((x - mean) * torch.rsqrt(var + self.eps))
        m = None if mask is None else mask.unsqueeze(-1).to(x.dtype)
        if self.per_step:
            mean, var, count = _masked_moments(x, m, dims=(1,))
        else:
            mean, var, count = _masked_moments(x, m, dims=(0, 1))
            rows = rows[:1]
        self._record(rows, mean.squeeze(1), var.squeeze(1), count.squeeze(1), mode)
        return self._affine((x - mean) * torch.rsqrt(var + self.eps))

    def step(self, x: torch.Tensor, t: int, mask_t: torch.Tensor | None) -> torch.Tensor:
        """Normalize one (B, C) step with the statistics of step t."""
        return self.sequence(x.unsqueeze(0), None if mask_t is None else mask_t.unsqueeze(0), t).squeeze(0)

    def population(self, t0: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Population mean and variance, (steps, C) each, for steps t0..t0+steps-1."""
        rows = self._rows(t0, steps)
        return self.running_mean[rows], self.running_var[rows]

    def record(self, mean: torch.Tensor, var: torch.Tensor, count: int | torch.Tensor, t0: int) -> None:
        """Take per-step batch statistics (steps, C) computed elsewhere (the native kernels) over
        `count` real examples per step (a number, or (steps,)) exactly as `sequence` takes its own:
        running averages or exact sums."""
        steps = mean.shape[0]
        rows = self._rows(t0, steps)
        if not self.per_step:
            raise ValueError("record takes per-step statistics; this norm shares one row over time")
        counts = torch.as_tensor(count, dtype=mean.dtype, device=mean.device).expand(steps).reshape(steps, 1)
        self._record(rows, mean, var, counts, self.mode())

    def _record(self, rows, mean, var, count, mode: str) -> None:
        """Update running averages (TRAIN) or exact sums (ACCUMULATE) for the given rows."""
        if mode not in (TRAIN, ACCUMULATE):
            return
        with torch.no_grad():
            mean, var, count = mean.detach(), var.detach(), count.detach().reshape(-1, 1)
            seen = count > 0
            if mode == TRAIN:
                unbiased = var * count / (count - 1).clamp(min=1)
                # Steps past T_max all share the last row; rows before it are distinct.
                repeats = int((rows == self.t_max - 1).sum()) if self.per_step else 1
                distinct = len(rows) - max(repeats - 1, 0)
                self._update_running(rows[:distinct], mean[:distinct], unbiased[:distinct], seen[:distinct])
                for i in range(distinct, len(rows)):  # one step at a time, in order, as a step loop would
                    self._update_running(rows[i:i + 1], mean[i:i + 1], unbiased[i:i + 1], seen[i:i + 1])
                return
            n, s1, s2 = self._sums
            d = torch.float64
            n.index_add_(0, rows, count.to(d))
            s1.index_add_(0, rows, (mean * count).to(d))
            s2.index_add_(0, rows, ((var + mean * mean) * count).to(d))

    def _update_running(self, rows, mean, var, seen) -> None:
        """Move the running averages of distinct `rows` toward (mean, var), where that step had data."""
        for buffer, value in ((self.running_mean, mean), (self.running_var, var)):
            old = buffer[rows]
            buffer.index_copy_(0, rows, torch.where(seen, torch.lerp(old, value, self.momentum), old))

    def start_estimate(self) -> None:
        """Begin an exact re-estimate of the population statistics from the next batches."""
        rows, size = self.running_mean.shape
        dev = self.running_mean.device
        z = torch.zeros(rows, size, dtype=torch.float64, device=dev)
        self._sums = [torch.zeros(rows, 1, dtype=torch.float64, device=dev), z, z.clone()]
        self.mode_override = ACCUMULATE

    def finish_estimate(self) -> None:
        """Replace the population statistics by the exact ones gathered since `start_estimate`."""
        n, s1, s2 = self._sums
        seen = n > 1
        mean = s1 / n.clamp(min=1)
        var = (s2 / n.clamp(min=1) - mean * mean).clamp(min=0) * n / (n - 1).clamp(min=1)
        dtype = self.running_mean.dtype
        self.running_mean.copy_(torch.where(seen, mean, self.running_mean.to(torch.float64)).to(dtype))
        self.running_var.copy_(torch.where(seen, var, self.running_var.to(torch.float64)).to(dtype))
        self._sums, self.mode_override = None, None


def _masked_moments(x: torch.Tensor, m: torch.Tensor | None, dims: tuple[int, ...]):
    """Biased mean and variance over `dims`, counting only positions where m is 1."""
    if m is None:
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
        n = torch.Size(x.shape[d] for d in dims).numel()
        return mean, var, torch.full((*mean.shape[:-1], 1), float(n), dtype=x.dtype, device=x.device)
    count = m.sum(dims, keepdim=True)
    safe = count.clamp(min=1)
    mean = (x * m).sum(dims, keepdim=True) / safe
    var = ((x - mean).square() * m).sum(dims, keepdim=True) / safe
    return mean, var, count


def batch_norms(module: nn.Module) -> list[StepBatchNorm]:
    """Every StepBatchNorm inside a module."""
    return [m for m in module.modules() if isinstance(m, StepBatchNorm)]


@contextlib.contextmanager
def statistics_mode(module: nn.Module, mode: str) -> Iterator[None]:
    """Force every StepBatchNorm in `module` into one statistics mode for the block."""
    if mode not in STATS_MODES:
        raise ValueError(f"unknown statistics mode {mode!r}; choose one of {STATS_MODES}")
    norms = batch_norms(module)
    saved = [n.mode_override for n in norms]
    for n in norms:
        n.mode_override = mode
    try:
        yield
    finally:
        for n, s in zip(norms, saved):
            n.mode_override = s


@contextlib.contextmanager
def kept_statistics(module: nn.Module) -> Iterator[None]:
    """Restore every StepBatchNorm's running averages when the block ends.

    Re-estimating population statistics overwrites the buffers that hold the running
    averages; an evaluation wrapped in this leaves them as training made them, so the
    `running` mode can still be measured afterwards (and a saved model holds them).
    """
    norms = batch_norms(module)
    saved = [(n.running_mean.clone(), n.running_var.clone()) for n in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for n, (mean, var) in zip(norms, saved):
                n.running_mean.copy_(mean)
                n.running_var.copy_(var)


@torch.no_grad()
def reestimate_statistics(module: nn.Module, run_batches) -> int:
    """Set population statistics exactly from the batches that `run_batches()` feeds the module.

    `run_batches` is a callable that runs forward passes; returns how many norms were updated.
    """
    norms = batch_norms(module)
    if not norms:
        return 0
    for n in norms:
        n.start_estimate()
    try:
        run_batches()
        for n in norms:
            n.finish_estimate()
    finally:
        for n in norms:
            n._sums, n.mode_override = None, None
    return len(norms)
