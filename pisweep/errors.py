"""Typed errors. Library code raises these; only the CLI prints them (one line, non-zero exit)."""
from __future__ import annotations


class PisweepError(Exception):
    """Base class of every error pisweep raises on purpose.

    ``exit_code``: 1 a runtime failure, 2 bad input or a refusal. ``retry``: whether a job that failed with it may
    succeed when run again; errors that repeat the same way every time (bad data, a non-finite loss, a full disk)
    fail the cell at once instead of spending the retry budget."""

    exit_code = 1
    retry = True


class SpecError(PisweepError):
    """The study file is invalid (names the file, field path and what is allowed)."""

    exit_code = 2
    retry = False


class PreflightError(PisweepError):
    """Something that would fail later was found before submitting (paths, counts)."""

    exit_code = 2


class PlanError(PisweepError):
    """The study cannot (or may not: a grid above the limits) be expanded into jobs."""

    exit_code = 2


class LedgerError(PisweepError):
    """The ledger cannot be read, migrated or written, or is not the one of this output root."""

    exit_code = 2


class StudyNotFound(PisweepError):
    """A command was given a study name or file that pisweep does not know."""

    exit_code = 2


class StudyBusy(PisweepError):
    """The study already has a live controller (a scheduler or a submission); the message names it."""

    exit_code = 2


class DataError(PisweepError):
    """A dataset (NIGHTS, shards, eval set) is missing or malformed; the message names it."""

    retry = False


class TrainingError(PisweepError):
    """Training cannot go on (non-finite loss, unreadable shard, incompatible resume): deterministic training
    would fail the same way again."""

    retry = False


class DiskFullError(PisweepError):
    """No space left where a file was being written; the message names the folder. No partial file is left."""

    retry = False


class EvalError(PisweepError):
    """An evaluation cannot run (bad checkpoint, bad task folder)."""


class ReportWriteError(PisweepError):
    """A file the user asked for (a plot, an export) cannot be written; the message names it."""


class ExecutorError(PisweepError):
    """The scheduler refused or lost a job."""
