"""`suite report`: a study's result tables -> one markdown file with PNG figures beside it.

Per task (in canonical order): final quality with the paper's numbers and differences
against `lstm` (Welch 95 % intervals), convergence speed to a stated target, the
train/validation gap and evaluation beyond the training length (paper Figure 3b), cost;
then throughput tables, the gradient-flow diagnostic (paper Figure 1) when the study holds
one, and every failed, diverged or missing trial with its reason.

The markdown is a pure function of the tables: everything is sorted, floats have fixed
formats, and there are no timestamps or absolute paths, so the same tables give the same
bytes. Everything is computed before anything is written, and the markdown is written
under a temporary name and renamed, so an error never leaves a half report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from reports import claims, convergence, generalization, inference, tuning
from reports.cost import BenchmarkRun, read_benchmark_json
from reports.gradient_flow import figures as flow_figures
from reports.load import BASELINE, TASK_ORDER, StudyTables, load_study, ordered, read_folder
from reports.merge import merge
from reports.paper import reference
from reports.plots import curve_figure, lengths_figure
from reports.stats import Summary, summarize, welch_interval
from suite.core.errors import ConfigError
from suite.core.results import GRADIENT_FLOW, GRADIENT_FLOW_TABLE

DASH = "—"


@dataclass(frozen=True)
class Fmt:
    """How a metric is printed: label, scale (accuracy fraction -> percent), digits (None: 4 significant)."""

    label: str
    scale: float
    digits: int | None
    higher_is_better: bool

    def num(self, value: float | None, signed: bool = False) -> str:
        """One value in display units."""
        if value is None or not math.isfinite(value):
            return DASH
        v = value * self.scale
        if self.digits is None:
            return f"{v:+.4g}" if signed else f"{v:.4g}"
        return f"{v:+.{self.digits}f}" if signed else f"{v:.{self.digits}f}"

    def summary(self, s: Summary) -> str:
        """mean ± std (n=...), std omitted for a single value."""
        if s.n == 0:
            return f"{DASH} (n=0)"
        if s.n == 1:
            return f"{self.num(s.mean)} (n=1)"
        return f"{self.num(s.mean)} ± {self.num(s.std)} (n={s.n})"


def metric_format(metric: str, mode: str) -> Fmt:
    """Display format of a metric; accuracy (a fraction in the tables) is shown in percent."""
    if metric == "accuracy":
        return Fmt("accuracy %", 100.0, 2, mode == "max")
    if metric == "bpc":
        return Fmt("bpc", 1.0, 3, mode == "max")
    return Fmt(metric, 1.0, None, mode == "max")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _spread(values: tuple[float, float, float], digits: int) -> str:
    median, low, high = values
    if not math.isfinite(median):
        return DASH
    return f"{median:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"


def _ratio(base: float, mine: float) -> str:
    if not (math.isfinite(base) and math.isfinite(mine)) or mine <= 0:
        return DASH
    return f"{base / mine:.2f}x"


def _difference(fmt: Fmt, mine: list[float], base: list[float]) -> str:
    d = welch_interval(mine, base)
    if not math.isfinite(d.diff):
        return DASH
    if not math.isfinite(d.low):
        return f"{fmt.num(d.diff, signed=True)} (CI needs n >= 2)"
    mark = " *" if d.low > 0 or d.high < 0 else ""
    return f"{fmt.num(d.diff, signed=True)} [{fmt.num(d.low, signed=True)}, {fmt.num(d.high, signed=True)}]{mark}"


class MarkdownReport:
    """Builds the markdown of one study, drawing figures into `folder` with names prefixed by `prefix`."""

    def __init__(self, study: StudyTables, folder: Path, prefix: str, bench: BenchmarkRun | None,
                 fraction: float, targets: Mapping[str, float]):
        self.study, self.folder, self.prefix = study, folder, prefix
        self.bench, self.fraction, self.targets = bench, fraction, dict(targets)
        self.points = convergence.valid_points(study)
        self.figures: list[Path] = []
        self.lines: list[str] = []

    def figure(self, name: str) -> Path:
        """Path of a figure beside the report."""
        return self.folder / f"{self.prefix}-{name}.png"

    def link(self, path: Path, alt: str) -> None:
        """Add an image line with a path relative to the report."""
        self.figures.append(path)
        self.lines += [f"![{alt}]({path.name})", ""]

    def build(self) -> str:
        """The whole markdown document."""
        s = self.study
        statuses = sorted({t.status for t in s.trials.values()})
        counts = ", ".join(f"{sum(t.status == x for t in s.trials.values())} {x}" for x in statuses)
        curve_rows = s.curve.num_rows if s.curve is not None else 0
        self.lines += [f"# Study report: {s.name}", "",
                       f"{len(s.trials)} trials with a summary ({counts or 'none'}); {curve_rows} curve rows.",
                       "",
                       "How to read the numbers: values are mean ± sample standard deviation over seeds (n = number of "
                       "finished trials behind each number). Accuracy is shown in percent. Differences against "
                       f"`{BASELINE}` carry a 95 % Welch t interval with seeds as samples; the t quantile is computed by "
                       "inverting the t CDF (regularized incomplete beta function, bisection), not read from a table. "
                       "A `*` marks an interval that excludes zero. Paper numbers are the test results of Cooijmans et "
                       "al. (2016), Tables 1-3.", ""]
        self.sources_section()
        # A tuned study: what the search did, per task (and study, when merged), before the comparison.
        for source in sorted({t.source for t in s.search.values()}):
            for task in ordered((t.task for t in s.search.values() if t.source == source), TASK_ORDER):
                tuning.section(self, task, source)
        for task in s.tasks():
            self.task_section(task)
        self.claims_section()
        self.throughput_sections()
        self.gradient_flow_section()
        self.problems_section()
        return "\n".join(self.lines).rstrip("\n") + "\n"

    def sources_section(self) -> None:
        """For merged studies: which study each arm's seeds came from."""
        s = self.study
        if not s.parts:
            return
        rows = []
        for task in s.tasks():
            for arm in s.arms(task):
                by_study: dict[str, list[int]] = {}
                for t in s.trials_of(task, arm):
                    by_study.setdefault(t.source, []).append(t.seed)
                rows += [[task, f"`{arm}`", f"`{name}`", ", ".join(map(str, sorted(seeds)))]
                         for name, seeds in sorted(by_study.items())]
        self.lines += ["## Sources (merged studies)", "",
                       f"Merged from {len(s.parts)} studies ({', '.join(f'`{n}`' for n, _ in s.parts)}); they agree on "
                       "every shared setting that is not a grid axis, and arms are pooled over them.", ""]
        self.lines += _table(["task", "arm", "study", "seeds"], rows)
        self.lines.append("")

    def task_section(self, task: str) -> None:
        """All per-task sections."""
        s = self.study
        arms = s.arms(task)
        metric, mode = s.metric(task)
        fmt = metric_format(metric, mode)
        direction = "higher is better" if fmt.higher_is_better else "lower is better"
        seeds = ", ".join(f"`{a}` n={len(s.trials_of(task, a, finished=True))}" for a in arms)
        self.lines += [f"## Task `{task}`: {metric} ({direction})", "", f"Finished seeds per arm: {seeds}.", ""]
        self.quality(task, arms, fmt)
        self.inference_stats(task, arms, fmt)
        self.speed(task, arms, fmt)
        self.generalization(task, arms, fmt)
        self.cost(task, arms)
        self.curves(task, arms, fmt)

    def quality(self, task: str, arms: list[str], fmt: Fmt) -> None:
        """Final quality table: test at best valid step and at the last step."""
        s = self.study
        rows = []
        for arm in arms:
            trials = s.trials_of(task, arm, finished=True)
            best = [t.row["test_at_best"] for t in trials]
            last = [t.row["test_at_last"] for t in trials]
            base = s.baseline(task, arm)
            if base is None or base == arm:
                d_best = d_last = DASH
            else:
                bt = s.trials_of(task, base, finished=True)
                d_best = _difference(fmt, best, [t.row["test_at_best"] for t in bt])
                d_last = _difference(fmt, last, [t.row["test_at_last"] for t in bt])
            paper = reference(task, trials[0].variant if trials else s.trials_of(task, arm)[0].variant)
            rows.append([f"`{arm}`", fmt.summary(summarize(best)), fmt.summary(summarize(last)),
                         fmt.num(paper), d_best, d_last])
        self.lines += ["### Final quality (test set)", "", self.mode_note(task, arms, "the validation metric that "
                                                                        "selects the best step and the test metric"), ""]
        self.lines += _table(["arm", f"test {fmt.label} at best valid step", f"test {fmt.label} at last step",
                              "paper", f"Δ vs `{BASELINE}` at best (95 % CI)", f"Δ vs `{BASELINE}` at last (95 % CI)"],
                             rows)
        self.lines.append("")

    def mode_note(self, task: str, arms: list[str], what: str) -> str:
        """Which BN statistics mode the trials' evaluations used (summary `stats_mode`), in one sentence."""
        used = self.bn_arms(task, arms)
        if not used:
            return "No arm has batch norm: no statistics mode applies."
        arms_text = ", ".join(f"`{a}` {m}" for a, m in used.items())
        return (f"BN statistics behind {what}: {arms_text} (`train.eval_stats`; every mode is compared under "
                f"Inference statistics when measured).")

    def bn_arms(self, task: str, arms: list[str]) -> dict[str, str]:
        """Arms with batch norm (their summaries record a statistics mode) -> the mode(s) their evaluations used."""
        used = {}
        for arm in arms:
            kinds = sorted({t.row["stats_mode"] for t in self.study.trials_of(task, arm)
                            if t.row["stats_mode"] not in (None, "none")})
            if kinds:
                used[arm] = "/".join(kinds)
        return used

    def inference_stats(self, task: str, arms: list[str], fmt: Fmt) -> None:
        """Per BN arm: the test metric under every statistics mode, and whether the ranking vs lstm changes."""
        s = self.study
        rows, sentences, unmeasured = [], [], []
        for arm in self.bn_arms(task, arms):
            ids = [t.trial_id for t in s.trials_of(task, arm, finished=True)]
            best, last = inference.modes(s.inference, ids, "best"), inference.modes(s.inference, ids, "last")
            if not best and not last:
                unmeasured.append(f"`{arm}`")
                continue
            at_last = {m.label: m for m in last}
            base = s.baseline(task, arm)
            base_trials = s.trials_of(task, base, finished=True) if base and base != arm else []
            base_values = [t.row["test_at_best"] for t in base_trials]
            for m in best:
                ml = at_last.get(m.label)
                rows.append([f"`{arm}`", m.label, fmt.summary(m.per_seed), self.draws(fmt, m),
                             fmt.summary(ml.per_seed) if ml else DASH, self.draws(fmt, ml) if ml else DASH,
                             _difference(fmt, list(m.values), base_values) if base_trials else DASH])
            if base_trials:
                sentences.append(inference.ranking_sentence(arm, base, summarize(base_values).mean, best,
                                                            fmt.higher_is_better))
        if not rows and not unmeasured:
            return
        self.lines += ["### Inference statistics (BN arms)", ""]
        if unmeasured:
            self.lines += [f"Not measured for {', '.join(unmeasured)}: no `inference` rows for its finished trials "
                           "(trained with `train.inference_draws = 0`, or before the measurement existed; `suite "
                           "evaluate` scores a saved model under any mode).", ""]
        if not rows:
            return
        self.lines += [
                       "Test metric of each BN arm under each way of taking batch-norm statistics at evaluation: "
                       "`batch (B)` each evaluation batch's own statistics at batch size B; `running` the running "
                       "averages kept during training; `reestimate` population statistics re-estimated from "
                       "training batches, one value per seed = the mean over its independent draws. Mean ± std over "
                       "seeds at the best validation step and at the last step; draw spread = max − min over the "
                       f"draws of one seed, mean over seeds [largest]. Δ vs `{BASELINE}` compares the best-step "
                       f"values with `{BASELINE}`'s test metric at its best step.", ""]
        self.lines += _table(["arm", "statistics", f"test {fmt.label} at best valid step", "draw spread",
                              f"test {fmt.label} at last step", "draw spread",
                              f"Δ vs `{BASELINE}` at best (95 % CI)"], rows)
        self.lines.append("")
        self.lines += [*sentences, ""] if sentences else []

    @staticmethod
    def draws(fmt: Fmt, m: inference.ModeResult) -> str:
        """The spread over re-estimation draws, or a dash for modes without draws."""
        if m.draw_spread is None:
            return DASH
        mean, largest = m.draw_spread
        return f"{fmt.num(mean)} [{fmt.num(largest)}]"

    def speed(self, task: str, arms: list[str], fmt: Fmt) -> None:
        """Steps and seconds to the target, speed-up against lstm, normalized AUC."""
        s = self.study
        target = convergence.task_target(s, task, self.fraction, self.targets.get(task))
        self.lines += ["### Convergence speed (validation curve)", ""]
        if target is None:
            self.lines += ["No target: no finished trial has a best validation value.", ""]
            return
        mode = s.metric(task)[1]
        trials = [t for a in arms for t in s.trials_of(task, a)]
        speeds = convergence.trial_speeds(self.points, {t.trial_id: (target.value, mode) for t in trials})
        per_arm = {a: convergence.arm_speed([speeds[t.trial_id] for t in s.trials_of(task, a)],
                                            [speeds[t.trial_id] for t in s.trials_of(task, a, finished=True)])
                   for a in arms}
        rows = []
        for arm in arms:
            sp = per_arm[arm]
            base = s.baseline(task, arm)
            bs = per_arm.get(base) if base else None
            rows.append([f"`{arm}`", f"{sp.reached}/{sp.total}", _spread(sp.steps, 0), _spread(sp.seconds, 1),
                         _ratio(bs.steps[0], sp.steps[0]) if bs else DASH,
                         _ratio(bs.seconds[0], sp.seconds[0]) if bs else DASH,
                         fmt.summary(Summary(sp.auc_mean, sp.auc_std, sp.auc_n))])
        self.lines += [self.mode_note(task, arms, "the validation curves"), ""]
        self.lines += [f"Target: {fmt.label} {fmt.num(target.value)}, i.e. {target.rule}. Steps and seconds are "
                       "median [min–max] over the trials (all statuses) that reached the target; `reached` counts "
                       f"them. Speed-up = median of `{BASELINE}` / median of the arm. AUC (finished trials) = trapezoid "
                       "integral of the validation metric over steps divided by the trial's step span from its first "
                       "to its last validation point (the step-weighted mean validation metric, in the metric's "
                       "units).", ""]
        self.lines += _table(["arm", "reached", "steps to target", "train seconds to target", "speed-up (steps)",
                              "speed-up (seconds)", f"normalized AUC ({fmt.label})"], rows)
        self.lines.append("")

    def generalization(self, task: str, arms: list[str], fmt: Fmt) -> None:
        """Gap at the best step, and the lengths table when present."""
        s = self.study
        rows = []
        for arm in arms:
            trials = s.trials_of(task, arm, finished=True)
            rows.append([f"`{arm}`", fmt.summary(summarize([t.row["best_valid"] for t in trials])),
                         fmt.summary(summarize([t.row["train_at_best"] for t in trials])),
                         fmt.summary(generalization.gap(trials))])
        self.lines += ["### Generalization", "",
                       "Gap = how much worse validation is than training at the best validation step (train − valid "
                       "for higher-is-better metrics, valid − train otherwise); training values are interval means.", ""]
        self.lines += _table(["arm", f"best valid {fmt.label}", f"train {fmt.label} at best step", "gap"], rows)
        self.lines.append("")
        lengths = generalization.length_table(s, task)
        if lengths is None:
            return
        self.lines += ["#### Evaluation on other sequence lengths (paper Figure 3b)", "",
                       "Mean ± std over seeds of the metric when evaluating on sequences of each length; steps beyond "
                       "the training length reuse the population statistics of step T_max.", ""]
        all_lengths = sorted(set(lengths["length"].to_pylist()))
        data = lengths.to_pylist()
        for checkpoint, split in sorted({(r["checkpoint"], r["split"]) for r in data}):
            cells = {(r["arm"], r["length"]): r for r in data if r["checkpoint"] == checkpoint and r["split"] == split}
            rows = []
            for arm in [a for a in arms if any((a, n) in cells for n in all_lengths)]:
                row = [f"`{arm}`"]
                for n in all_lengths:
                    r = cells.get((arm, n))
                    row.append(fmt.summary(Summary(r["value_mean"], r["value_stddev"] if r["value_stddev"] is not None
                                                   else math.nan, r["value_count"])) if r else DASH)
                rows.append(row)
            self.lines += [f"Checkpoint `{checkpoint}`, split `{split}`:", ""]
            self.lines += _table(["arm"] + [f"length {n}" for n in all_lengths], rows)
            self.lines.append("")
        path = lengths_figure(task, lengths, fmt.label, lambda v: v * fmt.scale, self.figure(f"{task}-lengths"))
        self.link(path, f"{task}: metric against evaluation length")

    def cost(self, task: str, arms: list[str]) -> None:
        """Examples per second, parameter count, training seconds, devices."""
        s = self.study
        rows = []
        for arm in arms:
            trials = s.trials_of(task, arm, finished=True)
            eps = summarize([t.row["examples_per_second"] for t in trials])
            secs = summarize([t.row["train_seconds"] for t in trials])
            params = sorted({t.row["num_params"] for t in trials if t.row["num_params"] is not None})
            devices = sorted({t.row["device"] for t in trials if t.row["device"]})
            rows.append([f"`{arm}`", f"{eps.mean:.1f} ± {eps.std:.1f} (n={eps.n})" if eps.n > 1 else
                         (f"{eps.mean:.1f} (n=1)" if eps.n else DASH),
                         ", ".join(f"{p:,}" for p in params) or DASH,
                         f"{secs.mean:.1f}" if secs.n else DASH, ", ".join(devices) or DASH])
        self.lines += ["### Cost", ""]
        self.lines += _table(["arm", "training examples/s", "parameters", "mean train seconds", "device"], rows)
        self.lines.append("")

    def curves(self, task: str, arms: list[str], fmt: Fmt) -> None:
        """One figure per task: validation curves against steps and against training seconds."""
        s = self.study
        arm_of = {t.trial_id: t.arm for a in arms for t in s.trials_of(task, a)}
        curves = convergence.mean_curves(self.points, arm_of)
        if not curves:
            return
        ordered = {a: curves[a] for a in arms if a in curves}
        seeds = {a: len(s.trials_of(task, a)) for a in ordered}
        path = curve_figure(task, ordered, seeds, fmt.label, lambda v: v * fmt.scale, self.figure(f"{task}-curves"))
        self.lines += ["### Validation curves", "",
                       "Mean and ±1 sample-std band over the trials of each arm (all statuses; n in the legend) at "
                       "each validation step; the right panel places each step at the mean training seconds of the "
                       "trials.", ""]
        self.link(path, f"{task}: validation curves")

    def claims_section(self) -> None:
        """Each claim of the literature (reports.claims), with this study's estimate and verdict per task."""
        s = self.study
        fmts = {task: metric_format(*s.metric(task)) for task in s.tasks()}
        rows = claims.all_rows(s, self.points, self.fraction, self.targets,
                               lambda task: 1 if fmts[task].higher_is_better else -1)
        self.lines += ["## Claims: does the literature hold on this study?", "", claims.RULES, ""]
        flow = claims.gradient_flow_evidence([t for t in (read_folder(p / GRADIENT_FLOW_TABLE, GRADIENT_FLOW)
                                                           for p in self.study_paths()) if t is not None])
        for claim in claims.CLAIMS:
            mine = rows[claim.number]
            counts = {v: sum(r.judgement.verdict == v for r in mine if not r.context)
                      for v in (claims.SUPPORTED, claims.CONTRADICTED, claims.INCONCLUSIVE, claims.NOT_TESTED)}
            tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no rows"
            self.lines += [f"### Claim {claim.number}: {claim.sentence}", "",
                           f"Source: {claim.source}. Rows: {tally}.", ""]
            if all(r.judgement.verdict == claims.NOT_TESTED for r in mine):
                tasks: dict[str, list[str]] = {}
                for r in mine:
                    tasks.setdefault(r.judgement.reason, []).append(r.task)
                why = "; ".join(f"{reason} ({', '.join(sorted(set(t)))})" for reason, t in sorted(tasks.items()))
                self.lines += [f"Not tested: the study would need {claim.needs}. Here: {why or 'no task'}.", ""]
            else:
                self.lines += _table(["task", "comparison", "arms (estimate = first − second)", "seeds",
                                      "estimate [95 % CI]", "verdict", "why / seeds needed"],
                                     [[r.task, r.text, r.arms, r.counts, self.claim_estimate(r, fmts[r.task]),
                                       "context" if r.context else r.judgement.verdict,
                                       DASH if r.context and r.judgement.verdict != claims.NOT_TESTED
                                       else (r.judgement.reason or DASH)] for r in mine])
                self.lines.append("")
            if claim.number == 1 and flow:
                parts = "; ".join(f"γ={g:g}: {start:.3e} at t=0, {end:.3e} at the last step"
                                  for g, start, end in flow)
                self.lines += [f"Gradient flow at initialization (paper Figure 1a, BN tanh RNN, norm of d loss / d h_t "
                               f"averaged over the batch): {parts}.", ""]

    @staticmethod
    def claim_estimate(row: claims.Row, fmt: Fmt) -> str:
        """A row's contrast and interval in display units (steps as integers)."""
        j = row.judgement
        if not math.isfinite(j.diff):
            return DASH
        if row.quantity == "steps":
            def num(v: float) -> str:
                return f"{v:+.0f}" if math.isfinite(v) else DASH
        else:
            def num(v: float) -> str:
                return fmt.num(v, signed=True)
        return f"{num(j.diff)} [{num(j.low)}, {num(j.high)}]" if math.isfinite(j.low) else num(j.diff)

    def study_paths(self) -> list[Path]:
        """Directories of the studies behind this report (several when studies were merged)."""
        return [path for _, path in self.study.parts] or [self.study.path]

    def throughput_sections(self) -> None:
        """The study's throughput table and the benchmark JSON, when present."""
        t = self.study.throughput
        if t is not None and t.num_rows:
            rows = t.sort_by([("shape", "ascending"), ("direction", "ascending"), ("device", "ascending"),
                              ("variant", "ascending"), ("trial_id", "ascending")]).to_pylist()

            def f(v, spec):
                return DASH if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)
            self.lines += ["## Throughput (`throughput` table)", ""]
            self.lines += _table(["shape", "direction", "device", "variant", "T x B x F -> H", "median ms", "min ms",
                                  "rounds", "ratio to cudnn_lstm", "peak MiB"],
                                 [[r["shape"] or DASH, r["direction"] or DASH, r["device"] or DASH, f"`{r['variant']}`",
                                   f"{r['steps']} x {r['batch']} x {r['input_size']} -> {r['hidden_size']}",
                                   f(r["seconds_median"] * 1e3 if r["seconds_median"] is not None else None, ".1f"),
                                   f(r["seconds_min"] * 1e3 if r["seconds_min"] is not None else None, ".1f"),
                                   f(r["rounds"], "d"), f(r["ratio_to_cudnn"], ".2f"),
                                   f(r["peak_memory_bytes"] / 2**20 if r["peak_memory_bytes"] is not None else None,
                                     ".1f")] for r in rows])
            self.lines.append("")
        if self.bench is not None:
            b = self.bench
            machine = "; ".join(f"{k} {v}" for k, v in b.machine) or "not recorded"
            self.lines += [f"## Throughput (pytest-benchmark `{b.source}`)", "", f"Machine: {machine}.", ""]

            def extra(entry, key, scale=1.0, spec=".2f"):
                value = dict(entry.extra).get(key)
                return format(value * scale, spec) if isinstance(value, (int, float)) else DASH
            self.lines += _table(["group", "benchmark", "median ms", "min ms", "rounds", "ratio to cudnn_lstm",
                                  "peak MiB"],
                                 [[x.group or DASH, x.name, f"{x.median * 1e3:.2f}", f"{x.minimum * 1e3:.2f}",
                                   str(x.rounds), extra(x, "ratio_to_cudnn"),
                                   extra(x, "peak_memory_bytes", 2.0**-20, ".1f")] for x in b.benchmarks])
            self.lines.append("")

    def gradient_flow_section(self) -> None:
        """Paper Figure 1 from the study's gradient_flow table (`suite diagnose gradient-flow --out STUDY`)."""
        tables = [t for t in (read_folder(p / GRADIENT_FLOW_TABLE, GRADIENT_FLOW) for p in self.study_paths())
                  if t is not None]
        if not tables:
            return
        table = tables[0]  # merged studies: the first study's diagnostic (it is deterministic)
        a = table.filter(pc.equal(table["figure"], "1a"))
        self.lines += ["## Gradient flow at initialization (paper Figure 1)", ""]
        if a.num_rows:
            source = a["source"][0].as_py()
            self.lines += [f"Batch-normalized tanh RNN at initialization; inputs: {source}. Norm of d loss / d h_t, "
                           "mean over the batch, for each initial gamma.", ""]
            last = pc.max(a["t"]).as_py()
            rows = []
            for gamma in sorted(set(a["gamma"].to_pylist())):
                g = a.filter(pc.equal(a["gamma"], gamma))
                at = {r["t"]: r["value"] for r in g.filter(pc.is_in(g["t"], pa.array([0, last]))).to_pylist()}
                end, start = at.get(last, math.nan), at.get(0, math.nan)
                rows.append([f"{gamma:.2f}", f"{end:.3e}", f"{start:.3e}",
                             f"{start / end:.3e}" if end and math.isfinite(end) else DASH])
            self.lines += _table(["gamma", f"norm at t={last}", "norm at t=0", "ratio t=0 / last"], rows)
            self.lines.append("")
        for path in flow_figures(table, self.folder, prefix=f"{self.prefix}-"):
            self.link(path, path.stem)

    def problems_section(self) -> None:
        """Trials that did not finish, and trials or table rows that are missing."""
        s = self.study
        rows = []
        for t in sorted(s.trials.values(), key=lambda t: (t.task, t.arm, t.seed, t.trial_id)):
            if t.status != "finished":
                reason = (t.error or "no error recorded").strip().splitlines()
                rows.append([t.task, f"`{t.arm}`", str(t.seed), f"`{t.trial_id}`", t.status,
                             (reason[-1] if reason else "")[:200]])
        curve_ids = set(pc.unique(s.curve["trial_id"]).to_pylist()) if s.curve is not None else set()
        if s.curve is not None:
            orphans = s.curve.filter(pc.is_in(s.curve["trial_id"], value_set=pa.array(sorted(curve_ids - set(s.trials)),
                                                                                       pa.string())))
            keys = orphans.group_by(["trial_id", "task", "variant", "seed"]).aggregate([]).to_pylist()
            for r in sorted(keys, key=lambda r: (r["task"], r["variant"], r["seed"], r["trial_id"])):
                rows.append([r["task"], f"`{r['variant']}`", str(r["seed"]), f"`{r['trial_id']}`", "missing",
                             "curve rows but no summary row (still running, or died before writing its summary)"])
        for t in sorted(s.trials.values(), key=lambda t: (t.task, t.arm, t.seed, t.trial_id)):
            if t.trial_id not in curve_ids and t.status == "finished":
                rows.append([t.task, f"`{t.arm}`", str(t.seed), f"`{t.trial_id}`", "missing",
                             "summary row but no curve rows"])
        for task in s.tasks():
            arms = s.arms(task)
            seeds = sorted({t.seed for a in arms for t in s.trials_of(task, a)})
            for arm in arms:
                have = {t.seed for t in s.trials_of(task, arm)}
                for seed in seeds:
                    if seed not in have:
                        rows.append([task, f"`{arm}`", str(seed), DASH, "missing",
                                     "no trial for this seed, which other arms of the task have"])
        self.lines += ["## Failed, diverged and missing trials", ""]
        if not rows:
            self.lines += ["None: every trial finished and every arm has every seed.", ""]
            return
        self.lines += _table(["task", "arm", "seed", "trial", "status", "reason"], rows)
        self.lines.append("")


