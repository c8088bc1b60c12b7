"""The training loop: one explicit function, ``train(config, runtime) -> TrainResult``.

Read it top to bottom: build the model, optimiser and data from the config; resume if asked; then for
each step set the learning rate, compute the loss and gradients (``forward_backward``: directly or with
gradient caching), average gradients across ranks, clip, step; every ``log_every`` steps read the loss
back (the only host sync), every ``eval.every`` steps evaluate, every ``checkpoint_every`` steps save.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clipforge.checkpoints.native import load_state_dict_into
from clipforge.config import ConfigError, to_dict
from clipforge.data.augment import AugmentConfig, AugmentTransform, SampleRecipe, Unaugmented
from clipforge.data.config import SyntheticDataConfig
from clipforge.fs import filesystem, is_remote
from clipforge.models.factory import build_model as build_model_from_config
from clipforge.models.text import length_buckets, trim_tokens
from clipforge.train.checkpoint import (
    check_whole_checkpoint,
    load_checkpoint,
    remove_stale_temp_files,
    resolve_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from clipforge.train.classify import attach_head, classifier_forward_backward, save_with_head, zero_shot_head
from clipforge.train.config import TrainConfig, config_to_dict, save_config
from clipforge.train.data import TrainData, world_config
from clipforge.train.dcp import ShardedCheckpoints, load_sharded, resolve_remote
from clipforge.train.distill import teacher_features
from clipforge.train.distributed import (
    Runtime,
    all_reduce_gradients,
    all_reduce_mean,
    barrier,
    broadcast_parameters,
    gather_objects,
)
from clipforge.train.ema import WeightEma
from clipforge.train.eval_sets import any_due, check_eval_sets, check_head_sets, evaluate_eval_sets, headline_keys
from clipforge.train.evaluate import EvalSet, build_eval_sets, evaluate_languages, similarity_matrix
from clipforge.train.fp8 import convert_to_fp8
from clipforge.train.fsdp import clip_grad_norm, replicated_parameters, report_memory, shard_model, whole_model
from clipforge.train.gradcache import forward_backward
from clipforge.train.host_memory import keep_freed_memory
from clipforge.train.layer_groups import apply_unlock, check_unlock, describe_groups
from clipforge.train.loss import LOSSES
from clipforge.train.metrics import (
    MetricsLog,
    plot_eval_sets,
    plot_loss,
    plot_similarity,
    plot_zeroshot,
    read_metrics,
)
from clipforge.train.optim import build_optimizer, clip_grad_norm_with_sparse, coalesce_sparse_grads, lr_at, set_lr
from clipforge.train.prepare import Prepared, prepare
from clipforge.train.self_supervised import (
    attach_recipe_heads,
    image_views,
    recipe_forward_backward,
    without_recipe_heads,
)
from clipforge.train.wise_ft import run_sweep, start_snapshot
from clipforge.transforms import model_transforms


@dataclass
class TrainResult:
    """What a finished run reports.

    Attributes:
        run_dir: Where the config, metrics, plots and checkpoints are.
        step: Steps taken in total (including those before a resume).
        losses: ``(step, loss)`` at every logged step of this process's run.
        eval: The last evaluation's metrics (``zeroshot/<task>``, ``retrieval/...``); empty if none ran.
        checkpoint: The last checkpoint written.
        wall_time: Seconds this call took.
    """

    run_dir: Path
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | str | None = None
    wall_time: float = 0.0


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (``auto``/``bf16``), full fp32 on the CPU unless ``bf16`` is asked for; ``fp8`` runs
    what is not a float8 linear layer under bf16 autocast."""
    if precision in ("bf16", "fp8") or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_model(prepared: Prepared, device: torch.device, source: str) -> torch.nn.Module:
    """The run's model: fresh weights for a preset, or the checkpoint's weights (read by ``prepare``) under the
    config's overrides."""
    if prepared.start is None:
        return build_model_from_config(prepared.model_config, device)
    model = prepared.start
    if prepared.model_config != model.config:  # overrides that keep every shape (checked strictly when loaded)
        model = build_model_from_config(prepared.model_config)
        load_state_dict_into(model, prepared.start.state_dict(), source)
    return model.to(device).train()


