"""Crash campaign: kill -9 the local controller at random moments, resume until done, and count what went wrong.

    python benchmarks/crash_campaign.py --trials 20 --seed 0 [--workdir DIR]

Each trial runs experiments/ci.yaml (its own output root; the synthetic data is shared) and kills it 2-3 times
with SIGKILL before letting a last `pisweep resume` finish: either the controller's process group (its jobs, in
their own sessions, survive and must stop by themselves) or the whole process tree (controller and jobs). A kill
lands at a random time, or at the first sign of a checkpoint or event being written (a temp file under the output
root) or of the ledger being written (its lock held): random moments, no hooks in pisweep. It then prints

    crash campaign: trials=N completed=K duplicate_rows=D duplicate_epochs=E partial_checkpoints=P overlapping_attempts=O

counted from evidence the ledger cannot tidy away: the append-only audit file of every job folder (attempt
start/end with pid, epoch done, checkpoint with sha256) and the files on disk. duplicate_rows: ledger rows sharing
a natural key; duplicate_epochs: an epoch completed twice in an audit file; partial_checkpoints: a final-named
file whose sha256 differs from its last audit line; overlapping_attempts: two attempts of one job alive at once
(the later one started before the earlier one's last line). The goal is K = N and D = E = P = O = 0.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml

from pisweep.job.audit import read_audit

ROOT = Path(__file__).resolve().parent.parent
NATURAL_KEYS = {"attempts": "job_uid, job_id, restart", "checkpoints": "job_uid, epoch, kind",
                "evals": "job_uid, epoch, task, suite_version", "metrics": "job_uid, epoch, task, metric, suite_version",
                "events_seen": "job_uid, name", "jobs": "uid"}


def study_file(work: Path, data_root: Path, trial: int) -> tuple[Path, Path]:
    spec = yaml.safe_load((ROOT / "experiments/ci.yaml").read_text())
    out = work / f"trial-{trial}"
    spec.update(name=f"crash-{trial}", output_root=str(out / "out"))
    spec["data"]["synthetic"]["root"] = str(data_root)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, out / "out"


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill(proc: subprocess.Popen, whole_tree: bool) -> None:
    tree = descendants(proc.pid) if whole_tree else []
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the controller's own process group (a terminal's job)
    except ProcessLookupError:
        pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def writing(root: Path) -> bool:
    """A checkpoint, event or result file is being written: its temp file exists."""
    for folder in (root / "runs", root / "inits"):
        for _dirpath, _dirs, files in os.walk(folder):
            if any(f.startswith(".") and f.endswith(".tmp") for f in files):
                return True
    return False


def ledger_held(root: Path) -> bool:
    """The ledger is being written: its lock file holds the writer's note (emptied on release)."""
    try:
        return (root / "ledger.sqlite.lock").stat().st_size > 0
    except OSError:
        return False


