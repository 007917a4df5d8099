"""Benchmark shapes and directions (paper Section 5), apart from the workloads so that building the
`suite bench` parser needs no torch (see runners.throughput for the workloads)."""

from __future__ import annotations

from dataclasses import dataclass

DIRECTIONS = ("fwd+bwd", "fwd")


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: steps T, batch B, input features F, hidden units H."""

    name: str
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    one_hot: bool = False
    # Default pytest-benchmark rounds on CPU; H=1000 at T=100 costs seconds per round on 2 cores.
    cpu_rounds: int = 5

    def describe(self) -> str:
        """e.g. 'smnist (T=784, B=100, F=1, H=100)'."""
        return f"{self.name} (T={self.steps}, B={self.batch}, F={self.input_size}, H={self.hidden_size})"


SHAPES: dict[str, Shape] = {
    "smnist": Shape("smnist", 784, 100, 1, 100, cpu_rounds=7),
    "ptb": Shape("ptb", 100, 64, 50, 1000, one_hot=True, cpu_rounds=3),
    "ptb256": Shape("ptb256", 100, 64, 50, 256, one_hot=True, cpu_rounds=5),
    # Seconds for everything: a smoke test of the machinery, not a measurement.
    "tiny": Shape("tiny", 20, 8, 3, 8, cpu_rounds=3),
}
PAPER_SHAPES = ("smnist", "ptb", "ptb256")