def lock_tower(model: torch.nn.Module, lock: str) -> None:
    """LiT: freezes the named tower (no gradients) and keeps it in eval mode (BatchNorm statistics fixed)."""
    if lock == "none":
        return
    tower = model.towers()[lock]
    tower.requires_grad_(False)
    tower.eval()


def train(config: TrainConfig, runtime: Runtime, resume: str | None = None,
          prepared: Prepared | None = None) -> TrainResult:
    """Trains a model as ``config`` describes; rank 0 writes the run directory.

    Args:
        config: The validated run config.
        runtime: This process's rank, world size and device (``init_runtime()``).
        resume: ``latest`` (the run dir's newest checkpoint, if any) or a checkpoint path.
        prepared: What ``prepare(config)`` read (the CLI runs it before the process group starts); run here
            when not given.

    Returns:
        The run's summary.
    """
    start_time = time.perf_counter()
    config.check_world_size(runtime.world_size)
    prepared = prepared if prepared is not None else prepare(config)
    device, run_dir = runtime.device, Path(config.output_dir)
    if device.type == "cpu":
        keep_freed_memory()  # a page fault per 4 KiB of each step's large tensors otherwise (host_memory.py)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    # --- Model, optimiser, data. ---
    model, text_processor = build_model(prepared, device, config.model), prepared.text_processor
    attach_recipe_heads(model, config.slip, config.declip)  # SLIP's projector, DeCLIP's queue (not exported)
    if config.precision == "fp8":  # the towers' linear layers in float8 (the weights keep their names and dtype)
        converted = convert_to_fp8(model, config.fp8, device)
        if runtime.is_main:
            print(f"precision: fp8 ({config.fp8.recipe}{', emulated' if config.fp8.emulate else ''}): "
                  f"{converted} linear layers in float8", file=sys.stderr)
    broadcast_parameters(model, runtime)
    torch.manual_seed(config.seed * 1009 + runtime.rank + 1)  # per-rank stream for random ops (patch dropout)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    lock_tower(model, config.lock)
    train_tf, eval_tf = model_transforms(model.config)
    image_size = model.config.vision.image_size
    data = TrainData(config.data, train_tf if config.data.augment else eval_tf, text_processor, config.batch_size,
                     config.seed, runtime, image_size, text_pairs=config.text_pairs, classifier=config.classifier,
                     recipe=sample_recipe(config, train_tf, eval_tf))
    if config.classifier is not None:  # the head starts as the zero-shot classifier of the data's classes
        assert data.classnames is not None and data.class_templates is not None
        head = zero_shot_head(model, data.classnames, data.class_templates, eval_tf, text_processor, device,
                              config.classifier.init)
        head.classnames = data.classnames  # type: ignore[assignment]  # saved beside the model at the end
        attach_head(model, head)
        broadcast_parameters(head, runtime)
    # WiSE-FT's α = 0 end: the weights before any step (and before a resume), a CPU copy on rank 0.
    wise_start = start_snapshot(model) if config.wise_ft is not None and runtime.is_main else None
    # Partial unlocking: the optimiser holds every parameter that trains at some step; which of them train at a
    # step is a function of the step (``apply_unlock``), so a resume needs nothing more.
    check_unlock(model, config.unlock, config.lock)
    may_train = {name for name, p in model.named_parameters() if p.requires_grad}
    apply_unlock(model, config.unlock, None, may_train)
    amp, fsdp = autocast_dtype(config.precision, device), config.parallel == "fsdp"
    if fsdp:  # FSDP2: shard every block, then every tower, before the optimiser sees the parameters
        shard_model(model, runtime, amp, config.fsdp.cpu_offload, config.fsdp.reshard_after_forward)
        report_memory(model, runtime)
    trainable = [p for p in model.parameters() if p.requires_grad]
    reduced = replicated_parameters(trainable) if fsdp else trainable  # FSDP reduce-scatters the sharded ones
    o = config.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, o.betas, o.eps,
                                torch.device("cpu") if fsdp and config.fsdp.cpu_offload else device,
                                o.logit_scale_lr_mult,
                                layer_decay={"image": o.image_layer_decay, "text": o.text_layer_decay},
                                lazy_embedding=o.lazy_embedding)
    apply_unlock(model, config.unlock, 0, may_train)
    if runtime.is_main:
        print(f"parameter groups:\n{describe_groups(model, optimizer.param_groups)}", file=sys.stderr)
    teacher = prepared.teacher.to(device) if prepared.teacher is not None else None

    start_step, checkpoint_path = 0, None
    checkpoint_dir: Path | str = config.checkpoint_dir or run_dir / "checkpoints"
    remote = is_remote(str(checkpoint_dir))  # an fsspec URL (parallel: fsdp only; checked by the config)
    if remote:
        filesystem(str(checkpoint_dir))  # a missing fsspec or scheme package is named now, not at the first save
    if runtime.is_main and not remote:
        remove_stale_temp_files(checkpoint_dir)  # left by saves that were killed; no save is running now
    checkpoints = ShardedCheckpoints(checkpoint_dir, runtime, config.keep_checkpoints, config.fsdp.async_checkpoint)
    ema = WeightEma(model, config.ema) if config.ema is not None else None
    if resume is not None:
        checkpoint_path = resolve_remote(resume, str(checkpoint_dir)) if remote else \
            resolve_checkpoint(resume, checkpoint_dir)
        if checkpoint_path is not None:
            averaged = {"ema": ema.state_dict()} if ema is not None else {}  # read in place
            if remote or Path(checkpoint_path).is_dir():  # Distributed Checkpoint, read into this run's sharding
                state = load_sharded(checkpoint_path, model, optimizer, averaged)
            else:
                check_whole_checkpoint(checkpoint_path, model)
                state = load_checkpoint(checkpoint_path, device)
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                if ema is not None and "ema" in state:
                    ema.load_state_dict(state["ema"])
                elif ema is not None:
                    averaged.clear()
            if ema is not None and not averaged and runtime.is_main:
                print("warning: the checkpoint holds no weight average: ema starts from the resumed weights")
            _warn_config_change(state["config"], config_to_dict(config), runtime)
            start_step = state["step"]
            restore_rng(state["rng"], runtime, config.seed, start_step)
            data.restore(state.get("data"))
            if runtime.is_main:
                print(f"resumed from {checkpoint_path} at step {start_step}")
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    if config.compile:
        for tower in set(model.towers().values()):
            tower.compile()

    eval_sets: dict[str, EvalSet] = {}
    if runtime.is_main and isinstance(config.data, SyntheticDataConfig):
        from clipforge.data.synthetic import SyntheticWorld

        world = SyntheticWorld(world_config(config.data, image_size))
        e = config.eval
        eval_sets = build_eval_sets(world, eval_tf, e.size, e.retrieval_size, e.languages, e.split)
    real_sets = check_eval_sets(config.eval.sets) if runtime.is_main else []  # rank 0 evaluates, the others wait
    check_head_sets(real_sets, None if config.classifier is None else len(data.classnames or ()))
    metrics = MetricsLog(run_dir, runtime.is_main, start_step if resume is not None else None,
                         report_to=config.report_to, config=config_to_dict(config))
    loader = data.loader(start_step, config.steps, pin_memory=device.type == "cuda")

    # --- The loop. ---
    loss_fn = LOSSES[config.loss]
    if config.loss_chunk_size is not None:
        loss_fn = functools.partial(loss_fn, chunk_size=config.loss_chunk_size)
    if config.label_smoothing:
        loss_fn = functools.partial(loss_fn, label_smoothing=config.label_smoothing)
    trim, accum = config.trim_text and config.classifier is None, config.accum_steps
    # Length buckets on the plain step alone: the other paths split the token ids (GradCache) or hand them on.
    bucket = config.bucket_text and accum == 1 and teacher is None and config.classifier is None and \
        config.slip is None and config.declip is None and config.reading is None
    result = TrainResult(run_dir, start_step, checkpoint=checkpoint_path)
    model.train()
    lock_tower(model, config.lock)
    apply_unlock(model, config.unlock, start_step, may_train)
    bar = tqdm(total=config.steps, initial=start_step, disable=not runtime.is_main, dynamic_ncols=True)
    loss_sum, n_logged, t_log = torch.zeros((), device=device), 0, time.perf_counter()
    distill_terms: list[torch.Tensor] = []  # the distillation term of each step since the last log (no host sync)
    recipe_terms: dict[str, list[torch.Tensor]] = {}  # SLIP's and DeCLIP's terms, the same way
    for step, (images, texts, data_info) in enumerate(loader, start=start_step):
        data.consume(data_info)  # skip counts and reader position of this batch (host-side ints, no sync)
        lr = lr_at(step, o.lr, config.schedule.warmup_steps, config.steps, config.schedule.min_lr)
        set_lr(optimizer, lr)
        if step == config.unlock.at_step:
            apply_unlock(model, config.unlock, step, may_train)
        if bucket:  # host-side, before the copy: one text pass per caption length (multiple of 8)
            texts = length_buckets(texts, getattr(model.config, "text", None))
        elif trim:  # host-side, before the copy: the text tower sees the batch's longest caption, not 77 tokens
            texts = trim_tokens(texts, getattr(model.config, "text", None))
        images, texts = images.to(device, non_blocking=True), texts.to(device, non_blocking=True)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if config.classifier is not None:  # ``texts`` holds the class indices
            loss = classifier_forward_backward(model, images, texts, accum, amp, config.classifier.label_smoothing)
        elif config.slip is not None or config.declip is not None or config.reading is not None:
            # the extra views, captions and renderings are in data_info
            loss = recipe_forward_backward(model, images, texts, data_info, loss_fn, runtime, config.slip,
                                           config.declip, reading=config.reading, local_loss=config.local_loss,
                                           lock=config.lock, autocast=amp, terms=recipe_terms)
        else:
            distill = None if teacher is None else teacher_features(teacher, images, texts, config.distill, accum,
                                                                    amp)._replace(terms=distill_terms)
            loss = forward_backward(model, images, texts, loss_fn, runtime, accum_steps=accum,
                                    local_loss=config.local_loss, exchange=config.siglip_exchange, lock=config.lock,
                                    autocast=amp, distill=distill)
        if o.lazy_embedding:
            coalesce_sparse_grads(trainable)  # one row per token used, so the clipping norm is the gradient's
        all_reduce_gradients(reduced, runtime)
        if o.grad_clip is not None and fsdp:
            clip_grad_norm(trainable, o.grad_clip, runtime)  # sharded gradients: the norm is summed across ranks
        elif o.grad_clip is not None and o.lazy_embedding:
            clip_grad_norm_with_sparse(trainable, o.grad_clip)
        elif o.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss
        n_logged += 1
        done = step + 1
        if ema is not None:
            ema.update(model, done)
        result.step = done
        bar.update(1)

        if done % config.log_every == 0 or done == config.steps:
            mean_loss = all_reduce_mean(loss_sum / n_logged, runtime).item()  # the host sync, once per log_every
            now = time.perf_counter()
            rate = n_logged * config.batch_size / (now - t_log)
            result.losses.append((done, mean_loss))
            logged = {"loss": mean_loss, "lr": lr, "samples_per_s": rate, "logit_scale": model.scale().item()}
            if distill_terms:  # the unweighted term (KL or cross-entropy, as distill.form says), mean over the steps
                logged["distill"] = all_reduce_mean(torch.stack(distill_terms).mean(), runtime).item()
                distill_terms.clear()
            for name, values in recipe_terms.items():
                logged[name] = all_reduce_mean(torch.stack(values).mean(), runtime).item()
            recipe_terms.clear()
            metrics.log(done, {**logged, **data.metrics()})
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", samples_s=f"{rate:.0f}")
            loss_sum, n_logged, t_log = torch.zeros((), device=device), 0, time.perf_counter()
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"loss is {mean_loss} at step {done}")

        synthetic_due = isinstance(config.data, SyntheticDataConfig) and (
            (config.eval.every and done % config.eval.every == 0) or done == config.steps)
        sets_due = any_due(config.eval.sets, config.eval.every, done, config.steps)
        # FSDP: the ranks gather the whole weights into one copy on rank 0, which evaluates (collective). With
        # ``ema`` the averaged weights are evaluated.
        with ema.swapped_in(model) if ema is not None and (synthetic_due or sets_due) else nullcontext():
            whole = whole_model(model, runtime, fsdp) if synthetic_due or sets_due else None
            if eval_sets and synthetic_due:
                result.eval = evaluate_languages(whole, eval_sets, text_processor, device)
                metrics.log(done, result.eval)
                bar.write(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.eval.items()))
            if sets_due:
                if runtime.is_main:
                    named = evaluate_eval_sets(whole, real_sets, eval_tf, text_processor, device, done, config.steps,
                                               config.eval.every)
                    result.eval = {**result.eval, **named}
                    metrics.log(done, named)
                    bar.write(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in named.items()))
                barrier(runtime)
                t_log = time.perf_counter()  # evaluation time is not training throughput
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.steps:
            result.checkpoint = _save(checkpoint_dir, done, model, optimizer, config, runtime, data,
                                      checkpoints if fsdp else None, ema)
        if eval_sets and config.eval.every and done % config.eval.every == 0:
            t_log = time.perf_counter()  # evaluation time is not training throughput
    bar.close()
    metrics.close()
    checkpoints.wait()  # an asynchronous save still in flight becomes ``latest`` once complete

    if ema is not None:  # the final model is the average
        ema.copy_to(model)
    model = whole_model(model, runtime, fsdp)  # rank 0: the whole weights (FSDP gathers them; collective)
    if runtime.is_main:
        with without_recipe_heads(model):
            export_model(model, text_processor, run_dir / "final")
        if config.wise_ft is not None and wise_start is not None:
            def evaluate_run(m: torch.nn.Module) -> dict[str, float]:  # the run's end-of-run evaluations
                named = evaluate_eval_sets(m, real_sets, eval_tf, text_processor, device, config.steps, config.steps,
                                           config.eval.every) if real_sets else {}
                return {**(evaluate_languages(m, eval_sets, text_processor, device) if eval_sets else {}), **named}
            run_sweep(config.wise_ft, wise_start, model, evaluate_run, device, run_dir, text_processor)
        if config.plots:
            write_plots(run_dir, model, next(iter(eval_sets.values()), None), text_processor, device)
            if config.eval.sets:
                plot_eval_sets(read_metrics(run_dir / "metrics.jsonl"), headline_keys(config.eval.sets),
                               run_dir / "eval_sets.png")
    barrier(runtime)
    result.wall_time = time.perf_counter() - start_time
    return result


