"""Claims (reports/claims.py): verdict rules at their boundaries, hand-computed contrasts, the golden section."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

import pytest

from reports.claims import (CONTRADICTED, INCONCLUSIVE, NOT_TESTED, SUPPORTED, Z_ALPHA, Z_POWER, decide, judge,
                            seeds_needed)
from reports.render import render
from reports.stats import Difference, t_ppf
from tests.unit.claims_fixtures import PMNIST, write_claims_study

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "claims_section.md"
TINY = 5e-324  # the smallest positive float: the boundary is exactly zero


@pytest.mark.parametrize("low, high, expect, verdict", [
    (0.0, 1.0, 1, INCONCLUSIVE),  # an endpoint exactly at zero leaves the claim open
    (TINY, 1.0, 1, SUPPORTED),
    (TINY, 1.0, -1, CONTRADICTED),
    (-1.0, 0.0, -1, INCONCLUSIVE),
    (-1.0, -TINY, -1, SUPPORTED),
    (-1.0, -TINY, 1, CONTRADICTED),
    (-1.0, 1.0, 1, INCONCLUSIVE),
])
def test_decide_boundaries(low, high, expect, verdict):
    j = decide(Difference((low + high) / 2, low, high, 4.0), expect, seeds=2, needed=7)
    assert j.verdict == verdict
    assert (j.needed == 7) == (verdict == INCONCLUSIVE)


def test_decide_needs_two_seeds():
    assert decide(Difference(1.0, 0.5, 1.5, 4.0), 1, seeds=1).verdict == NOT_TESTED
    assert decide(Difference(1.0, 0.5, 1.5, 4.0), 1, seeds=2).verdict == SUPPORTED
    assert "1 seed;" in decide(Difference(1.0, math.nan, math.nan, math.nan), 1, seeds=1).reason


def test_judge_matches_hand_welch():
    a, b = [0.90, 0.92, 0.94], [0.80, 0.82, 0.84]
    j = judge([a, b], [1.0, -1.0], 1)
    half = t_ppf(0.975, 4) * math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 3)
    assert j.verdict == SUPPORTED and j.diff == pytest.approx(0.1)
    assert (j.low, j.high) == pytest.approx((0.1 - half, 0.1 + half))
    assert judge([b, a], [1.0, -1.0], 1).verdict == CONTRADICTED
    assert judge([a, [0.9]], [1.0, -1.0], 1).verdict == NOT_TESTED
    # Identical values: the interval is the point; zero difference is inconclusive with no seed count.
    same = judge([[1.0, 1.0], [1.0, 1.0]], [1.0, -1.0], 1)
    assert same.verdict == INCONCLUSIVE and same.needed is None


def test_seeds_needed_formula():
    a, b = [0.0, 2.0, 4.0], [1.0, 2.0, 3.0]  # variances 4 and 1, d = 0
    assert seeds_needed([a, b], [1, -1], 0.0) is None
    d = 0.5
    expected = math.ceil((1.959963984540054 + 0.8416212335729143) ** 2 * (4 + 1) / d**2)
    assert (Z_ALPHA, Z_POWER) == pytest.approx((1.959963984540054, 0.8416212335729143))
    assert seeds_needed([a, b], [1, -1], d) == expected == 157
    j = judge([[1.0, 1.2, 1.4], [1.05, 1.15, 1.25]], [1.0, -1.0], 1)  # d = 0.05, variances 0.04 and 0.01
    assert j.verdict == INCONCLUSIVE and j.diff == pytest.approx(0.05)
    assert j.needed == math.ceil((Z_ALPHA + Z_POWER) ** 2 * (0.04 + 0.01) / 0.05**2) == 157
    assert "about 157 seeds per arm needed" in j.reason


@pytest.fixture(scope="module")
def section(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("claims")
    text = render(write_claims_study(root), root / "out" / "report.md")
    return text[text.index("## Claims"):text.index("## Failed")]


def cells(section: str, claim: int, comparison_start: str, task: str = "pmnist") -> list[list[str]]:
    part = section.split(f"### Claim {claim}:", 1)[1].split("\n### ", 1)[0]
    out = []
    for line in part.splitlines():
        c = [x.strip() for x in line.strip("|").split(" | ")]
        if len(c) == 7 and c[0] == task and c[1].startswith(comparison_start):
            out.append(c)
    return out


def test_every_verdict_occurs(section):
    verdicts = {c[5] for n in range(1, 6) for task in ("pmnist", "ptb_char") for c in cells(section, n, "", task)}
    assert {SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED} <= verdicts
    assert "an arm has 1 seed; needs >= 2 per arm (pmnist)" in section  # ln_lstm has one seed


def test_claim_rows_by_hand(section):
    # Claim 3, depth interaction: four arms of n=3 with std 0.02 each -> df = 8 exactly.
    (row,) = cells(section, 3, "its benefit")
    mean = {k: statistics.mean(v[0] for v in seeds.values()) for k, seeds in PMNIST.items()}
    d = (mean["bn_vertical", None, 3] - mean["lstm", None, 3]) - (mean["bn_vertical", None, 1] - mean["lstm", None, 1])
    half = t_ppf(0.975, 8) * math.sqrt(4 * 0.02**2 / 3)
    assert row[4] == f"{d * 100:+.2f} [{(d - half) * 100:+.2f}, {(d + half) * 100:+.2f}]" and row[5] == SUPPORTED
    # Claim 1: gamma 1.0 ends better than 0.1, against the claim.
    (row,) = cells(section, 1, "γ=1.0 ends worse")
    assert row[5] == CONTRADICTED and row[2] == "`bn_lstm` γ=1 − `bn_lstm` γ=0.1 (num_layers=1)"
    # Steps to target: target 0.95 x 0.90 = 0.855, reached at the `reach` step of each seed.
    (row,) = cells(section, 1, "γ=0.1 reaches")
    steps = [[v[1] for v in PMNIST[k].values()] for k in (("bn_lstm", 0.1, 1), ("lstm", None, 1))]
    diff = statistics.mean(steps[0]) - statistics.mean(steps[1])
    assert row[3] == "reached 3/3, 3/3" and row[4].startswith(f"{diff:+.0f} [") and row[5] == SUPPORTED
    # ptb_char: lower bpc is better, so bn_lstm's lower bpc at length 400 supports the claim.
    (row,) = cells(section, 4, "better test metric than `lstm` at the longest", "ptb_char")
    assert row[1].endswith("(400)") and row[4].startswith("-0.210 [") and row[5] == SUPPORTED


def test_golden_claims_section(section):
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(section)
    assert section == GOLDEN.read_text(), "claims section differs from tests/golden/claims_section.md " \
                                          "(UPDATE_GOLDEN=1 rewrites it)"


def test_merged_studies_pool_seeds_and_name_sources(tmp_path, section):
    """Seeds 0-1 in one study and seed 2 in another give the same claims as the whole study."""
    from suite.cli import main as cli

    a = write_claims_study(tmp_path, "part-a", seeds={0, 1})
    b = write_claims_study(tmp_path, "part-b", seeds={2})
    out = tmp_path / "merged" / "claims.md"
    assert cli(["report", str(a), str(b), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Study report: part-a + part-b\n")
    assert text[text.index("## Claims"):text.index("## Failed")] == section
    sources = text.split("## Sources (merged studies)", 1)[1].split("\n## ", 1)[0]
    assert "| pmnist | `bn_vertical (model.num_layers=3)` | `part-a` | 0, 1 |" in sources
    assert "| pmnist | `bn_vertical (model.num_layers=3)` | `part-b` | 2 |" in sources
    assert "| pmnist | `ln_lstm (model.num_layers=1)` | `part-a` | 0 |" in sources


def test_merge_refuses_incompatible_and_duplicate_studies(tmp_path, capsys):
    from suite.cli import main as cli

    a = write_claims_study(tmp_path, "a", seeds={0, 1})
    longer = write_claims_study(tmp_path, "longer", seeds={2}, train_steps=800)
    same = write_claims_study(tmp_path, "same-seeds", seeds={1})
    out = tmp_path / "m.md"
    assert cli(["report", str(a), str(longer), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot merge studies 'a' and 'longer'" in err and "train.steps = 400 vs 800" in err
    assert cli(["report", str(a), str(same), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "studies 'a' and 'same-seeds' both hold seed 1" in err and "a seed must count once" in err
    assert cli(["report", str(a), str(a), "--out", str(out)]) == 2
    assert cli(["report", str(a), str(longer)]) == 2  # several studies need --out
    assert "--out" in capsys.readouterr().err
    assert not out.exists()


def test_steps_never_reached_never_favour_the_claim(tmp_path):
    """Unreached trials count at their last step in the arm predicted slower, and block 'supported' otherwise."""
    from reports import convergence
    from reports.claims import Evidence, steps_judgement
    from reports.load import load_study

    study = load_study(write_claims_study(tmp_path))
    ev = Evidence.of(study, "pmnist", convergence.valid_points(study), 0.95, None)
    arm = {(t.variant, dict(t.settings).get("model.gamma_init"), dict(t.settings)["model.num_layers"]): t.arm
           for t in study.trials.values() if t.task == "pmnist"}
    g1, g01, lstm = arm["bn_lstm", "1.0", "1"], arm["bn_lstm", "0.1", "1"], arm["lstm", None, "1"]
    for t in study.trials_of("pmnist", g1):
        ev.steps[t.trial_id] = math.nan  # gamma 1.0 never reaches the target in 400 steps
    counts, j = steps_judgement(ev, g1, g01, 1)  # claimed: gamma 1.0 needs more steps
    assert counts == "reached 0/3, 3/3" and j.verdict == SUPPORTED
    assert j.diff == pytest.approx(400 - statistics.mean([100, 100, 200]))
    assert steps_judgement(ev, g01, g1, -1)[1].verdict == SUPPORTED  # the same claim read the other way round
    # The arm predicted faster loses its slowest seed: 'supported' would be flattered, so it is inconclusive.
    slowest = study.trials_of("pmnist", g01)[2]
    ev.steps[slowest.trial_id] = math.nan
    counts, j = steps_judgement(ev, g01, lstm, -1)
    assert counts == "reached 2/3, 3/3" and j.verdict == INCONCLUSIVE
    assert "1 trial(s) of the arm predicted faster never reached the target" in j.reason
    assert j.high < 0  # the interval alone would have excluded zero
