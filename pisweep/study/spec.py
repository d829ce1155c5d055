"""The study spec: pydantic models loaded from one YAML file.

Pure: no torch, no files written. Unknown keys are refused everywhere (``extra="forbid"``), and every default of
a hyper-parameter names its source (shared/reference/paper-protocol.md, "§" below).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pisweep.data.synth_config import SynthConfig
from pisweep.study.arms import InitMethod
from pisweep.study.names import check_text, is_name
from pisweep.study.recipe import WARMUP_FRACTION, with_recipe

RecipeName = Literal["openclip", "authors"]
#: Learning-rate schedules (study/schedule.py): "cosine" is open_clip_train's (warmup (step+1)/W, the cosine sized
#: to the run's optimizer steps); "fork" is the authors' Lightning LambdaLR as it runs (warmup step/W, the cosine
#: sized to max(10000, 5 W) steps per epoch because the loader's length is unknown when it is built); "fork-sized"
#: the same lambda sized to the loader's micro-batches x epochs (what the fork's code means when the length is known).
ScheduleName = Literal["cosine", "fork", "fork-sized"]
ExecutorName = Literal["local", "slurm"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def no_duplicates(v: list) -> list:
    """``v``, or the error that names the values it repeats."""
    dup = sorted(str(x) for x, n in Counter(v).items() if n > 1)
    if dup:
        raise ValueError(f"duplicate values {dup}")
    return v


class Strict(BaseModel):
    """Unknown keys refused, frozen, and no control character in any string (see pisweep/names.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        return v if isinstance(v, BaseModel) else check_text(v)


class ScaleData(Strict):
    """One data scale: shards of ``shards`` that cover ``samples`` samples (which ones: ``data.subset``); an epoch
    is ``samples``."""

    shards: str = Field(description="brace pattern of webdataset shards, e.g. /data/yfcc/{00000..01539}.tar")
    samples: int = Field(gt=0, description="samples per epoch at this scale")


class SyntheticData(SynthConfig):
    """Small synthetic data in the real formats, generated under ``root`` when missing (see pisweep.data.synth)."""

    root: str = "data/synthetic"

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        return check_text(v)


class DataSpec(Strict):
    """Where the data lies: real paths, or ``synthetic`` (which then provides all three)."""

    nights: str | None = Field(None, description="NIGHTS root (ref/, distort/, data.csv)")
    train: dict[str, ScaleData] = Field(default_factory=dict, description="scale name -> shards + samples")
    eval_root: str | None = Field(None, description="folder of CLIP_benchmark webdataset task folders")
    synthetic: SyntheticData | None = None
    # Which shards make a scale of N samples (train/shards.py): "random-shards" takes the pattern's shards in a
    # seeded random order (``subset_seed``; the same for every arm and seed, so the scales that share a pattern are
    # nested: the 1M subset lies inside the 3M one); "prefix" takes them in the pattern's order (the download's).
    subset: Literal["random-shards", "prefix"] = "random-shards"
    subset_seed: int = Field(0, ge=0)

    @field_validator("train")
    @classmethod
    def _scale_names(cls, v: dict[str, ScaleData]) -> dict[str, ScaleData]:
        bad = [k for k in v if not NAME_RE.match(k)]
        if bad:
            raise ValueError(f"scale names {bad} must be letters, digits, '_', '.', '-' (they name jobs and folders)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if self.synthetic is not None and (self.nights or self.train or self.eval_root):
            raise ValueError("give either 'synthetic' or real paths (nights, train, eval_root), not both")
        if self.synthetic is None and not self.train:
            raise ValueError("no training data: set 'train' (scale -> shards, samples) or 'synthetic'")
        return self

    def scale_names(self) -> list[str]:
        return list(self.synthetic.train_scales) if self.synthetic is not None else list(self.train)

    def samples(self, scale: str) -> int:
        """Samples per epoch of ``scale``."""
        return self.synthetic.train_scales[scale] if self.synthetic is not None else self.train[scale].samples


class ModelSpec(Strict):
    """An open_clip model by name (e.g. ViT-B-32), or an inline open_clip model config registered as ``name``."""

    name: str = "ViT-B-32"  # §1.3: the paper's ViT-B/32
    config: dict[str, Any] | None = None
    # The learnable temperature's start, ln(1/T); None: the model's own (open_clip: ln(1/0.07), T = 0.07).
    init_logit_scale: float | None = None

    @field_validator("name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not is_name(v):
            raise ValueError("must be an open_clip model name (letters, digits, '_', '.', '-'), not a path: it names "
                             "the model's config file beside its checkpoints")
        return v


class OptimSpec(Strict):
    """AdamW and its schedule. The warmup is ``warmup_steps`` optimizer steps or ``warmup_fraction`` of the run's
    steps, one of the two (the recipe gives one; a study that sets either replaces both)."""

    lr: float = Field(5e-4, gt=0)  # §1.4 / §1.5: AdamW lr 5e-4
    weight_decay: float = Field(0.1, ge=0)  # §1.4 / §1.5: wd 0.1 (none on biases, norms, embeddings, logit scale)
    betas: tuple[float, float] = (0.9, 0.98)  # §1.4 / §1.5
    eps: float = Field(1e-8, gt=0)  # §1.4 / §1.5
    warmup_steps: int | None = Field(None, ge=0)  # stage-specific defaults below
    warmup_fraction: float | None = Field(None, ge=0, lt=1)
    min_lr: float = 0.0  # §1.4: cosine to 0
    schedule: ScheduleName = "cosine"

    @model_validator(mode="after")
    def _one_warmup(self) -> "OptimSpec":
        if (self.warmup_steps is None) == (self.warmup_fraction is None):
            raise ValueError("give the warmup as warmup_steps or as warmup_fraction (of the run's steps): "
                             + ("not both" if self.warmup_steps is not None else "neither is set"))
        return self


class NightsFit(Strict):
    """A training of the vision tower on NIGHTS triplets with the 2AFC hinge: stage 1 (the init) and the post-hoc
    fine-tune share these fields; their defaults are each one's own."""

    epochs: int = Field(32, ge=1)  # §1.4: 32 epochs (stage 1's defaults here; posthoc overrides its own)
    global_batch_size: int = Field(768, ge=1)  # §1.4: 128 per device x 6 devices
    margin: float = Field(0.05, gt=0)  # §1.4: hinge margin 0.05 on d = 1 - cos
    min_votes: int = Field(6, ge=1)  # §2.2: keep rows with votes >= 6
    drop_last: bool = False  # leave out an epoch's last, partial batch (the fork's NIGHTS loader: drop_last=True)
    optim: OptimSpec = OptimSpec(warmup_steps=150)  # §1.4: 150 warmup steps
    # The epoch handed on: "best_val" the lowest NIGHTS val loss, "last" the last epoch, or a fixed epoch (training
    # stops there; the schedule stays the full run's).
    handoff: Literal["best_val", "last"] | int = "best_val"
    workers: int = Field(2, ge=0)

    @field_validator("handoff")
    @classmethod
    def _handoff(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError("a fixed hand-off epoch must be >= 1")
        return v

    @model_validator(mode="after")
    def _handoff_in_range(self) -> "NightsFit":
        if isinstance(self.handoff, int) and self.handoff > self.epochs:
            raise ValueError(f"handoff epoch {self.handoff} is after the last epoch ({self.epochs})")
        return self

    def fixed_handoff(self) -> int | None:
        """The epoch handed on when the rule fixes it in advance ("last" or a number); None under "best_val"."""
        if isinstance(self.handoff, int):
            return self.handoff
        return None if self.handoff == "best_val" else self.epochs


class Stage1Spec(NightsFit):
    """Perceptual init on NIGHTS (§1.4, the authors' Lightning preset nights_init_vitb32): the whole vision tower,
    from its random init. ``handoff``: "best_val" is §1.4's checkpoint monitor, "last" what every stage-2 consumer of
    the fork loads (last.ckpt). Control inits hand on the epoch their seed's perceptual init hands on, so every arm
    gets as many stage-1 updates."""

    seed_offset: int = 0  # stage-1 seed = run seed + offset (the authors used 42 for one run)


#: open_clip's vision blocks hold their attention's packed QKV projection as in_proj_weight / in_proj_bias.
QKV = "visual.transformer.resblocks.*.attn.in_proj_*"


class PosthocSpec(NightsFit):
    """The post-hoc arm (grid.init "posthoc"): a random run's weights at a pretraining epoch, fine-tuned on NIGHTS.
    Defaults: the fork's config/trainingconfig/nights_ft_from_yfcc.json (only the vision blocks' attention QKV
    projections train, Adam lr 1e-5 without weight decay, betas (0.9, 0.999), batch 16, 64 epochs, 150 warmup steps
    then cosine, margin 0.05, bf16 on GPU, hand-off of the last epoch)."""

    # The source epochs of each random run: "last" (its last epoch) and/or epochs; a run gets a post-hoc cell for
    # each of them that it reaches. Their weights are kept whatever stage2.keep_weights says.
    from_epochs: list[int | Literal["last"]] = Field(default_factory=lambda: ["last"], min_length=1)
    # fnmatch patterns over the model's parameter names: the parameters that train (every other one is frozen and
    # stays bitwise the source's); they must name vision-tower parameters ("visual.").
    trainable: list[str] = Field(default_factory=lambda: [QKV], min_length=1)
    epochs: int = Field(64, ge=1)
    global_batch_size: int = Field(16, ge=1)
    # Adam = AdamW at weight decay 0
    optim: OptimSpec = OptimSpec(lr=1e-5, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=150)
    handoff: Literal["best_val", "last"] | int = "last"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU

    @field_validator("from_epochs")
    @classmethod
    def _from_epochs(cls, v: list) -> list:
        if any(isinstance(e, int) and e < 1 for e in v):
            raise ValueError("a source epoch must be >= 1 (or \"last\")")
        return no_duplicates(v)

    @field_validator("trainable")
    @classmethod
    def _visual(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not p.startswith("visual.")]
        if bad:
            raise ValueError(f"patterns {bad} do not name vision-tower parameters (they must start with 'visual.'): "
                             "the post-hoc arm fine-tunes the vision tower only")
        return v

    def source_epochs(self, epochs: int) -> list[int]:
        """The source epochs of a run of ``epochs`` epochs, in order: "last" is ``epochs``; later ones are left
        out."""
        wanted = {epochs if isinstance(e, str) else e for e in self.from_epochs}  # (the one word is "last")
        return sorted(e for e in wanted if e <= epochs)


class Stage2Spec(Strict):
    """Contrastive pretraining (§1.5, the authors' DeCLIP-style preset)."""

    global_batch_size: int = Field(8192, ge=1)  # §1.5 is 1024/device; open_clip's YFCC runs used 8 GPUs (§4.1)
    # Samples per optimizer step = global_batch_size; each step runs ``accumulation_steps`` forward/backward passes
    # of global_batch_size / accumulation_steps samples over all ranks (the contrastive negatives of one pass) and
    # averages their gradients, as Lightning's accumulate_grad_batches (the fork's preset: 6).
    accumulation_steps: int = Field(1, ge=1)
    # As a fraction of the run, the warmup is the same share of training at every scale: §1.5's 4.27 % (a fixed
    # 2500 steps would be 64 % of a 1M x 32 run and 4 % of a 15M one).
    optim: OptimSpec = OptimSpec(warmup_fraction=WARMUP_FRACTION)
    grad_clip: float | None = Field(3.0, gt=0)  # §1.5: the preset's 3 (the fork's code passes none: recipe authors)
    # Where exp(logit_scale) is held at <= 100: "after_step" clamps the parameter after every optimizer step
    # (open_clip_train), "in_loss" clamps the value the loss uses and leaves the parameter free (the fork's ClipLoss).
    logit_scale_clamp: Literal["after_step", "in_loss"] = "after_step"
    augment: bool = True  # §1.5: MoCo-v2/DeCLIP augmentation on by default
    # RandomResizedCrop's resampling: bicubic (open_clip's and §1.5's eval interpolation) or bilinear (torchvision's
    # default, which the fork's get_transform uses for training).
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU (§1.5: bf16-mixed)
    workers: int = Field(2, ge=0)
    sample_order: Literal["seeded-shards-v1"] = "seeded-shards-v1"  # how samples are ordered (changes results)
    checkpoint_every_steps: int | None = Field(None, ge=1)  # None: about every 10 minutes of training
    log_every_steps: int = Field(10, ge=1)
    # Retention (disk, never results). Weights files: "evaluated" keeps the epochs evaluation reads (every
    # eval.every-th and the last), "all" every epoch. The resume state (model + optimizer + RNG, ~3x a weights
    # file): "until_done" shrinks it to a small completion marker when the run ends, "always" keeps it.
    keep_weights: Literal["evaluated", "all"] = "evaluated"
    keep_resume: Literal["until_done", "always"] = "until_done"


class EvalSpec(Strict):
    """Zero-shot evaluation of every ``every``-th epoch checkpoint (and the last)."""

    tasks: list[str] | Literal["paper"] = "paper"  # "paper": the 29 + 2 suite of §1.6
    every: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    folders: dict[str, str] = Field(default_factory=dict, description="task key -> folder name override")
    main_task: str = "imagenet1k"
    cache_dir: str | None = None  # preprocessed-image cache; None: inside the output root


class GridSpec(Strict):
    """The axes of the study; every combination is one stage-2 run."""

    init: list[InitMethod] = Field(default_factory=lambda: ["random", "perceptual"], min_length=1)
    scale: list[str] = Field(min_length=1)
    epochs: list[int] = Field(default_factory=lambda: [32], min_length=1)  # §1.5: 32 epochs
    seed: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # The dose axis: shares of NIGHTS' train triplets the perceptual and shuffled inits train on (a seeded, nested
    # subset, the same for every seed; val and test whole). 1.0 is the arm the controls and posthoc compare with.
    nights_fraction: list[float] = Field(default_factory=lambda: [1.0], min_length=1)

    @field_validator("nights_fraction")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError("a fraction of NIGHTS' train triplets is in (0, 1]")
        if 1.0 not in v:
            raise ValueError("must include 1.0 (all of NIGHTS' train triplets: the perceptual arm the controls and "
                             "posthoc compare with)")
        return no_duplicates(v)

    @field_validator("init", "scale", "epochs", "seed")
    @classmethod
    def _unique(cls, v: list) -> list:
        return no_duplicates(v)

    @field_validator("epochs")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v):
            raise ValueError("epochs must be >= 1")
        return v


class Resources(Strict):
    """Shape of one job. Does not change results (not in any uid), except the rank count of a train job."""

    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)  # 0: CPU, one rank per node
    cpus_per_task: int = Field(2, ge=1)
    mem_gb: float = Field(8, gt=0)
    time_min: int = Field(60, ge=1)


def train_ranks(executor: str, train: Resources) -> int:
    """The ranks of a train job: on SLURM ``nodes`` x max(1, ``gpus_per_node``); locally (one machine) max(1,
    ``gpus_per_node``), ``nodes`` ignored."""
    per_node = max(1, train.gpus_per_node)
    return per_node if executor == "local" else train.nodes * per_node


class ExecutorSpec(Strict):
    name: ExecutorName = "local"  # never chosen from what is installed
    max_parallel: int = Field(1, ge=1)  # local executor: jobs at once
    profile: str | None = None  # slurm: a site profile in slurm_templates/
    init: Resources = Resources()
    train: Resources = Resources()
    eval: Resources = Resources()
    posthoc: Resources = Resources()  # the post-hoc fine-tunes (one rank, like an init)
    max_failures: int = Field(2, ge=0)  # retries of a failed job before the cell is failed
    max_timeouts: int = Field(3, ge=0)


class WandbSpec(Strict):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "pisweep"


class Study(Strict):
    """A study. ``recipe`` names the defaults it starts from (study/recipe.py): each field the file sets wins."""

    name: str
    output_root: str
    recipe: RecipeName = "openclip"
    ledger: str | None = None  # default: <output_root>/ledger.sqlite
    executor: ExecutorSpec = ExecutorSpec()
    data: DataSpec
    model: ModelSpec = ModelSpec()
    stage1: Stage1Spec = Stage1Spec()
    stage2: Stage2Spec = Stage2Spec()
    posthoc: PosthocSpec = PosthocSpec()
    eval: EvalSpec = EvalSpec()
    grid: GridSpec
    wandb: WandbSpec = WandbSpec()

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: Any, info: ValidationInfo) -> Any:
        version = (info.context or {}).get("identity_version")
        return with_recipe(data, version) if isinstance(data, dict) else data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit")
        return v