def sample_recipe(config: TrainConfig, train_tf: Any, eval_tf: Any) -> SampleRecipe | None:
    """The per-sample augmentation of the small-data recipes (``augment``, ``text_augment``, ``slip``, ``declip``,
    ``reading``),
    or ``None`` for the plain transform. With ``data.augment: false`` the main view is ``eval_tf``'s; the extra views
    are drawn with ``train_tf`` all the same (two identical views would teach SLIP and DeCLIP nothing)."""
    c = config
    if all(r is None for r in (c.augment, c.text_augment, c.slip, c.declip, c.reading)):
        return None
    if (c.augment is not None or c.slip is not None) and not hasattr(train_tf, "crop_box"):
        raise ConfigError(f"augment, slip: {type(train_tf).__name__} models take their own input layout; the "
                          "caption-preserving augmentation is for square image inputs")
    transform = train_tf if c.data.augment else Unaugmented(eval_tf)
    if c.augment is not None:
        transform = AugmentTransform(train_tf.size, train_tf.mean, train_tf.std, c.augment)
    slip_transform = None
    if c.slip is not None:  # SimCLR's wider crops, the run's other augmentations
        views = dataclasses.replace(c.augment or AugmentConfig(), scale=c.slip.view_scale)
        slip_transform = AugmentTransform(train_tf.size, train_tf.mean, train_tf.std, views)
    view = transform if c.data.augment else train_tf
    return SampleRecipe(transform, c.text_augment, image_views(c.slip, c.declip, view, slip_transform),
                        second_caption=c.declip is not None and c.declip.multi_view,
                        reading_scale=c.reading.scale if c.reading is not None else None)


