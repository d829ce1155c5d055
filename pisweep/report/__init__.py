"""The report: per-epoch curves, statistics, tables and plots."""
