"""Paired bootstrap, emergence/crossover epochs, Holm, sign test (pisweep/report/stats.py)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from pisweep.report import bootstrap as bootstrap_module
from pisweep.report.stats import (
    Interval,
    StatsError,
    bootstrap_delta,
    bootstrap_from_metrics,
    bootstrap_replicates,
    crossover_epoch,
    emergence_epoch,
    holm,
    joint_counts,
    paired_counts,
    resamples_for_holm,
    sign_test,
    tally,
    win_loss_tie,
)

# ------------------------------------------------------------------------------------------------ helpers


def simulate(rng: np.random.Generator, n: int, seeds: int, delta: float, tau: float = 0.0,
             spread: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Correctness (seeds, n) of two arms whose population delta is exactly `delta`.

    Example i is right with probability pi_i +/- delta_i / 2 (+ a seed offset); delta_i averages to delta
    and is shared by all seeds; both arms of seed s share its uniforms (paired, like a shared text init).
    """
    pi = rng.uniform(0.2, 0.8, n)
    d = delta + rng.uniform(-spread, spread, n)
    shared = rng.uniform(-tau, tau, seeds)
    off_a, off_b = shared + rng.uniform(-tau, tau, seeds), shared + rng.uniform(-tau, tau, seeds)
    u = rng.random((seeds, n))
    return u < pi + d / 2 + off_a[:, None], u < pi - d / 2 + off_b[:, None]


def per_class_recall(x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mean over classes of per-class accuracy, per run; x is (runs, n)."""
    labels = np.unique(classes)
    return np.mean([x[:, classes == c].mean(axis=1) for c in labels], axis=0)


def naive_replicates(a: np.ndarray, b: np.ndarray, classes: np.ndarray, metric: str, resamples: int, seed: int,
                     nested: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-example reference: draw example indices (within class for per-class recall) and paired seeds.

    nested=True is the wrong scheme for crossed seeds x examples (fresh examples per seed), kept to show
    that the comparison can tell them apart.
    """
    rng = np.random.default_rng(seed)
    s, n = a.shape
    members = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    runs = np.concatenate([a, b]).astype(np.float64)
    scale = math.sqrt(s / (s - 1)) if s > 1 else 1.0

    def draw() -> np.ndarray:
        if metric == "mean_per_class_recall":
            return np.concatenate([rng.choice(m, size=len(m)) for m in members])
        return rng.integers(0, n, n)

    def score(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return per_class_recall(x[:, idx], classes[idx]) if metric == "mean_per_class_recall" else x[:, idx].mean(1)

    out_a, out_b = np.empty(resamples), np.empty(resamples)
    for r in range(resamples):
        if nested:
            per_run = np.array([score(runs[[k, s + k]], draw()) for k in range(s)]).T.reshape(-1)
        else:
            per_run = score(runs, draw())
        picks = np.bincount(rng.integers(0, s, s), minlength=s)
        for arm, m, out in ((0, per_run[:s], out_a), (1, per_run[s:], out_b)):
            out[r] = m.mean() + scale * ((picks * m).sum() / s - m.mean())
    return out_a, out_b


def interval(delta: float, lo: float, hi: float, p: float = 0.5, resamples: int = 2000) -> Interval:
    return Interval(mean_a=0.5 + delta, lo_a=0.0, hi_a=1.0, mean_b=0.5, lo_b=0.0, hi_b=1.0, delta=delta, lo=lo, hi=hi,
                    p_value=p, level=0.95, resamples=resamples, method="examples", n_seeds_a=1, n_seeds_b=1)


# ------------------------------------------------------------------------------------------ counts


def test_joint_counts_are_sufficient_for_every_run_and_pair():
    rng = np.random.default_rng(0)
    classes = rng.integers(3, 9, 500)
    a, b = rng.random((3, 500)) < 0.4, rng.random((2, 500)) < 0.6
    for metric, direct in (("acc1", lambda x: x.mean(1)),
                           ("mean_per_class_recall", lambda x: per_class_recall(x, classes))):
        jc = joint_counts(a, b, classes, metric)
        assert jc.n_examples == 500 and jc.cell_count.sum() == 500
        np.testing.assert_allclose(jc.seed_metrics(), direct(np.concatenate([a, b]).astype(float)))
    pc = paired_counts(a[1], b[0], classes)
    for k, c in enumerate(pc.classes):
        m = classes == c
        assert (pc.n11[k], pc.n10[k], pc.n01[k], pc.n00[k]) == (
            np.sum(a[1, m] & b[0, m]), np.sum(a[1, m] & ~b[0, m]), np.sum(~a[1, m] & b[0, m]),
            np.sum(~a[1, m] & ~b[0, m]))


def test_seed_ids_line_up_runs_and_decide_pairing():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 200)) < 0.5, rng.random((3, 200)) < 0.5
    jc = joint_counts(a, b, seeds_a=[2, 0, 1], seeds_b=[0, 1, 2])
    assert jc.paired and jc.seeds_a == (0, 1, 2)
    np.testing.assert_allclose(jc.seed_metrics()[:3], a[[1, 2, 0]].mean(1))
    assert bootstrap_delta(jc, resamples=50).method == "examples+paired-seeds"
    unpaired = joint_counts(a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 3])
    assert not unpaired.paired and bootstrap_delta(unpaired, resamples=50).method == "examples+seeds"
    assert not joint_counts(a, b).paired


