"""Preflight: what would fail later is found before anything is submitted, and nothing is written."""
from __future__ import annotations

import json
import textwrap

import pytest

from pisweep.cli.main import main
from pisweep.data.shardlist import expand_shards
from pisweep.errors import PreflightError
from pisweep.study.datapaths import preflight, resolve
from pisweep.study.load import load_study


def make_shards(folder, n, per):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:05d}.tar").write_bytes(b"")
    (folder / "sizes.json").write_text(json.dumps({f"{i:05d}.tar": per for i in range(n)}))


def spec(tmp_path, train, nights="nights", init="[random, perceptual]", workers=2):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: pf
        output_root: out
        data:
          nights: {nights}
          eval_root: evalroot
          train: {train}
        stage2: {{workers: {workers}}}
        eval: {{tasks: [imagenet1k, cifar10]}}
        grid: {{init: {init}, scale: [s]}}
    """))
    return p


def problems(tmp_path, **kw):
    study = load_study(spec(tmp_path, **kw))
    return preflight(study, resolve(study)).problems


def test_brace_expansion():
    assert expand_shards("/d/{000..002}.tar") == ["/d/000.tar", "/d/001.tar", "/d/002.tar"]
    assert expand_shards("/d/{a,b}-{0..1}.tar") == ["/d/a-0.tar", "/d/a-1.tar", "/d/b-0.tar", "/d/b-1.tar"]
    assert expand_shards("/d/{0..1}.tar::/e/x.tar") == ["/d/0.tar", "/d/1.tar", "/e/x.tar"]


def test_missing_nights_and_shards(tmp_path):
    found = problems(tmp_path, train='{s: {shards: "sh/{00000..00003}.tar", samples: 100}}')
    assert any(p.startswith("data.nights:") and "data.csv does not exist" in p for p in found)
    assert any("data.train.s.shards: 4 of 4 shards missing" in p for p in found)


def test_sample_count_larger_than_shards(tmp_path):
    make_shards(tmp_path / "sh", 4, 10)
    found = problems(tmp_path, train='{s: {shards: "sh/{00000..00003}.tar", samples: 100}}', init="[random]")
    assert found == ["data.train.s.samples: 100 samples asked, but the shards hold 40"]


def test_multi_source_patterns_are_read_as_training_reads_them(tmp_path):
    make_shards(tmp_path / "a", 2, 10)
    make_shards(tmp_path / "b", 1, 10)
    ok = problems(tmp_path, train='{s: {shards: "a/{00000..00001}.tar::b/00000.tar", samples: 30}}', init="[random]",
                  workers=1)
    assert ok == []
    found = problems(tmp_path, train='{s: {shards: "a/{00000..00001}.tar::b/00000.tar", samples: 31}}',
                     init="[random]", workers=1)
    assert found == ["data.train.s.samples: 31 samples asked, but the shards hold 30"]


def test_fewer_shards_than_workers(tmp_path):
    make_shards(tmp_path / "sh", 4, 10)
    found = problems(tmp_path, train='{s: {shards: "sh/{00000..00003}.tar", samples: 15}}', init="[random]",
                     workers=3)
    assert found == ["data.train.s: 2 shards cover the scale but stage2.workers x ranks = 3 x 1; every loader worker "
                     "needs at least one shard"]


def test_eval_coverage_reported_not_fatal(tmp_path):
    make_shards(tmp_path / "sh", 4, 10)
    (tmp_path / "evalroot" / "wds_imagenet1k" / "test").mkdir(parents=True)
    (tmp_path / "evalroot" / "wds_imagenet1k" / "test" / "nshards.txt").write_text("1\n")
    study = load_study(spec(tmp_path, train='{s: {shards: "sh/{00000..00003}.tar", samples: 20}}', init="[random]"))
    pf = preflight(study, resolve(study))
    assert pf.problems == []
    assert pf.coverage_present == ["imagenet1k"] and list(pf.coverage_missing) == ["cifar10"]


def test_submit_refuses_and_writes_nothing(tmp_path, capsys):
    path = spec(tmp_path, train='{s: {shards: "sh/{00000..00003}.tar", samples: 100}}')
    assert main(["submit", str(path)]) == 2
    err = capsys.readouterr().err
    assert "preflight found 2 problem(s)" in err and "data.nights" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(PreflightError):
        preflight(load_study(path), resolve(load_study(path))).raise_if_problems("pf")


def test_a_global_batch_the_ranks_cannot_split_is_refused_before_anything_is_queued(tmp_path):
    make_shards(tmp_path / "sh", 8, 10)
    path = spec(tmp_path, '{s: {shards: "sh/{00000..00007}.tar", samples: 40}}', init="[random]", workers=1)
    text = path.read_text().replace("stage2: {workers: 1}", "stage2: {workers: 1, global_batch_size: 8}")
    for shape, ok in (("{nodes: 1, gpus_per_node: 3}", False), ("{nodes: 3, gpus_per_node: 1}", True),
                      ("{nodes: 1, gpus_per_node: 4}", True)):
        path.write_text(text + f"executor: {{train: {shape}}}\n")
        found = preflight(load_study(path), resolve(load_study(path))).problems
        assert (found == []) == ok, (shape, found)
    path.write_text(text + "executor: {name: slurm, profile: p.yaml, train: {nodes: 3, gpus_per_node: 1}}\n")
    (tmp_path / "p.yaml").write_text("partition: debug\n")
    found = preflight(load_study(path), resolve(load_study(path))).problems
    assert found == ["stage2.global_batch_size: 8 does not split over the 3 ranks of a train job (executor.train: "
                     "nodes 3 x gpus_per_node 1) x stage2.accumulation_steps 1: it must be per-rank batch x ranks "
                     "x accumulation steps"]
    # 8 = 4 ranks x 2 passes splits; 3 passes do not
    for accumulation, ok in ((2, True), (3, False)):
        path.write_text(text.replace("global_batch_size: 8", f"global_batch_size: 8, accumulation_steps: "
                                                             f"{accumulation}")
                        + "executor: {train: {nodes: 1, gpus_per_node: 4}}\n")
        found = preflight(load_study(path), resolve(load_study(path))).problems
        assert (found == []) == ok, (accumulation, found)
        assert ok or "stage2.accumulation_steps 3" in found[0]
