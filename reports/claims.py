"""The literature's conclusions as testable claims, and the verdict a study's evidence gives each.

Five claims (issue 16; sources in `CLAIMS`): horizontal BN with gamma 1 makes gradients vanish
while gamma 0.1 converges faster than the LSTM (Cooijmans et al. 2016, Section 4, Figure 1);
vertical-only BN speeds up convergence but overfits (Laurent et al. 2016); vertical BN helps
only in deep stacks (Amodei et al. 2015); BN-LSTM converges faster, generalizes better and
generalizes to longer sequences (Cooijmans et al. 2016, Figures 2-4 and 3b); layer norm gives
the same benefit without batch statistics (Ba et al. 2016).

Each claim is a list of comparisons between arms on one per-seed quantity (test metric at the
best validation step, steps to the convergence target, train/validation gap, metric at the
longest evaluated length, or the depth interaction). A comparison's estimate is a contrast of
arm means with a Welch-Satterthwaite 95 % t interval over seeds (`reports.stats`), and
`judge` turns it into a verdict by the rules in `RULES` (printed in the report).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import pyarrow as pa
import pyarrow.compute as pc

from reports import convergence
from reports.load import StudyTables, TrialSummary
from reports.stats import Difference, contrast_interval, summarize

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED = "supported", "contradicted", "inconclusive", "not tested"
LEVEL = 0.95
POWER = 0.80
Z_ALPHA = NormalDist().inv_cdf(0.5 + LEVEL / 2)  # 1.95996...
Z_POWER = NormalDist().inv_cdf(POWER)  # 0.84162...
PAPER_GAMMA = 0.1  # the paper's gamma_init (Section 4); the default of the BN variants
BN_VARIANTS = ("bn_lstm", "bn_vertical")
DASH = "—"

RULES = (
    "Verdict rules (per row): the estimate is a contrast of arm means over finished seeds with a 95 % "
    "Welch-Satterthwaite t interval (the same machinery as the Δ columns). **supported**: the interval excludes "
    "zero on the side the claim predicts; **contradicted**: it excludes zero on the other side; **inconclusive**: "
    "it contains zero (an endpoint exactly at zero counts as containing it), and the row gives the seeds per arm "
    f"a two-sided test at 5 % with {POWER:.0%} power would need at the observed spread, n = ⌈(z_0.975 + z_0.80)² · "
    "Σ w_i² s_i² / d²⌉ (z_0.975 = 1.960, z_0.80 = 0.842; d the observed contrast, s_i each arm's sample std, "
    "w_i = ±1 the contrast weights; for two arms Σ w_i² s_i² = s_A² + s_B²); **not tested**: an arm is "
    "missing, an arm has fewer than 2 finished seeds (for steps to target, fewer than 2 to compare), "
    "or the study lacks the axis or table the claim needs (gamma, depth, lengths), and the row says what to add. "
    "Steps to target use the convergence section's target (`reached` counts the trials that got there); a trial "
    "that never did counts at its last step in the arm the claim predicts to be slower (a lower bound: it can only "
    "weaken the claim) and is left out of the arm predicted faster, where a supported verdict then becomes "
    "inconclusive. Context rows carry an estimate but no verdict. The gradient-flow line (paper Figure 1) is a single "
    "deterministic run at initialization: evidence shown beside claim 1, not a verdict.")


@dataclass(frozen=True)
class Judgement:
    """A contrast's estimate, its interval, the verdict and, when inconclusive, the seeds per arm needed."""

    verdict: str
    diff: float
    low: float
    high: float
    needed: int | None = None
    reason: str = ""


def seeds_needed(groups: Sequence[Sequence[float]], weights: Sequence[float], diff: float) -> int | None:
    """Seeds per arm for a 5 % two-sided test with 80 % power at the observed contrast and spreads (None if d = 0)."""
    variance = sum(w * w * summarize(g).std ** 2 for g, w in zip(groups, weights))
    if diff == 0 or not math.isfinite(diff) or not math.isfinite(variance):
        return None
    return max(2, math.ceil((Z_ALPHA + Z_POWER) ** 2 * variance / diff**2))


