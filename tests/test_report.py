"""`pisweep report` and `pisweep status` on constructed ledgers (the real ledger code: record_study, events, ingest).

The per-example files are made so that perceptual init helps from a known epoch: the report must find that epoch,
mark what a still-running study lacks, and write HTML (plots embedded), Markdown, CSV and JSON.
"""
from __future__ import annotations

import base64
import json
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from pisweep.cli.main import main
from pisweep.commands import session as app
from pisweep.commands.status import status
from pisweep.commands.studyref import resolve
from pisweep.eval import registry
from pisweep.eval.evaluator import write_npz
from pisweep.eval.metrics import aggregate_classification, aggregate_retrieval
from pisweep.job.events import write_event
from pisweep.ledger import schema as t
from pisweep.ledger.ingest import apply_event, ingest
from pisweep.ledger.queries import snapshot
from pisweep.report.analysis import Options
from pisweep.report.build import build_report
from pisweep.report.export import to_json, to_markdown
from pisweep.report.html import to_html
from pisweep.report.inference import interval, intervals
from pisweep.report.render_terminal import report_renderables
from pisweep.study.work import next_work

TASKS = ["imagenet1k", "vtab/pets", "cifar10", "retrieval/flickr_1k_test_image_text_retrieval"]
ONSET = 4  # perceptual is better from this epoch on (identical outcomes before it)
EPOCHS = 6


def spec_text(root: Path, seeds: tuple[int, ...] = (0, 1, 2), inits: tuple[str, ...] = ("random", "perceptual"),
              fractions: tuple[float, ...] = (1.0,)) -> str:
    return textwrap.dedent(f"""\
        name: rep
        output_root: {root / 'out'}
        data:
          nights: {root / 'nights'}
          eval_root: {root / 'eval'}
          train: {{tiny: {{shards: "{root}/shards/{{0..3}}.tar", samples: 1000}}}}
        model: {{name: pisweep-tiny}}
        eval: {{tasks: {json.dumps(TASKS)}}}
        grid: {{init: {json.dumps(list(inits))}, scale: [tiny], epochs: [{EPOCHS}], seed: {json.dumps(list(seeds))},
                nights_fraction: {json.dumps(list(fractions))}}}
    """)


def per_example(task: str, init: str, seed: int, epoch: int) -> dict[str, np.ndarray]:
    """Outcomes with a known effect: both arms draw the same uniforms per (seed, epoch); perceptual's bar is higher
    from ONSET on, so the delta is exactly 0 before and clearly positive after."""
    u = np.random.default_rng(1000 * seed + epoch + 7 * TASKS.index(task)).random(600)
    p = 0.3 + (0.25 if init == "perceptual" and epoch >= ONSET else 0.0)
    meta = registry.TASKS[task]
    if meta.kind == registry.RETRIEVAL:
        n_img = 120  # 5 captions per image: 600 texts
        hits = u < p
        image_hits = np.stack([hits, hits | (u < p + 0.2), hits | (u < p + 0.3)], axis=1)
        ui = u[:n_img]
        th = ui < p
        text_hits = np.stack([th, th | (ui < p + 0.2), th | (ui < p + 0.3)], axis=1)
        return {"text_image_index": np.repeat(np.arange(n_img), 5).astype(np.int32), "image_hits": image_hits,
                "text_hits": text_hits, "recall_k": np.array([1, 5, 10])}
    classes = 10 if task == "imagenet1k" else 6
    target = np.arange(600) % classes
    correct = u < p
    pred = np.where(correct, target, (target + 1) % classes)
    return {"target": target.astype(np.int16), "pred": pred.astype(np.int16), "top1": correct,
            "top5": correct | (u < p + 0.3), "n_classes": np.array(classes)}


