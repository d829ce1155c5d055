"""Bad input at scale gets one clear error and the right exit code, and leaves nothing behind: duplicate keys,
huge grids (refused before expansion), control characters, enum options, unsubmitted studies, broken pipes,
planted resume states, a full disk, and failures that would only repeat."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from pisweep.cli.main import main
from pisweep.errors import DiskFullError, SpecError, TrainingError
from pisweep.executors.profile import load_profile
from pisweep.executors.slurm import executor_params
from pisweep.job.contract import JobFile
from pisweep.job.events import read_events
from pisweep.ledger.db import Ledger
from pisweep.ledger.ingest import ingest, record_study
from pisweep.ledger.queries import snapshot
from pisweep.runner.run import run_job_file
from pisweep.runner.slurm import make_executor
from pisweep.study import plan as plan_module
from pisweep.study.layout import Layout
from pisweep.study.load import load_study
from pisweep.study.plan import check_grid_size, grid_size, make_plan
from pisweep.study.work import next_work
from pisweep.train.checkpoint import load_resume, save_weights

ROOT = Path(__file__).resolve().parent.parent
SMALL = textwrap.dedent("""\
    name: bad
    output_root: out
    data: {synthetic: {root: data}}
    model: {name: pisweep-tiny}
    eval: {tasks: [imagenet1k]}
    grid: {init: [random], scale: [tiny], epochs: [2], seed: [0]}
""")


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the study file -------------------------------------------------------------------------------------------------
def test_a_duplicate_key_is_an_error_naming_both_lines(tmp_path, capsys):
    path = write(tmp_path, SMALL + "stage2: {workers: 1}\nstage2: {workers: 4}\n")
    with pytest.raises(SpecError, match=r"s.yaml:8: duplicate key 'stage2' \(first at line 7, again at line 8\)"):
        load_study(path)
    nested = write(tmp_path, SMALL.replace("eval: {tasks: [imagenet1k]}", "eval:\n  every: 1\n  every: 2"), "n.yaml")
    with pytest.raises(SpecError, match=r"n.yaml:7: duplicate key 'every' \(first at line 6, again at line 7\)"):
        load_study(nested)
    assert main(["plan", str(path)]) == 2
    assert "duplicate key 'stage2'" in capsys.readouterr().err


def test_a_duplicate_key_in_a_site_profile_is_an_error(tmp_path):
    path = write(tmp_path, "partition: debug\naccount: a\npartition: gpu\n", "site.yaml")
    with pytest.raises(SpecError, match=r"site.yaml:3: .*duplicate key 'partition' \(first at line 1"):
        load_profile(path)


@pytest.mark.parametrize("field, value", [
    ("output_root", "/x/out\ntouch /tmp/p #"), ("output_root", "/x/\x00nul"), ("name", "a\tb"),
    ("eval", {"tasks": ["imagenet1k"], "folders": {"imagenet1k": "/data/in\n1k"}}),
    ("model", {"name": "pisweep-tiny", "config": {"note": "a\rb"}}),
])
def test_control_characters_are_refused_at_load_with_the_field_named(tmp_path, field, value):
    spec = yaml.safe_load(SMALL)
    spec[field] = value
    path = write(tmp_path, json.dumps(spec))
    with pytest.raises(SpecError, match=rf"{field}.*: .*control character"):
        load_study(path)


def test_control_characters_in_a_site_profile_are_refused(tmp_path):
    path = write(tmp_path, json.dumps({"partition": "debug", "setup": ["module load x\nrm -rf /"]}), "site.yaml")
    with pytest.raises(SpecError, match=r"setup: control character '\\n'"):
        load_profile(path)


@pytest.mark.parametrize("name", ["../../studies", "/tmp/x", "a/b", ".hidden"])
def test_a_model_name_is_a_name_never_a_path(tmp_path, name):
    spec = yaml.safe_load(SMALL)
    spec["model"] = {"name": name, "config": {"embed_dim": 8}}
    with pytest.raises(SpecError, match=r"model.name: must be an open_clip model name"):
        load_study(write(tmp_path, json.dumps(spec)))


def test_the_batch_script_of_hostile_strings_is_comments_exports_and_one_srun(tmp_path):
    """Strings a study may hold (spaces, quotes, $(), backticks, ;) stay inside their #SBATCH or export lines."""
    hostile = "we $(touch p) `id`; 'q\" x"
    spec = yaml.safe_load(SMALL)
    spec["output_root"] = str(tmp_path / f"out {hostile}")
    spec["executor"] = {"name": "slurm", "profile": str(tmp_path / "site.yaml")}
    setup = ["module load cuda/12 # the site's own line"]
    (tmp_path / "site.yaml").write_text(json.dumps({
        "partition": f"p {hostile}", "account": hostile, "qos": hostile, "constraint": hostile, "setup": setup,
        "extra": {"comment": hostile}}))
    study = load_study(write(tmp_path, json.dumps(spec)))
    profile = load_profile(study.executor.profile)
    for kind in ("init", "train", "eval"):
        params = executor_params(study, profile, kind, f"pisweep.bad.{kind}.x", Path(study.output_root) / "code")
        folder = Path(study.output_root) / "slurm" / kind
        text = make_executor(folder, params)._make_submission_file_text(
            f"{sys.executable} -u -m submitit.core._submit {folder}", "uid")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        srun = [ln for ln in lines if ln.startswith("srun ")]
        assert len(srun) == 1, text
        for ln in lines:
            assert ln.startswith("#") or ln.startswith("export ") or ln in setup or ln in srun, (ln, text)
        assert hostile.split()[1] not in "".join(ln for ln in lines if not ln.startswith(("#", "export")))\
            .replace(srun[0], "")


