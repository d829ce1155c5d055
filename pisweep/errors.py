"""Typed errors. Library code raises these; only the CLI prints them (one line, non-zero exit)."""
from __future__ import annotations


class PisweepError(Exception):
    """Base class of every error pisweep raises on purpose."""

    exit_code = 1


class SpecError(PisweepError):
    """The study file is invalid (names the file, field path and what is allowed)."""

    exit_code = 2


class PreflightError(PisweepError):
    """Something that would fail later was found before submitting (paths, counts)."""

    exit_code = 2


class PlanError(PisweepError):
    """The study cannot be expanded into jobs."""


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


class TrainingError(PisweepError):
    """Training cannot go on (non-finite loss, unreadable shard, incompatible resume)."""


class EvalError(PisweepError):
    """An evaluation cannot run (bad checkpoint, bad task folder)."""


class ExecutorError(PisweepError):
    """The scheduler refused or lost a job."""