def make_study(root: Path, *, seeds=(0, 1, 2), inits=("random", "perceptual"), reached=None, skip_tasks=(),
               npz: bool = True, failed: tuple[str, ...] = (), fractions=(1.0,)) -> app.Session:
    """Record the study and write each run's events (and per-example files) up to its reached epoch (a posthoc
    cell: its source epoch); ingest. Only perceptual runs (any NIGHTS dose) carry the effect."""
    (root / "eval").mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        if task not in skip_tasks:
            listing = registry.shards_listing(root / "eval" / registry.TASKS[task].folder_name)
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text("1\n")
    spec = root / "rep.yaml"
    spec.write_text(spec_text(root, seeds, inits, fractions))
    s = app.open_session(resolve(str(spec)))
    app.record(s)
    reached = reached or {}
    for run in s.plan.runs:
        folder = s.layout.run_dir(run.uid)
        att = {"job_id": "j1", "restart": 0}
        last = reached.get(run.label, EPOCHS)
        if last == 0:
            continue
        write_event(folder, run.uid, "attempt_started", att, executor="local", host="h", pid=1, world_size=1)
        for epoch in (run.eval_epochs if run.source else range(1, last + 1)):
            write_event(folder, run.uid, "epoch_done", att, epoch=epoch, step=epoch * 10, metrics={"train_loss": 1.0})
            write_event(folder, run.uid, "checkpoint", att, epoch=epoch, kind="weights",
                        path=str(folder / f"checkpoints/epoch_{epoch}.pt"), sha256="x", bytes=10, step=epoch * 10)
            for task in TASKS:
                meta = registry.TASKS[task]
                if task in skip_tasks:
                    write_event(folder, run.uid, "eval_state", att, epoch=epoch, task=task, suite_version="1",
                                state="missing_data", reason=f"no folder {meta.folder_name}")
                    continue
                arrays = per_example(task, run.init, run.seed, epoch)
                metrics = (aggregate_retrieval(arrays) if meta.kind == registry.RETRIEVAL
                           else aggregate_classification(arrays))
                if npz:
                    write_npz(folder / "evals" / f"epoch_{epoch}" / f"{meta.file_stem}.npz", arrays)
                write_event(folder, run.uid, "eval_state", att, epoch=epoch, task=task, suite_version="1",
                            state="done", metrics={k: (None if np.isnan(v) else v) for k, v in metrics.items()},
                            main_metric=meta.main_metric, path=str(root / "eval"))
        outcome = "failed" if run.label in failed else ("completed" if last == EPOCHS else None)
        if outcome:
            write_event(folder, run.uid, "attempt_ended", att, outcome=outcome, reason="boom" if outcome == "failed"
                        else None, step=last * 10, epoch=last)
    ingest(s.ledger, s.name)
    return s


def report(s: app.Session, **kw) -> dict:
    opts = Options(main_task=kw.pop("main_task", "imagenet1k"), **kw)
    return build_report(s.ledger, s.ref.study, s.plan, s.suite_version, opts)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    s = make_study(tmp_path_factory.mktemp("done"), skip_tasks=("cifar10",))
    yield s
    s.close()


@pytest.fixture(scope="module")
def full_report(done):
    return report(done, full=True)


# ---------------------------------------------------------------------------------------------------- analysis

def test_emergence_epoch_of_a_known_effect(done):
    rep = report(done)
    g = rep["groups"][0]
    e = g["main"]["emergence"]["perceptual-random"]
    assert e["emergence_epoch"] == ONSET and e["crossover_epoch"] == ONSET
    assert e["epochs_used"] == list(range(1, EPOCHS + 1)) and not e["provisional"]
    rows = {r["epoch"]: r for r in g["main"]["rows"]}
    assert rows[ONSET - 1]["deltas"]["perceptual-random"]["delta"] == 0.0
    d = rows[ONSET]["deltas"]["perceptual-random"]
    assert d["lo"] > 0 and d["method"] == "examples+seeds" and d["n_a"] == d["n_b"] == 3 and d["df"] == 2
    assert rep["method"]["fallbacks"] == {}
    # its distribution over draws of the whole curve: the onset inside both intervals, sustained from it on
    dist = e["distribution"]
    for name in ("emergence", "crossover"):
        assert dist[name]["lo"] <= ONSET <= (dist[name]["hi"] or EPOCHS + 1), name
    assert dist["sustained_from"][ONSET] > 0.95 and dist["sustained_from"][1] == 0.0  # delta is exactly 0 at 1
    # the answer first
    answer = rep["answer"][0]["text"]
    assert answer.startswith("ImageNet 1k acc1: perceptual − random = +") and f"at epoch {EPOCHS}" in answer
    assert f"sustained from epoch {ONSET} [" in answer and answer.endswith("(3 seeds).")
    # the terminal says it
    text = "\n".join(str(getattr(r, "plain", "")) for r in report_renderables(rep))
    assert f"emergence epoch (perceptual − random): {ONSET}" in text


