"""The statistics of a pisweep report, in one import: paired bootstrap intervals, emergence, Holm, sign test.

The code lives in pisweep/report/bootstrap.py (intervals from sufficient statistics) and
pisweep/report/emergence.py (epochs and tallies across tasks); definitions are in docs/statistics.md.
"""
from __future__ import annotations

from pisweep.report.bootstrap import (
    METRICS,
    Interval,
    JointCounts,
    PairedCounts,
    Replicates,
    StatsError,
    bootstrap_delta,
    bootstrap_from_metrics,
    bootstrap_replicates,
    joint_counts,
    paired_counts,
    summarize,
)
from pisweep.report.emergence import (
    Outcome,
    Tally,
    crossover_epoch,
    emergence_epoch,
    holm,
    resamples_for_holm,
    sign_test,
    tally,
    win_loss_tie,
)

__all__ = ["METRICS", "Interval", "JointCounts", "Outcome", "PairedCounts", "Replicates", "StatsError", "Tally",
           "bootstrap_delta", "bootstrap_from_metrics", "bootstrap_replicates", "crossover_epoch",
           "emergence_epoch", "holm", "joint_counts", "paired_counts", "resamples_for_holm", "sign_test", "summarize",
           "tally", "win_loss_tie"]
