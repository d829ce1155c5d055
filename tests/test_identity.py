"""Identity: uids that survive what does not change results (defaults, mounts, loader workers) and change with
what does; recorded studies keep the version they were planned under (a ledger made by pisweep at identity v1)."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from pisweep.commands import session as app
from pisweep.commands.studyref import resolve
from pisweep.errors import LedgerError
from pisweep.ledger.ingest import record_study
from pisweep.ledger.queries import jobs_of, study_identity_version
from pisweep.study import identity
from pisweep.study.identity import IDENTITY_VERSION, live_defaults, pinned_defaults
from pisweep.study.load import load_study
from pisweep.study.plan import make_plan

DATA = Path(__file__).resolve().parent / "data"


def real_data_study(tmp_path: Path, shards: str, samples: int = 100, nights: str = "/data/nights", **stage2):
    text = f"""
name: real
output_root: {tmp_path / 'out'}
data:
  nights: {nights}
  train: {{s: {{shards: "{shards}", samples: {samples}}}}}
stage2: {json.dumps(stage2) if stage2 else '{}'}
grid: {{init: [random, perceptual], scale: [s]}}
"""
    path = tmp_path / "real.yaml"
    path.write_text(text)
    return load_study(path)


def uids(plan) -> list[str]:
    return [i.uid for i in plan.inits] + [r.uid for r in plan.runs]


# -- the pinned defaults ---------------------------------------------------------------------------------------------
def test_the_pinned_table_is_this_codes_defaults():
    pinned = {k: v for k, v in pinned_defaults(IDENTITY_VERSION).items() if k != "version"}
    assert pinned == live_defaults(), (
        "a result-affecting default (or an entry of identity.NUMERICS) differs from pisweep/study/identity-v"
        f"{IDENTITY_VERSION}.json: a changed default is a new identity version (bump IDENTITY_VERSION and add "
        "its table); a new field's default is added to the table")


@pytest.mark.parametrize("version", [v for v in identity.VERSIONS if v >= 2])
def test_a_pinned_default_never_changes(version):
    golden = json.loads((DATA / f"identity-v{version}-golden.json").read_text())
    pinned = pinned_defaults(version)

    def changed(old, new, path=""):
        if isinstance(old, dict):
            return [c for k in old for c in changed(old[k], (new or {}).get(k, "<missing>"), f"{path}{k}.")]
        return [] if old == new else [f"{path.rstrip('.')}: {old!r} -> {new!r}"]

    assert changed(golden, pinned) == []


# -- v1: recorded studies keep their uids -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ci", "smoke"])
def test_identity_v1_uids_are_those_pisweep_made_before(root, name):
    recorded = json.loads((DATA / "uids-identity-v1.json").read_text())[name]
    plan = make_plan(load_study(root / "experiments" / f"{name}.yaml", 1), 1)
    assert {i.label: i.uid for i in plan.inits} == recorded["inits"]
    # (the study files gained arms since, the posthoc fine-tunes: new cells; every recorded one keeps its uid)
    assert {r.label: r.uid for r in plan.runs if r.kind == "train"} == recorded["runs"]
    assert set(uids(make_plan(load_study(root / "experiments" / f"{name}.yaml")))).isdisjoint(uids(plan))


@pytest.mark.parametrize("name", ["ci", "smoke"])
def test_identity_v2_uids_are_those_pisweep_made_before(root, name):
    """Recipes (identity v3) changed defaults; a study recorded under v2 is loaded with what it ran and keeps its
    uids, while the same file as a new study is planned anew."""
    recorded = json.loads((DATA / "uids-identity-v2.json").read_text())[name]
    old = load_study(root / "experiments" / f"{name}.yaml", 2)
    assert old.data.subset == "prefix"
    plan = make_plan(old, 2)
    assert {i.label: i.uid for i in plan.inits} == recorded["inits"]
    # (the study files gained arms since, the posthoc fine-tunes: new cells; every recorded one keeps its uid)
    assert {r.label: r.uid for r in plan.runs if r.kind == "train"} == recorded["runs"]
    assert set(uids(make_plan(load_study(root / "experiments" / f"{name}.yaml")))).isdisjoint(uids(plan))


def test_a_ledger_made_at_identity_v1_keeps_its_runs(tmp_path):
    """The ci study recorded by pisweep at identity v1 (ledger schema v3): opened by this pisweep, the study is
    planned under v1, every recorded job is found with its state, and resubmitting adds nothing."""
    ledger = tmp_path / "ledger.sqlite"
    shutil.copy(DATA / "ledger-identity-v1.sqlite", ledger)
    out = tmp_path / "out"
    con = sqlite3.connect(ledger)  # the fixture was made elsewhere: point its folders here
    spec = json.loads(con.execute("SELECT spec_json FROM studies WHERE name = 'ci'").fetchone()[0])
    old_root = spec["output_root"]
    spec["output_root"] = str(out)
    con.execute("UPDATE studies SET spec_json = ?", (json.dumps(spec),))
    con.execute("UPDATE jobs SET folder = replace(folder, ?, ?)", (old_root, str(out)))
    con.commit()
    before = {uid: state for uid, state in con.execute("SELECT uid, state FROM jobs")}
    con.close()

    ref = resolve("ci", ledger=str(ledger))
    assert ref.identity_version == 1
    with app.open_session(ref) as s:
        assert study_identity_version(s.ledger, "ci") == 1  # migrated to schema v4; the version is kept
        assert set(uids(s.plan)) == set(before)
        app.record(s)  # resubmitting the same study: no new job, no state reset
        jobs = jobs_of(s.ledger, "ci")
        assert {uid: row.state for uid, row in jobs.items()} == before
        work = app.reconcile(s)
        done = next(r for r in s.plan.runs if before[r.uid] == "completed")
        assert done.uid not in {r.uid for r in work.runs} and done.uid not in work.evals


# -- v2: what does not change results does not change uids ------------------------------------------------------------
def test_defaults_are_not_hashed(tmp_path):
    plain = real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar")
    explicit = real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar", global_batch_size=8192,
                               optim={"warmup_fraction": 0.04267, "lr": 5e-4})
    assert uids(make_plan(plain)) == uids(make_plan(explicit))
    run = make_plan(plain).runs[0]
    assert run.identity["stage2"] == {} and run.identity["model"] == {} and run.identity["identity"] == 3
    other = real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar", optim={"warmup_fraction": 0.04267, "lr": 1e-3})
    assert set(uids(make_plan(other))).isdisjoint({r.uid for r in make_plan(plain).runs})


def test_a_new_field_at_its_default_keeps_every_uid(tmp_path, monkeypatch):
    """A field added with a default that reproduces the old behaviour, and recorded in the pinned table, moves no
    uid: v2 hashes only what differs from the table."""
    study = real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar")
    before = uids(make_plan(study))
    table = json.loads(json.dumps(pinned_defaults(IDENTITY_VERSION)))
    table["stage2"]["new_knob"] = "old behaviour"
    monkeypatch.setattr(identity, "pinned_defaults", lambda version: table)
    dumped = study.stage2.model_dump(mode="json")
    monkeypatch.setattr(type(study.stage2), "model_dump", lambda self, **kw: {**dumped, "new_knob": "old behaviour"})
    assert uids(make_plan(study)) == before
    monkeypatch.setattr(type(study.stage2), "model_dump", lambda self, **kw: {**dumped, "new_knob": "new"})
    assert set(uids(make_plan(study))) != set(before)


def test_a_dataset_is_its_content_not_its_mount(tmp_path):
    base = make_plan(real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar"))
    moved = make_plan(real_data_study(tmp_path, "/scratch/u/datasets/yfcc/{00000..00009}.tar", nights="/x/nights"))
    assert uids(base) == uids(moved)
    for changed in (real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar", samples=101),
                    real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00010}.tar"),
                    real_data_study(tmp_path, "/mnt/a/cc12m/{00000..00009}.tar")):
        assert {r.uid for r in make_plan(changed).runs}.isdisjoint({r.uid for r in base.runs})
    assert make_plan(changed).inits == base.inits  # stage 1 reads NIGHTS only


def test_loader_workers_do_not_block_a_resubmit_but_a_learning_rate_does(tmp_path):
    from pisweep.ledger.db import Ledger
    from pisweep.study.layout import Layout

    study = real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar")
    layout = Layout(tmp_path / "out")
    led = Ledger(tmp_path / "l.sqlite")
    try:
        record_study(led, study.model_dump(mode="json"), None, make_plan(study), layout)
        workers = study.model_copy(update={"stage2": study.stage2.model_copy(update={"workers": 8})})
        record_study(led, workers.model_dump(mode="json"), None, make_plan(workers), layout)
        moved = real_data_study(tmp_path, "/scratch/yfcc/{00000..00009}.tar")
        record_study(led, moved.model_dump(mode="json"), None, make_plan(moved), layout)
        lr = study.model_copy(update={"stage2": study.stage2.model_copy(
            update={"optim": study.stage2.optim.model_copy(update={"lr": 1e-3})})})
        with pytest.raises(LedgerError, match=r"stage2\.optim\.lr: 0\.0005 -> 0\.001"):
            record_study(led, lr.model_dump(mode="json"), None, make_plan(lr), layout)
        with pytest.raises(LedgerError, match=f"recorded under identity v{IDENTITY_VERSION}"):
            record_study(led, study.model_dump(mode="json"), None, make_plan(study, 1), layout)
    finally:
        led.close()


@pytest.mark.parametrize("version", [1, 2])
def test_gradient_accumulation_at_1_is_the_old_run_and_at_2_a_new_one(tmp_path, version):
    """stage2.accumulation_steps came after v1: at its default (one pass per step, the old behaviour) neither
    version's uids move; set to 2 every run is a new one under both (no collision with the runs of 1)."""
    plain = make_plan(real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar"), version)
    one = make_plan(real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar", accumulation_steps=1), version)
    two = make_plan(real_data_study(tmp_path, "/mnt/a/yfcc/{00000..00009}.tar", accumulation_steps=2), version)
    assert uids(one) == uids(plain)
    assert {r.uid for r in two.runs}.isdisjoint({r.uid for r in plain.runs})
    assert two.inits == plain.inits  # stage 1 does not accumulate
    assert all(r.identity["stage2"]["accumulation_steps"] == 2 for r in two.runs)
