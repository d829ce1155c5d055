"""Liveness locks with real processes, closing the attempts of dead local jobs, and what an interrupted controller
or writer leaves behind (temp files, an older resume state)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from sqlalchemy import select

from pisweep.atomic import remove_stale_temps
from pisweep.errors import LedgerError, StudyBusy, TrainingError
from pisweep.executors.controller import hold_controller, live_controller
from pisweep.executors.local import close_lost_attempts
from pisweep.executors.stopping import stdout_closed
from pisweep.job.events import write_event
from pisweep.job.liveness import holder, job_lock_path, try_hold
from pisweep.ledger import schema as t
from pisweep.ledger.db import Ledger
from pisweep.ledger.ingest import ingest, set_job_state
from pisweep.ledger.owner import claim_output_root
from pisweep.train.checkpoint import save_resume

SLEEPER = "import sys, time; print('ready', flush=True); time.sleep(600)"


def child_holding(held) -> subprocess.Popen:
    """A real process that inherits the lock's open file (as a job does from the local executor)."""
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True,
                            pass_fds=(held.fd,), start_new_session=True)
    held.note(pid=proc.pid)
    held.release()
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_lock_passed_to_a_child_is_held_until_the_child_dies_however_it_dies(tmp_path):
    path = job_lock_path(tmp_path, "job")
    held = try_hold(path, uid="u")
    assert held is not None and try_hold(path) is None  # exclusive, even within one process (a second open file)
    proc = child_holding(held)
    try:
        assert holder(path)["pid"] == proc.pid  # the parent let go; the child holds it
        assert try_hold(path) is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # kill -9: no chance to clean up
        proc.wait()
    assert holder(path) is None  # the kernel released it: a stale lock never blocks
    again = try_hold(path)
    assert again is not None
    again.release()


def test_holder_reads_a_read_only_folder_and_creates_nothing(tmp_path):
    assert holder(tmp_path / "live" / "job.lock") is None
    assert not (tmp_path / "live").exists()


def test_one_controller_per_output_root(tmp_path):
    with hold_controller(tmp_path, "s", "submitting"):
        assert live_controller(tmp_path)["pid"] == os.getpid()
        with pytest.raises(StudyBusy, match=rf"already being run by pid {os.getpid()} .*`pisweep status s`"):
            with hold_controller(tmp_path, "s", "submitting"):
                pass
    assert live_controller(tmp_path) is None


def test_one_ledger_per_output_root(tmp_path):
    first, other = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    claim_output_root(tmp_path / "out", first)
    claim_output_root(tmp_path / "out", first)  # the same ledger again: fine
    Ledger(first).close()
    with pytest.raises(LedgerError, match="already belongs to the ledger"):
        claim_output_root(tmp_path / "out", other)
    first.unlink()  # the claimed ledger is gone: the folder can be claimed again
    claim_output_root(tmp_path / "out", other)


SPEC = textwrap.dedent("""\
    name: lost
    output_root: out
    data: {synthetic: {root: data}}
    model: {name: pisweep-tiny}
    eval: {tasks: [imagenet1k]}
    grid: {init: [random], scale: [tiny], epochs: [2], seed: [0, 1, 2]}
""")


def test_attempts_of_dead_local_jobs_are_closed_and_live_ones_are_not(recorded):
    study, plan, layout, ledger = recorded(SPEC)
    dead, live, elsewhere = plan.runs
    here = socket.gethostname()
    for run, job_id, host in ((dead, "local-dead", here), (live, "local-live", here),
                              (elsewhere, "local-far", "another-host")):
        write_event(layout.run_dir(run.uid), run.uid, "attempt_started", {"job_id": job_id, "restart": 0},
                    executor="local", host=host, pid=1, world_size=1)
        set_job_state(ledger, run.uid, "running", executor="local")
    ingest(ledger, "lost")
    held = try_hold(job_lock_path(layout.run_dir(live.uid), "job"))
    proc = child_holding(held)
    try:
        assert close_lost_attempts(ledger, "lost") == 1
        with ledger.engine.connect() as conn:
            rows = {r.job_uid: r for r in conn.execute(select(t.attempts)).all()}
            states = dict(conn.execute(select(t.jobs.c.uid, t.jobs.c.state)).all())
        assert rows[dead.uid].outcome == "vanished" and "controller lost" in rows[dead.uid].reason
        assert rows[live.uid].outcome is None and states[live.uid] == "running"
        assert states[dead.uid] == "vanished"
        # another host's lock cannot be seen from here: its attempt is left to that host's commands
        assert rows[elsewhere.uid].outcome is None and states[elsewhere.uid] == "running"
        assert close_lost_attempts(ledger, "lost") == 0  # idempotent
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert close_lost_attempts(ledger, "lost") == 1  # now that one is dead too


def test_temp_files_of_interrupted_writes_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".epoch_1.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = tmp_path / "checkpoints" / "epoch_1.pt"
    keep.write_bytes(b"whole")
    assert remove_stale_temps(tmp_path) == [stale]
    assert keep.exists() and not stale.exists()


def test_a_resume_state_is_never_replaced_by_one_of_an_earlier_step(tmp_path):
    path = tmp_path / "resume" / "state.pt"
    save_resume(path, {"step": 10, "w": torch.ones(2)})
    save_resume(path, {"step": 10, "w": torch.ones(2)})  # the same step again (end of epoch, then a stop): fine
    with pytest.raises(TrainingError, match="at step 10 and this attempt only at step 3"):
        save_resume(path, {"step": 3, "w": torch.zeros(2)})
    assert torch.load(path, weights_only=True)["step"] == 10
    path.unlink()  # a user who removed the state to start over is not refused
    save_resume(path, {"step": 0, "w": torch.zeros(2)})


def test_a_closed_stdout_is_seen_before_anything_is_written(tmp_path):
    r, w = os.pipe()
    assert not stdout_closed(w)
    os.close(r)  # the reader went away (`| head` finished)
    assert stdout_closed(w)
    os.close(w)
    with open(tmp_path / "f", "w") as fh:  # a file is never "closed" this way
        assert not stdout_closed(fh.fileno())
