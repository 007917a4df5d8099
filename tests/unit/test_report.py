"""`suite report`: every number checked against a hand computation, a golden file, figures, bad tables."""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib import image as mpimg

from reports.load import load_study
from reports.render import write_report
from reports.stats import t_cdf, t_ppf, welch_interval
from suite.cli import main as cli
from suite.core.errors import SuiteError
from suite.core.results import CURVE, SUMMARY, to_table, write_table
from tests.unit.report_fixtures import INFERENCE_VALUES, PTB, SMNIST, benchmark_json, write_gradient_flow, write_study

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "report_small.md"
T4 = 2.7764451051977987  # t_{0.975, 4} (textbook tables: 2.776)


def t2_closed(p: float) -> float:
    """Student t quantile with 2 degrees of freedom in closed form."""
    a = 4 * p * (1 - p)
    return 2 * (p - 0.5) * math.sqrt(2 / a)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report")
    study = write_study(root)
    write_gradient_flow(study)
    out = write_report(study, root / "out" / "report.md", benchmark_json(root / "bench.json"))
    return out, out.read_text()


def row(text: str, first_cell: str, *headings: str) -> list[str]:
    """Cells of the table row starting with `first_cell` under the nested `headings` (up to the next heading)."""
    part = text
    for heading in headings:
        part = part.split(heading, 1)[1]
    part = part.split("\n#", 1)[0]
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} under {headings!r}")


def pm(values, scale=100.0, digits=2) -> str:
    """mean ± sample std (n) as the report prints it, computed with the statistics module."""
    return f"{statistics.mean(values) * scale:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f} (n={len(values)})"