def _save(directory: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          config: TrainConfig, runtime: Runtime, data: TrainData, sharded: ShardedCheckpoints | None,
          ema: WeightEma | None) -> Path | str:
    """Writes a training checkpoint with every rank's RNGs and data position; all ranks return its path.

    ``parallel: ddp``: rank 0 writes one file. ``fsdp`` (``sharded``): every rank writes its shard (``dcp``)."""
    rngs = gather_objects(rng_state(runtime.device), runtime)
    data_state = data.state(step)
    # The schedule is a pure function of the step; the data is a function of (seed, step) plus, for tar shards,
    # each reader's position: all resume from here.
    extra = {"step": step, "schedule": {"step": step, **config_to_dict(config.schedule)},
             "data": {**data_state, "seed": config.seed}, "rng": rngs, "config": config_to_dict(config),
             "model_config": to_dict(model.config)}
    averaged = {"ema": ema.state_dict()} if ema is not None else {}
    if sharded is not None:
        return sharded.save(step, model, optimizer, extra, averaged)
    path = directory / f"step_{step:08d}.pt"
    if runtime.is_main:
        state = {**extra, "model": model.state_dict(), "optimizer": optimizer.state_dict(), **averaged}
        path = save_checkpoint(directory, step, state, keep=config.keep_checkpoints)
    barrier(runtime)
    return path