def decide(d: Difference, expect: int, seeds: int, needed: int | None = None) -> Judgement:
    """The verdict rules (RULES) on an interval `d`, the predicted sign `expect` and the fewest seeds of an arm."""
    if seeds < 2:
        return Judgement(NOT_TESTED, d.diff, math.nan, math.nan, None,
                         f"an arm has {seeds} seed{'s' if seeds != 1 else ''}; needs >= 2 per arm")
    if d.low > 0 or d.high < 0:  # strictly: an endpoint at exactly zero leaves the claim open
        agrees = (d.low > 0) == (expect > 0)
        return Judgement(SUPPORTED if agrees else CONTRADICTED, d.diff, d.low, d.high)
    if needed is None:
        reason = "interval contains 0 and the observed difference is 0: no number of seeds settles it"
    elif needed <= seeds:
        reason = (f"interval contains 0; the power formula gives n = {needed} <= the {seeds} seeds here "
                  f"(the t quantile at small n is wider than z): add a few seeds")
    else:
        reason = f"interval contains 0; about {needed} seeds per arm needed at this spread (have {seeds})"
    return Judgement(INCONCLUSIVE, d.diff, d.low, d.high, needed, reason)


def judge(groups: Sequence[Sequence[float]], weights: Sequence[float], expect: int) -> Judgement:
    """Verdict on the claim that sum_i w_i mean(group_i) has the sign of `expect` (+1 or -1)."""
    d = contrast_interval(groups, weights, LEVEL)
    seeds = min(summarize(g).n for g in groups)
    return decide(d, expect, seeds, seeds_needed(groups, weights, d.diff) if seeds >= 2 else None)


# ---------------------------------------------------------------------------------------------
# What the claims compare

@dataclass(frozen=True)
class Side:
    """Arms of one variant; `gamma`: the initial BN scale they must have (None: the paper's 0.1 or no BN)."""

    variant: str
    gamma: float | None = None

    def label(self) -> str:
        return f"`{self.variant}`" + (f" γ={self.gamma:g}" if self.gamma is not None else "")


@dataclass(frozen=True)
class Comparison:
    """One testable statement: `arm` vs `versus` on `quantity`, the claim predicting the sign `expect`.

    quantity: "final" (test metric at the best validation step, + = better), "steps" (steps to
    target, + = more steps), "gap" (train/validation gap, + = larger gap), "long" (test metric at
    the longest evaluated length, + = better), "depth" (the final-metric benefit of `arm` over
    `versus` at the deepest stack minus at the shallowest, + = grows with depth). `at_depth`
    "deepest" restricts the pair to the study's deepest stack.
    """

    text: str
    arm: Side
    versus: Side
    quantity: str
    expect: int = 1
    context: bool = False
    at_depth: str | None = None


@dataclass(frozen=True)
class Claim:
    """A claim from the literature, its source, and the comparisons that test it."""

    number: int
    sentence: str
    source: str
    comparisons: tuple[Comparison, ...]
    needs: str  # what a study must hold to test it (printed when nothing could be tested)


BN, LSTM, BNV, LN = Side("bn_lstm"), Side("lstm"), Side("bn_vertical"), Side("ln_lstm")
CLAIMS = (
    Claim(1, "Horizontal BN harms training unless its scale starts small: with gamma 0.1 BN-LSTM converges faster "
             "than the LSTM; with gamma near 1 the gradient vanishes through time and training suffers.",
          "Laurent et al. 2016; Cooijmans et al. 2016, Section 4 and Figure 1",
          (Comparison("γ=0.1 reaches the target in fewer steps than `lstm`", Side("bn_lstm", PAPER_GAMMA), LSTM,
                      "steps", -1),
           Comparison("γ=1.0 ends worse than γ=0.1 (test metric)", Side("bn_lstm", 1.0), Side("bn_lstm", PAPER_GAMMA),
                      "final", -1),
           Comparison("γ=1.0 reaches the target in more steps than γ=0.1", Side("bn_lstm", 1.0),
                      Side("bn_lstm", PAPER_GAMMA), "steps", 1)),
          "`bn_lstm` at gamma 0.1 and 1.0 (`[variant_grid.bn_lstm]` \"model.gamma_init\") and `lstm`, >= 2 seeds "
          "each (studies/claims-quick.toml, studies/gamma-sensitivity.toml)"),
    Claim(2, "Vertical-only BN speeds up convergence but overfits: a larger train/validation gap than the LSTM.",
          "Laurent et al. 2016",
          (Comparison("reaches the target in fewer steps than `lstm`", BNV, LSTM, "steps", -1),
           Comparison("larger train/validation gap than `lstm`", BNV, LSTM, "gap", 1)),
          "`bn_vertical` and `lstm`, >= 2 seeds each"),
    Claim(3, "Vertical-only BN helps only in deep stacks; in shallow ones it can hurt.",
          "Amodei et al. 2015 (Deep Speech 2)",
          (Comparison("better than `lstm` at the deepest stack (test metric)", BNV, LSTM, "final", 1,
                      at_depth="deepest"),
           Comparison("its benefit over `lstm` grows from the shallowest to the deepest stack", BNV, LSTM, "depth", 1)),
          "a depth axis (grid `model.num_layers`, e.g. 1, 3, 5) with `bn_vertical` and `lstm` (studies/depth.toml)"),
    Claim(4, "BN-LSTM converges faster and generalizes better than the LSTM on every task, and its per-step "
             "statistics generalize to sequences longer than those seen in training (statistics of T_max reused).",
          "Cooijmans et al. 2016, Sections 5.1-5.4, Figure 3b",
          (Comparison("reaches the target in fewer steps than `lstm`", BN, LSTM, "steps", -1),
           Comparison("better test metric than `lstm`", BN, LSTM, "final", 1),
           Comparison("better test metric than `lstm` at the longest evaluated length", BN, LSTM, "long", 1)),
          "`bn_lstm` and `lstm`, >= 2 seeds each; `train.eval_lengths` for the longer-sequence part"),
    Claim(5, "Layer normalization brings the same benefit without batch statistics.",
          "Ba et al. 2016",
          (Comparison("reaches the target in fewer steps than `lstm`", LN, LSTM, "steps", -1),
           Comparison("better test metric than `lstm`", LN, LSTM, "final", 1),
           Comparison("test metric against `bn_lstm` (context: a t interval cannot show equality)", LN, BN,
                      "final", 1, context=True)),
          "`ln_lstm` and `lstm` (and `bn_lstm`), >= 2 seeds each"),
)


