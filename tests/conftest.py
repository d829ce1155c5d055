"""Shared fixtures: an isolated PISWEEP_HOME, and paths to the project's files."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own study index, so tests never see the user's studies (or each other's)."""
    monkeypatch.setenv("PISWEEP_HOME", str(tmp_path_factory.mktemp("pisweep-home")))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def root() -> Path:
    return ROOT
