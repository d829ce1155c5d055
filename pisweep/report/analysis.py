"""The report's numbers, as one JSON-able dict: per (scale, epochs) group and comparison, the main benchmark per
evaluated epoch with intervals and the emergence epoch, then every benchmark at the last epoch with Holm, win
counts and sign tests, and retrieval recall in both directions. Definitions: DEFINITIONS and docs/statistics.md.

Terminal mode computes the main benchmark's curve and the last epoch; ``full`` adds every benchmark at every
epoch (for the HTML, Markdown and JSON outputs: small multiples, the delta heatmap, emergence against scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pisweep.errors import PisweepError
from pisweep.eval import registry
from pisweep.report.data import Group, StudyData, main_values, run_index, task_metric_values
from pisweep.report.emergence import crossover_epoch, emergence_epoch, onset_distribution
from pisweep.report.estimate import Estimator, interval_dict
from pisweep.report.inference import Interval
from pisweep.report.lastepoch import FAMILIES, adjust_family, family_of, last_table
from pisweep.study.arms import CONTROLS, POSTHOC

DEFINITIONS = {
    "delta": "A − B of the task's main metric, each arm's value being the mean over its seeds (each arm − random; "
             "perceptual − each control and − posthoc, when the study has them).",
    "estimand": "Δ = the expected difference of the arms' metric over training randomness (seeds), on the population "
                "this test set is drawn from: both the seeds and the test set's sampling noise are in an interval.",
    "interval": "Δ ± t·se, t Student's with S − 1 degrees of freedom (S seeds per arm, paired by seed id; "
                "S_a + S_b − 2 unpaired): se² = var(per-seed Δ)/S + the test-set variance all seeds share (from the "
                "per-example files: examples within class for mean per-class recall, images with all their captions "
                "for retrieval). One seed per arm: the test-set variance alone (normal), and training randomness is "
                "not in the interval. Without per-example files: the seed part alone (test-set noise not included).",
    "p": "two-sided p of Δ = 0 from the same t: the interval excludes 0 exactly when p < 1 − level.",
    "verdict": "a win or loss needs an interval that includes seed noise (at least 2 seeds in an arm, or "
               "--assume-no-seed-noise): for one task and epoch the interval excludes 0; across a table's tasks "
               "Holm's adjusted p is below alpha. With one seed per arm there is no verdict.",
    "emergence epoch": "first evaluated epoch from which the delta's lower bound is above zero at that epoch and at "
                       "every later evaluated epoch; only epochs evaluated for every run of both arms count; none "
                       "('not yet') when the last such epoch's bound is not above zero; no emergence is claimed from "
                       "intervals without seed noise (one seed per arm).",
    "crossover epoch": "the same with the point delta instead of the lower bound: 'sustained from' in the answer, the "
                       "closer analogue of the paper's 'gains emerge after about 15 epochs'.",
    "epoch interval": "of an emergence or crossover epoch: its 95% interval over draws of the whole delta curve from "
                      "its joint distribution across epochs (each epoch's interval variance with the covariances "
                      "between epochs, Student-t scaled; --resamples draws, --seed); 'not yet' when the draws put it "
                      "after the last epoch.",
    "sustained from epoch k": "the share of those draws whose delta is above zero at k and at every later evaluated "
                              "epoch.",
    "family": "the comparisons whose verdicts hold one error rate together: every arm against random, and "
              "perceptual against each control and against posthoc; Holm's adjustment runs over every (comparison, "
              "benchmark) of a family at once (a group's last epoch; posthoc at its source epoch).",
    "win / loss / tie": "per task at the last epoch, from the Holm-adjusted p across its family's comparisons and "
                        "tasks: win when it "
                        "is below alpha and the delta is positive, loss when negative, else tie; 'no verdict' when "
                        "the interval does not include seed noise.",
    "win count": "tasks whose point delta is above zero (losses below, ties exactly zero), with an exact two-sided "
                 "sign test of wins vs losses (ties dropped).",
    "NIGHTS 2AFC": "the share of NIGHTS triplets (unanimous votes) on which the model's closer image (cosine distance "
                   "of its image embeddings) is the humans' choice, a tie counting 1/2, per set: val, test_imagenet, "
                   "test_no_imagenet, and their total (both test subsets together: DreamSim's size-weighted mean); "
                   "epoch 0 is the weights each run starts from (random: its seeded init; perceptual and shuffled: "
                   "the stage-1 vision tower). Intervals as for a benchmark, the triplets being the test set's units.",
    "lost hours": "for an attempt that ended without saving (failed, timeout, vanished, cancelled) and was followed "
                  "by another: the time after its last recorded checkpoint, redone by the next attempt.",
}


@dataclass(frozen=True)
class Options:
    main_task: str
    resamples: int = 2000  # draws of each delta curve, for the emergence and crossover epochs' distribution
    seed: int = 0
    level: float = 0.95
    alpha: float = 0.05
    full: bool = False
    per_example: bool = True
    assume_no_seed_noise: bool = False  # one seed per arm: verdicts from test-set noise alone (labelled)


class ReportError(PisweepError):
    """The report was asked for something the study does not have (a main task outside its suite...)."""

    exit_code = 2


def check_options(opts: Options, tasks: tuple[str, ...] | list[str]) -> Options:
    if opts.main_task not in tasks:
        raise ReportError(f"main task {opts.main_task!r} is not one of the study's tasks: {', '.join(tasks)}")
    if opts.resamples < 1:
        raise ReportError(f"--resamples must be at least 1, got {opts.resamples}")
    if not 0 < opts.level < 1 or not 0 < opts.alpha < 1:
        raise ReportError(f"level and alpha must be in (0, 1), got {opts.level} and {opts.alpha}")
    return opts


def comparisons(arms: tuple[str, ...]) -> list[tuple[str, str]]:
    """The two families (lastepoch.FAMILIES): every arm against random (perceptual first; each control, each NIGHTS
    dose, posthoc), then perceptual against each control and against posthoc (posthoc at its source epochs)."""
    vs_random = [(a, "random") for a in arms if a != "random"]  # in the report's order of arms
    vs_perceptual = [("perceptual", c) for c in (*CONTROLS, POSTHOC)]
    return [c for c in vs_random + vs_perceptual if c[0] in arms and c[1] in arms]


def cmp_key(c: tuple[str, str]) -> str:
    return f"{c[0]}-{c[1]}"


def has_curve(c: tuple[str, str]) -> bool:
    """Whether a comparison has an emergence curve: not one with the posthoc arm, which has results at its source
    epochs only (a fine-tune of a finished pretraining, not a training of its own that a curve could follow)."""
    return POSTHOC not in c


class _Values:
    """Main-value matrices (runs x epochs) per task, loaded once."""

    def __init__(self, data: StudyData):
        self.data, self.full, self.partial = data, {}, {}

    def all_epochs(self, task: str) -> np.ndarray:
        if task not in self.full:
            self.full[task] = main_values(self.data, task)
        return self.full[task]

    def at(self, task: str, epochs: set[int]) -> np.ndarray:
        if task in self.full:
            return self.full[task]
        key = (task, tuple(sorted(epochs)))
        if key not in self.partial:
            self.partial[key] = main_values(self.data, task, epochs)
        return self.partial[key]


def analyze(data: StudyData, opts: Options) -> dict[str, Any]:
    est = Estimator(level=opts.level, per_example=opts.per_example, assume_no_seed_noise=opts.assume_no_seed_noise)
    values = _Values(data)
    cmps = comparisons(data.arms)
    series_tasks = list(data.tasks) if opts.full else [opts.main_task]
    groups, finalizers = [], []
    for g in data.groups:
        gr = _group_header(data, g)
        gr["series"] = {}
        for task in series_tasks:
            s, fin = _series(data, est, g, task, values.all_epochs(task), cmps, opts)
            gr["series"][task] = s
            finalizers.append(fin)
        groups.append(gr)
    # The last epoch of each group: the last one evaluated for every run of the main task (or of any task).
    for g, gr in zip(data.groups, groups):
        gr["last_epoch"] = _last_epoch(gr["series"].get(opts.main_task), cmps)
    if any(gr["last_epoch"] is None for gr in groups):
        for g, gr in zip(data.groups, groups):
            if gr["last_epoch"] is None:
                gr["last_epoch"] = max((e for t in data.tasks if t != opts.main_task for e in
                                        [_last_epoch(_series(data, None, g, t, values.all_epochs(t), cmps, opts)[0], cmps)]
                                        if e is not None), default=None)
    nights = task_metric_values(data, registry.NIGHTS_2AFC.key, registry.NIGHTS_VERSION)
    for g, gr in zip(data.groups, groups):
        gr["nights"] = {}
        for metric in (m for m in registry.NIGHTS_METRICS if m in nights):
            s, fin = _series(data, est, g, registry.NIGHTS_2AFC.key, nights[metric], cmps, opts, metric=metric,
                             name=NIGHTS_NAMES[metric], curve=False, start=True)
            if s["rows"]:
                gr["nights"][metric] = s
                finalizers.append(fin)
    # a posthoc comparison's table: at its latest source epoch with results (the group's last epoch by default)
    main = opts.main_task
    at = {(gr["key"], cmp_key(c)): gr["last_epoch"] if has_curve(c) else _last_epoch(gr["series"].get(main), [c])
          for gr in groups for c in cmps}
    wanted = {e for e in at.values() if e is not None}
    tables = []
    for g, gr in zip(data.groups, groups):
        gr["last"] = {}
        for c in cmps:
            epoch = at[(gr["key"], cmp_key(c))]
            if epoch is not None:
                tables.append((gr, c, last_table(data, est, g, epoch, c, values, wanted, opts.full)))
    est.flush()
    for fin in finalizers:
        fin()
    for gr, c, fin in tables:
        gr["last"][cmp_key(c)] = fin(opts.alpha)
    for gr in groups:  # the verdicts: Holm over each family's comparisons and benchmarks together
        for family in FAMILIES:
            members = {cmp_key(c): gr["last"][cmp_key(c)] for c in cmps
                       if family_of(c) == family and cmp_key(c) in gr["last"]}
            if members:
                adjust_family(members, opts.alpha, family)
    for gr in groups:
        gr["main"] = gr["series"].get(opts.main_task)
        if not opts.full:
            gr.pop("series")
    return {"main_task": opts.main_task, "main_metric": registry.get_task(opts.main_task).main_metric,
            "comparisons": [cmp_key(c) for c in cmps], "arms": list(data.arms), "groups": groups,
            "settings": {"level": opts.level, "alpha": opts.alpha, "full": opts.full,
                         "assume_no_seed_noise": opts.assume_no_seed_noise, "resamples": opts.resamples,
                         "seed": opts.seed},
            "method": {"intervals": dict(est.methods), "fallbacks": dict(est.fallbacks),
                       "fallback_examples": dict(est.fallback_example)},
            "definitions": DEFINITIONS}


def _group_header(data: StudyData, g: Group) -> dict[str, Any]:
    arms = {}
    for arm in data.arms:
        runs = data.runs_of(g, arm)
        arms[arm] = {"planned": len(runs), "seeds": [r.seed for r in runs],
                     "completed": sum(r.state == "completed" for r in runs)}
    planned = sorted({e for r in data.runs_of(g) for e in r.eval_epochs})
    return {"key": g.key, "scale": g.scale, "epochs": g.epochs, "samples": g.samples, "arms": arms,
            "planned_epochs": planned}


NIGHTS_NAMES = {"nights_val_2afc": "NIGHTS val", "nights_test_imagenet_2afc": "NIGHTS test (ImageNet)",
                "nights_test_no_imagenet_2afc": "NIGHTS test (no ImageNet)",
                "nights_total_2afc": "NIGHTS test total (size-weighted)"}


def _series(data: StudyData, est: Estimator | None, g: Group, task: str, m: np.ndarray,
            cmps: list[tuple[str, str]], opts: Options, metric: str | None = None, name: str | None = None,
            curve: bool = True, start: bool = False) -> tuple[dict[str, Any], Callable[[], None]]:
    """One metric (the task's main one unless given) over the evaluated epochs of one group: arm means, intervals
    per comparison, and (``curve``) the emergence and crossover epochs with their distribution; without ``curve``
    the terminal report (not ``full``) takes the first and the last epoch only. ``start``: epoch 0, the weights the
    runs start from, is expected too (NIGHTS)."""
    meta = registry.get_task(task)
    metric = metric or meta.main_metric
    runs = {arm: data.runs_of(g, arm) for arm in data.arms}
    sub = {arm: m[run_index(r)] if r else np.full((0, m.shape[1]), np.nan) for arm, r in runs.items()}
    fin = {arm: np.isfinite(v) for arm, v in sub.items()}
    any_epoch = np.zeros(m.shape[1], bool)
    for f in fin.values():
        any_epoch |= f.any(axis=0)
    epochs = [int(e) for e in np.flatnonzero(any_epoch)]
    rows = []
    for e in epochs if curve or opts.full else sorted(set(epochs[:1] + epochs[-1:])):  # terminal: start and last
        row: dict[str, Any] = {"epoch": e, "arms": {}, "deltas": {}, "complete": {}}
        for arm in runs:
            vals = sub[arm][fin[arm][:, e], e]
            row["arms"][arm] = {"mean": float(vals.mean()) if len(vals) else None, "n": int(len(vals)),
                                "planned": len(runs[arm]), "lo": None, "hi": None}
        rows.append(row)
    planned = sorted({x for r in data.runs_of(g) for x in r.eval_epochs} | ({0} if start else set()))
    s: dict[str, Any] = {"task": task, "name": name or meta.display_name, "kind": meta.kind, "metric": metric,
                         "rows": rows, "emergence": {}, "pending_epochs": [e for e in planned if e not in epochs]}
    part = {arm: f.any(axis=1) for arm, f in fin.items()}  # runs with any result of this task
    for row in rows:  # epochs outside, comparisons inside: an epoch's per-example files are read once
        e = row["epoch"]
        due = {arm: np.array([r.evaluates(e, start) for r in rs], bool) for arm, rs in runs.items()}
        for c in cmps:
            a, b = c
            part_a, part_b = part[a] & due[a], part[b] & due[b]  # (a posthoc cell is due at its source epoch)
            ok_a, ok_b = fin[a][:, e], fin[b][:, e]
            # complete: every run of both arms that has a result of this task has one here (and both arms have)
            row["complete"][cmp_key(c)] = bool(part_a.any() and part_b.any() and ok_a[part_a].all()
                                               and ok_b[part_b].all())
            if ok_a.any() and ok_b.any() and est is not None:
                ia, ib = np.flatnonzero(ok_a), np.flatnonzero(ok_b)
                est.request(task, metric, e, [runs[a][i] for i in ia], [runs[b][i] for i in ib],
                            sub[a][ia, e].tolist(), sub[b][ib, e].tolist(), _store(row, c, len(ia), len(ib)),
                            for_curve=curve and has_curve(c))
    if est is None or not curve:  # only the completeness was wanted, or no emergence
        for c in cmps:
            s["emergence"][cmp_key(c)] = {"epochs_used": [r["epoch"] for r in rows if r["complete"][cmp_key(c)]]}

    if curve:  # a posthoc comparison: the epochs it is drawn at, no emergence
        for c in (c for c in cmps if not has_curve(c)):
            s["emergence"][cmp_key(c)] = {"epochs_used": [r["epoch"] for r in rows if r["complete"][cmp_key(c)]],
                                          "at_source_epochs": True}

    def finalize() -> None:
        for c in (c for c in cmps if has_curve(c)) if curve else ():
            k = cmp_key(c)
            used = [r for r in rows if r["complete"][k] and r["deltas"].get(k)]
            ep = [r["epoch"] for r in used]
            decides = bool(used) and all(r["deltas"][k]["decides"] for r in used)
            emerge = emergence_epoch(ep, [r["deltas"][k]["lo"] for r in used]) if decides else None
            cross = crossover_epoch(ep, [r["deltas"][k]["delta"] for r in used])
            s["emergence"][k] = {"emergence_epoch": emerge, "crossover_epoch": cross, "epochs_used": ep,
                                 "provisional": emerge is not None and (emerge == ep[-1] or ep[-1] < g.epochs),
                                 "through_epoch": ep[-1] if ep else None, "budget": g.epochs,
                                 "decides": decides, "includes": used[-1]["deltas"][k]["includes"] if used else None}
            if decides and est is not None:
                ia, ib = np.flatnonzero(part[c[0]]), np.flatnonzero(part[c[1]])
                cv = est.curve(task, metric, ep, [runs[c[0]][i] for i in ia], [runs[c[1]][i] for i in ib],
                               sub[c[0]][np.ix_(ia, ep)], sub[c[1]][np.ix_(ib, ep)])
                half = [r["deltas"][k]["delta"] - r["deltas"][k]["lo"] for r in used]
                s["emergence"][k]["distribution"] = onset_distribution(ep, cv.delta, cv.cov, half, cv.df,
                                                                       draws=opts.resamples, seed=opts.seed,
                                                                       level=opts.level)
        for row in rows:
            for c in cmps:
                d = row["deltas"].get(cmp_key(c))
                for arm, lo, hi in ((c[0], "lo_a", "hi_a"), (c[1], "lo_b", "hi_b")):
                    if d and row["arms"][arm]["lo"] is None:
                        row["arms"][arm]["lo"], row["arms"][arm]["hi"] = d[lo], d[hi]
    return s, finalize


def _store(row: dict[str, Any], c: tuple[str, str], n_a: int, n_b: int) -> Callable[[Interval], None]:
    def done(iv: Interval) -> None:
        row["deltas"][cmp_key(c)] = interval_dict(iv, n_a, n_b)
    return done


def _last_epoch(series: dict[str, Any] | None, cmps: list[tuple[str, str]]) -> int | None:
    if not series or not series["rows"]:
        return None
    if not cmps:
        return max(r["epoch"] for r in series["rows"])
    used = series["emergence"].get(cmp_key(cmps[0]), {}).get("epochs_used")
    if used is None:
        used = [r["epoch"] for r in series["rows"] if r["complete"][cmp_key(cmps[0])]]
    return max(used) if used else None
