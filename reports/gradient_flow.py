"""Figures of the gradient-flow diagnostic (Cooijmans et al. 2016, Section 4, Figure 1) from its table.

Figure 1a: the norm of d loss / d h_t against t, one curve per BN scale gamma; Figure 1b:
E[tanh'(x)] for x ~ N(0, sigma^2) with its quartiles. The experiment that writes the
`gradient_flow` table is `runners.gradient_flow` (`suite diagnose gradient-flow`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from reports.plots import gradient_flow_figure, tanh_derivative_figure


def figures(table: pa.Table, out: Path, prefix: str = "") -> list[Path]:
    """Draw Figure 1a and 1b from a gradient-flow table into `out`."""
    paths = []
    a = table.filter(pc.equal(table["figure"], "1a")).sort_by([("gamma", "ascending"), ("t", "ascending")])
    if a.num_rows:
        gammas = sorted(set(a["gamma"].to_pylist()))
        parts = [a.filter(pc.equal(a["gamma"], g)) for g in gammas]
        paths.append(gradient_flow_figure(gammas, [p["t"].to_numpy() for p in parts],
                                          [p["value"].to_numpy() for p in parts], a["source"][0].as_py(),
                                          out / f"{prefix}gradient_flow.png"))
    b = table.filter(pc.equal(table["figure"], "1b")).sort_by([("sigma", "ascending")])
    if b.num_rows:
        column = {name: b[name].to_numpy() for name in ("sigma", "value", "q25", "q75")}
        paths.append(tanh_derivative_figure(column["sigma"], column["value"], column["q25"], column["q75"],
                                            out / f"{prefix}tanh_derivative.png"))
    return paths
