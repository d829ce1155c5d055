"""Study files: valid ones load; bad ones give one error naming the file, line, field path and what is allowed."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pisweep.errors import SpecError
from pisweep.study.load import load_study

GOOD = textwrap.dedent("""\
    name: t1
    output_root: out
    data:
      synthetic:
        root: data
    model:
      name: pisweep-tiny
    grid:
      scale: [tiny]
      epochs: [2]
""")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as e:
        load_study(write(tmp_path, text))
    return str(e.value)


def test_good_file_loads_with_authors_defaults_and_paths_relative_to_the_file(tmp_path):
    study = load_study(write(tmp_path, GOOD))
    assert study.output_root == str(tmp_path / "out")
    assert study.data.synthetic.root == str(tmp_path / "data")
    assert study.stage1.optim.warmup_steps == 150 and study.stage1.global_batch_size == 768
    assert study.stage1.margin == 0.05
    assert study.stage2.optim.warmup_fraction == 0.04267 and study.stage2.optim.warmup_steps is None
    assert study.stage2.grad_clip == 3.0
    assert study.stage2.optim.betas == (0.9, 0.98) and study.stage2.optim.eps == 1e-8
    assert study.executor.name == "local"


def test_unknown_key_names_line_field_and_allowed_keys(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("  epochs: [2]", "  epochs: [2]\n  sead: [0]"))
    assert f"{tmp_path / 'study.yaml'}:11: grid.sead: unknown key (allowed: init, scale, epochs, seed, nights_fraction)" in msg


def test_bad_value_names_field_path_and_value(tmp_path):
    text = GOOD + "stage2:\n  optim:\n    lr: -1\n    warmup_steps: 5\n"
    msg = error_of(tmp_path, text)
    assert ":13: stage2.optim.lr: Input should be greater than 0 (got -1)" in msg


def test_bad_init_method_lists_allowed_values(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("  scale: [tiny]", "  init: [random, perceptive]\n  scale: [tiny]"))
    assert "grid.init.1:" in msg and "'random', 'perceptual', 'shuffled', 'pixel', 'norm_matched' or 'posthoc'" in msg


def test_missing_required_field(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("name: t1\n", ""))
    assert "name: required field is missing" in msg


def test_scale_not_in_data_names_grid_position(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("scale: [tiny]", "scale: [tiny, huge]"))
    assert "study.yaml:9: grid.scale.1: scale 'huge' is not one of the data's scales ['tiny']" in msg


def test_unknown_eval_task(tmp_path):
    msg = error_of(tmp_path, GOOD + "eval:\n  tasks: [imagenet1k, imagenet-2k]\n")
    assert "eval.tasks.1: unknown task 'imagenet-2k'" in msg


def test_several_problems_reported_at_once(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("epochs: [2]", "epochs: [0, 0]") + "bogus: 1\n")
    assert "invalid study (2 problems)" in msg or "invalid study (3 problems)" in msg
    assert "bogus: unknown key" in msg and "grid.epochs" in msg


def test_not_yaml_and_missing_file(tmp_path):
    assert "not valid YAML" in error_of(tmp_path, "name: [unclosed\n")
    with pytest.raises(SpecError, match="no such study file"):
        load_study(tmp_path / "nope.yaml")


def test_data_needs_one_source(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("  synthetic:\n    root: data\n", "  eval_root: /x\n"))
    assert "data: no training data" in msg


def test_cli_exit_code_and_nothing_written(tmp_path, capsys):
    from pisweep.cli.main import main

    bad = write(tmp_path, GOOD.replace("epochs: [2]", "epochs: [two]"))
    assert main(["submit", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "grid.epochs.0" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_docs_spec_lists_every_field():
    """docs/spec.md's table names every field of the study file (``a.{b,c}.d`` stands for a.b.d and a.c.d)."""
    import re
    import typing

    from braceexpand import braceexpand
    from pydantic import BaseModel

    from pisweep.study.spec import Study

    def paths(model, prefix=""):
        for name, field in model.model_fields.items():
            args = typing.get_args(field.annotation) or (field.annotation,)
            nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if nested and typing.get_origin(field.annotation) is not dict:
                yield from paths(nested[0], f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    doc = (Path(__file__).resolve().parent.parent / "docs" / "spec.md").read_text()
    named = {p for span in re.findall(r"^\| `([^`]+)`", doc, re.M) for p in braceexpand(span)}
    assert sorted(set(paths(Study)) - named) == []
