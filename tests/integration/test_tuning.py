"""Tuned studies on a real embedded local Ray: equal budgets, ASHA stops, the final phase at the best
validation configuration, and --resume after Ctrl-C in each phase (the machinery of test_runner.py)."""

from __future__ import annotations

import json
import math
import re
import signal
import textwrap
from pathlib import Path

import pytest

from suite.core.results import read_table
from tests.integration.test_runner import curve_steps, finish, ray_tmp, start, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.ray

VARIANTS = ("lstm", "ln_lstm")
SAMPLES = 5


def tuned_study(name: str, steps: int, samples: int = SAMPLES) -> str:
    """A small adding-problem study with a learning-rate search and ASHA; one CPU, so trials run one at a
    time and ASHA's decisions (each trial against the ones before it) are deterministic."""
    return textwrap.dedent(f"""
        name = "{name}"
        variants = {list(VARIANTS)}
        seeds = [0, 1]

        [config]
        model.hidden_size = 8
        train = {{ steps = {steps}, eval_every = {steps // 6}, batch_size = 20, reestimate_batches = 2 }}

        [tasks.adding]
        task = {{ length = 20, train_size = 200, eval_size = 60 }}

        [search]
        samples = {samples}
        scheduler = "asha"
        grace_steps = {steps // 6}
        reduction_factor = 2

        [search.space]
        "optim.lr" = {{ loguniform = [1e-5, 0.1] }}
    """)


def rows(root: Path) -> list[dict]:
    return read_table(str(root), "summary").to_pylist()