def load(studies: str | Path | Sequence[str | Path]) -> StudyTables:
    """One study directory, or several merged into one (reports.merge) so their seeds pool."""
    dirs = [studies] if isinstance(studies, str | Path) else list(studies)
    if len(dirs) == 1:
        return load_study(dirs[0])
    return merge([load_study(d) for d in dirs])


def render(study_dir: str | Path | Sequence[str | Path], out: str | Path, benchmark_json: str | Path | None = None,
           fraction: float = convergence.DEFAULT_FRACTION, targets: Mapping[str, float] | None = None) -> str:
    """Load a study (or merge several), draw its figures beside `out`, and return the markdown (not yet written)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"target fraction must be in (0, 1], got {fraction}")
    study = load(study_dir)
    bench = read_benchmark_json(benchmark_json) if benchmark_json else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # only once the study has loaded: bad input creates nothing
    report = MarkdownReport(study, out.parent, out.stem, bench, fraction, targets or {})
    return report.build()


def write_report(study_dir: str | Path | Sequence[str | Path], out: str | Path | None = None,
                 benchmark_json: str | Path | None = None, fraction: float = convergence.DEFAULT_FRACTION,
                 targets: Mapping[str, float] | None = None) -> Path:
    """Write the markdown report of a study (default `<study>/report.md`) with its PNGs beside it; returns the path.

    Several study directories are merged into one report, which then needs `out`.
    """
    dirs = [study_dir] if isinstance(study_dir, str | Path) else list(study_dir)
    if out is None and len(dirs) > 1:
        raise ConfigError(f"{len(dirs)} studies are merged into one report: say where it goes with --out FILE.md")
    out = Path(out) if out else Path(dirs[0]) / "report.md"
    text = render(dirs, out, benchmark_json, fraction, targets)
    temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, out)
    return out


__all__ = ["render", "write_report", "metric_format"]