@pytest.mark.parametrize("call, match", [
    (lambda: joint_counts([1, 0], [1, 0], metric="top5"), "unknown metric"),
    (lambda: joint_counts([1, 0], [1, 0], metric="mean_per_class_recall"), "needs the class"),
    (lambda: joint_counts([1, 0, 1], [1, 0]), "different example counts"),
    (lambda: joint_counts([1, 2], [1, 0]), "correctness"),
    (lambda: joint_counts([[1, 0]], [[1, 0]], seeds_a=[0, 0]), "seeds_a"),
    (lambda: bootstrap_delta(joint_counts([1, 0], [1, 0]), level=95), "level"),
    (lambda: bootstrap_delta(joint_counts([1, 0], [1, 0]), resamples=0), "resamples"),
])
def test_bad_inputs_raise_typed_errors(call, match):
    with pytest.raises(StatsError, match=match):
        call()


# ------------------------------------------------------------------------------------------ bootstrap


def test_sufficient_statistics_match_a_naive_per_example_bootstrap(monkeypatch):
    """Same data, same scheme: the pattern-count bootstrap and a per-example one agree in distribution."""
    rng = np.random.default_rng(2)
    n, seeds = 600, 5
    classes = np.repeat(np.arange(6), 100)
    helps = rng.random(n) < 0.25  # examples on which arm A is right in every seed: an effect shared by seeds
    base = rng.random(n) < 0.35
    a = (base | helps) ^ (rng.random((seeds, n)) < 0.05)
    b = base ^ (rng.random((seeds, n)) < 0.05)
    runs = dict(seeds_a=range(seeds), seeds_b=range(seeds))
    big = 4000
    for metric, costs in (("acc1", [10]), ("mean_per_class_recall", [0, 10 ** 9])):  # both exact samplers
        ref_a, ref_b = naive_replicates(a, b, classes, metric, big, seed=5)
        ref = ref_a - ref_b
        for cost in costs:
            monkeypatch.setattr(bootstrap_module, "_BINOMIAL_COST", cost)
            rep = bootstrap_replicates(joint_counts(a, b, classes, metric, **runs), resamples=big, seed=6)
            sd = ref.std()
            assert abs(rep.delta.std() / sd - 1) < 0.06, (metric, cost)
            assert abs(rep.a.std() / ref_a.std() - 1) < 0.06, (metric, cost)
            for q in (0.025, 0.5, 0.975):
                assert abs(np.quantile(rep.delta, q) - np.quantile(ref, q)) < 0.25 * sd, (metric, cost, q)
        nested_a, nested_b = naive_replicates(a, b, classes, metric, 1000, seed=7, nested=True)
        assert (nested_a - nested_b).std() < 0.85 * ref.std()  # the data tells crossed from nested resampling