def test_last_epoch_table_wins_holm_and_retrieval(done):
    rep = report(done, full=True)  # the paper's view (every metric) is the full report's
    assert report(done)["groups"][0]["last"]["perceptual-random"]["metrics"] == []  # the terminal's: main metrics
    last = rep["groups"][0]["last"]["perceptual-random"]
    assert last["epoch"] == EPOCHS and last["final"]
    by = {r["task"]: r for r in last["tasks"]}
    assert by["cifar10"]["interval"] is None  # no data: listed, not dropped
    for task in ("imagenet1k", "vtab/pets", "retrieval/flickr_1k_test_image_text_retrieval"):
        assert by[task]["interval"]["delta"] > 0 and by[task]["outcome"] == "win", task
    assert by["vtab/pets"]["interval"]["method"] == "examples+seeds"
    tally = last["tally"]
    assert (tally["classification"]["wins"], tally["classification"]["with_results"],
            tally["classification"]["planned"]) == (2, 2, 3)
    assert (tally["retrieval"]["wins"], tally["retrieval"]["planned"]) == (1, 1)
    assert tally["all"]["sign_p"] == pytest.approx(0.25)  # 3 wins, 0 losses
    # one interval per (task, epoch) in the whole report: the main table's last row is the last-epoch table's
    main_last = rep["groups"][0]["main"]["rows"][-1]["deltas"]["perceptual-random"]
    assert main_last == by["imagenet1k"]["interval"] | {"n_a": main_last["n_a"], "n_b": main_last["n_b"]}
    # the paper's view: every classification metric, its win count per metric type, the DataComp-style average
    assert {(m["task"], m["metric"]) for m in last["metrics"] if m["interval"]} == {
        (t, m) for t in ("imagenet1k", "vtab/pets") for m in ("acc1", "acc5", "mean_per_class_recall")}
    pt = last["paper_tally"]
    assert list(pt) == ["top-1", "top-5", "per-class recall", "R@1", "R@5", "R@10", "mean R@1", "overall"]
    assert pt["overall"] == {"wins": 13, "losses": 0, "ties": 0, "with_results": 13}  # 2 x 3 + 6 + 1
    avg = last["average"]
    assert avg["tasks"] == ["imagenet1k", "vtab/pets", "retrieval/flickr_1k_test_image_text_retrieval"]
    mains = [by[t]["interval"] for t in avg["tasks"]]
    iv = avg["interval"]
    assert iv["delta"] == pytest.approx(np.mean([m["delta"] for m in mains]))
    # seed part: the spread of each seed's delta averaged over the tasks; test-set part: the tasks' parts over T^2
    # (independent test sets; here the seeds share no examples' noise, so it is about 0 and clamped)
    per_seed = []
    for sd in (0, 1, 2):
        d = []
        for task in avg["tasks"]:
            agg = aggregate_retrieval if registry.TASKS[task].kind == registry.RETRIEVAL else aggregate_classification
            metric = registry.TASKS[task].main_metric
            d.append(agg(per_example(task, "perceptual", sd, EPOCHS))[metric]
                     - agg(per_example(task, "random", sd, EPOCHS))[metric])
        per_seed.append(np.mean(d))
    assert iv["se_seeds"] == pytest.approx(np.std(per_seed, ddof=1) / np.sqrt(3), rel=1e-6)
    assert iv["se_examples"] ** 2 <= sum(m["se_examples"] ** 2 for m in mains) / 9 + 1e-15
    assert iv["lo"] > 0 and iv["method"] == "examples+seeds" and iv["df"] == 2
    rr = [(r["direction"], r["k"]) for r in last["retrieval"]]
    assert sorted(rr) == sorted((d, k) for d in ("text→image", "image→text") for k in (1, 5, 10))
    assert all(r["interval"] is not None for r in last["retrieval"])
    cov = rep["coverage"]
    assert "cifar10" in cov["datasets_missing"] and "cifar10" in cov["tasks_without_results"]
    assert not cov["still_running"]


