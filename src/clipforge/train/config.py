"""The typed training config: dataclasses validated on load, saved in the run dir and in every checkpoint.

A config is built from YAML plus dotted overrides (``optim.lr=1e-3 steps=200``) by ``load_config``;
unknown keys, wrong types and impossible values (a batch the accumulation does not divide) are
``ConfigError``s raised when it is built. What needs the file system (a missing data path, the starting
checkpoint) is checked by ``clipforge.train.prepare``, before any work. The config is frozen: nothing mutates
it after start. Facts about the process (rank, device, world size) live in ``Runtime``
(``clipforge.train.distributed``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clipforge.config import ConfigError, apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from clipforge.data.augment import AugmentConfig, TextAugmentConfig
from clipforge.data.config import DataConfig, ShardsDataConfig, SyntheticDataConfig
from clipforge.models.config import ModelConfig
from clipforge.models.factory import build_config
from clipforge.models.lora import LoRAConfig
from clipforge.models.presets import list_presets
from clipforge.train.classify import ClassifierConfig
from clipforge.train.ema import EmaConfig
from clipforge.train.eval_sets import EvalSetConfig, check_set_names
from clipforge.train.finetune_config import DistillConfig, UnlockConfig
from clipforge.train.fp8 import Fp8Config
from clipforge.train.self_supervised import DeclipConfig, ReadingConfig, SlipConfig
from clipforge.train.wise_ft import WiseFTConfig


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (decoupled weight decay on weight matrices only) and gradient clipping.

    Attributes:
        lr: Peak learning rate.
        weight_decay: Decay of weight matrices (never gains, biases, embeddings, logit scale/bias).
        betas: Adam's betas (CLIP: 0.9, 0.98).
        eps: Adam's epsilon (CLIP: 1e-6).
        grad_clip: Clip the global gradient norm at this value; ``None`` does not clip.
        logit_scale_lr_mult: The logit scale's (and SigLIP bias's) learning rate as a multiple of the
            schedule's. A model started at a low scale (``init_logit_scale``) needs it to sharpen in a short run.
        image_layer_decay: Layer-wise learning-rate decay of the image tower (timm's ``layer_decay``): layer ``i`` of
            ``L`` blocks (0: embeddings; L + 1: the head) trains at ``decay ** (L + 1 - i)`` times the rate; 1: off.
            CLIPPO's one tower uses it.
        text_layer_decay: Likewise for the text tower.
        lazy_embedding: The token table trains by sparse gradients with a lazy AdamW update (``LazyAdamW``): only
            the rows a batch uses are updated (and clipped). On a CPU, where a small model's step spends ~15 % on
            the whole 49,408-row table, it is faster; a row missing from a batch keeps still rather than coasting
            on its momentum. One process only (``parallel: ddp`` at world size 1).
    """

    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    logit_scale_lr_mult: float = 1.0
    image_layer_decay: float = 1.0
    text_layer_decay: float = 1.0
    lazy_embedding: bool = False

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.eps <= 0 or self.logit_scale_lr_mult <= 0:
            raise ConfigError(f"optim: lr, eps and logit_scale_lr_mult must be positive, weight_decay >= 0; got {self}")
        for name in ("image_layer_decay", "text_layer_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"optim.{name} must lie in (0, 1] (1: no decay), got {getattr(self, name)}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {self.betas}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be positive or null, got {self.grad_clip}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up, then cosine decay to ``min_lr`` at the last step.

    Attributes:
        warmup_steps: Steps of linear warm-up.
        min_lr: Learning rate at the end of the cosine.
    """

    warmup_steps: int = 100
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.min_lr < 0:
            raise ConfigError(f"schedule: warmup_steps and min_lr must be >= 0, got {self}")


@dataclass(frozen=True)
class TextPairsConfig:
    """CLIPPO's text/text pairs (``clipforge.data.text_pairs``), mixed into a fixed fraction of each batch.

    Attributes:
        fraction: Share of every global batch given to text/text pairs (the paper: 0.25); 0 turns them off.
        path: A UTF-8 corpus file (consecutive sentences of a paragraph form pairs), or ``synthetic``:
            two captions of one training scene of the built-in world, in two of its languages.
        size: ``synthetic`` only: how many scenes the pairs are drawn from.
    """

    fraction: float = 0.0
    path: str = "synthetic"
    size: int = 100_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ConfigError(f"text_pairs.fraction must be in [0, 1), got {self.fraction}")
        if self.size <= 0:
            raise ConfigError(f"text_pairs.size must be positive, got {self.size}")


@dataclass(frozen=True)
class EvalConfig:
    """Periodic zero-shot and retrieval evaluation: the synthetic world's held-out split, and ``sets`` of real data.

    Attributes:
        every: Evaluate every this many steps (and at the end); 0 evaluates only at the end.
        size: Images per zero-shot task.
        retrieval_size: Images in the caption-retrieval set.
        languages: Languages of the prompts and captions; each is evaluated. Metrics of the first are
            named ``zeroshot/shape``, ``retrieval/...``; those of the others carry ``@<language>``
            (``zeroshot/shape@ru``).
        split: ``val`` (model selection) or ``test``.
        sets: Evaluations on real data, with any data source (``clipforge.train.eval_sets``): zero-shot or
            retrieval, each logged as ``<name>/<metric>`` every ``every`` steps (its own, else this one).
    """

    every: int = 0
    size: int = 200
    retrieval_size: int = 100
    languages: tuple[str, ...] = ("en",)
    split: Literal["val", "test"] = "val"
    sets: tuple[EvalSetConfig, ...] = ()

    def __post_init__(self) -> None:
        if self.every < 0 or self.size <= 0 or self.retrieval_size < 0:
            raise ConfigError(f"eval: every >= 0, size > 0 and retrieval_size >= 0 needed, got {self}")
        from clipforge.data.synthetic import LANGUAGES

        if not self.languages or set(self.languages) - set(LANGUAGES):
            raise ConfigError(f"eval.languages: expected a non-empty list of {list(LANGUAGES)}, "
                              f"got {list(self.languages)}")
        check_set_names(self.sets)


@dataclass(frozen=True)
class FsdpConfig:
    """FSDP2's options (``parallel: fsdp``; ``clipforge.train.fsdp``).

    Attributes:
        cpu_offload: Keep the sharded parameters, gradients and optimiser state in CPU memory
            (``CPUOffloadPolicy``); the optimiser steps on the CPU.
        reshard_after_forward: Free each block's gathered parameters after its forward pass and gather them again
            for the backward pass (ZeRO-3); ``false`` keeps them until the backward (ZeRO-2: more memory, less
            communication).
        async_checkpoint: Write checkpoints with ``torch.distributed.checkpoint.async_save``: training goes on while
            the shards are written; ``latest`` moves only once every shard is complete.
    """

    cpu_offload: bool = False
    reshard_after_forward: bool = True
    async_checkpoint: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        model: A preset name (``clipforge models``), or a checkpoint to start from (fine-tuning; LiT with
            ``lock``): a clipforge model directory or any file or directory ``clipforge convert`` reads
            (OpenAI, open_clip, HF, big_vision). Its architecture comes from the checkpoint;
            ``model_overrides`` may change what keeps the weights' shapes (patch dropout, say).
        allow_pickle: Let ``model`` be a pickled checkpoint (``.pt``/``.bin``, read with ``weights_only``).
        model_overrides: Model config fields to change (nested mappings or dotted keys).
        data: The data source, chosen by its ``kind``.
        optim: Optimiser settings.
        schedule: Learning-rate schedule.
        eval: Periodic evaluation.
        steps: Optimiser steps in the whole run.
        batch_size: The global batch (all ranks, all micro-batches): every pair is a negative for every other.
        accum_steps: Micro-batches per step per rank; > 1 uses gradient caching, which keeps every negative.
        log_every: Read losses back from the device every this many steps (no host sync in between).
        checkpoint_every: Save a training checkpoint every this many steps (and at the end); 0: only at the end.
        keep_checkpoints: How many recent checkpoints to keep.
        output_dir: The run directory (config, metrics, plots, checkpoints).
        seed: Seeds initialisation, data order and augmentation.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16``, or ``fp8`` (the linear layers
            in float8 with torchao's recipes, the rest in bf16: ``clipforge.train.fp8``).
        fp8: Float8 options: torchao's scaling ``recipe`` and ``emulate`` (off Hopper/Ada GPUs).
        compile: ``torch.compile`` the towers.
        grad_checkpointing: Recompute activations in the backward pass.
        lock: LiT-style locking: the named tower is frozen (no gradient, eval mode).
        unlock: Partial unlocking: only the last blocks of a tower train, optionally all of it from a step on.
        loss: ``clip`` (softmax InfoNCE) or ``siglip`` (sigmoid; the model needs a logit bias).
        local_loss: Distributed: each rank's loss over its own rows against all columns (OpenCLIP's local loss).
        siglip_exchange: How a distributed SigLIP run shows each rank the other ranks' texts. ``gather``
            all-gathers the features (with ``local_loss`` or not, as for CLIP). ``ring`` passes the text
            features around the ring, one block per neighbour step (big_vision's chunked loss, open_clip's
            ``SigLipLoss``): each rank's loss is its own rows against every column, as with ``local_loss``
            (which it implies), but no rank holds more than one (local × local) block of logits and nothing
            is gathered. The gradients are the same; GradCache (``accum_steps`` > 1) and ``lock`` work with
            both. Only with ``loss: siglip``; a world of one ignores it.
        plots: Write PNG plots into the run dir at the end.
        text_pairs: CLIPPO only: text/text pairs mixed into each batch.
        lora: LoRA fine-tuning (``clipforge.models.lora``): adapters on the chosen layers of a checkpoint's model,
            every base weight frozen; the final model directory holds the merged model and ``adapters/``.
        distill: Distillation from a teacher model (the contrastive loss plus a distillation term).
        wise_ft: The WiSE-FT sweep at the end of a fine-tune (``clipforge.train.wise_ft``): the starting checkpoint
            and the final model interpolated at each alpha and evaluated (``wise_ft.json``, ``wise_ft.png``).
        classifier: Cross-entropy fine-tuning on class labels (``clipforge.train.classify``): the image tower and a
            linear head started from the zero-shot classifier; the text tower is frozen and ``loss`` unused.
        loss_chunk_size: Compute the contrastive loss in blocks of this many rows against all columns, each block
            recomputed in the backward pass, so the N × N logits never exist at once (memory O(N · chunk)); the loss
            and gradients equal the plain loss. ``null``: the plain loss.
        trim_text: Cut each batch's token ids after its longest caption (rounded up to a multiple of 8) before the
            text tower runs. Exact for causal text towers pooled at the end-of-text token (CLIP's): the positions
            after it never change the result; a no-op for towers that pad on purpose (SigLIP's) and for CLIPPO.
        bucket_text: Go further than ``trim_text``: group each batch's captions by length (multiples of 8) and run
            the text tower once per group, each cut after its own longest caption, so a caption costs its own
            length rather than the batch's longest (``clipforge.models.text.length_buckets``). Exact where
            ``trim_text`` is, a no-op elsewhere. The plain step only: with ``accum_steps`` > 1, ``distill``,
            ``classifier`` or the recipes that add views (``slip``, ``declip``, ``reading``) the batch is trimmed
            as ``trim_text`` says.
        parallel: ``ddp``: every rank holds the whole model and gradients are averaged once per step. ``fsdp``:
            PyTorch's FSDP2 shards parameters, gradients and optimiser state across ranks
            (``clipforge.train.fsdp``) and checkpoints are written with Distributed Checkpoint.
        fsdp: FSDP2's options (``parallel: fsdp`` only).
        checkpoint_dir: Where training checkpoints go (default ``<output_dir>/checkpoints``): a path, or an fsspec URL
            (``s3://bucket/run``, ``gs://``, ``hf://``; ``pip install 'clipforge[remote]'`` and the scheme's package)
            for ``parallel: fsdp``, whose Distributed Checkpoint shards every rank writes there.
        channels_last: Keep the model's 4-D weights and the image batches in channels-last memory order: convolutions
            run faster there (a ResNet tower's step on the CPU: 95 → 70 ms for the quickstart's tiny-rn); the
            numbers agree with the default layout to float rounding.
        label_smoothing: ``loss: clip`` only: each row's contrastive target keeps ``1 − ε`` on its pair and spreads ε
            over the batch (a regulariser for small datasets); 0: one-hot targets.
        ema: An exponential moving average of the weights (``clipforge.train.ema``: ``decay``, ``every``,
            ``start_step``), evaluated during training and exported as the final model.
        report_to: Where metrics go besides ``metrics.jsonl``: ``tensorboard`` (when installed) and ``wandb``
            (the ``wandb`` extra; ``WANDB_MODE=offline`` keeps it local).
        augment: Caption-preserving image augmentation in place of the plain random crop (``clipforge.data.augment``:
            crop scale, rotation, flips without left/right words, colour jitter and backgrounds for transparent
            images without colour words); needs ``data.augment: true``.
        text_augment: Tag dropout and shuffling and template mixing of tag-style captions (``clipforge.data.augment``).
        slip: SLIP's SimCLR loss on two more views of each image (``clipforge.train.self_supervised``).
        declip: DeCLIP's multi-view and nearest-neighbour supervision (``clipforge.train.self_supervised``).
        reading: CLIPPO only: each caption against a second rendering of it, moved and scaled
            (``clipforge.train.self_supervised``).
    """

    model: str = "tiny-vit"
    allow_pickle: bool = False
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=SyntheticDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    steps: int = 1000
    batch_size: int = 128
    accum_steps: int = 1
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    output_dir: str = "runs/default"
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp8"] = "auto"
    fp8: Fp8Config = field(default_factory=Fp8Config)
    compile: bool = False
    grad_checkpointing: bool = False
    lock: Literal["none", "image", "text"] = "none"
    unlock: UnlockConfig = field(default_factory=UnlockConfig)
    loss: Literal["clip", "siglip"] = "clip"
    local_loss: bool = False
    siglip_exchange: Literal["gather", "ring"] = "gather"
    plots: bool = True
    text_pairs: TextPairsConfig = field(default_factory=TextPairsConfig)
    lora: LoRAConfig | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)
    wise_ft: WiseFTConfig | None = None
    classifier: ClassifierConfig | None = None
    loss_chunk_size: int | None = None
    trim_text: bool = True
    bucket_text: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"
    fsdp: FsdpConfig = field(default_factory=lambda: FsdpConfig())
    report_to: tuple[Literal["tensorboard", "wandb"], ...] = ("tensorboard",)
    checkpoint_dir: str | None = None
    channels_last: bool = False
    label_smoothing: float = 0.0
    ema: EmaConfig | None = None
    augment: AugmentConfig | None = None
    text_augment: TextAugmentConfig | None = None
    slip: SlipConfig | None = None
    declip: DeclipConfig | None = None
    reading: ReadingConfig | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accum_steps", "log_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by accum_steps={self.accum_steps}")
        if self.schedule.warmup_steps > self.steps:
            raise ConfigError(f"schedule.warmup_steps={self.schedule.warmup_steps} exceeds steps={self.steps}")
        if self.siglip_exchange == "ring" and self.loss != "siglip":
            raise ConfigError(f"siglip_exchange=ring passes SigLIP's text blocks around the ring: it needs "
                              f"loss: siglip (got loss: {self.loss}); the softmax of clip needs the gather")
        if self.unlock.at_step is not None and self.unlock.at_step >= self.steps:
            raise ConfigError(f"unlock.at_step={self.unlock.at_step} is not before the last step (steps={self.steps})")
        if self.distill.teacher is not None and self.siglip_exchange == "ring":
            raise ConfigError("distill compares softmax distributions over the gathered batch: it needs "
                              "siglip_exchange: gather, not ring")
        if self.lora is not None and (self.lock != "none" or self.unlock.image_blocks is not None or
                                      self.unlock.text_blocks is not None):
            raise ConfigError("lora freezes every base weight and trains adapters only: choose its towers with "
                              "lora.towers instead of lock or unlock")
        if self.precision == "fp8" and (self.lora is not None or self.parallel == "fsdp"):
            raise ConfigError(f"precision: fp8 swaps the towers' nn.Linear layers for float8 ones: not with "
                              f"{'lora (its adapted layers)' if self.lora is not None else 'parallel: fsdp'}; "
                              "use precision: bf16 there")
        if self.text_pairs.fraction:
            if isinstance(self.data, ShardsDataConfig):
                raise ConfigError("text_pairs mix into indexable sources (synthetic, tables, folders), not tar shards")
            if self.text_pairs.path == "synthetic" and not isinstance(self.data, SyntheticDataConfig):
                raise ConfigError("text_pairs.path=synthetic draws from the synthetic world: give a corpus file "
                                  "for other data sources")
        if self.wise_ft is not None and self.starts_from_preset():
            raise ConfigError("wise_ft: the sweep interpolates the starting checkpoint and the fine-tune, but "
                              f"model={self.model!r} is a preset (fresh weights): give a model directory or "
                              "checkpoint, e.g. model=runs/quickstart/final")
        if self.classifier is not None:
            self._check_classifier()
        if self.loss_chunk_size is not None and self.loss_chunk_size <= 0:
            raise ConfigError(f"loss_chunk_size must be positive or null, got {self.loss_chunk_size}")
        if self.loss_chunk_size is not None and self.siglip_exchange == "ring":
            raise ConfigError("loss_chunk_size and siglip_exchange: ring both bound the logits in memory; the ring "
                              "already scores one (local × local) block at a time: choose one")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "clip":
            raise ConfigError("label_smoothing smooths the softmax targets of loss: clip; SigLIP's sigmoid loss has "
                              "one binary target per pair")
        if self.parallel == "fsdp":
            self._check_fsdp()
        if self.optim.lazy_embedding and self.parallel == "fsdp":
            raise ConfigError("optim.lazy_embedding: sparse gradients are not sharded by FSDP: set parallel: ddp "
                              "(one process)")
        self._check_recipes()
        if self.checkpoint_dir is not None and self.parallel != "fsdp" and "://" in self.checkpoint_dir and \
                not self.checkpoint_dir.startswith("file://"):
            raise ConfigError(f"checkpoint_dir={self.checkpoint_dir!r}: checkpoints at a URL are written with "
                              "Distributed Checkpoint: set parallel: fsdp (it runs on one process too)")
        if self.starts_from_preset():  # a checkpoint's architecture is checked when ``prepare`` reads it
            self.check_model(self.model_config())

    def _check_recipes(self) -> None:
        """The small-data recipes need per-sample CPU augmentation and one plain step (``self_supervised``)."""
        recipes = {"augment": self.augment, "text_augment": self.text_augment, "slip": self.slip,
                   "declip": self.declip, "reading": self.reading}
        given = [name for name, on in recipes.items() if on is not None]
        if not given:
            return
        if self.augment is not None and not self.data.augment:
            raise ConfigError("augment: the caption-preserving augmentation replaces data.augment's random crop: "
                              "set data.augment: true")
        if getattr(self.data, "gpu_decode", False):
            raise ConfigError(f"{', '.join(given)}: augment each sample on the CPU: set data.gpu_decode: false")
        if self.classifier is not None or self.text_pairs.fraction:
            raise ConfigError(f"{', '.join(given)}: the small-data recipes train on image–caption pairs, not with "
                              "classifier or text_pairs")
        ssl = [name for name in ("slip", "declip", "reading") if recipes[name] is not None]
        if not ssl:
            return
        conflicts = {"accum_steps > 1": self.accum_steps > 1, "parallel: fsdp": self.parallel == "fsdp",
                     "lock: image": self.lock == "image", "distill": self.distill.teacher is not None,
                     "lock: text": self.lock == "text" and (self.reading is not None or bool(
                         self.declip is not None and self.declip.text_weight)),
                     "siglip_exchange: ring": self.siglip_exchange == "ring"}
        bad = [name for name, on in conflicts.items() if on]
        if bad:
            raise ConfigError(f"{' and '.join(ssl)} run one plain step over the extra views: not with "
                              f"{', '.join(bad)}")

    def _check_fsdp(self) -> None:
        """``parallel: fsdp`` shards the weights: options that need every weight whole on one rank are refused."""
        conflicts = {"lora": self.lora is not None, "classifier": self.classifier is not None,
                     "wise_ft": self.wise_ft is not None,
                     "unlock": self.unlock.image_blocks is not None or self.unlock.text_blocks is not None}
        given = [name for name, on in conflicts.items() if on]
        if given:
            raise ConfigError(f"parallel: fsdp does not combine with {', '.join(given)} (each needs the whole model on "
                              "one rank while it trains or merges); use parallel: ddp for it")

    def _check_classifier(self) -> None:
        """A ``classifier`` run needs class labels and trains neither the text tower nor a contrastive term."""
        from clipforge.data.sources import is_labelled

        if not is_labelled(self.data):
            raise ConfigError("classifier: cross-entropy fine-tuning needs class labels: data.layout: classes (a "
                              "class folder) or data.label_key (a table's label column)")
        if getattr(self.data, "captions_from_labels", None) is not None:
            raise ConfigError("classifier and data.captions_from_labels are two recipes for labelled data (a "
                              "cross-entropy head; FLYP's contrastive loss on class prompts): choose one")
        conflicts = {"lora": self.lora is not None, "distill.teacher": self.distill.teacher is not None,
                     "text_pairs.fraction": bool(self.text_pairs.fraction), "lock: text": self.lock == "text",
                     "unlock.text_blocks": self.unlock.text_blocks is not None}
        given = [name for name, on in conflicts.items() if on]
        if given:
            raise ConfigError(f"classifier trains the image tower and a head on labels (the text tower is frozen "
                              f"already); it does not combine with {', '.join(given)}")

    def starts_from_preset(self) -> bool:
        """Whether ``model`` names a preset or an OpenCLIP model (fresh weights); otherwise it is a checkpoint path or
        released weights by name (``hf-hub:org/repo``, ``NAME:TAG``)."""
        from clipforge.checkpoints.hub import known_model_names

        return self.model in list_presets() or (self.model in known_model_names() and not Path(self.model).exists())

    def model_config(self) -> ModelConfig:
        """The validated model config of a preset start (preset plus overrides).

        Raises:
            ConfigError: a bad override, or ``model`` is not a preset: a checkpoint's config is read by
                ``clipforge.train.prepare``, the one step that loads files.
        """
        if not self.starts_from_preset():
            raise ConfigError(f"model: {self.model!r} is not a preset; a checkpoint's config comes from prepare()")
        return self.with_overrides(self.model)

    def with_overrides(self, base: str | ModelConfig) -> ModelConfig:
        """``base`` (a preset or OpenCLIP name, or a checkpoint's config) under ``model_overrides``, validated."""
        from clipforge.checkpoints.hub import build_named_config

        try:
            if isinstance(base, str):
                return build_named_config(base, **self.model_overrides)
            return build_config(base, **self.model_overrides)
        except ConfigError as e:
            raise ConfigError(f"model: {e}") from None

    def check_model(self, model: ModelConfig) -> None:
        """Raises ``ConfigError`` when the run's loss or text pairs do not fit the model it trains."""
        if self.loss == "siglip" and model.init_logit_bias is None:
            raise ConfigError("loss 'siglip' needs a model with a logit bias: set model_overrides.init_logit_bias "
                              "(SigLIP: -10) and model_overrides.init_logit_scale (SigLIP: 2.302585)")
        if self.text_pairs.fraction and model.family != "clippo":
            raise ConfigError("text_pairs need a CLIPPO model (both texts are rendered as images); "
                              f"{self.model!r} is a {model.family!r} model")
        if self.reading is not None and model.family != "clippo":
            raise ConfigError("reading renders each caption twice: it needs a CLIPPO model (text as pixels); "
                              f"{self.model!r} is a {model.family!r} model")

    def check_world_size(self, world_size: int) -> None:
        """Raises ``ConfigError`` unless the global batch splits evenly into ``world_size × accum_steps`` (and,
        with ``optim.lazy_embedding``, unless the world is one process: its sparse gradients are not averaged)."""
        if self.optim.lazy_embedding and world_size > 1:
            raise ConfigError(f"optim.lazy_embedding trains on one process; this run has {world_size}: set "
                              "optim.lazy_embedding: false")
        if self.batch_size % (world_size * self.accum_steps):
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by world_size × accum_steps = "
                              f"{world_size} × {self.accum_steps}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Reads a YAML config (or the defaults) and applies dotted overrides, validating every field.

    Only the file at ``path`` is read: checks that touch data or checkpoints run in ``prepare`` (``clipforge.train``).

    Raises:
        ConfigError: naming the offending field.
        FileNotFoundError: ``path`` does not exist.
    """
    data = load_yaml(path) if path is not None else {}
    return from_dict(TrainConfig, apply_overrides(data, overrides or {}, kinds={"data": "synthetic"}), "config")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain nested dicts (what ``config.yaml`` and checkpoints hold)."""
    return to_dict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Writes the resolved config as YAML."""
    save_yaml(config, path)