def test_per_class_recall_resamples_within_class():
    """A right on all of class 0, B on all of class 1: each class keeps its size, so recall never moves."""
    classes = np.array([0] * 30 + [1] * 70)
    a, b = classes == 0, classes == 1
    recall = bootstrap_delta(joint_counts(a, b, classes, "mean_per_class_recall"))
    assert recall.delta == 0.0 and recall.lo == recall.hi == 0.0 and recall.p_value == 1.0
    acc = bootstrap_delta(joint_counts(a, b, classes, "acc1"))
    assert acc.delta == pytest.approx(-0.4) and acc.lo < -0.5 < -0.3 < acc.hi


def test_single_seed_interval_matches_the_paired_normal_width():
    rng = np.random.default_rng(3)
    a, b = simulate(rng, 4000, 1, 0.03)
    iv = bootstrap_delta(joint_counts(a[0], b[0]), resamples=2000, seed=1)
    d = a[0].astype(float) - b[0]
    se = d.std() / math.sqrt(len(d))
    assert iv.method == "examples" and iv.n_seeds_a == iv.n_seeds_b == 1
    assert iv.delta == pytest.approx(d.mean())
    assert iv.lo < iv.delta < iv.hi and iv.lo_a < iv.mean_a < iv.hi_a and iv.lo_b < iv.mean_b < iv.hi_b
    assert (iv.hi - iv.lo) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.08)


def test_fixed_seed_is_reproducible():
    rng = np.random.default_rng(4)
    jc = joint_counts(*simulate(rng, 500, 3, 0.02, tau=0.01), seeds_a=[0, 1, 2], seeds_b=[0, 1, 2])
    assert bootstrap_delta(jc, seed=3) == bootstrap_delta(jc, seed=3)
    assert bootstrap_delta(jc, seed=3).lo != bootstrap_delta(jc, seed=4).lo


def test_p_value_is_one_for_identical_arms_and_small_for_a_clear_gain():
    rng = np.random.default_rng(5)
    a, _ = simulate(rng, 1000, 3, 0.0)
    same = bootstrap_delta(joint_counts(a, a.copy(), seeds_a=[0, 1, 2], seeds_b=[0, 1, 2]))
    assert same.delta == same.lo == same.hi == 0.0 and same.p_value == 1.0
    clear = bootstrap_delta(joint_counts(*simulate(rng, 5000, 1, 0.2)), resamples=999)
    assert clear.p_value == pytest.approx(2 / 1000) and clear.lo > 0.1


@pytest.mark.parametrize("seeds, tau, metric, reps", [
    (1, 0.0, "acc1", 400),
    (3, 0.015, "acc1", 400),
    (1, 0.0, "mean_per_class_recall", 300),
])
def test_95_percent_intervals_cover_a_known_delta(seeds, tau, metric, reps):
    rng = np.random.default_rng(2024)
    classes = np.repeat(np.arange(10), 100)
    hits = 0
    for r in range(reps):
        a, b = simulate(rng, 1000, seeds, 0.03, tau=tau)
        jc = joint_counts(a, b, classes, metric, seeds_a=range(seeds), seeds_b=range(seeds))
        iv = bootstrap_delta(jc, seed=r)
        hits += iv.lo <= 0.03 <= iv.hi
    assert 0.92 <= hits / reps <= 0.98