# ---------------------------------------------------------------------------------------------
# Reading arms and per-seed quantities from a study


def setting(trial: TrialSummary, key: str) -> float | None:
    """A numeric model setting (`gamma_init`, `num_layers`): the arm's grid value, else its recorded config."""
    for name, value in trial.settings:
        if name.rsplit(".", 1)[-1] == key:
            try:
                return float(json.loads(value))
            except (ValueError, TypeError):
                return None
    config = trial.config()
    for name in (f"model.{key}", f"model.options.{key}"):
        if isinstance(config.get(name), int | float) and not isinstance(config.get(name), bool):
            return float(config[name])
    if key == "gamma_init" and trial.variant in BN_VARIANTS:
        return PAPER_GAMMA
    if key == "num_layers":
        return 1.0
    return None


def _matches(study: StudyTables, task: str, arm: str, side: Side) -> bool:
    trials = study.trials_of(task, arm)
    if not trials or trials[0].variant != side.variant:
        return False
    gamma = setting(trials[0], "gamma_init")
    wanted = PAPER_GAMMA if side.gamma is None and side.variant in BN_VARIANTS else side.gamma
    return gamma is None if wanted is None else gamma is not None and math.isclose(gamma, wanted)


def _other_settings(study: StudyTables, task: str, arm: str) -> dict[str, str]:
    return {k: v for k, v in study.trials_of(task, arm)[0].settings if not k.endswith("gamma_init")}


def pairs(study: StudyTables, task: str, a: Side, b: Side) -> list[tuple[str, str]]:
    """(arm of a, arm of b) that agree on every shared setting other than gamma, in arm order."""
    arms = study.arms(task)
    out = []
    for x in (arm for arm in arms if _matches(study, task, arm, a)):
        mine = _other_settings(study, task, x)
        for y in (arm for arm in arms if _matches(study, task, arm, b) and arm != x):
            theirs = _other_settings(study, task, y)
            if all(mine[k] == theirs[k] for k in mine.keys() & theirs.keys()):
                out.append((x, y))
    return out