def test_main_task_is_configurable(done):
    rep = report(done, main_task="vtab/pets")
    assert rep["main_task"] == "vtab/pets" and rep["main_metric"] == "mean_per_class_recall"
    assert rep["groups"][0]["main"]["emergence"]["perceptual-random"]["emergence_epoch"] == ONSET


def test_seed_level_fallback_without_per_example_files(tmp_path):
    s = make_study(tmp_path, seeds=(0, 1, 2), npz=False)
    try:
        rep = report(s)
    finally:
        s.close()
    assert set(rep["method"]["intervals"]) == {"seeds"}
    assert rep["method"]["fallbacks"]["per-example files missing"] > 0
    row = rep["groups"][0]["main"]["rows"][-1]["deltas"]["perceptual-random"]
    vals = {arm: [aggregate_classification(per_example("imagenet1k", arm, sd, EPOCHS))["acc1"] for sd in (0, 1, 2)]
            for arm in ("perceptual", "random")}
    ref = interval(vals["perceptual"], vals["random"], seeds_a=[0, 1, 2], seeds_b=[0, 1, 2])
    assert (row["delta"], row["lo"], row["hi"], row["p"]) == pytest.approx((ref.delta, ref.lo, ref.hi, ref.p_value))
    md = to_markdown(rep)
    assert "Seed-level intervals" in md and "the test set's noise is NOT in these intervals" in md


def test_intervals_for_many_keys_equal_one_call_per_key():
    rng = np.random.default_rng(3)
    for sa, sb in (([0, 1, 2], [2, 0, 1]), ([0, 1], [0, 1, 2]), ([4], [4]), ([0], [5, 6])):
        a, b = rng.random((4, len(sa))), rng.random((4, len(sb)))
        ivs = intervals(a, b, seeds_a=sa, seeds_b=sb)
        for k in range(4):
            ref = interval(a[k], b[k], seeds_a=sa, seeds_b=sb)
            got = ivs[k]
            for f in ("mean_a", "lo_a", "hi_a", "mean_b", "delta", "lo", "hi", "p_value"):
                x, y = getattr(ref, f), getattr(got, f)
                assert (np.isnan(x) and np.isnan(y)) or x == pytest.approx(y, abs=1e-12), (f, sa, sb)
            assert ref.method == got.method


def test_one_seed_per_arm_draws_no_verdict_unless_told_and_says_so_everywhere(tmp_path):
    s = make_study(tmp_path, seeds=(0,))
    try:
        rep, assumed = report(s, full=True), report(s, full=True, assume_no_seed_noise=True)
    finally:
        s.close()
    g, ga = rep["groups"][0], assumed["groups"][0]
    d = g["main"]["rows"][-1]["deltas"]["perceptual-random"]
    assert d["method"] == "examples" and d["lo"] > 0 and not d["decides"]  # clearly above 0, yet no verdict
    e = g["main"]["emergence"]["perceptual-random"]
    assert e["emergence_epoch"] is None and not e["decides"] and e["crossover_epoch"] == ONSET
    last = g["last"]["perceptual-random"]
    assert {r["outcome"] for r in last["tasks"] if r["interval"]} == {"no verdict"}
    assert last["tally"]["all"]["significant"]["win"] == 0
    assert "(1 seed per arm: training randomness is not in this interval, so no verdict)" in rep["answer"][0]["text"]
    md = to_markdown(rep)
    warning = "1 seed per arm: training randomness is NOT in these intervals, so no verdict is drawn"
    assert md.count(warning) >= 3  # the main table, the last-epoch table, retrieval recall
    assert "emergence epoch (perceptual − random): no verdict" in md
    # asked to assume no seed noise: verdicts, labelled as such
    assert ga["main"]["emergence"]["perceptual-random"]["emergence_epoch"] == ONSET
    assert {r["outcome"] for r in ga["last"]["perceptual-random"]["tasks"] if r["interval"]} == {"win"}
    assert "(assumed none: --assume-no-seed-noise)" in to_markdown(assumed)


