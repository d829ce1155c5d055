"""The controller never loses or duplicates work: every way a local scheduler ends, with real processes.

SIGTERM, SIGHUP and a closed stdout stop it as Ctrl-C does (jobs save and stop, one line says what continues);
kill -9 of the scheduler alone leaves jobs that stop by themselves and are never started twice; a second
controller of a running study is refused at once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from pisweep.cli.main import main
from pisweep.executors.controller import live_controller
from pisweep.job.liveness import holder, job_lock_path
from pisweep.ledger import schema as t
from pisweep.ledger.db import Ledger

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("controller-data")  # synthetic data, made by the first study, shared


def study(tmp_path: Path, data_root: Path, name: str, epochs: int = 3) -> Path:
    spec = yaml.safe_load((ROOT / "experiments/ci.yaml").read_text())
    spec.update(name=name, output_root=str(tmp_path / "out"))
    spec["data"]["synthetic"]["root"] = str(data_root)
    spec["grid"].update(init=["random"], epochs=[epochs])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start(path: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pisweep.cli", "submit", str(path), *args],
                            stdout=kw.pop("stdout", subprocess.PIPE), stderr=kw.pop("stderr", subprocess.PIPE),
                            text=True, env=dict(os.environ), **kw)


def wait_for(what: str, cond, proc: subprocess.Popen | None = None, timeout: float = 300.0):
    deadline = time.time() + timeout
    while True:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"scheduler exited ({proc.returncode}) before {what}: {proc.communicate()}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_dir(tmp_path: Path) -> Path | None:
    runs = list((tmp_path / "out" / "runs").glob("*"))
    return runs[0] if runs else None


def training(tmp_path: Path) -> bool:
    """The run's training job has started its first attempt (its process holds the run's lock)."""
    folder = run_dir(tmp_path)
    return bool(folder and list(folder.glob("events/*-attempt_started.json")))


def attempts(tmp_path: Path) -> list[dict]:
    led = Ledger(tmp_path / "out" / "ledger.sqlite")
    try:
        with led.engine.connect() as conn:
            rows = conn.execute(select(t.attempts).join(t.jobs, t.jobs.c.uid == t.attempts.c.job_uid)
                                .where(t.jobs.c.kind == "train").order_by(t.attempts.c.started_at)).mappings().all()
        return [dict(r) for r in rows]
    finally:
        led.close()


def epochs_done(folder: Path) -> list[int]:
    return [json.loads(p.read_text())["data"]["epoch"] for p in sorted(folder.glob("events/*-epoch_done.json"))]


def status_of(name: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["status", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "stdout closed"])
def test_every_way_the_scheduler_ends_stops_its_jobs_cleanly(how, tmp_path, data_root, capsys):
    name = f"ci-end-{how.split()[0].lower()}"
    path = study(tmp_path, data_root, name)
    proc = start(path)
    wait_for("the training job to start", lambda: training(tmp_path), proc)
    if how == "stdout closed":
        proc.stdout.close()  # what `pisweep submit ... | head -3` does once head has its lines
        expected = 128 + signal.SIGPIPE
    else:
        proc.send_signal(getattr(signal, how))
        expected = 128 + getattr(signal, how)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == expected, stderr
    line = f"stopped by {how}"
    assert line in stderr and f"pisweep resume {name}" in stderr, stderr
    log = (tmp_path / "out" / "logs" / "scheduler.log").read_text()
    assert line in log and f"pisweep resume {name}" in log, log
    folder = run_dir(tmp_path)
    assert holder(job_lock_path(folder, "job")) is None and holder(job_lock_path(folder, "eval")) is None
    assert live_controller(tmp_path / "out") is None
    ended = attempts(tmp_path)
    assert ended and all(a["outcome"] in ("stopped", "completed") for a in ended), ended
    (cell,) = [c for c in status_of(name, capsys)["cells"] if c["kind"] == "train"]
    assert cell["state"] in ("stopped", "completed"), cell
    if how == "SIGHUP":  # and the study goes on from where it stopped
        assert main(["resume", name]) == 0
        (cell,) = [c for c in status_of(name, capsys)["cells"] if c["kind"] == "train"]
        assert cell["state"] == "completed" and cell["epoch"] == 3
        assert epochs_done(folder) == [1, 2, 3]


def test_kill_9_of_the_scheduler_then_resume_never_runs_a_job_twice(tmp_path, data_root, capsys):
    name = "ci-kill9"
    path = study(tmp_path, data_root, name, epochs=3)
    # its own process group, as in a terminal: kill -9 of that group kills the scheduler, not its jobs (sessions)
    proc = start(path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for("the first checkpoint", lambda: list((tmp_path / "out" / "runs").glob("*/events/*-checkpoint.json")),
             proc)
    folder = run_dir(tmp_path)
    orphan = holder(job_lock_path(folder, "job"))
    assert orphan and orphan.get("pid"), orphan
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["resume", name]) == 0  # at once: it waits for the orphan to save and stop, then runs on
    (cell,) = [c for c in status_of(name, capsys)["cells"] if c["kind"] == "train"]
    assert cell["state"] == "completed" and cell["epoch"] == 3, cell
    assert cell["evals"].get("done", 0) + cell["evals"].get("missing_data", 0) == cell["evals_planned"]
    assert epochs_done(folder) == [1, 2, 3]  # each epoch once
    rows = attempts(tmp_path)
    for a, b in zip(rows, rows[1:]):  # no two attempts of the job alive at once
        assert a["ended_at"] is not None and a["ended_at"] <= b["started_at"], rows
    first = rows[0]
    assert first["outcome"] in ("stopped", "completed") and (
        first["outcome"] == "completed" or "controller is gone" in (first["reason"] or "")), first
    with pytest.raises(ProcessLookupError):
        os.kill(orphan["pid"], 0)


def test_a_second_controller_is_refused_at_once(tmp_path, data_root, capsys):
    name = "ci-busy"
    path = study(tmp_path, data_root, name, epochs=3)
    proc = start(path)
    try:
        info = wait_for("the scheduler's lock", lambda: live_controller(tmp_path / "out"), proc)
        assert info["pid"] == proc.pid
        wait_for("the training job to start", lambda: training(tmp_path), proc)  # past claiming its output root
        capsys.readouterr()
        t0 = time.time()
        assert main(["submit", str(path)]) == 2
        assert main(["resume", str(path)]) == 2
        assert time.time() - t0 < 30  # refused, not waiting for the lock
        msg = capsys.readouterr().err
        assert f"pid {proc.pid}" in msg and "already being run" in msg, msg
        # another ledger for the same output folder is refused too (it would run every job a second time)
        assert main(["submit", str(path), "--ledger", str(tmp_path / "other.sqlite")]) == 2
        assert not (tmp_path / "other.sqlite").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=180)
    assert main(["submit", str(path), "--ledger", str(tmp_path / "other.sqlite")]) == 2
    assert "already belongs to the ledger" in capsys.readouterr().err
    assert not (tmp_path / "other.sqlite").exists()


def test_detach_then_status_attach_and_cancel(tmp_path, data_root, capsys):
    name = "ci-detach"
    path = study(tmp_path, data_root, name, epochs=3)
    out = tmp_path / "out"
    assert main(["submit", str(path), "--detach"]) == 0  # returns once the scheduler has started
    said = capsys.readouterr().out
    info = live_controller(out)
    assert info and f"pid {info['pid']}" in said and "pisweep attach" in said, said
    wait_for("the training job to start", lambda: training(tmp_path))
    status = status_of(name, capsys)
    assert status["controller"]["pid"] == info["pid"]
    (cell,) = [c for c in status["cells"] if c["kind"] == "train"]
    assert cell["live"] and cell["live"]["job"], cell  # its live process, by pid
    attach = subprocess.Popen([sys.executable, "-m", "pisweep.cli", "attach", name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    time.sleep(2)
    capsys.readouterr()
    assert main(["cancel", name]) == 0
    said = capsys.readouterr().out
    assert f"stopped the scheduler (pid {info['pid']})" in said and "stopped by SIGTERM" in said, said
    followed, _ = attach.communicate(timeout=60)
    assert attach.returncode == 0 and "scheduler started" in followed and "stopped by SIGTERM" in followed, followed
    assert live_controller(out) is None
    (cell,) = [c for c in status_of(name, capsys)["cells"] if c["kind"] == "train"]
    assert cell["state"] == "cancelled" and cell["live"] is None, cell
    assert main(["cancel", name]) == 1  # nothing live: said, and not a success
    assert "nothing to cancel" in capsys.readouterr().out
    assert main(["attach", name]) == 1
    assert main(["resume", name]) == 0  # a cancelled cell goes on from its saved state
    (cell,) = [c for c in status_of(name, capsys)["cells"] if c["kind"] == "train"]
    assert cell["state"] == "completed" and epochs_done(run_dir(tmp_path)) == [1, 2, 3]


def test_cancel_of_one_live_job_is_not_undone_by_the_running_scheduler(tmp_path, data_root, capsys):
    name = "ci-cancel-one"
    spec = yaml.safe_load(study(tmp_path, data_root, name, epochs=2).read_text())
    spec["grid"]["seed"] = [0, 1]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = start(path)
    label = "random-tiny-e2-s0"

    def live_s0():
        capsys.readouterr()
        if main(["status", name, "--json"]) != 0:
            return None
        cells = {c["label"]: c for c in json.loads(capsys.readouterr().out)["cells"]}
        return (cells.get(label) or {}).get("live")

    wait_for("s0 to be live", live_s0, proc)
    assert main(["cancel", name, label]) == 0
    said = capsys.readouterr().out
    assert "cancelled 1 live job" in said and label in said, said
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr  # the scheduler finished the rest and did not start s0 again
    cells = {c["label"]: c for c in status_of(name, capsys)["cells"] if c["kind"] == "train"}
    assert cells[label]["state"] == "cancelled" and cells[label]["attempts"] == 1, cells[label]
    assert cells["random-tiny-e2-s1"]["state"] == "completed"