# -- grids at scale -------------------------------------------------------------------------------------------------
def test_a_huge_grid_is_refused_from_its_axis_lengths_before_any_expansion(tmp_path, capsys, monkeypatch):
    spec = yaml.safe_load(SMALL)
    spec["grid"] = {"init": ["random", "perceptual"], "scale": ["tiny"], "epochs": list(range(1, 1001)),
                    "seed": list(range(10_000))}  # 2 x 1000 x 10 000 = 2e7 runs
    path = write(tmp_path, json.dumps(spec))

    def expanded(*_a, **_k):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(plan_module, "uid_of", expanded)
    monkeypatch.setattr(plan_module, "RunJob", expanded)
    assert main(["plan", str(path)]) == 2
    msg = capsys.readouterr().err
    assert "20,010,000 jobs" in msg and "--max-jobs" in msg, msg
    assert main(["submit", str(path)]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("study", ["experiments/ci.yaml", "experiments/smoke.yaml", "experiments/main.yaml",
                                   "experiments/controls.yaml"])
def test_the_counted_grid_size_is_what_the_plan_expands_to(study):
    s = load_study(ROOT / study)
    size, plan = grid_size(s), make_plan(s)
    assert (size.inits, size.runs, size.evals) == (len(plan.inits), len(plan.runs), plan.n_evals)
    with pytest.raises(Exception, match="above the limit"):
        check_grid_size(s, max_jobs=size.jobs - 1)
    assert check_grid_size(s, max_jobs=size.jobs, max_evals=size.evals) == size


# -- commands -------------------------------------------------------------------------------------------------------
def test_an_unknown_enum_value_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["status", "x", "--state", "faild"])
    assert e.value.code == 2 and "invalid choice: 'faild'" in capsys.readouterr().err