def check_complete(root: Path, steps: int, samples: int = SAMPLES) -> list[dict]:
    """Every trial of both phases once, search rows as ASHA left them, final rows at the best config."""
    summary = rows(root)
    search = [r for r in summary if r["phase"] == "search"]
    final = [r for r in summary if r["phase"] == "final"]
    # The equal budget: the same number of search trials for every variant, all with the same max steps.
    for variant in VARIANTS:
        mine = [r for r in search if r["variant"] == variant]
        assert len(mine) == samples, mine
        assert {json.loads(r["config_json"])["train"]["steps"] for r in mine} == {steps}
        assert all(r["status"] in ("finished", "stopped") for r in mine), mine
    curve = read_table(str(root), "curve").to_pandas()
    assert not curve.duplicated(["trial_id", "step", "split"]).any()
    for r in search:  # a stopped trial's rows say so and end where it was stopped
        got = curve_steps(root, r["trial_id"])
        if r["status"] == "stopped":
            assert r["steps"] < steps and got == list(range(steps // 6, r["steps"] + 1, steps // 6))
            assert r["error"].startswith("stopped by ASHA") and r["test_at_best"] is None
        else:
            assert r["steps"] == steps and got[-1] == steps
    assert set(curve["phase"]) == {"search", "final"}
    # The final phase: each variant's best search trial by validation (mse: lower), on every seed.
    best = {}
    for variant in VARIANTS:
        mine = [r for r in search if r["variant"] == variant and r["best_valid"] is not None
                and math.isfinite(r["best_valid"])]
        top = min(mine, key=lambda r: (r["best_valid"], r["trial_id"]))
        best[variant] = json.loads(top["config_json"])["grid"]["optim.lr"]
    assert {(r["variant"], r["seed"]) for r in final} == {(v, s) for v in VARIANTS for s in (0, 1)}
    for r in final:
        assert r["status"] == "finished" and r["trial_id"].endswith("-tuned")
        config = json.loads(r["config_json"])
        assert config["optim"]["lr"] == best[r["variant"]] == config["tuned"]["optim.lr"]
    assert json.loads((root / "best.json").read_text()) == {"adding": {v: {"optim.lr": lr} for v, lr in best.items()}}
    return summary


def test_search_asha_then_final_phase(tmp_path, ray_tmp):  # noqa: F811
    """One run: equal budget per variant, ASHA stops some trials (rows say so), the final phase re-runs
    the best validation configuration on the seeds; the random draws are the same for both variants."""
    path = tmp_path / "tuned.toml"
    path.write_text(tuned_study("tuned", steps=120))
    code, out = finish(start(["run", str(path), "--results", str(tmp_path / "res"), "--num-cpus", "1"], ray_tmp))
    assert code == 0, out
    summary = check_complete(tmp_path / "res" / "tuned", 120)
    assert any(r["status"] == "stopped" for r in summary), out  # ASHA did stop something
    lrs = {v: sorted(json.loads(r["config_json"])["optim"]["lr"] for r in summary
                     if r["phase"] == "search" and r["variant"] == v) for v in VARIANTS}
    assert lrs["lstm"] == lrs["ln_lstm"] and len(set(lrs["lstm"])) == SAMPLES  # paired draws
    assert all(1e-5 <= lr <= 0.1 for lr in lrs["lstm"])
    assert "stopped by ASHA" in out


def test_resume_after_ctrl_c_in_each_phase(tmp_path, ray_tmp):  # noqa: F811
    """Ctrl-C during the search, --resume, Ctrl-C during the final phase, --resume: no ended trial is
    trained again, no row is lost or duplicated, and the final phase uses the best validation config."""
    path = tmp_path / "resumed.toml"
    steps = 480  # long enough (a few seconds a trial here) to land each Ctrl-C inside a trial
    path.write_text(tuned_study("resumed", steps=steps, samples=3))
    results = tmp_path / "res"
    root = results / "resumed"
    args = ["run", str(path), "--results", str(results), "--num-cpus", "1"]

    def ended() -> set[str]:
        return {p.stem for p in (root / "summary").glob("*.parquet")} if (root / "summary").is_dir() else set()

    def running(phase: str) -> list[str]:
        names = {p.stem for p in (root / "curve").glob("*.parquet")} if (root / "curve").is_dir() else set()
        return [n for n in names - ended() if ("-search" in n) == (phase == "search")]

    proc = start(args, ray_tmp)
    wait_for(lambda: len(ended()) >= 2 and running("search"), proc)
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 130 and "--resume" in out, out
    first = {r["trial_id"]: r for r in rows(root) if r["status"] in ("finished", "stopped")}
    assert first and not any(r["phase"] == "final" for r in rows(root))
    stamps = {t: (root / "summary" / f"{t}.parquet").stat().st_mtime_ns for t in first}

    proc = start([*args, "--resume"], ray_tmp)
    wait_for(lambda: running("final"), proc, timeout=240)
    proc.send_signal(signal.SIGINT)
    code, out2 = finish(proc)
    assert code == 130, out2
    for trial in first:  # ended before the first Ctrl-C: neither trained nor rewritten
        assert f"{trial} step " not in out2
    assert {t: (root / "summary" / f"{t}.parquet").stat().st_mtime_ns for t in first} == stamps
    searched = {r["trial_id"]: r for r in rows(root) if r["phase"] == "search"}
    finals_done = {r["trial_id"] for r in rows(root) if r["phase"] == "final" and r["status"] == "finished"}

    code, out3 = finish(start([*args, "--resume"], ray_tmp))
    assert code == 0, out3
    assert not re.search(r"-search\d+ (started|step)", out3), out3  # the search is not re-run
    for trial in finals_done:
        assert f"{trial} step " not in out3
    summary = check_complete(root, steps, samples=3)
    assert {r["trial_id"]: r["best_valid"] for r in summary if r["phase"] == "search"} == \
        {t: r["best_valid"] for t, r in searched.items()}


@pytest.mark.slow  # about 2.5 minutes on a loaded 2-core machine: Optuna's trials run one after another
def test_optuna_searcher(tmp_path, ray_tmp):  # noqa: F811
    """searcher = "optuna": Tune's OptunaSearch draws the points; trials are numbered in creation order,
    every variant gets the same number, and the final phase takes the best validation point."""
    pytest.importorskip("optuna")
    path = tmp_path / "optuna.toml"
    path.write_text(tuned_study("optuna", steps=60, samples=3).replace('scheduler = "asha"', 'searcher = "optuna"'))
    code, out = finish(start(["run", str(path), "--results", str(tmp_path / "res"), "--num-cpus", "2"], ray_tmp))
    assert code == 0, out
    summary = check_complete(tmp_path / "res" / "optuna", 60, samples=3)
    assert sorted(r["trial_id"] for r in summary if r["phase"] == "search") == sorted(
        f"adding-{v}-search{i:03d}" for v in VARIANTS for i in range(3))