def test_t_quantiles_match_closed_forms_and_tables():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_ppf(p, 2) == pytest.approx(t2_closed(p), rel=1e-9)
    assert t_ppf(0.975, 4) == pytest.approx(T4, rel=1e-9)
    for df, table in ((3, 3.182), (10, 2.228), (30, 2.042), (120, 1.980)):
        assert t_ppf(0.975, df) == pytest.approx(table, abs=5e-4)
    assert t_ppf(0.025, 7) == pytest.approx(-t_ppf(0.975, 7))
    # Non-integer df (as Welch gives): the CDF against Simpson integration of the density.
    df = 2.88
    x = np.linspace(-40.0, 1.7, 200_001)
    density = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + x**2 / df) ** (-(df + 1) / 2)
    h = x[1] - x[0]
    simpson = h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    assert t_cdf(1.7, df) - t_cdf(-40.0, df) == pytest.approx(simpson, abs=1e-7)
    d = welch_interval([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert d.diff == 0 and d.df == pytest.approx(4.0)
    assert d.high == pytest.approx(T4 * math.sqrt(2 / 3))


def test_quality_numbers(report):
    _, text = report
    sec = ("## Task `smnist`", "### Final quality")
    lstm_best = [SMNIST["lstm", s][5] for s in range(3)]
    bn_best = [SMNIST["bn_lstm", s][5] for s in range(3)]
    lstm_last = [SMNIST["lstm", s][6] for s in range(3)]
    bn_last = [SMNIST["bn_lstm", s][6] for s in range(3)]
    assert row(text, "`lstm`", *sec)[1:4] == [pm(lstm_best), pm(lstm_last), "98.90"]
    cells = row(text, "`bn_lstm`", *sec)
    assert cells[1:4] == [pm(bn_best), pm(bn_last), "99.00"]  # the diverged seed 3 is not averaged in
    # Welch: equal n=3 and equal std 0.02 at best -> df = 4 exactly.
    diff = statistics.mean(bn_best) - statistics.mean(lstm_best)
    half = T4 * math.sqrt(statistics.variance(bn_best) / 3 + statistics.variance(lstm_best) / 3)
    assert cells[4] == f"{diff * 100:+.2f} [{(diff - half) * 100:+.2f}, {(diff + half) * 100:+.2f}] *"
    # ptb_char: n=2 per arm, equal std -> df = 2.
    ptb = "## Task `ptb_char`"
    pl = [PTB["lstm", s][5] for s in range(2)]
    pb = [PTB["bn_lstm", s][5] for s in range(2)]
    diff = statistics.mean(pb) - statistics.mean(pl)
    half = t2_closed(0.975) * math.sqrt(statistics.variance(pb) / 2 + statistics.variance(pl) / 2)
    cells = row(text, "`bn_lstm`", ptb, "### Final quality")
    assert cells[1] == pm(pb, 1, 3) and cells[3] == "1.320"
    assert cells[4] == f"{diff:+.3f} [{diff - half:+.3f}, {diff + half:+.3f}]"  # includes 0: no star


def test_convergence_numbers(report):
    _, text = report
    sec = "### Convergence speed"
    best_lstm = statistics.mean(SMNIST["lstm", s][3] for s in range(3))
    target = 0.95 * best_lstm
    assert f"Target: accuracy % {target * 100:.2f}," in text
    # First validation step at or above the target, by hand from the fixture's curves.
    assert row(text.split("## Task `smnist`")[1], "`lstm`", sec)[1:6] == \
        ["3/3", "300 [300–400]", "30.0 [30.0–80.0]", "1.00x", "1.00x"]
    # bn_lstm: seeds 0 and 1 reach it at step 200, seed 2 (0.90 < 0.9025) at 300; the diverged seed never.
    assert row(text.split("## Task `smnist`")[1], "`bn_lstm`", sec)[1:6] == \
        ["3/4", "200 [200–300]", "20.0 [20.0–30.0]", f"{300 / 200:.2f}x", f"{30 / 20:.2f}x"]

    def auc(values):  # trapezoids over steps 100..400, divided by the span of 300 steps
        return sum((a + b) / 2 * 100 for a, b in zip(values, values[1:])) / 300

    aucs = [auc(SMNIST["lstm", s][1]) for s in range(3)]
    assert row(text.split("## Task `smnist`")[1], "`lstm`", sec)[6] == pm(aucs)
    # ptb_char (lower is better): target = best / 0.95.
    ptb_target = statistics.mean(PTB["lstm", s][3] for s in range(2)) / 0.95
    assert f"Target: bpc {ptb_target:.3f}," in text
    cells = row(text.split("## Task `ptb_char`")[1], "`bn_lstm`", sec)
    assert cells[1:4] == ["2/2", "300 [300–300]", "180.0 [180.0–180.0]"]
    assert cells[4] == f"{350 / 300:.2f}x" and cells[5] == f"{175 / 180:.2f}x"


def test_generalization_cost_and_problems(report):
    _, text = report
    gaps = [SMNIST["lstm", s][4] - SMNIST["lstm", s][3] for s in range(3)]
    assert row(text.split("## Task `smnist`")[1], "`lstm`", "### Generalization")[3] == pm(gaps)
    ptb_gaps = [PTB["bn_lstm", s][3] - PTB["bn_lstm", s][4] for s in range(2)]
    assert row(text.split("## Task `ptb_char`")[1], "`bn_lstm`", "### Generalization")[3] == pm(ptb_gaps, 1, 3)
    lengths = row(text, "`lstm`", "#### Evaluation on other sequence lengths")
    assert lengths[1] == pm([1.70, 1.71], 1, 3)  # length 50: 1.60 + 0.1 offset + 0.01 * seed
    assert row(text.split("## Task `smnist`")[1], "`lstm`", "### Cost")[1:3] == \
        [f"{statistics.mean([100.0, 50.0, 100.0]):.1f} ± {statistics.stdev([100.0, 50.0, 100.0]):.1f} (n=3)", "40,010"]
    problems = text.split("## Failed, diverged and missing trials")[1]
    assert "| smnist | `bn_lstm` | 3 | `smnist-bn_lstm-s3` | diverged | loss became nan at step 150 |" in problems
    assert "`smnist-ln_lstm-s0` | missing | curve rows but no summary row" in problems
    assert "| smnist | `lstm` | 3 | — | missing | no trial for this seed" in problems
    assert "| smnist fwd+bwd cpu | test_fwd_bwd[bn_lstm-smnist] | 500.00 | 450.00 | 5 | 2.50 | — |" in text
    assert "host-x" not in text  # no host names, no absolute paths, no timestamps
    assert str(report[0].parent) not in text
    flow = row(text, "1.00", "## Gradient flow")
    assert flow[1:] == ["1.000e-02", "1.000e-40", "1.000e-38"]


def test_inference_statistics_section(report):
    out, text = report
    section = "### Inference statistics (BN arms)"
    lstm = [SMNIST[("lstm", s)][5] for s in range(3)]

    def values(mode, size=None):
        per_seed = []
        for seed in range(3):
            v = [x[4] for x in INFERENCE_VALUES[("bn_lstm", seed)] if x[0] == mode and (size is None or x[1] == size)]
            per_seed.append(statistics.mean(v))
        return per_seed

    for label, mode, size in (("batch (10)", "batch", 10), ("batch (40)", "batch", 40), ("running", "running", None),
                              ("reestimate (20 batches, 3 draws)", "reestimate", None)):
        cells = [r for r in text.split("## Task `smnist`")[1].split(section)[1].split("\n#")[0].splitlines()
                 if r.startswith(f"| `bn_lstm` | {label} |")][0].strip("|").split(" | ")
        best = values(mode, size)
        assert cells[2].strip() == pm(best)
        assert cells[4].strip() == pm([v - 0.01 for v in best])
        d = statistics.mean(best) - statistics.mean(lstm)
        assert cells[6].strip().startswith(f"{d * 100:+.2f} [")
        assert cells[3].strip() == ("2.00 [2.00]" if mode == "reestimate" else "—")
    # running (mean 0.90) falls below lstm (0.92); every other mode is above: the sentence says so.
    assert ("The ranking of `bn_lstm` against `lstm` changes with the mode: above under batch (10), batch (40), "
            "reestimate (20 batches, 3 draws); below under running") in text
    # ptb_char's BN arm has no inference rows: the section says it was not measured instead of vanishing.
    ptb = text.split("## Task `ptb_char`")[1].split(section)[1].split("\n#")[0]
    assert "Not measured for `bn_lstm`" in ptb
    # The quality and convergence tables name the mode behind them.
    assert text.count("BN statistics behind the validation metric that selects the best step and the test metric: "
                      "`bn_lstm` reestimate") == 2
    assert text.count("BN statistics behind the validation curves: `bn_lstm` reestimate") == 2


def test_ranking_sentence_without_a_change():
    from reports.inference import ModeResult, ranking_sentence
    from reports.stats import summarize as summ

    modes = [ModeResult("batch (10)", (0, 10), summ([0.5, 0.6]), (0.5, 0.6), None),
             ModeResult("running", (1, 0), summ([0.4, 0.5]), (0.4, 0.5), None)]
    assert ranking_sentence("bn_lstm", "lstm", 0.3, modes, True).startswith(
        "`bn_lstm` ranks above `lstm` under every mode")
    assert "changes with the mode: above under batch (10); below under running" in \
        ranking_sentence("bn_lstm", "lstm", 0.47, modes, True)
    assert ranking_sentence("bn_lstm", "lstm", 0.3, modes, False).startswith(  # lower is better: both worse
        "`bn_lstm` ranks below `lstm` under every mode")


def test_golden_and_deterministic(report, tmp_path):
    out, text = report
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "report differs from tests/golden/report_small.md (UPDATE_GOLDEN=1 rewrites it)"
    study = write_study(tmp_path)  # the same tables written again elsewhere give the same bytes
    write_gradient_flow(study)
    again = write_report(study, tmp_path / "elsewhere" / "report.md", benchmark_json(tmp_path / "bench.json"))
    assert again.read_bytes() == out.read_bytes()


def test_figures_are_valid_pngs(report):
    out, text = report
    names = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert sorted(names) == sorted(["report-smnist-curves.png", "report-ptb_char-curves.png",
                                    "report-ptb_char-lengths.png", "report-gradient_flow.png",
                                    "report-tanh_derivative.png"])
    for name in names:
        path = out.parent / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels.std() > 0.01  # something is drawn


def test_malformed_and_mismatched_tables(tmp_path, monkeypatch):
    study = write_study(tmp_path)
    bad = study / "summary" / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SuiteError, match="broken.parquet"):
        load_study(study)
    report = tmp_path / "report.md"
    report.write_text("previous report\n")
    assert cli(["report", str(study), "--out", str(report)]) == 2
    assert report.read_text() == "previous report\n"  # a failed run leaves the old report alone
    bad.unlink()
    # A curve table where a summary belongs, and a column of the wrong type.
    write_table(to_table([], CURVE), str(study), "summary", "wrong-table")
    with pytest.raises(SuiteError, match=r"wrong-table\.parquet.*'curve' table"):
        load_study(study)
    (study / "summary" / "wrong-table.parquet").unlink()
    schema = SUMMARY.set(SUMMARY.get_field_index("seed"), pa.field("seed", pa.string()))
    pq.write_table(pa.Table.from_pylist([], schema=schema), study / "summary" / "typed.parquet")
    with pytest.raises(SuiteError, match=r"typed\.parquet: column 'seed' has type string"):
        load_study(study)
    (study / "summary" / "typed.parquet").unlink()
    assert cli(["report", str(study), "--out", str(report)]) == 0
    assert cli(["report", str(study), "--benchmark-json", str(study / "nope.json")]) == 2
    assert cli(["report", str(tmp_path / "no-such-study")]) == 2
    monkeypatch.chdir(tmp_path)
    assert cli(["report", "s3://bucket/study"]) == 2  # remote studies are copied locally first
    assert not (tmp_path / "s3:").exists()  # and a refused study leaves no folders behind
    assert cli(["report", str(study), "--target", "smnist"]) == 2


def test_million_curve_rows(tmp_path, capsys):
    """1M curve rows over 40 trials: load, steps-to-target, AUC and mean curves; the time is printed."""
    trials, per_trial = 40, 25_000
    steps = np.arange(1, per_trial // 2 + 1, dtype=np.int64)
    g = np.random.default_rng(0)
    for i in range(trials):
        variant, seed = ("lstm", "bn_lstm")[i % 2], i // 2
        trial = f"big-{variant}-s{seed}"
        valid = 1 - np.exp(-steps / (3000 if variant == "lstm" else 2000)) + g.normal(0, 0.01, len(steps))
        n = 2 * len(steps)
        cols = {"study": pa.array(["big"] * n), "trial_id": pa.array([trial] * n), "task": pa.array(["smnist"] * n),
                "variant": pa.array([variant] * n), "seed": pa.array(np.full(n, seed)),
                "step": np.repeat(steps, 2), "split": pa.array(["train", "valid"] * len(steps)),
                "metric": pa.array(["accuracy"] * n), "value": np.repeat(valid, 2), "loss": np.zeros(n),
                "stats_mode": pa.array(["none"] * n), "train_seconds": np.repeat(steps * 0.01, 2),
                "examples": np.repeat(steps * 100, 2), "phase": pa.nulls(n, pa.string())}
        write_table(pa.table(cols, schema=CURVE), str(tmp_path / "big"), "curve", trial)
        summary = {"study": "big", "trial_id": trial, "task": "smnist", "variant": variant, "seed": seed,
                   "status": "finished", "metric": "accuracy", "mode": "max", "best_valid": float(valid.max()),
                   "train_at_best": float(valid.max()), "test_at_best": float(valid.max()),
                   "test_at_last": float(valid[-1]), "examples_per_second": 1e4, "num_params": 1000,
                   "config_json": "{}"}
        write_table(to_table([summary], SUMMARY), str(tmp_path / "big"), "summary", trial)
    start = time.perf_counter()
    out = write_report(tmp_path / "big", tmp_path / "big-report.md")
    seconds = time.perf_counter() - start
    study = load_study(tmp_path / "big")
    assert study.curve.num_rows == trials * per_trial == 1_000_000
    assert "| `lstm` | 20/20 |" in out.read_text()
    with capsys.disabled():
        print(f"\nreport of 1,000,000 curve rows ({trials} trials): {seconds:.2f} s")


def test_given_target(tmp_path):
    from reports.render import render

    text = render(write_study(tmp_path), tmp_path / "r.md", targets={"smnist": 0.9})
    assert "Target: accuracy % 90.00, i.e. validation accuracy >= 0.9 (given)." in text
    smnist = text.split("## Task `smnist`")[1]
    # 0.90 counts as reached (>=): bn_lstm seed 2 now reaches it at step 200.
    assert row(smnist, "`bn_lstm`", "### Convergence speed")[1:3] == ["3/4", "200 [200–200]"]
    assert row(smnist, "`lstm`", "### Convergence speed")[1:3] == ["3/3", "300 [300–400]"]


@pytest.mark.parametrize("recorded_grid", [True, False])
def test_grid_arms_are_compared_with_lstm(tmp_path, recorded_grid):
    """A gamma grid gives one arm per gamma, each compared with the plain lstm arm."""
    import json

    study = tmp_path / "grid"
    for variant, gamma, seed, test in [("lstm", None, 0, 0.50), ("lstm", None, 1, 0.52),
                                       ("bn_lstm", 0.1, 0, 0.60), ("bn_lstm", 0.1, 1, 0.62),
                                       ("bn_lstm", 0.5, 0, 0.40), ("bn_lstm", 0.5, 1, 0.42)]:
        trial = f"{variant}-{gamma}-s{seed}"
        config = {"model": {"variant": variant, "options": {} if gamma is None else {"gamma_init": gamma}},
                  "train": {"seed": seed}, "data": {"dir": f"/somewhere/{seed}"}}
        if recorded_grid:
            config["grid"] = {} if gamma is None else {"model.gamma_init": gamma}
        summary = {"study": "grid", "trial_id": trial, "task": "pmnist", "variant": variant, "seed": seed,
               "status": "finished", "metric": "accuracy", "mode": "max", "best_valid": test, "train_at_best": test,
               "test_at_best": test, "test_at_last": test, "config_json": json.dumps(config)}
        write_table(to_table([summary], SUMMARY), str(study), "summary", trial)
        curve = [{"study": "grid", "trial_id": trial, "task": "pmnist", "variant": variant, "seed": seed, "step": 10,
                  "split": "valid", "metric": "accuracy", "value": test, "train_seconds": 1.0, "examples": 10}]
        write_table(to_table(curve, CURVE), str(study), "curve", trial)
    text = write_report(study, tmp_path / "r.md").read_text()
    key = "model.gamma_init" if recorded_grid else "model.options.gamma_init"
    quality = ("## Task `pmnist`", "### Final quality")
    assert row(text, "`lstm`", *quality)[4] == "—"
    low = row(text, f"`bn_lstm ({key}=0.1)`", *quality)
    high = row(text, f"`bn_lstm ({key}=0.5)`", *quality)
    assert low[1] == pm([0.60, 0.62]) and low[4].startswith("+10.00 [")
    assert high[1] == pm([0.40, 0.42]) and high[4].startswith("-10.00 [")


def test_task_with_only_failed_trials(tmp_path):
    study = tmp_path / "failed"
    for seed in (0, 1):
        summary = {"study": "failed", "trial_id": f"copy-lstm-s{seed}", "task": "copy", "variant": "lstm",
                   "seed": seed, "status": "failed", "error": "Traceback ...\nRuntimeError: worker died"}
        write_table(to_table([summary], SUMMARY), str(study), "summary", summary["trial_id"])
    text = write_report(study, tmp_path / "r.md").read_text()
    assert "| copy | `lstm` | 1 | `copy-lstm-s1` | failed | RuntimeError: worker died |" in text
    assert "No target: no finished trial has a best validation value." in text