def test_still_running_study_marks_what_is_missing(tmp_path):
    s = make_study(tmp_path, reached={"perceptual-tiny-e6-s1": 5, "random-tiny-e6-s1": 0})
    try:
        rep = report(s)
        md = to_markdown(rep)
    finally:
        s.close()
    g = rep["groups"][0]
    cov = rep["coverage"]
    assert cov["still_running"]
    assert [r["label"] for r in cov["runs_without_main_results_list"]] == ["random-tiny-e6-s1"]
    rows = {r["epoch"]: r for r in g["main"]["rows"]}
    # random s1 never ran, so it does not block completeness; perceptual s1 stops at epoch 5
    assert rows[5]["complete"]["perceptual-random"] and not rows[6]["complete"]["perceptual-random"]
    assert rows[6]["arms"]["perceptual"]["n"] == 2 and rows[6]["arms"]["random"]["n"] == 2
    e = g["main"]["emergence"]["perceptual-random"]
    assert e["epochs_used"] == [1, 2, 3, 4, 5] and e["emergence_epoch"] == ONSET and e["provisional"]
    assert g["last_epoch"] == 5 and not g["last"]["perceptual-random"]["final"]
    assert cov["groups_short_of_budget"] == [{"group": "tiny/e6", "last_epoch": 5, "budget": EPOCHS}]
    assert "still running" in md and "missing cells" in md and "| 6\\* |" in md


def test_study_with_a_shuffled_arm_compares_it_too(tmp_path):
    s = make_study(tmp_path, seeds=(0,), inits=("random", "perceptual", "shuffled"))
    try:
        rep = report(s, assume_no_seed_noise=True)  # one seed per arm: judged from test-set noise, as asked
    finally:
        s.close()
    assert rep["comparisons"] == ["perceptual-random", "shuffled-random", "perceptual-shuffled"]
    g = rep["groups"][0]
    assert set(g["last"]) == {"perceptual-random", "shuffled-random", "perceptual-shuffled"}
    # shuffled draws the random arm's outcomes here: both comparisons of perceptual find the same effect
    assert g["main"]["emergence"]["perceptual-shuffled"]["emergence_epoch"] == ONSET


def test_verdicts_hold_their_error_rate_in_two_families(tmp_path):
    """Every arm against random is one family, perceptual against each control and posthoc the other: Holm runs
    over each family's (comparison, benchmark) pairs together. Only perceptual carries an effect here; pixel and
    posthoc draw the random arm's outcomes (posthoc at its source epoch, the last)."""
    import copy

    from pisweep.report.doc_matrix import matrix
    from pisweep.report.lastepoch import adjust_family

    s = make_study(tmp_path, inits=("random", "perceptual", "pixel", "posthoc"))
    try:
        rep = report(s)
        text = to_markdown(rep)
    finally:
        s.close()
    assert rep["comparisons"] == ["perceptual-random", "pixel-random", "posthoc-random", "perceptual-pixel",
                                  "perceptual-posthoc"]
    (g,) = rep["groups"]
    families = {"vs_random": ["perceptual-random", "pixel-random", "posthoc-random"],
                "vs_perceptual": ["perceptual-pixel", "perceptual-posthoc"]}
    for family, members in families.items():
        tests = sum(1 for k in members for r in g["last"][k]["tasks"] if r["interval"] and r["interval"]["decides"])
        assert tests == len(members) * len(TASKS)
        for k in members:
            last = g["last"][k]
            assert last["holm"] == {"family": family, "name": last["holm"]["name"], "comparisons": members,
                                    "tests": tests}
            alone = copy.deepcopy(last)
            adjust_family({k: alone}, last["alpha"], None)  # the same table adjusted on its own
            for r, r1 in zip(last["tasks"], alone["tasks"]):
                assert r["p_holm"] >= r1["p_holm"] >= r["interval"]["p"]  # a larger family adjusts more
                assert r["outcome"] == ("win" if r["p_holm"] < 0.05 and r["interval"]["delta"] > 0 else
                                        "loss" if r["p_holm"] < 0.05 else "tie")
    # the known truth: perceptual wins everywhere against random, the controls and posthoc; nothing else does
    for k in ("perceptual-random", "perceptual-pixel", "perceptual-posthoc"):
        assert {r["outcome"] for r in g["last"][k]["tasks"]} == {"win"}, k
    for k in ("pixel-random", "posthoc-random"):
        assert {r["outcome"] for r in g["last"][k]["tasks"]} == {"tie"}, k
        assert all(r["interval"]["delta"] == 0 for r in g["last"][k]["tasks"])
    # posthoc enters at its source epoch only, without an emergence curve
    assert g["main"]["emergence"]["posthoc-random"] == {"epochs_used": [EPOCHS], "at_source_epochs": True}
    assert g["main"]["emergence"]["perceptual-pixel"]["emergence_epoch"] == ONSET
    assert g["last"]["posthoc-random"]["epoch"] == EPOCHS
    # the arm matrix: every arm against random on every benchmark
    m = matrix(g)
    assert m["arms"] == ["perceptual", "pixel", "posthoc"] and len(m["cells"]) == 3 * len(TASKS)
    assert "every arm against random" in text and "Arm × benchmark" in text