def test_composite_metric_is_the_mean_of_its_parts():
    rng = np.random.default_rng(6)
    img = joint_counts(*simulate(rng, 800, 1, 0.05))  # e.g. image R@1 over text queries
    txt = joint_counts(*simulate(rng, 300, 1, 0.0))  # text R@1 over image queries
    iv = bootstrap_delta([img, txt], seed=0)
    assert iv.mean_a == pytest.approx((img.seed_metrics()[0] + txt.seed_metrics()[0]) / 2)
    assert iv.delta == pytest.approx((bootstrap_delta(img).delta + bootstrap_delta(txt).delta) / 2)
    assert iv.lo < iv.delta < iv.hi
    other = joint_counts(*simulate(rng, 300, 2, 0.0), seeds_a=[0, 1], seeds_b=[0, 1])
    with pytest.raises(StatsError, match="same runs"):
        bootstrap_delta([img, other])


def test_bootstrap_from_metrics_pairs_seeds_and_refuses_false_certainty():
    one = bootstrap_from_metrics([0.31], [0.30])
    assert one.delta == pytest.approx(0.01) and math.isnan(one.lo) and math.isnan(one.p_value)
    assert win_loss_tie(one) == "tie"
    a, b = [0.30, 0.35, 0.32], [0.29, 0.34, 0.31]  # seed s of A beats seed s of B by exactly 0.01
    paired = bootstrap_from_metrics(a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2])
    assert paired.method == "paired-seeds" and paired.lo == pytest.approx(0.01) == paired.hi
    unpaired = bootstrap_from_metrics(a, b)
    assert unpaired.lo < 0.0 < 0.01 < unpaired.hi


def test_seed_deviations_are_widened_to_an_unbiased_variance():
    """Plain resampling of S seeds shrinks the variance of their mean by (S-1)/S; the rescaling undoes it."""
    a, b = [0.0, 0.0, 0.3], [0.0, 0.0, 0.0]  # top 2.5% of A's draws: seed 2 picked three times (p = 1/27)
    plain = bootstrap_from_metrics(a, b, resamples=4000, rescale_seeds=False)
    assert plain.hi_a == pytest.approx(0.3)
    widened = bootstrap_from_metrics(a, b, resamples=4000)
    assert widened.hi_a == pytest.approx(0.1 + math.sqrt(3 / 2) * 0.2)
    assert widened.lo_b == widened.hi_b == 0.0


# ------------------------------------------------------------------------------------------ epochs


@pytest.mark.parametrize("same_outcomes", [True, False])
def test_identical_arms_give_no_emergence(same_outcomes):
    """Identical outcomes (delta exactly 0), or two arms drawn from one distribution (true delta 0)."""
    rng = np.random.default_rng(7)
    epochs, lows, means = list(range(1, 21)), [], []
    for epoch in epochs:
        a, b = simulate(rng, 2000, 3, 0.0, tau=0.005)
        b = a.copy() if same_outcomes else rng.permuted(b, axis=1)  # permuted: unpaired examples, same law
        iv = bootstrap_delta(joint_counts(a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2]), resamples=300, seed=epoch)
        lows.append(iv.lo)
        means.append(iv.delta)
    assert emergence_epoch(epochs, lows) is None
    if same_outcomes:
        assert crossover_epoch(epochs, means) is None and max(lows) == 0.0
    else:
        assert sum(lo > 0 for lo in lows) <= 2  # about 2.5% of epochs by chance


def test_delta_that_turns_positive_at_epoch_15_emerges_at_15():
    rng = np.random.default_rng(8)
    epochs = list(range(1, 33))
    lows, means = [], []
    for epoch in epochs:
        a, b = simulate(rng, 20000, 3, -0.03 if epoch < 15 else 0.04, tau=0.002)
        iv = bootstrap_delta(joint_counts(a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2]), resamples=300, seed=epoch)
        lows.append(iv.lo)
        means.append(iv.delta)
    assert emergence_epoch(epochs, lows) == 15 and crossover_epoch(epochs, means) == 15


