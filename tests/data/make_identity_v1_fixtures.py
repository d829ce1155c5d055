"""Run with pisweep at 438fc4b (identity v1, ledger schema v3) on PYTHONPATH."""
import json
import shutil
from pathlib import Path

from pisweep.ledger.db import Ledger
from pisweep.ledger.ingest import record_study, set_eval_states, set_job_state
from pisweep.ledger.migrations import LATEST
from pisweep.plan import Layout, make_plan
from pisweep.spec_load import load_study

ROOT = Path("/work/main")
out = {}
for name in ("ci", "smoke"):  # synthetic data: their v1 identity holds no path
    plan = make_plan(load_study(ROOT / "experiments" / f"{name}.yaml"))
    out[name] = {"inits": {i.label: i.uid for i in plan.inits}, "runs": {r.label: r.uid for r in plan.runs}}
Path(ROOT / "tests/data/uids-identity-v1.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
# a ledger as identity v1 left it: the ci study recorded, one run completed with its evals done
work = Path("/tmp/v1fix"); shutil.rmtree(work, ignore_errors=True); work.mkdir()
study = load_study(ROOT / "experiments" / "ci.yaml")
study = study.model_copy(update={"output_root": "/nonexistent/v1-fixture/out"})
plan = make_plan(study)
led = Ledger(work / "ledger.sqlite")
record_study(led, study.model_dump(mode="json"), "experiments/ci.yaml", plan, Layout(Path(study.output_root)))
run = plan.runs[0]
set_job_state(led, run.uid, "completed", None, epoch_reached=run.epochs)
set_eval_states(led, [(run.uid, e, t) for e in run.eval_epochs for t in plan.tasks], "done", "1", only_new=False)
set_job_state(led, plan.runs[1].uid, "failed", "RuntimeError: boom")
led.close()
print("schema", LATEST, [r.label for r in plan.runs])