@dataclass
class Evidence:
    """Per-trial quantities of one task, computed once (steps to target need the task's target)."""

    study: StudyTables
    task: str
    steps: dict[str, float] = field(default_factory=dict)
    long_length: int | None = None
    long: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, study: StudyTables, task: str, points: pa.Table, fraction: float, given: float | None) -> Evidence:
        ev = cls(study, task)
        target = convergence.task_target(study, task, fraction, given)
        trials = [t for t in study.trials.values() if t.task == task]
        if target is not None:
            mode = study.metric(task)[1]
            speeds = convergence.trial_speeds(points, {t.trial_id: (target.value, mode) for t in trials})
            ev.steps = {k: v.steps for k, v in speeds.items()}
        if study.lengths is not None:
            ids = pa.array(sorted(t.trial_id for t in trials), pa.string())
            lengths = study.lengths.filter(pc.and_(pc.is_in(study.lengths["trial_id"], value_set=ids),
                                                   pc.is_finite(study.lengths["value"])))
            # The longest length, best checkpoint, test split when recorded (paper Figure 3b: test bpc).
            lengths = lengths.filter(pc.equal(lengths["checkpoint"], "best"))
            test = lengths.filter(pc.equal(lengths["split"], "test"))
            lengths = test if test.num_rows else lengths
            if lengths.num_rows:
                ev.long_length = pc.max(lengths["length"]).as_py()
                for r in lengths.filter(pc.equal(lengths["length"], ev.long_length)).to_pylist():
                    ev.long[r["trial_id"]] = r["value"]
        return ev

    def values(self, arm: str, quantity: str) -> list[float]:
        """The quantity over the arm's finished seeds (steps: only those that reached the target)."""
        trials = self.study.trials_of(self.task, arm, finished=True)
        if quantity == "final":
            out = [t.row["test_at_best"] for t in trials]
        elif quantity == "steps":
            out = [self.steps.get(t.trial_id, math.nan) for t in trials]
        elif quantity == "gap":
            out = [(t.row["train_at_best"] - t.row["best_valid"]) * (1 if t.row["mode"] == "max" else -1)
                   if t.row["train_at_best"] is not None and t.row["best_valid"] is not None else math.nan
                   for t in trials]
        elif quantity == "long":
            out = [self.long.get(t.trial_id, math.nan) for t in trials]
        else:
            raise ValueError(f"unknown quantity {quantity!r}")
        return [v for v in out if v is not None and math.isfinite(v)]


@dataclass(frozen=True)
class Row:
    """One comparison on one task (and one pair of arms): what was compared and the judgement."""

    claim: int
    task: str
    text: str
    arms: str
    quantity: str
    counts: str
    judgement: Judgement
    context: bool = False


def steps_judgement(ev: Evidence, a: str, b: str, expect: int) -> tuple[str, Judgement]:
    """Steps to target, a − b, with trials that never reached the target handled so as to never favour the claim.

    In the arm the claim predicts to be slower, such a trial counts at its last step (a lower bound
    of its steps, so it can only weaken the claim). In the arm predicted faster it is left out, which
    could only favour the claim: a "supported" verdict then becomes inconclusive.
    """
    slower = b if expect < 0 else a
    groups, counts, left_out = [], [], 0
    for arm in (a, b):
        trials = ev.study.trials_of(ev.task, arm, finished=True)
        reached = [ev.steps.get(t.trial_id, math.nan) for t in trials]
        hit = [v for v in reached if math.isfinite(v)]
        missed = [t for t, v in zip(trials, reached) if not math.isfinite(v)]
        counts.append(f"{len(hit)}/{len(trials)}")
        if arm == slower:
            hit += [float(t.row["steps"]) for t in missed if t.row["steps"] is not None]
        else:
            left_out = len(missed)
        groups.append(hit)
    j = judge(groups, [1.0, -1.0], expect)
    if j.verdict == NOT_TESTED:
        j = Judgement(NOT_TESTED, j.diff, j.low, j.high, None,
                      "fewer than 2 finished seeds to compare (the faster-predicted arm counts only those that "
                      "reached the target)")
    elif j.verdict == SUPPORTED and left_out:
        j = Judgement(INCONCLUSIVE, j.diff, j.low, j.high, None,
                      f"{left_out} trial(s) of the arm predicted faster never reached the target (left out)")
    return f"reached {counts[0]}, {counts[1]}", j


def _depth(study: StudyTables, task: str, arm: str) -> float:
    return setting(study.trials_of(task, arm)[0], "num_layers") or 1.0


def _missing(study: StudyTables, task: str, sides: Sequence[Side]) -> str:
    """What the study lacks for a comparison of these sides on this task."""
    have = {t.variant for t in study.trials.values() if t.task == task}
    for side in sides:
        if side.variant not in have:
            return f"no `{side.variant}` arm; add it to `variants`"
    for side in sides:
        if side.gamma is not None and not any(_matches(study, task, a, side) for a in study.arms(task)):
            return (f"no `{side.variant}` arm at gamma {side.gamma:g}; add `[variant_grid.{side.variant}]` "
                    f"\"model.gamma_init\" = [0.1, 1.0]")
    return "no arms that agree on their other settings"