@pytest.mark.parametrize("epochs, values, expected", [
    ([1, 2, 3, 4, 5], [-1, 1, -1, 1, 1], 4),
    ([1, 2, 3, 4, 5], [1, 1, 1, 1, -1], None),  # positive until the last epoch: not (yet)
    ([1, 2, 3], [1, 1, 1], 1),
    ([5, 1, 3], [1, -1, 1], 3),  # order of the input does not matter
    ([2, 4, 8], [1, float("nan"), 1], 8),  # NaN is not above zero
    ([2, 4], [0.0, 0.5], 4),  # zero is not above zero
    ([], [], None),
])
def test_emergence_and_crossover_definitions(epochs, values, expected):
    assert emergence_epoch(epochs, values) == expected == crossover_epoch(epochs, values)


def test_epoch_inputs_are_checked():
    with pytest.raises(StatsError, match="2 epochs but 1"):
        emergence_epoch([1, 2], [0.1])
    with pytest.raises(StatsError, match="distinct"):
        crossover_epoch([1, 1], [0.1, 0.2])


# ------------------------------------------------------------------------------------------ across tasks


def test_holm_against_a_hand_computed_example():
    # sorted: d .005*4 = .02, a .01*3 = .03, c .03*2 = .06, b .04*1 = .04 -> running max .06
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": float("nan")})
    assert adjusted["d"] == pytest.approx(0.02) and adjusted["a"] == pytest.approx(0.03)
    assert adjusted["c"] == pytest.approx(0.06) and adjusted["b"] == pytest.approx(0.06)
    assert math.isnan(adjusted["e"])
    assert holm({"x": 0.4, "y": 0.6}) == {"x": 0.8, "y": 0.8}
    assert holm({}) == {}


def test_resamples_for_holm_is_the_first_count_where_the_smallest_p_can_pass():
    assert resamples_for_holm(31) == 1240
    assert 31 * 2 / (1240 + 1) < 0.05 <= 31 * 2 / (1239 + 1)
    assert resamples_for_holm(29, alpha=0.01) == 5800 and resamples_for_holm(1) == 40


def test_sign_test_against_hand_values():
    # 23 wins, 6 losses: 2 * sum_{k<=6} C(29, k) / 2^29 = 2 * 621616 / 536870912
    assert sign_test(23, 6) == pytest.approx(38851 / 16777216, rel=1e-12)
    assert sign_test(6, 23) == sign_test(23, 6)
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(2, 0) == 0.5
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0
    with pytest.raises(StatsError):
        sign_test(-1, 3)


def test_win_loss_tie_by_interval_or_adjusted_p():
    assert win_loss_tie(interval(0.02, 0.001, 0.04)) == "win"
    assert win_loss_tie(interval(-0.02, -0.04, -0.001)) == "loss"
    assert win_loss_tie(interval(0.02, -0.001, 0.04)) == "tie"
    assert win_loss_tie(interval(0.02, 0.001, 0.04), p_adjusted=0.2) == "tie"
    assert win_loss_tie(interval(-0.02, -0.04, 0.01), p_adjusted=0.01) == "loss"


def test_tally_counts_wins_and_adjusts_across_tasks():
    tasks = {f"t{i}": interval(0.01, -0.01, 0.03, p=0.2) for i in range(22)}
    tasks["big"] = interval(0.05, 0.04, 0.06, p=0.001)
    tasks.update({f"l{i}": interval(-0.01, -0.03, 0.01, p=0.3) for i in range(6)})
    result = tally(tasks)
    assert (result.wins, result.losses, result.ties) == (23, 6, 0)
    assert result.sign_p == pytest.approx(sign_test(23, 6))
    assert result.p_adjusted["big"] == pytest.approx(0.029)
    assert result.outcome["big"] == "win" and result.significant == {"win": 1, "loss": 0, "tie": 28}
    assert result.holm_attainable
    assert not tally({**tasks, "big": dataclasses.replace(tasks["big"], resamples=1000)}).holm_attainable
    assert tally({"x": dataclasses.replace(interval(0.0, -0.1, 0.1), delta=0.0)}).ties == 1
