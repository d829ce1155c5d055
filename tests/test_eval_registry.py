"""The suite registry: the paper's 29 + 2 DataComp keys, main metrics, folders and coverage."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pisweep.errors import EvalError
from pisweep.eval import registry as R

PROTOCOL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-protocol.md"
LITERAL_KEYS = [
    "imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-o", "imagenet-r", "objectnet",
    "vtab/caltech101", "cifar10", "vtab/cifar100", "vtab/clevr_count_all", "vtab/clevr_closest_object_distance",
    "vtab/dtd", "vtab/eurosat", "vtab/flowers", "vtab/pets", "vtab/pcam", "vtab/resisc45", "vtab/svhn",
    "vtab/kitti_closest_vehicle_distance", "cars", "fgvc_aircraft", "food101", "country211", "gtsrb", "mnist",
    "stl10", "renderedsst2", "voc2007",
    "retrieval/flickr_1k_test_image_text_retrieval", "retrieval/mscoco_2014_5k_test_image_text_retrieval",
]


def protocol_keys() -> list[str]:
    """Backticked keys of §1.6 of paper-protocol.md, up to the metric-column bullet; else the literal list."""
    if not PROTOCOL.is_file():
        return LITERAL_KEYS
    text = PROTOCOL.read_text()
    section = text[text.index("### 1.6"):text.index("### 1.7")]
    section = section[:section.index("Per-epoch eval files")]
    return [k for k in re.findall(r"`([^`]+)`", section) if "/" in k or re.fullmatch(r"[a-z0-9_\-]+", k)]


def test_suite_keys_match_the_paper_verbatim():
    keys = protocol_keys()
    assert len(keys) == 31 and len(set(keys)) == 31
    assert sorted(R.SUITE_KEYS) == sorted(keys)
    assert sorted(keys) == sorted(LITERAL_KEYS)
    assert len(R.CLASSIFICATION_KEYS) == 29 and len(R.RETRIEVAL_KEYS) == 2
    assert "sun397" not in R.TASKS and "nights_2afc" not in R.SUITE_KEYS


def test_main_metrics_as_datacomp_defines_them():
    mpcr = {k for k, t in R.TASKS.items() if t.main_metric == "mean_per_class_recall"}
    assert mpcr == {"vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets"}
    for key in R.RETRIEVAL_KEYS:
        assert R.TASKS[key].main_metric == "mean_recall@1" and R.TASKS[key].kind == "retrieval"
    others = set(R.CLASSIFICATION_KEYS) - mpcr
    assert {R.TASKS[k].main_metric for k in others} == {"acc1"}
    for t in R.TASKS.values():
        assert t.main_metric in R.metric_names(t.kind)


@pytest.mark.parametrize("key,folder", [
    ("imagenet1k", "wds_imagenet1k"), ("cifar10", "wds_vtab-cifar10"), ("vtab/cifar100", "wds_vtab-cifar100"),
    ("food101", "wds_food101"), ("imagenet-a", "wds_imagenet-a"), ("vtab/pets", "wds_vtab-pets"),
    ("retrieval/flickr_1k_test_image_text_retrieval", "wds_flickr30k"),
    ("retrieval/mscoco_2014_5k_test_image_text_retrieval", "wds_mscoco_captions"),
])
def test_default_folder_names(key, folder):
    assert R.TASKS[key].folder_name == folder
    assert R.lookup(folder) is R.TASKS[key]


def test_resolve_folder_overrides_and_datacomp_names(tmp_path):
    assert R.resolve_folder(tmp_path, "cifar10", {}) == tmp_path / "wds_vtab-cifar10"
    (tmp_path / "wds_cifar10_test").mkdir()  # DataComp's own download name is accepted
    assert R.resolve_folder(tmp_path, "cifar10", {}) == tmp_path / "wds_cifar10_test"
    (tmp_path / "wds_vtab-cifar10").mkdir()  # CLIP_benchmark's name wins when both exist
    assert R.resolve_folder(tmp_path, "cifar10", {}) == tmp_path / "wds_vtab-cifar10"
    assert R.resolve_folder(tmp_path, "cifar10", {"cifar10": "elsewhere/c10"}) == tmp_path / "elsewhere/c10"
    assert R.resolve_folder(tmp_path, "cifar10", {"cifar10": "/abs/c10"}) == Path("/abs/c10")
    assert R.resolve_folder(tmp_path, "wds_foo", {}) == tmp_path / "wds_foo"


def test_coverage(tmp_path):
    for name in ("wds_imagenet1k", "wds_flickr30k"):
        (tmp_path / name / "test").mkdir(parents=True)
        (tmp_path / name / "test" / "nshards.txt").write_text("1\n")
    (tmp_path / "wds_vtab-pets").mkdir()  # a folder without a test split is still missing
    (tmp_path / "mine" / "test").mkdir(parents=True)
    (tmp_path / "mine" / "test" / "nshards.txt").write_text("1\n")
    keys = list(R.SUITE_KEYS) + ["nights_2afc"]
    present, missing = R.coverage(tmp_path, keys, {"gtsrb": "mine"})
    assert present == ["imagenet1k", "gtsrb", "retrieval/flickr_1k_test_image_text_retrieval"]
    assert len(missing) == 28 and "nights_2afc" not in missing
    assert missing["vtab/pets"] == tmp_path / "wds_vtab-pets"
    assert missing["cifar10"] == tmp_path / "wds_vtab-cifar10"


def test_get_task_and_pseudo_task():
    assert R.get_task("nights_2afc").kind == "2afc"
    with pytest.raises(EvalError, match="unknown eval task 'sun397'"):
        R.get_task("sun397")
    assert R.folder_task("wds_foo", "retrieval").main_metric == "mean_recall@1"
    with pytest.raises(EvalError):
        R.folder_task("wds_foo", "multilabel")


def test_builtin_prompts():
    assert len(R.builtin_classnames("imagenet1k")) == 1000
    assert R.builtin_classnames("imagenet-a")[0] == "stingray"
    assert len(R.builtin_classnames("imagenet-r")) == 200 and len(R.builtin_classnames("imagenet-o")) == 200
    assert len(R.builtin_templates("imagenet1k")) == 80
    assert R.builtin_templates("objectnet") == R.builtin_templates("imagenet1k")  # CLIP_benchmark's default
    assert len(R.builtin_templates("cifar10")) == 18 and len(R.builtin_templates("food101")) == 1
    assert R.builtin_classnames("cars") is None  # not shipped by CLIP_benchmark: the folder must have it
    assert R.builtin_templates("wds_unknown") == R.builtin_templates("imagenet1k")
    for key in R.CLASSIFICATION_KEYS:
        assert all("{c}" in t for t in R.builtin_templates(key))
