"""The paper's reference test numbers (Cooijmans et al. 2016, Tables 1-3; ../shared/PAPER.md).

Values are in the suite's metric units: accuracy is a fraction in [0, 1] (the paper prints
percent: 98.9 % is stored as 0.989), bits per character as printed. Keys are the suite's
task and variant names.
"""

from __future__ import annotations

# (task, variant) -> (test metric, where it comes from)
REFERENCE: dict[tuple[str, str], tuple[float, str]] = {
    ("smnist", "lstm"): (0.989, "Table 1"),
    ("smnist", "bn_lstm"): (0.990, "Table 1"),
    ("pmnist", "lstm"): (0.902, "Table 1"),
    ("pmnist", "bn_lstm"): (0.954, "Table 1"),
    ("ptb_char", "lstm"): (1.38, "Table 2"),
    ("ptb_char", "bn_lstm"): (1.32, "Table 2"),
    ("text8", "lstm"): (1.43, "Table 3"),
    ("text8", "bn_lstm"): (1.36, "Table 3"),
}


def reference(task: str, variant: str) -> float | None:
    """The paper's test metric for a task and variant, or None where the paper has none."""
    entry = REFERENCE.get((task, variant))
    return entry[0] if entry else None