def test_the_dose_axis_shows_delta_and_emergence_against_the_fraction(tmp_path):
    s = make_study(tmp_path, inits=("random", "perceptual"), fractions=(0.25, 1.0))
    try:
        rep = report(s)
        text = to_markdown(rep)
    finally:
        s.close()
    assert rep["comparisons"] == ["perceptual-random", "perceptual@0.25-random"]
    (g,) = rep["groups"]
    assert [(r["method"], r["fraction"]) for r in g["dose"]] == [("perceptual", 0.25), ("perceptual", 1.0)]
    for r in g["dose"]:  # both doses carry the effect here
        assert r["emergence_epoch"] == ONSET and r["delta"] > 0 and r["epoch"] == EPOCHS
    assert "How much NIGHTS is needed" in text


def test_cost_from_attempts_and_lost_hours(tmp_path):
    s = make_study(tmp_path, seeds=(0,))
    run = next(r for r in s.plan.runs if r.init == "random")
    t0 = 1_000_000.0
    events = [  # attempt 1 fails an hour after its last checkpoint; attempt 2 is preempted (saved); 3 completes
        ("attempt_started", {"job_id": "9", "restart": 1}, t0, {"executor": "slurm", "host": "n", "world_size": 4}),
        ("checkpoint", {"job_id": "9", "restart": 1}, t0 + 3600, {"epoch": 1, "kind": "resume", "path": "r",
                                                                   "step": 5}),
        ("attempt_ended", {"job_id": "9", "restart": 1}, t0 + 7200, {"outcome": "failed", "reason": "oom"}),
        ("attempt_started", {"job_id": "9", "restart": 2}, t0 + 8000, {"executor": "slurm", "host": "n",
                                                                        "world_size": 4}),
        ("attempt_ended", {"job_id": "9", "restart": 2}, t0 + 8000 + 1800, {"outcome": "preempted"}),
        ("attempt_started", {"job_id": "9", "restart": 3}, t0 + 10000, {"executor": "slurm", "host": "n",
                                                                         "world_size": 4}),
        ("attempt_ended", {"job_id": "9", "restart": 3}, t0 + 10000 + 3600, {"outcome": "completed"}),
    ]
    with s.ledger.engine.begin() as conn:
        for kind, att, when, data in events:
            apply_event(conn, run.uid, {"kind": kind, "attempt": att, "time": when, "data": data})
    try:
        rep = report(s)
    finally:
        s.close()
    row = next(r for r in rep["cost"]["runs"] if r["label"] == run.label)
    # 7200 + 1800 + 3600 s on 4 ranks, plus the fixture's own (local, 1 rank) attempt
    assert row["attempts"] == 4 and row["preemptions"] == 1 and row["unsaved_restarts"] == 1
    assert row["rank_h"] == pytest.approx(4 * (7200 + 1800 + 3600) / 3600, abs=0.01)
    assert row["lost_rank_h"] == pytest.approx(4 * 3600 / 3600)  # after the checkpoint at t0 + 3600
    assert rep["cost"]["arms"]["random"]["lost_h"] == pytest.approx(4.0)
    assert rep["cost"]["unit"] == "CPU rank-hours"


# ---------------------------------------------------------------------------------------------------- outputs

class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in ("img", "meta"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open[-5:])
        self.open.pop()


