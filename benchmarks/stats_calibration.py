"""Calibration of the report's intervals: simulated studies with a known delta through the report's own code.

    .venv/bin/python benchmarks/stats_calibration.py [--reps 1000] [--kinds classification,...] [--seed 0]

For every cell (task kind x seeds per arm x seed noise), ``reps`` simulated (task, epoch)s with a true delta of 0
and ``reps`` with a true delta of 2 seed-SDs (2 points without seed noise) are drawn (pisweep/report/simulate.py:
fresh test set, fresh paired seeds, per-example arrays in the evaluator's format) and passed to
``interval_from_examples``, the function the report's Estimator calls for every interval. One line per cell:

    calibration: kind=<k> seeds=<S> seed_sd=<points> coverage=<c> fpr=<f> width_ratio=<w> power=<p> n=<reps>

- coverage: share of all 2 x reps intervals that hold the true delta;
- fpr: share of the delta-0 draws with a verdict (win or loss: the interval excludes 0). With one seed per arm the
  report draws no verdict; the figure is what ``--assume-no-seed-noise`` would claim;
- width_ratio: mean width over that of the oracle interval, +-1.96 x the true sd of the estimate (measured over
  the delta-0 draws);
- power: share of the non-zero draws judged a win.

Requirements (issue 11), checked at the end (exit code 1 when one fails): every cell with 2+ seeds covers at
least 0.93 with fpr at most 0.06; at 5 seeds width_ratio is at most 1.5.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from pisweep.report.inference import interval_from_examples
from pisweep.report.simulate import METRIC, draw

SEEDS = (1, 2, 3, 5)
SEED_SD = (0.0, 0.01, 0.03)  # none, moderate, large (metric units; printed in points)
Z = 1.959963984540054


def cell(rng: np.random.Generator, kind: str, seeds: int, seed_sd: float, reps: int) -> dict[str, float]:
    effect = 2 * seed_sd if seed_sd > 0 else 0.02
    ids = list(range(seeds))
    covered, rejected, wins, widths, errors = 0, 0, 0, [], []
    for delta in (0.0, effect):
        for _ in range(reps):
            d = draw(rng, kind, seeds, delta, seed_sd)
            iv = interval_from_examples(d.runs_a, d.runs_b, d.metric, seeds_a=ids, seeds_b=ids,
                                        assume_no_seed_noise=seeds == 1)
            covered += iv.lo <= d.truth <= iv.hi
            if delta == 0.0:
                rejected += iv.lo > 0 or iv.hi < 0
                widths.append(iv.hi - iv.lo)
                errors.append(iv.delta - d.truth)
            else:
                wins += iv.lo > 0
    oracle = 2 * Z * float(np.std(errors))
    return {"coverage": covered / (2 * reps), "fpr": rejected / reps, "width_ratio": float(np.mean(widths)) / oracle,
            "power": wins / reps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1000, help="draws per cell and per true delta (default 1000)")
    ap.add_argument("--kinds", default=",".join(METRIC), help=f"comma-separated, of {', '.join(METRIC)}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    rng = np.random.default_rng(args.seed)
    print(f"stats_calibration: {args.reps} draws per cell and delta, generator seed {args.seed}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus", flush=True)
    start, failures = time.perf_counter(), []
    for kind in kinds:
        for seeds in SEEDS:
            for sd in SEED_SD:
                r = cell(rng, kind, seeds, sd, args.reps)
                print(f"calibration: kind={kind} seeds={seeds} seed_sd={sd * 100:.1f} coverage={r['coverage']:.3f} "
                      f"fpr={r['fpr']:.3f} width_ratio={r['width_ratio']:.2f} power={r['power']:.3f} "
                      f"n={args.reps}", flush=True)
                if seeds >= 2 and (r["coverage"] < 0.93 or r["fpr"] > 0.06):
                    failures.append(f"{kind} seeds={seeds} seed_sd={sd * 100:.1f}: coverage {r['coverage']:.3f}, "
                                    f"fpr {r['fpr']:.3f}")
                if seeds == 5 and r["width_ratio"] > 1.5:
                    failures.append(f"{kind} seeds=5 seed_sd={sd * 100:.1f}: width_ratio {r['width_ratio']:.2f}")
    print(f"stats_calibration: {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.2f}; "
          + ("every requirement holds" if not failures else "FAILED: " + "; ".join(failures)), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
