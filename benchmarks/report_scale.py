"""How fast are `pisweep status` and `pisweep report` on a study of 10 000 runs x 32 epochs x 31 tasks?

Builds a ledger through the real ledger code (Ledger: migrations; app.record: the study, its 10 250 jobs and the
study index) and fills it with the rows ingest would write for such a study (attempts with preemptions and
failures, weights and resume checkpoints, one eval row per (run, epoch, task), every metric of every eval, train
metrics per epoch): about 34 M metric rows, no per-example files. The rows go in with executemany on the schema's
tables, in primary-key order (ingesting 10 M eval events one by one would take hours); migration v2's indexes are
dropped during the load and rebuilt after it by that migration's own code. Then the real CLI runs as a
subprocess, start-up included: `pisweep status` (must be <= 1 s) and `pisweep report` in the terminal (<= 10 s).

    .venv/bin/python benchmarks/report_scale.py [--out DIR] [--keep] [--html]

The first status after the build is timed apart: it checks every weights file for missing evals once (a live
study's reconcile does this incrementally as checkpoints arrive) and records how far it looked.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pisweep.commands import session as app  # noqa: E402
from pisweep.commands.studyref import resolve  # noqa: E402
from pisweep.eval import registry  # noqa: E402
from pisweep.ledger import migrations  # noqa: E402

NAME = "scale-bench"
SCALES, SEEDS, EPOCHS = 20, 250, 32  # x 2 arms = 10 000 runs
V2_INDEXES = ("evals_done_by_task", "evals_open", "evals_problems")


def write_spec(out: Path, scales: int = SCALES, seeds: int = SEEDS) -> Path:
    eval_root = out / "eval"
    for task in registry.SUITE_KEYS:  # present task folders: coverage counts them as there
        listing = registry.shards_listing(eval_root / registry.TASKS[task].folder_name)
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("1\n")
    spec = {"name": NAME, "output_root": str(out / "out"),
            "executor": {"name": "local", "train": {"gpus_per_node": 8}, "init": {"gpus_per_node": 1}},
            "data": {"nights": str(out / "nights"), "eval_root": str(eval_root),
                     "train": {f"s{i:02d}": {"shards": f"/data/yfcc/s{i:02d}/{{00000..00099}}.tar",
                                             "samples": 50_000 * 2 ** (i // 2) * (3 if i % 2 else 2)}
                               for i in range(scales)}},
            "grid": {"init": ["random", "perceptual"], "scale": [f"s{i:02d}" for i in range(scales)],
                     "epochs": [EPOCHS], "seed": list(range(seeds))}}
    path = out / "scale-bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fill(s: app.Session, log) -> dict[str, int]:
    """Every row of a finished study, generated with a known effect that emerges later at smaller scales."""
    rng = np.random.default_rng(0)
    tasks = list(s.plan.tasks)
    metas = [registry.TASKS[t] for t in tasks]
    base = rng.uniform(0.05, 0.6, len(tasks))
    scale_idx = {sc: i for i, sc in enumerate(s.ref.study.grid.scale)}
    t0 = 1.7e9
    con = sqlite3.connect(s.ledger.path)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA journal_mode=MEMORY")
    for ix in V2_INDEXES:
        con.execute(f"DROP INDEX IF EXISTS {ix}")
    counts = {"attempts": 0, "checkpoints": 0, "evals": 0, "metrics": 0}
    runs = sorted(s.plan.runs, key=lambda r: r.uid)
    inits = sorted(s.plan.inits, key=lambda i: i.uid)
    att, ckpt = [], []
    for i in inits:
        att.append((i.uid, f"{9000 + i.seed}", 0, "slurm", "node1", 1, t0, t0 + 3600 * 2, "completed", None, 2000, 32))
        ckpt.append((i.uid, 32, "init", f"{s.layout.init_dir(i.uid)}/init.pt", "ab", 600_000_000, 2000, t0 + 7000))
    eval_sql = ("INSERT INTO evals (job_uid, epoch, task, suite_version, state, reason, path, main_metric, main_value, "
                "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)")
    metric_sql = "INSERT INTO metrics (job_uid, epoch, task, metric, suite_version, value) VALUES (?,?,?,?,?,?)"
    epochs = np.arange(1, EPOCHS + 1)
    started = time.time()
    for n, run in enumerate(runs):
        k = scale_idx[run.scale]
        start = t0 + 3600 * 3 + (n % 97) * 60
        hours = 0.25 * (1 + k)  # wall hours per epoch on 8 GPUs
        step_per_epoch = 1000
        # attempts: 10 % preempted once (saved), 3 % failed once (unsaved: time after the last save is redone)
        r = rng.random()
        attempts = [("completed", EPOCHS)]
        if r < 0.10:
            attempts = [("preempted", 11), ("completed", EPOCHS)]
        elif r < 0.13:
            attempts = [("failed", 7), ("completed", EPOCHS)]
        t = start
        for restart, (outcome, ep) in enumerate(attempts):
            end = t + hours * 3600 * (ep if restart == 0 else ep - attempts[0][1] + 1) + 600
            att.append((run.uid, "77" + run.uid[:6], restart, "slurm", "gpu1", 8, t, end, outcome, None,
                        ep * step_per_epoch, ep))
            t = end + 300
        for e in epochs:
            ckpt.append((run.uid, int(e), "weights", f"{s.layout.run_dir(run.uid)}/checkpoints/epoch_{e}.pt", "ab",
                         605_000_000, int(e) * step_per_epoch, start + hours * 3600 * int(e)))
            ckpt.append((run.uid, int(e), "resume", f"{s.layout.run_dir(run.uid)}/resume/state.pt", "ab",
                         1_815_000_000, int(e) * step_per_epoch, start + hours * 3600 * int(e) + 5))
        # values: learning curve + arm effect from an epoch that depends on the data scale + seed noise
        arm = 1.0 if run.init == "perceptual" else 0.0
        onset = 4 + (len(scale_idx) - 1 - k)  # smaller data: later emergence
        effect = 0.02 * arm / (1 + np.exp(-(epochs - onset) / 1.5))
        curve = 1 - np.exp(-epochs / (6 + k / 2))
        seed_noise = rng.normal(0, 0.004, len(tasks))
        vals = np.clip(base[None, :] * (0.4 + 0.6 * curve[:, None]) + effect[:, None] + seed_noise[None, :]
                       + rng.normal(0, 0.002, (EPOCHS, len(tasks))), 0, 1)
        evals, metrics = [], []
        order = sorted(range(len(tasks)), key=lambda j: tasks[j])
        for e in epochs:
            metrics += [(run.uid, int(e), "train", m, "-", v) for m, v in
                        sorted({"lr": 1e-4, "logit_scale": 50.0, "samples_per_s": 9000.0,
                                "train_loss": float(3 - curve[e - 1])}.items())]
            for j in order:
                v = float(vals[e - 1, j])
                meta = metas[j]
                evals.append((run.uid, int(e), tasks[j], "1", "done", None,
                              f"{s.ref.study.data.eval_root}/{meta.folder_name}", meta.main_metric, v, start))
                if meta.kind == registry.CLASSIFICATION:
                    ms = {"acc1": v, "acc5": min(1.0, v * 1.6), "mean_per_class_recall": v}
                else:
                    ms = {f"{d}_retrieval_recall@{kk}": min(1.0, v * f) for d in ("image", "text")
                          for kk, f in ((1, 1.0), (5, 2.0), (10, 2.6))}
                    ms["mean_recall@1"] = v
                metrics += [(run.uid, int(e), tasks[j], m, "1", x) for m, x in sorted(ms.items())]
        con.executemany(eval_sql, evals)
        con.executemany(metric_sql, metrics)
        counts["evals"] += len(evals)
        counts["metrics"] += len(metrics)
        if (n + 1) % 500 == 0:
            con.commit()
            el = time.time() - started
            log(f"  {n + 1}/{len(runs)} runs, {counts['metrics']:,} metric rows ({el:.0f} s, "
                f"~{el / (n + 1) * (len(runs) - n - 1):.0f} s left)")
    con.executemany("INSERT INTO attempts (job_uid, job_id, restart, executor, host, world_size, started_at, "
                    "ended_at, outcome, reason, step, epoch) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", att)
    con.executemany("INSERT INTO checkpoints (job_uid, epoch, kind, path, sha256, bytes, step, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?)", ckpt)
    con.execute("UPDATE jobs SET state = 'completed', epoch_reached = epochs, step_reached = epochs * 1000 "
                "WHERE study = ? AND kind = 'train'", (NAME,))
    con.execute("UPDATE jobs SET state = 'completed', epoch_reached = 32 WHERE study = ? AND kind = 'init'", (NAME,))
    con.commit()
    counts["attempts"], counts["checkpoints"] = len(att), len(ckpt)
    log("  rebuilding migration v2's indexes (its own code) ...")
    with s.ledger.engine.begin() as conn:
        migrations._v2(conn)
    con.close()
    return counts


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds (user + sys of the child) of one CLI run, start-up included."""
    before = os.times()
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = os.times()
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, res.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the ledger (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the folder (and reuse it on the next run)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--html", action="store_true", help="also time `pisweep report --html` (not bounded)")
    ap.add_argument("--scales", type=int, default=SCALES, help=f"data scales (default {SCALES})")
    ap.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per arm and scale (default {SEEDS})")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pisweep-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PISWEEP_HOME=str(out / "home"), COLUMNS="160")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    ledger_path = out / "out" / "ledger.sqlite"
    try:
        built = not ledger_path.exists() or not args.keep
        if built:
            if ledger_path.exists():
                ledger_path.unlink()
            os.environ["PISWEEP_HOME"] = env["PISWEEP_HOME"]
            t = time.time()
            spec = write_spec(out, args.scales, args.seeds)
            s = app.open_session(resolve(str(spec)))
            app.record(s)
            log(f"building {ledger_path}: {len(s.plan.runs)} runs x {EPOCHS} epochs x {len(s.plan.tasks)} tasks")
            counts = fill(s, log)
            s.close()
            log(f"built in {time.time() - t:.0f} s: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
        entry = Path(sys.executable).with_name("pisweep")
        cli = [str(entry)] if entry.exists() else [sys.executable, "-m", "pisweep.cli"]
        size = ledger_path.stat().st_size
        with sqlite3.connect(ledger_path) as con:
            rows = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("jobs", "attempts", "checkpoints", "evals", "metrics")}
        log(f"ledger {ledger_path}: {size / 2 ** 30:.2f} GiB; rows: "
            + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
        first, cpu, _ = timed(cli + ["status", NAME], env)
        what = "after the build (one-time check of every weights file)" if built else "(ledger reused)"
        log(f"first status {what}: {first:.2f} s (cpu {cpu:.2f} s)")
        status = [timed(cli + ["status", NAME], env) for _ in range(args.repeat)]
        report = [timed(cli + ["report", NAME], env) for _ in range(args.repeat)]
        fmt = lambda xs: ", ".join(f"{w:.2f} s (cpu {c:.2f})" for w, c, _ in xs)  # noqa: E731
        st, rp = statistics.median(w for w, _, _ in status), statistics.median(w for w, _, _ in report)
        log(f"pisweep status: {fmt(status)}; median {st:.2f} s (limit 1 s)")
        log(f"pisweep report: {fmt(report)}; median {rp:.2f} s (limit 10 s)")
        log(f"status output: {len(status[-1][2].splitlines())} lines; report output: "
            f"{len(report[-1][2].splitlines())} lines")
        if args.html:
            w, c, _ = timed(cli + ["report", NAME, "--html", str(out / "report.html")], env)
            log(f"pisweep report --html: {w:.2f} s (cpu {c:.2f} s), {(out / 'report.html').stat().st_size:,} bytes")
        log(f"load average now: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        return 0 if st <= 1.0 and rp <= 10.0 else 1
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