def pisweep(*args: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pisweep.cli", *args], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def kill_at_random(proc: subprocess.Popen, rng: random.Random, root: Path, horizon_s: float) -> str | None:
    """Kill at a random moment: after a random time, or at the first sign of a write or an ingest."""
    mode = rng.choice(["time", "write", "ingest"])
    wait = rng.uniform(1.0, horizon_s)
    deadline = time.time() + (wait if mode == "time" else horizon_s)
    started = time.time()
    while time.time() < deadline:
        if proc.poll() is not None:
            return None
        if mode == "write" and time.time() - started > 1.0 and writing(root):
            break
        if mode == "ingest" and time.time() - started > 1.0 and ledger_held(root):
            break
        time.sleep(0.002 if mode != "time" else 0.05)
    whole = rng.random() < 0.5
    landed_write, landed_ingest = writing(root), ledger_held(root)
    kill(proc, whole)
    proc.wait()
    return ("tree" if whole else "group") + (" write" if landed_write else "") + (" ingest" if landed_ingest else "")


def complete(study: Path, log) -> bool:
    out = subprocess.run([sys.executable, "-m", "pisweep.cli", "status", str(study), "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        log.write(out.stderr.encode())
        return False
    cells = json.loads(out.stdout)["cells"]
    return all(c["state"] == "completed" for c in cells) and all(
        c["evals"].get("done", 0) + c["evals"].get("missing_data", 0) == c["evals_planned"]
        for c in cells if c["kind"] == "train")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def evidence(root: Path) -> Counter:
    """Count what went wrong, from the ledger's natural keys, the audit files and the files on disk."""
    found: Counter = Counter()
    con = sqlite3.connect(f"file:{root / 'ledger.sqlite'}?mode=ro", uri=True)
    for table, key in NATURAL_KEYS.items():
        found["duplicate_rows"] += con.execute(
            f"SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM {table} GROUP BY {key})").fetchone()[0]
    con.close()
    for folder in [p for kind in ("runs", "inits") for p in (root / kind).glob("*") if p.is_dir()]:
        lines = list(read_audit(folder))
        epochs = Counter(ln["epoch"] for ln in lines if ln["event"] == "epoch_done")
        found["duplicate_epochs"] += sum(n - 1 for n in epochs.values())
        last_sha: dict[str, str] = {}
        for ln in lines:
            if ln["event"] in ("checkpoint", "init_selected") and ln.get("path") and ln.get("sha256"):
                last_sha[ln["path"]] = ln["sha256"]
        for path, digest in last_sha.items():
            if Path(path).exists() and sha256(Path(path)) != digest:
                found["partial_checkpoints"] += 1
        spans = []  # (start, last sign of life) of each attempt, from the lines its process wrote
        for ln in lines:
            if ln["event"] == "attempt_started":
                pid = ln.get("pid")
                life = [x["t"] for x in lines if x.get("pid") == pid and x["t"] >= ln["t"]]
                spans.append((ln["t"], max(life)))
        spans.sort()
        found["overlapping_attempts"] += sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where the trials' output roots go (default: a temp folder)")
    ap.add_argument("--horizon", type=float, default=40.0, help="kills land within this many seconds of a start")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="crash-campaign-"))
    data_root = work / "data"
    env_home = work / "home"
    os.environ["PISWEEP_HOME"] = str(env_home)
    os.environ.setdefault("WANDB_MODE", "offline")
    from pisweep.study.datapaths import resolve
    from pisweep.study.load import load_study

    resolve(load_study(study_file(work, data_root, 0)[0]), generate=True)  # the shared data, made once, unkilled
    totals: Counter = Counter()
    landed: Counter = Counter()
    completed = 0
    t0 = time.time()
    for trial in range(args.trials):
        study, root = study_file(work, data_root, trial)
        with open(study.parent / "campaign.log", "ab") as log:
            for k in range(rng.randint(2, 3)):
                proc = pisweep("submit" if k == 0 else "resume", str(study), log=log)
                where = kill_at_random(proc, rng, root, args.horizon)
                if where is None:
                    break  # it finished before the kill
                landed["kills"] += 1
                landed["in a write"] += " write" in where
                landed["in an ingest"] += " ingest" in where
                landed["whole tree"] += where.startswith("tree")
            for _ in range(3):
                if complete(study, log):
                    break
                subprocess.run([sys.executable, "-m", "pisweep.cli", "resume", str(study)], stdout=log, stderr=log,
                               stdin=subprocess.DEVNULL)
            done = complete(study, log)
        completed += done
        totals += evidence(root)
        print(f"trial {trial}: {'completed' if done else 'NOT completed'}; so far {dict(totals) or 'nothing wrong'}"
              f" ({time.time() - t0:.0f}s, load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    print(f"kills: {landed['kills']} ({landed['whole tree']} of the whole tree, {landed['in a write']} during a "
          f"checkpoint or event write, {landed['in an ingest']} while the ledger was written); {work}", file=sys.stderr)
    print(f"crash campaign: trials={args.trials} completed={completed} duplicate_rows={totals['duplicate_rows']} "
          f"duplicate_epochs={totals['duplicate_epochs']} partial_checkpoints={totals['partial_checkpoints']} "
          f"overlapping_attempts={totals['overlapping_attempts']}")
    return 0 if completed == args.trials and not sum(totals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