def _warn_config_change(saved: dict[str, Any], current: dict[str, Any], runtime: Runtime) -> None:
    """Prints the top-level fields that differ between a checkpoint's config and this run's."""
    changed = sorted(k for k in current if saved.get(k) != current[k])
    if changed and runtime.is_main:
        print(f"warning: resuming with a config that differs from the checkpoint's in: {', '.join(changed)}")


def export_model(model: torch.nn.Module, text_processor: Any, directory: Path) -> Path:
    """Saves the trained model (and its tokenizer's vocabulary) as a model directory for ``clipforge.load``; a LoRA
    model is saved merged, with its adapters alone in ``directory/adapters`` (``clipforge.train.lora``); a
    classifier run's head goes to ``directory/classifier`` (``clipforge.train.classify``)."""
    from clipforge.checkpoints.native import save_pretrained
    from clipforge.models.lora import lora_config

    if lora_config(model) is not None:
        from clipforge.train.lora import save_lora_model

        return save_lora_model(model, text_processor, directory)
    return save_with_head(model, directory, text_processor, save_pretrained)


def write_plots(run_dir: Path, model: torch.nn.Module, eval_set: EvalSet | None, text_processor: Any,
                device: torch.device, n: int = 8) -> None:
    """Loss curve, zero-shot accuracy over steps, and an image × caption similarity matrix, as PNGs."""
    records = read_metrics(run_dir / "metrics.jsonl")
    plot_loss(records, run_dir / "loss.png")
    plot_zeroshot(records, run_dir / "zeroshot.png")
    if eval_set is None or not eval_set.raw_images:
        return
    similarity, images, captions = similarity_matrix(model, eval_set, text_processor, device, n)
    plot_similarity(similarity.numpy(), images, captions, run_dir / "similarity.png")
