"""What a job's result depends on: the one definition, used by the uids (study/plan.py) and by the check that a
resubmitted study did not change a recorded result (ledger/ingest.py).

Identity versions. A study is recorded with the version it was planned under and keeps it: its uids never move.

- v1 (pisweep up to the renovation): a uid hashes every result-affecting field, defaults included, and the data's
  paths. Adding a spec field with a default, or moving a dataset to a new mount, renamed every run.
- v2 and v3: a uid hashes the version, the result-affecting fields that differ from the defaults pinned for v2
  (``identity-v2.json`` beside this module: every result-affecting default, and the numerics that change results
  but are no field), and the data by what it is, not where it lies: a training scale by its sample count and its
  shards' names (file and folder names; the mount above them does not count), NIGHTS by its folder's name, the
  synthetic data by its generator's configuration. tests/test_identity.py fails when a pinned default changes
  without a new version, so two configurations never share a uid.
- v3 (recipes, study/recipe.py): the stage-2 warmup is a fraction of the run, a scale is a seeded random subset of
  shards (held in the data's identity), and control inits hand on their seed's perceptual epoch. Studies recorded
  under v1 and v2 are loaded with what they ran (recipe.LEGACY).
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from pathlib import PurePath
from typing import Any

from pisweep.data.shardlist import expand_shards
from pisweep.errors import PlanError
from pisweep.study.spec import ModelSpec, PosthocSpec, Stage1Spec, Stage2Spec, Study

IDENTITY_VERSION = 3
VERSIONS = (1, 2, 3)
UID_LEN = 12

#: Fields of a stage that change how a job runs but never what it computes. (Outside model, stage1, stage2 and
#: data no section of a study is in a job's identity: executor, wandb, eval, paths of the output and the ledger;
#: the grid's axes are the jobs themselves.)
NOT_RESULT = {
    "stage1": frozenset({"workers"}),
    "stage2": frozenset({"workers", "checkpoint_every_steps", "log_every_steps", "keep_weights", "keep_resume"}),
    "posthoc": frozenset({"workers", "from_epochs"}),  # (the source epoch is each cell's own identity)
}
#: The identity version the post-hoc arm came with: its fields hash against that version's table in every study.
POSTHOC_SINCE = 3
#: v2 folds stage1.seed_offset into the init's seed: (seed 0, offset 42) and (seed 42, offset 0) are one init.
_V2_FOLDED = {"stage1": frozenset({"seed_offset"})}
#: Fields added after v1, with the value that is v1's behaviour: a v1 identity holds them only when they differ
#: from it (so v1 uids never move, and a v1 study that sets one gets a new uid, not a collision). (v2 pins them in
#: its table, identity-v2.json, at these values.)
_OLD_OPTIM = {"warmup_fraction": None, "schedule": "cosine"}
_AFTER_V1 = {"model": {"init_logit_scale": None},
             "stage1": {"handoff": "best_val", "drop_last": False, "optim": _OLD_OPTIM},
             "stage2": {"accumulation_steps": 1, "logit_scale_clamp": "after_step", "interpolation": "bicubic",
                        "optim": _OLD_OPTIM}}

#: What changes results without being a field: pinned with the defaults. Change an entry when the implementation
#: changes what it computes (and bump IDENTITY_VERSION).
NUMERICS = {
    "attention": "open_clip's default block (nn.MultiheadAttention), open_clip 3.3",
    "augment": "DeCLIP / MoCo-v2 train transform as in train/augment.py, v1",
    "bad_samples": "an undecodable training sample fails the job",
    "stage1_handoff": "stage1.handoff; a control init hands on the epoch its seed's perceptual init hands on",
}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def uid_of(kind: str, identity: dict[str, Any]) -> str:
    return hashlib.sha256(f"{kind}:{canonical_json(identity)}".encode()).hexdigest()[:UID_LEN]


def check_version(version: int) -> int:
    if version not in VERSIONS:
        raise PlanError(f"identity version {version} is not one of {VERSIONS}: a newer pisweep recorded this study; "
                        f"upgrade pisweep to plan it")
    return version


# -- the pinned defaults -------------------------------------------------------------------------------------------
def live_defaults() -> dict[str, Any]:
    """Every result-affecting default of this code, and the numerics: what a version pins."""
    return {"model": ModelSpec().model_dump(mode="json"),
            "stage1": _drop(Stage1Spec().model_dump(mode="json"), "stage1", 2),
            "stage2": _drop(Stage2Spec().model_dump(mode="json"), "stage2", 2),
            "posthoc": _drop(PosthocSpec().model_dump(mode="json"), "posthoc", 2),
            "numerics": dict(NUMERICS)}


@lru_cache(maxsize=None)
def pinned_defaults(version: int) -> dict[str, Any]:
    """The defaults version ``version`` (>= 2) hashes against, as recorded in ``identity-v<version>.json``."""
    text = resources.files("pisweep.study").joinpath(f"identity-v{version}.json").read_text()
    return json.loads(text)


# -- a study's result-affecting view ----------------------------------------------------------------------------------
def result_view(study: Study, version: int, full: bool = False) -> dict[str, Any]:
    """Everything in ``study`` that a job's result depends on, as the identity of ``version`` sees it; ``full``:
    with the fields at their defaults too (what a reader compares), else as hashed."""
    check_version(version)
    data = {"nights": _data(study, version, "nights"),
            "train": {scale: _data(study, version, "train", scale) for scale in study.data.scale_names()}}
    return {"model": _section(study, version, "model", full), "stage1": _section(study, version, "stage1", full),
            "stage2": _section(study, version, "stage2", full), "posthoc": _posthoc(study, full), "data": data}


#: How a dose init's share of NIGHTS' train triplets is chosen (data/nights.py dose_subset): held in its identity.
DOSE_RULE = "sha256-of-id-v1"


def init_identity(view: dict[str, Any], version: int, method: str, seed: int, random_seed: int | None = None,
                  fraction: float = 1.0) -> dict[str, Any]:
    """A stage-1 init's identity from its study's :func:`result_view`; ``seed``: the stage-1 seed (offset added);
    ``random_seed`` (norm_matched): the seed of the random vision init it rescales (the run's seed); ``fraction``:
    the share of NIGHTS' train triplets it trains on (held only when it is not all of them)."""
    ident = {"method": method, "seed": seed, "model": view["model"], "stage1": view["stage1"],
             "data": view["data"]["nights"]}
    if random_seed is not None:
        ident["random_seed"] = random_seed
    if fraction != 1.0:
        ident["nights_subset"] = {"fraction": fraction, "rule": DOSE_RULE}
    return _versioned(ident, version)


def run_identity(view: dict[str, Any], version: int, init: str, init_uid: str | None, scale: str, epochs: int,
                 seed: int) -> dict[str, Any]:
    """A stage-2 run's identity from its study's :func:`result_view`."""
    ident = {"init": init, "init_uid": init_uid, "model": view["model"], "stage2": view["stage2"],
             "data": view["data"]["train"][scale], "epochs": epochs, "seed": seed}
    return _versioned(ident, version)


def posthoc_identity(view: dict[str, Any], version: int, source_uid: str, source_epoch: int) -> dict[str, Any]:
    """A post-hoc fine-tune's identity: its source (a run's uid, which holds the model, the run's recipe and seed,
    and the epoch), the fine-tune's recipe and the NIGHTS data."""
    ident = {"posthoc": view["posthoc"], "source": source_uid, "source_epoch": source_epoch,
             "data": view["data"]["nights"]}
    return _versioned(ident, version)


def drift(old: Study, new: Study, version: int) -> list[str]:
    """Field-by-field differences of what the recorded jobs' results depend on (``section.field: old -> new``)."""
    return _diff(result_view(old, version, full=True), result_view(new, version, full=True))


def _versioned(ident: dict[str, Any], version: int) -> dict[str, Any]:
    return ident if version == 1 else {"identity": version, **ident}


def _section(study: Study, version: int, name: str, full: bool = False) -> dict[str, Any]:
    dump = _drop(getattr(study, name).model_dump(mode="json"), name, version)
    if version == 1:
        return _strip_at(dump, _AFTER_V1[name])
    return dump if full else _non_default(dump, pinned_defaults(version)[name])


def _posthoc(study: Study, full: bool) -> dict[str, Any]:
    dump = _drop(study.posthoc.model_dump(mode="json"), "posthoc", POSTHOC_SINCE)
    return dump if full else _non_default(dump, pinned_defaults(POSTHOC_SINCE)["posthoc"])


def _strip_at(dump: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """``dump`` without the fields of ``old`` that hold the value given there (nested mappings key by key)."""
    out = {}
    for key, value in dump.items():
        if key not in old:
            out[key] = value
        elif isinstance(old[key], dict) and isinstance(value, dict):
            out[key] = _strip_at(value, old[key])
        elif value != old[key]:
            out[key] = value
    return out


def _drop(dump: dict[str, Any], name: str, version: int) -> dict[str, Any]:
    skip = NOT_RESULT.get(name, frozenset()) | (_V2_FOLDED.get(name, frozenset()) if version >= 2 else frozenset())
    return {k: v for k, v in dump.items() if k not in skip}


def _non_default(value: Any, default: Any) -> Any:
    """The part of ``value`` that differs from ``default`` (dicts compared key by key, recursively)."""
    if not isinstance(value, dict) or not isinstance(default, dict):
        return value
    out = {}
    for key, v in value.items():
        if key not in default:
            out[key] = v
        elif v != default[key]:
            out[key] = _non_default(v, default[key])
    return out


def _data(study: Study, version: int, part: str, scale: str | None = None) -> dict[str, Any]:
    """What identifies the data a job reads."""
    data = study.data
    if data.synthetic is not None:
        synth = {k: v for k, v in data.synthetic.identity_dump().items() if k != "root"}
        if part == "train":
            return {"synthetic": synth, "scale": scale, "samples": data.synthetic.train_scales[scale],
                    **_subset(study, version)}
        return {"synthetic": synth}
    if part == "train":
        s = data.train[scale]
        if version == 1:
            return {"shards": s.shards, "samples": s.samples, **_subset(study, version)}
        return {"shards": shard_names_digest(s.shards), "samples": s.samples, **_subset(study, version)}
    if version == 1:
        return {"nights": data.nights}
    return {"nights": PurePath(data.nights).name if data.nights else None}


def _subset(study: Study, version: int) -> dict[str, Any]:
    """Which shards make a scale (data.subset): held from v3 on; before, only when it is not v1/v2's prefix."""
    if version < 3 and study.data.subset == "prefix":
        return {}
    return {"subset": {"rule": study.data.subset, "seed": study.data.subset_seed}}


def shard_names_digest(pattern: str) -> dict[str, Any]:
    """A pattern's shards by name: each shard as ``<folder name>/<file name>``, so a dataset moved to a new mount
    keeps its identity while two datasets in differently named folders do not share one."""
    names = [f"{PurePath(p).parent.name}/{PurePath(p).name}" for p in expand_shards(pattern)]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return {"count": len(names), "first": names[0], "last": names[-1], "sha256": digest}


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
