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


@pytest.fixture
def recorded(tmp_path):
    """A factory: write a study file, load it and record its plan in a fresh ledger (nothing runs).

    Returns (study, plan, layout, ledger); ledgers are closed after the test."""
    from pisweep.ledger.db import Ledger
    from pisweep.ledger.ingest import record_study
    from pisweep.study.layout import Layout
    from pisweep.study.load import load_study
    from pisweep.study.plan import make_plan

    opened = []

    def record(text: str, name: str = "s.yaml", ledger: Path | None = None):
        spec = tmp_path / name
        spec.write_text(text)
        study = load_study(spec)
        plan = make_plan(study)
        layout = Layout(Path(study.output_root))
        led = Ledger(ledger or tmp_path / "ledger.sqlite")
        opened.append(led)
        record_study(led, study.model_dump(mode="json"), str(spec), plan, layout)
        return study, plan, layout, led

    yield record
    for led in opened:
        led.close()