def test_read_only_commands_on_an_unsubmitted_study_write_nothing(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    for cmd in (["status", str(path)], ["report", str(path)], ["logs", str(path), "x"], ["cancel", str(path)]):
        assert main(cmd) == 2, cmd
        assert "is not submitted" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # a ledger of another study is never written by a command naming this one
    other = tmp_path / "other.sqlite"
    led = Ledger(other)
    study = load_study(path)
    record_study(led, study.model_dump(mode="json"), str(path), make_plan(study), Layout(tmp_path / "o2"))
    led.close()
    renamed = write(tmp_path, SMALL.replace("name: bad", "name: another"), "another.yaml")
    before = other.read_bytes()
    assert main(["status", str(renamed), "--ledger", str(other)]) == 2
    assert "not submitted in the ledger" in capsys.readouterr().err and other.read_bytes() == before


def test_a_broken_pipe_exits_quietly(tmp_path):
    spec = yaml.safe_load(SMALL)
    spec["grid"]["seed"] = list(range(3000))  # a plan of about 1 MB: far more than a pipe holds
    path = write(tmp_path, json.dumps(spec))
    cmd = f"{sys.executable} -m pisweep.cli plan {path} --json | head -c 10"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("{") and "Traceback" not in proc.stderr and "Broken" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


# -- what is read from a job folder ---------------------------------------------------------------------------------
class _Planted:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_resume_state_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    _Planted.marker = marker
    path = tmp_path / "resume" / "state.pt"
    path.parent.mkdir()
    torch.save({"format": 1, "fingerprint": {}, "x": _Planted()}, path)
    with pytest.raises(TrainingError, match="is unreadable"):
        load_resume(path, {})
    assert not marker.exists()


# -- a full disk ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_names_the_folder_and_leaves_no_partial_file(tiny_fs):
    model = torch.nn.Linear(512, 512)  # 1 MB of weights on a 256 KB file system
    target = tiny_fs / "checkpoints" / "epoch_1.pt"
    with pytest.raises(DiskFullError, match=rf"no space left on {tiny_fs / 'checkpoints'}"):
        save_weights(target, 1, model)
    assert list((tiny_fs / "checkpoints").iterdir()) == []  # neither the final name nor a temp file
    assert DiskFullError.retry is False


# -- failures that would repeat fail the cell at once ---------------------------------------------------------------
def test_a_failure_that_repeats_fails_the_cell_without_spending_retries(tmp_path, recorded):
    spec = yaml.safe_load((ROOT / "experiments/ci.yaml").read_text())
    spec.update(output_root=str(tmp_path / "out"), name="repeat")
    spec["data"]["synthetic"]["root"] = str(tmp_path / "data")
    study, plan, layout, led = recorded(yaml.safe_dump(spec))
    (init,) = plan.inits
    folder = layout.init_dir(init.uid)
    job = JobFile("init", init.uid, str(folder), study.model_dump(mode="json"),
                  {"method": init.method, "seed": init.seed, "nights": str(tmp_path / "no-nights")})
    assert run_job_file(job.write(folder / "jobs" / "init-x.json")) == 1  # a real job, failing on missing data
    (ended,) = [ev for _, ev in read_events(folder) if ev["kind"] == "attempt_ended"]
    assert ended["data"]["outcome"] == "failed" and ended["data"]["retry"] is False
    assert "NIGHTS root not found" in ended["data"]["reason"]
    ingest(led, "repeat")
    work = next_work(plan, snapshot(led, "repeat", "1"), max_failures=study.executor.max_failures)
    assert study.executor.max_failures == 2 and init.uid in work.failed and not work.inits  # failed after 1 attempt


# -- read-only commands on a read-only ledger and output root -------------------------------------------------------
@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only for everyone, root included (a read-only bind mount of itself)."""
    mounted: list[Path] = []

    def make(folder: Path) -> None:
        ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
        if not ok:
            pytest.skip("needs root to bind-mount a folder read-only")
        mounted.append(folder)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_status_and_report_work_on_a_read_only_ledger(tmp_path, read_only, recorded, capsys):
    from pisweep.job.events import write_event

    root = tmp_path / "study"
    root.mkdir()
    study, plan, layout, led = recorded(SMALL, name="study/s.yaml", ledger=tmp_path / "study/out/ledger.sqlite")
    path = root / "s.yaml"
    (run,) = plan.runs
    write_event(layout.run_dir(run.uid), run.uid, "attempt_started", {"job_id": "local-1", "restart": 0},
                executor="local", host="h", pid=1, world_size=1)
    ingest(led, "bad")
    led.close()
    write_event(layout.run_dir(run.uid), run.uid, "epoch_done", {"job_id": "local-1", "restart": 0}, epoch=1, step=4,
                metrics={"train_loss": 1.0})  # not yet applied: it stays so, nothing can be written
    read_only(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    capsys.readouterr()
    assert main(["status", str(path), "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert [c["state"] for c in cells] == ["running"]
    assert main(["report", str(path)]) == 0
    assert main(["logs", str(path), run.label]) == 2  # no log yet: said, not a traceback
    assert "has no log yet" in capsys.readouterr().err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_submit_refuses_when_the_plan_does_not_fit_on_the_disk(tiny_fs, tmp_path, capsys):
    spec = yaml.safe_load((ROOT / "experiments/ci.yaml").read_text())
    spec.update(output_root=str(tiny_fs / "out"), name="no-room")
    spec["data"]["synthetic"]["root"] = str(tmp_path / "data")
    path = write(tmp_path, yaml.safe_dump(spec))
    assert main(["submit", str(path)]) == 2
    msg = capsys.readouterr().err
    assert "GB free" in msg and "weights files" in msg and "--ignore-disk" in msg, msg
    assert not (tiny_fs / "out").exists()  # refused before anything was written there