def test_html_parses_and_embeds_its_plots(full_report):
    page = to_html(full_report)
    p = _Collector()
    p.feed(page)
    p.close()
    assert not p.open  # every element closed, in order
    assert p.tags["table"] >= 3 and p.tags["h2"] >= 3
    # the answer (delta per epoch) first, then small multiples, one delta heatmap per comparison, emergence vs scale
    assert len(p.images) == 4
    assert page.index("<h2>The answer</h2>") < page.index('alt="delta per epoch of the main benchmark"') \
        < page.index('alt="small multiples')
    for src in p.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    assert "emergence epoch" in page and "Coverage" in page and "Cost" in page


def test_full_report_has_every_task_at_every_epoch(full_report):
    g = full_report["groups"][0]
    assert set(g["series"]) == set(TASKS)
    assert g["series"]["cifar10"]["rows"] == []
    pets = g["series"]["vtab/pets"]
    assert [r["epoch"] for r in pets["rows"]] == list(range(1, EPOCHS + 1))
    assert pets["emergence"]["perceptual-random"]["emergence_epoch"] == ONSET
    points = [p for p in full_report["emergence_by_scale"] if p["task"] == "imagenet1k"]
    assert points == [{"group": "tiny/e6", "scale": "tiny", "samples": 1000, "epochs": EPOCHS,
                       "comparison": "perceptual-random", "task": "imagenet1k", "main": True,
                       "emergence_epoch": ONSET, "crossover_epoch": ONSET, "through_epoch": EPOCHS,
                       "provisional": False}]


def _strict(text: str) -> dict:
    def bad(const):
        raise AssertionError(f"{const} in JSON")
    return json.loads(text, parse_constant=bad)


def test_cli_json_md_csv_html(done, tmp_path, capsys):
    spec, ledger = str(done.ref.spec_path), str(done.ledger.path)
    capsys.readouterr()
    args = ["report", spec, "--ledger", ledger, "--plot", str(tmp_path / "p.png")]
    assert main(args + ["--json", "--md", str(tmp_path / "r.md"), "--csv", str(tmp_path / "r.csv"),
                        "--html", str(tmp_path / "r.html")]) == 0
    rep = _strict(capsys.readouterr().out)
    for key in ("study", "main_task", "comparisons", "groups", "coverage", "cost", "curves", "settings",
                "definitions", "method", "emergence_by_scale", "plot"):
        assert key in rep, key
    g = rep["groups"][0]
    assert {"main", "last", "series", "last_epoch", "arms"} <= set(g)
    assert rep["settings"] == {"level": 0.95, "alpha": 0.05, "full": True, "assume_no_seed_noise": False,
                               "resamples": 2000, "seed": 0}
    curve = next(c for c in rep["curves"] if c["task"] == "imagenet1k")
    assert curve["arms"] == ["random", "perceptual"] and [r["epoch"] for r in curve["rows"]] == list(range(1, 7))
    assert curve["rows"][-1]["delta_perceptual"] == pytest.approx(curve["rows"][-1]["perceptual"]
                                                                   - curve["rows"][-1]["random"])
    assert Path(rep["plot"]).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "r.md").read_text()
    assert "| epoch | random | perceptual | Δ perceptual−random | p | runs |" in md
    assert f"emergence epoch (perceptual − random): {ONSET}" in md and "## Coverage" in md and "## Cost" in md
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "study,run,label,init,scale,epochs,seed,epoch,task,metric,suite_version,value"
    with done.ledger.engine.connect() as conn:
        n = len(conn.execute(select(t.metrics.c.job_uid).join(t.jobs, t.jobs.c.uid == t.metrics.c.job_uid)
                             .where(t.jobs.c.kind == "train")).all())
    assert len(lines) == n + 1 and n == 6 * EPOCHS * (1 + 3 + 3 + 7)  # train + 2 classification + retrieval
    assert "<img" in (tmp_path / "r.html").read_text()
    # terminal form, and a main task the study does not have
    assert main(args) == 0
    assert "every benchmark" in capsys.readouterr().out
    assert main(args + ["--main-task", "mnist"]) == 2
    assert "not one of the study's tasks" in capsys.readouterr().err


def test_json_has_no_nan_even_with_one_seed(tmp_path):
    s = make_study(tmp_path, seeds=(0,), npz=False)  # seed-level with one seed: undefined intervals
    try:
        rep = report(s)
    finally:
        s.close()
    data = _strict(to_json(rep))
    d = data["groups"][0]["main"]["rows"][-1]["deltas"]["perceptual-random"]
    assert d["lo"] is None and d["delta"] > 0


