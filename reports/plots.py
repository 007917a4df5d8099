"""Report figures as PNG files, drawn with matplotlib's object API (Agg canvas, no display, no pyplot state).

- validation curves of one task against steps and against training seconds, mean and a
  +-1 sample-std band over seeds (paper Figures 2-4), seed counts in the legend;
- metric against evaluation length (paper Figure 3b);
- gradient flow through a BN tanh RNN for several gamma (paper Figure 1a) and the expected
  derivative of tanh under N(0, sigma^2) with its interquartile range (Figure 1b).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Scale = Callable[[np.ndarray], np.ndarray]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def _colors(n: int) -> list:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def curve_figure(task: str, curves: Mapping[str, pa.Table], seeds: Mapping[str, int], ylabel: str,
                 scale: Scale, path: Path) -> Path:
    """Validation metric against steps (left) and training seconds (right), mean and +-1 std band per arm."""
    fig = Figure(figsize=(11, 4.2))
    by_step, by_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for color, (arm, table) in zip(_colors(len(curves)), curves.items()):
        step = table["step"].to_numpy()
        seconds = table["train_seconds_mean"].to_numpy(zero_copy_only=False)
        mean = scale(table["value_mean"].to_numpy(zero_copy_only=False))
        std = scale(pc.fill_null(table["value_stddev"], 0.0).to_numpy(zero_copy_only=False))
        std = np.nan_to_num(std)
        label = f"{arm} (n={seeds[arm]})"
        for axis, x in ((by_step, step), (by_time, seconds)):
            axis.plot(x, mean, color=color, label=label, linewidth=1.6)
            axis.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    by_step.set_xlabel("training step")
    by_time.set_xlabel("training seconds (mean over seeds at each step)")
    for axis in (by_step, by_time):
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    by_step.legend(fontsize=8, loc="best")
    fig.suptitle(f"{task}: validation {ylabel}, mean and ±1 std over seeds")
    return _save(fig, path)


def lengths_figure(task: str, table: pa.Table, ylabel: str, scale: Scale, path: Path) -> Path:
    """Metric against evaluation length per arm (mean and +-1 std over seeds); one line per checkpoint/split."""
    fig = Figure(figsize=(7, 4.5))
    axis = fig.add_subplot(1, 1, 1)
    keys = sorted(set(zip(table["arm"].to_pylist(), table["checkpoint"].to_pylist(), table["split"].to_pylist())))
    for color, (arm, checkpoint, split) in zip(_colors(len(keys)), keys):
        mask = pc.and_(pc.and_(pc.equal(table["arm"], arm), pc.equal(table["checkpoint"], checkpoint)),
                       pc.equal(table["split"], split))
        part = table.filter(mask)
        x = part["length"].to_numpy()
        mean = scale(part["value_mean"].to_numpy(zero_copy_only=False))
        std = np.nan_to_num(scale(pc.fill_null(part["value_stddev"], 0.0).to_numpy(zero_copy_only=False)))
        n = min(part["value_count"].to_pylist())
        axis.plot(x, mean, marker="o", markersize=3, color=color, label=f"{arm}, {checkpoint}, {split} (n={n})")
        axis.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    axis.set_xlabel("evaluation sequence length")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.suptitle(f"{task}: {ylabel} against evaluation length")
    return _save(fig, path)


def gradient_flow_figure(gammas: list[float], steps: list[np.ndarray], norms: list[np.ndarray], title: str,
                         path: Path) -> Path:
    """||d loss / d h_t|| (mean over the batch) against t, log scale, one line per gamma (paper Figure 1a)."""
    fig = Figure(figsize=(7, 4.5))
    axis = fig.add_subplot(1, 1, 1)
    cmap = colormaps["viridis"]
    for i, (gamma, t, norm) in enumerate(zip(gammas, steps, norms)):
        shown = np.where(norm > 0, norm, np.nan)  # an underflowed zero cannot sit on a log axis
        axis.plot(t, shown, color=cmap(0.1 + 0.8 * i / max(len(gammas) - 1, 1)), label=f"gamma={gamma:.2f}")
    axis.set_yscale("log")
    axis.set_xlabel("t")
    axis.set_ylabel("||d loss / d h_t||_2 (mean over batch)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title(title, fontsize=9)
    fig.suptitle("Gradient flow through a batch-normalized tanh RNN at initialization")
    return _save(fig, path)


def tanh_derivative_figure(sigma: np.ndarray, mean: np.ndarray, q25: np.ndarray, q75: np.ndarray,
                           path: Path) -> Path:
    """Expected tanh'(x) for x ~ N(0, sigma^2) with its interquartile range (paper Figure 1b)."""
    fig = Figure(figsize=(5.5, 4.5))
    axis = fig.add_subplot(1, 1, 1)
    axis.fill_between(sigma, q25, q75, color="#FF9848", linewidth=0, label="interquartile range")
    axis.plot(sigma, mean, color="#CC4F1B", label="expected derivative")
    axis.set_xlim(0, float(sigma.max()))
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("input standard deviation sigma")
    axis.set_ylabel("tanh'(x), x ~ N(0, sigma^2)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    fig.suptitle("Derivative through tanh of a centered input")
    return _save(fig, path)
