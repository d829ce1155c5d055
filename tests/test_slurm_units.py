"""The slurm executor's pure parts: sacct/squeue parsing, site profiles, and shell-safe job parameters."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pisweep.errors import SpecError
from pisweep.executors.profile import SiteProfile, load_profile
from pisweep.executors.sacct import parse_sacct, parse_squeue
from pisweep.executors.slurm import executor_params
from pisweep.runner.slurm import _duration
from pisweep.study.load import load_study

ROOT = Path(__file__).resolve().parent.parent

SACCT = """\
12|COMPLETED|0:0||localhost|2026-11-29T16:00:00|2026-11-29T16:00:09
12.batch|COMPLETED|0:0||localhost|2026-11-29T16:00:00|2026-11-29T16:00:09
13_0|CANCELLED by 0|0:15||localhost|2026-11-29T16:00:00|2026-11-29T16:00:05
13_1|PREEMPTED|0:15||localhost|2026-11-29T16:00:00|2026-11-29T16:00:05
14|NODE_FAIL|1:0||node3|2026-11-29T16:00:00|2026-11-29T16:00:05
15|PENDING|0:0|None||Unknown|Unknown
"""


def test_parse_sacct_keeps_allocations_and_maps_states():
    jobs = parse_sacct(SACCT)
    assert set(jobs) == {"12", "13_0", "13_1", "14", "15"}
    assert {k: v.state for k, v in jobs.items()} == {"12": "completed", "13_0": "cancelled", "13_1": "preempted",
                                                     "14": "vanished", "15": "queued"}
    assert jobs["13_0"].slurm_state == "CANCELLED" and jobs["14"].nodes == "node3"


def test_parse_squeue():
    assert parse_squeue("21|PENDING|DependencyNeverSatisfied\n22|RUNNING|None\n") == {
        "21": ("PENDING", "DependencyNeverSatisfied"), "22": ("RUNNING", "None")}


def test_time_limits():
    assert _duration("00:02:00") == 120 and _duration("1-00:00:00") == 86400 and _duration("UNLIMITED") is None
    assert _duration("5") == 5 and _duration("10:30") == 630


def test_profiles_load_and_bad_ones_name_the_file(tmp_path):
    assert load_profile(ROOT / "slurm_templates/example-site.yaml").account == "my-lab"
    assert load_profile(ROOT / "slurm_templates/dev-cluster.yaml").partition == "debug"
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: gpu\nkinds: {training: {time_min: 5}}\nextra: {'--mem; rm -rf /': 1}\n")
    with pytest.raises(SpecError) as e:
        load_profile(bad)
    assert "bad.yaml: invalid site profile: extra: sbatch option names must be lower-case words" in str(e.value)
    assert "kinds: unknown job kinds ['training']; allowed: init, train, eval" in str(e.value)
    with pytest.raises(SpecError, match="does not exist"):
        load_profile(tmp_path / "none.yaml")


def test_job_parameters_are_shell_safe_and_follow_profile(tmp_path):
    study = load_study(ROOT / "experiments/main.yaml")
    profile = SiteProfile(partition="gpu", account="lab", setup=["module load cuda"],
                          kinds={"eval": {"partition": "short", "time_min": 30}})
    weird = tmp_path / "snap shot; echo pwned 'x'"
    params = executor_params(study, profile, "train", "pisweep.pi-main.train.x", weird)
    assert params["nodes"] == 1 and params["gpus_per_node"] == 8 and params["partition"] == "gpu"
    assert params["account"] == "lab" and params["additional_parameters"]["requeue"] is True
    export = params["setup"][0]
    assert shlex.split(export) == ["export", f"PYTHONPATH={weird}${{PYTHONPATH:+:$PYTHONPATH}}"]
    ev = executor_params(study, profile, "eval", "n", weird)
    assert ev["partition"] == "short" and ev["time"] == 30


def test_scale_names_must_be_plain(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\noutput_root: o\ndata:\n  train:\n    'a b;rm': {shards: 's/{0..3}.tar', samples: 5}\n"
                 "grid: {scale: ['a b;rm']}\n")
    with pytest.raises(SpecError, match="data.train: .*scale names"):
        load_study(p)


def render_sbatch(kind: str) -> str:
    """The sbatch file of one job of experiments/main.yaml under slurm_templates/example-site.yaml, with this
    machine's paths replaced by placeholders."""
    import sys

    from pisweep.runner.slurm import make_executor

    study = load_study(ROOT / "experiments/main.yaml")
    profile = load_profile(str(ROOT / "slurm_templates/example-site.yaml"))
    snapshot = Path("/out/code/abc123")
    params = executor_params(study, profile, kind, f"pisweep.pi-main.{kind}.cell", snapshot)
    folder = Path("/out/slurm") / kind
    text = make_executor(folder, params)._make_submission_file_text(
        f"{sys.executable} -u -m submitit.core._submit {folder}", "UID")
    return text.replace(sys.executable, "PYTHON")


@pytest.mark.parametrize("kind", ["init", "train", "eval", "posthoc"])
def test_sbatch_files_match_their_golden_records(kind):
    """What a site's scheduler receives, line by line. On a deliberate change: delete the record and rerun."""
    record = ROOT / "tests" / "data" / f"sbatch-{kind}.golden.txt"
    text = render_sbatch(kind)
    if not record.exists():
        record.write_text(text)
        pytest.fail(f"wrote {record}: check it and commit it")
    assert text == record.read_text(), f"sbatch for {kind} jobs changed; if that is intended, delete {record}"
