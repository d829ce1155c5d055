"""Run with pisweep at f487658 (identity v2) on PYTHONPATH."""
import json
from pathlib import Path

from pisweep.study.load import load_study
from pisweep.study.plan import make_plan

ROOT = Path("/work/main")
out = {}
for name in ("ci", "smoke"):  # synthetic data: their identity holds no path
    plan = make_plan(load_study(ROOT / "experiments" / f"{name}.yaml"))
    out[name] = {"inits": {i.label: i.uid for i in plan.inits}, "runs": {r.label: r.uid for r in plan.runs}}
Path(ROOT / "tests/data/uids-identity-v2.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
print({k: len(v["runs"]) for k, v in out.items()})
