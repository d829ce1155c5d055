"""The statistics of a pisweep report, in one import: intervals over seeds and test set, emergence, Holm, sign test.

The code lives in pisweep/report/influence.py (each run's metric over redraws of the test set),
pisweep/report/inference.py (the interval of a delta, and the delta curve across epochs) and
pisweep/report/emergence.py (epochs, their distribution, and tallies across tasks); definitions and the measured
calibration are in docs/statistics.md.
"""
from __future__ import annotations

from pisweep.report.emergence import (
    Outcome,
    Tally,
    crossover_epoch,
    emergence_epoch,
    holm,
    onset_distribution,
    sign_test,
    tally,
    verdict,
)
from pisweep.report.inference import Curve, Interval, StatsError, curve, interval, interval_from_examples, intervals
from pisweep.report.influence import MetricUndefined, OrderMismatch, example_covariance, linearize

__all__ = ["Curve", "Interval", "MetricUndefined", "OrderMismatch", "Outcome", "StatsError", "Tally", "crossover_epoch",
           "curve", "emergence_epoch", "example_covariance", "holm", "interval", "interval_from_examples", "intervals",
           "linearize", "onset_distribution", "sign_test", "tally", "verdict"]