def evaluate(study: StudyTables, task: str, claim: Claim, ev: Evidence, sign: int) -> list[Row]:
    """Rows of one claim on one task. `sign` is +1 for higher-is-better metrics and -1 otherwise."""
    rows = []
    for c in claim.comparisons:
        # Metrics where lower is better flip the predicted sign of metric differences (not of steps or gap).
        expect = c.expect * (sign if c.quantity in ("final", "long", "depth") else 1)
        label = f"{c.arm.label()} − {c.versus.label()}"
        found = pairs(study, task, c.arm, c.versus)
        depths = sorted({_depth(study, task, a) for pair in found for a in pair})
        if c.at_depth or c.quantity == "depth":
            if len(depths) < 2:
                rows.append(Row(claim.number, task, c.text, label, c.quantity, DASH,
                                Judgement(NOT_TESTED, math.nan, math.nan, math.nan, None,
                                          "no depth axis: add grid `model.num_layers` = [1, 3, 5] "
                                          "(studies/depth.toml)"), c.context))
                continue
        if not found:
            rows.append(Row(claim.number, task, c.text, label, c.quantity, DASH,
                            Judgement(NOT_TESTED, math.nan, math.nan, math.nan, None,
                                      _missing(study, task, (c.arm, c.versus))), c.context))
            continue
        if c.quantity == "long" and ev.long_length is None:
            rows.append(Row(claim.number, task, c.text, label, c.quantity, DASH,
                            Judgement(NOT_TESTED, math.nan, math.nan, math.nan, None,
                                      "no length evaluation: set `train.eval_lengths` (LM tasks)"), c.context))
            continue
        if c.quantity == "depth":
            deep, shallow = max(depths), min(depths)
            at = {d: [p for p in found if _depth(study, task, p[0]) == d] for d in (deep, shallow)}
            if not at[deep] or not at[shallow]:
                continue
            (a1, b1), (a0, b0) = at[deep][0], at[shallow][0]
            groups = [ev.values(a, "final") for a in (a1, b1, a0, b0)]
            counts = f"n={'/'.join(str(len(g)) for g in groups)}"
            arms = f"({label}) at {deep:g} layers − at {shallow:g}"
            rows.append(Row(claim.number, task, c.text, arms, c.quantity, counts,
                            judge(groups, [1.0, -1.0, -1.0, 1.0], expect), c.context))
            continue
        if c.at_depth == "deepest":
            found = [p for p in found if _depth(study, task, p[0]) == max(depths)]
        for a, b in found:
            extra = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(_other_settings(study, task, a).items()))
            where = f"{label}" + (f" ({extra})" if extra else "")
            if c.quantity == "steps":
                counts, j = steps_judgement(ev, a, b, expect)
            else:
                ga, gb = ev.values(a, c.quantity), ev.values(b, c.quantity)
                counts, j = f"n={len(ga)}/{len(gb)}", judge([ga, gb], [1.0, -1.0], expect)
            text = f"{c.text} ({ev.long_length})" if c.quantity == "long" else c.text
            rows.append(Row(claim.number, task, text, where, c.quantity, counts, j, c.context))
    return rows


def gradient_flow_evidence(tables: Sequence[pa.Table]) -> list[tuple[float, float, float]]:
    """(gamma, norm of d loss / d h_t at t=0, at the last step) per gamma from gradient_flow tables (Figure 1a)."""
    out = {}
    for table in tables:
        a = table.filter(pc.equal(table["figure"], "1a"))
        if not a.num_rows:
            continue
        last = pc.max(a["t"]).as_py()
        for r in a.filter(pc.is_in(a["t"], pa.array([0, last], pa.int64()))).to_pylist():
            entry = out.setdefault(r["gamma"], [math.nan, math.nan])
            entry[0 if r["t"] == 0 else 1] = r["value"]
    return [(g, v[0], v[1]) for g, v in sorted(out.items())]


def all_rows(study: StudyTables, points: pa.Table, fraction: float, targets: dict[str, float],
             sign_of: Callable[[str], int]) -> dict[int, list[Row]]:
    """Every claim's rows over the study's tasks (claim number -> rows in task order)."""
    out: dict[int, list[Row]] = {c.number: [] for c in CLAIMS}
    for task in study.tasks():
        ev = Evidence.of(study, task, points, fraction, targets.get(task))
        for claim in CLAIMS:
            out[claim.number] += evaluate(study, task, claim, ev, sign_of(task))
    return out