# ------------------------------------------------------------------------------------------------------ status

def test_status_summarizes_many_cells_and_lists_the_relevant_ones(tmp_path):
    s = make_study(tmp_path, seeds=(0, 1, 2), reached={"random-tiny-e6-s2": 2, "perceptual-tiny-e6-s0": 0},
                   failed=("random-tiny-e6-s2",))
    try:
        small = status(s, limit=None)
        data = status(s, limit=3).to_json()
        only = status(s, state="failed", limit=3).to_json()
    finally:
        s.close()
    assert len(small.cells) == 9 and small.hidden == 0  # 3 inits (no events: planned) + 6 runs
    assert data["cells_total"] == 9 and data["cells_hidden"] == 6 and len(data["cells"]) == 3
    assert data["cells"][0]["label"] == "random-tiny-e6-s2" and data["cells"][0]["state"] == "failed"
    assert data["summary"] == {"completed": 4, "failed": 1, "planned": 4}
    groups = {(g["kind"], g["init"]): g for g in data["groups"]}
    assert groups[("train", "random")]["states"] == {"completed": 2, "failed": 1}
    assert groups[("train", "random")]["epoch_min"] == 2 and groups[("train", "random")]["epoch_max"] == EPOCHS
    assert [c["label"] for c in only["cells"]] == ["random-tiny-e6-s2"] and only["cells_matching"] == 1
    cell = data["cells"][0]
    assert cell["main_metric"]["epoch"] == 2 and cell["evals"]["done"] == 2 * 4


def test_reconcile_queues_due_evals_incrementally_like_next_work(tmp_path):
    s = make_study(tmp_path, seeds=(0,))
    try:
        run = s.plan.runs[0]
        folder = s.layout.run_dir(run.uid)
        app.reconcile(s)  # records how far it looked
        # a weights file of epoch 7 is not an evaluated epoch; one with no evals yet at a new run's epoch is
        other = s.plan.runs[1]
        with s.ledger.engine.begin() as conn:
            conn.execute(t.evals.delete().where(t.evals.c.job_uid == other.uid, t.evals.c.epoch == EPOCHS))
        work = app.reconcile(s)
        assert work.evals == {}  # its weights row is older than the mark: not looked at again
        write_event(folder, run.uid, "checkpoint", {"job_id": "j2", "restart": 0}, epoch=EPOCHS, kind="weights",
                    path="w", sha256="y", bytes=1, step=1)  # re-recorded: same row, not new
        work = app.reconcile(s)
        assert work.evals == {}
        # a plan change (a new suite version) looks at every weights file again and finds the gap
        s.suite_version = "2"
        work = app.reconcile(s)
        full = next_work(s.plan, snapshot(s.ledger, s.name, "2"), s.ref.study.executor.max_failures)
        assert work.evals == full.evals and len(work.evals[run.uid]) == EPOCHS * len(TASKS)
        with s.ledger.engine.connect() as conn:
            queued = conn.execute(select(t.evals).where(t.evals.c.suite_version == "2")).all()
        assert len(queued) == 2 * EPOCHS * len(TASKS) and {r.state for r in queued} == {"queued"}
    finally:
        s.close()


@pytest.mark.parametrize("inits,reached", [(("random", "perceptual"), 0), (("random",), None)])
def test_report_of_a_study_without_results_or_without_a_comparison(tmp_path, inits, reached):
    runs = [f"{i}-tiny-e6-s0" for i in inits]
    s = make_study(tmp_path, seeds=(0,), inits=inits, reached={r: reached for r in runs} if reached == 0 else None)
    try:
        rep = report(s)
        md = to_markdown(rep)
        page = to_html(report(s, full=True))
    finally:
        s.close()
    assert rep["coverage"]["still_running"] == (reached == 0)
    if reached == 0:
        assert rep["groups"][0]["last_epoch"] is None and "no result of imagenet1k yet" in md
        assert rep["coverage"]["runs_without_main_results"] == 2
    else:
        assert rep["comparisons"] == [] and rep["groups"][0]["main"]["rows"][0]["arms"]["random"]["n"] == 1
    assert "<html" in page
