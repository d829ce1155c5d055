"""How every command finds a study: its YAML file, or (once submitted) its name.

The ledger path comes from the spec (default inside the output root) and ``--ledger`` overrides it. Submitted
studies are listed in a small index (``$PISWEEP_HOME/studies.json``, default ``~/.local/share/pisweep``) so that a
name is enough afterwards; the spec itself is read back from the ledger, where it was stored at submit time.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pisweep.atomic import atomic_write_json
from pisweep.errors import StudyNotFound
from pisweep.ledger.lock import file_lock
from pisweep.study.identity import IDENTITY_VERSION
from pisweep.study.layout import default_ledger
from pisweep.study.load import load_study, study_from_json
from pisweep.study.spec import Study


def home() -> Path:
    return Path(os.environ.get("PISWEEP_HOME") or Path.home() / ".local" / "share" / "pisweep")


def index_path() -> Path:
    return home() / "studies.json"


def read_index() -> dict[str, dict[str, str]]:
    try:
        return json.loads(index_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def remember(name: str, ledger: Path, spec_path: str | None) -> None:
    with file_lock(home() / "studies.lock", "updating the study index"):
        index = read_index()
        index[name] = {"ledger": str(Path(ledger).resolve()), "spec": spec_path or ""}
        atomic_write_json(index_path(), index)


@dataclass
class StudyRef:
    study: Study
    study_json: dict[str, Any]
    ledger_path: Path
    spec_path: str | None
    from_file: bool
    identity_version: int = IDENTITY_VERSION  # the recorded study's; the latest for a study not recorded yet


def looks_like_file(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or os.sep in arg or Path(arg).is_file()


def resolve(arg: str, ledger: str | None = None, on_wait: Callable[[str], None] | None = None,
            submitted: bool = False) -> StudyRef:
    """A study from a YAML path or a submitted study's name.

    ``submitted``: the study must be recorded in its ledger (read-only commands: nothing is created for a study
    that is not, and another study's ledger given with ``--ledger`` is never written)."""
    if looks_like_file(arg):
        study = load_study(arg)
        path = Path(ledger) if ledger else default_ledger(study)
        if submitted:
            version = _require_recorded(study.name, path, arg, on_wait)[1]
        else:
            version = _recorded_version(study.name, path, on_wait) or IDENTITY_VERSION
        if version != IDENTITY_VERSION:  # recorded before: the defaults it was recorded with (study/recipe.py)
            study = load_study(arg, version)
        return StudyRef(study, study.model_dump(mode="json"), path, str(Path(arg).resolve()), True, version)
    if ledger:
        path = Path(ledger)
    else:
        entry = read_index().get(arg)
        if entry is None:
            known = ", ".join(sorted(read_index())) or "none yet"
            raise StudyNotFound(f"no study named {arg!r} (known studies: {known}); give the study's YAML file, "
                                f"or --ledger PATH")
        path = Path(entry["ledger"])
    if not path.exists():
        raise StudyNotFound(f"study {arg!r}: its ledger {path} does not exist")
    spec, version = _require_recorded(arg, path, arg, on_wait)
    return StudyRef(study_from_json(spec, version), spec, path, None, False, version)


def _require_recorded(name: str, path: Path, arg: str,
                      on_wait: Callable[[str], None] | None) -> tuple[dict[str, Any], int]:
    """The recorded spec of study ``name`` in the ledger at ``path`` and its identity version; StudyNotFound ("not
    submitted") otherwise. Reads only: no ledger is created, none is written."""
    from pisweep.ledger.db import Ledger
    from pisweep.ledger.queries import study_identity_version, study_names, study_spec

    if not path.is_file():
        raise StudyNotFound(f"study {name!r} is not submitted: there is no ledger at {path} "
                            f"(`pisweep submit {arg}` records and runs it)")
    led = Ledger.for_reading(path, on_wait=on_wait)
    try:
        spec = study_spec(led, name)
        if spec is None:
            raise StudyNotFound(f"study {name!r} is not submitted in the ledger {path} (it has: "
                                f"{', '.join(study_names(led)) or 'none'})")
        version = study_identity_version(led, name)
    finally:
        led.close()
    return spec, version


def _recorded_version(name: str, path: Path, on_wait: Callable[[str], None] | None) -> int | None:
    """The identity version study ``name`` is recorded under in the ledger at ``path`` (None: not recorded)."""
    from pisweep.ledger.db import Ledger
    from pisweep.ledger.queries import study_identity_version

    if not path.is_file():
        return None
    led = Ledger.for_reading(path, on_wait=on_wait)
    try:
        return study_identity_version(led, name)
    finally:
        led.close()
