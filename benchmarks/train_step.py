"""Training-step throughput: clipforge vs open_clip, same architecture, same process, synthetic images.

Times forward + backward + AdamW steps and prints one JSON object: samples/s of both sides (median over timed
steps), their ratio (``speedup``), FLOPs per step (counted by torch.utils.flop_counter on an eager step), TFLOP/s,
peak CUDA memory and, on a GPU with a known peak, MFU.

    python benchmarks/train_step.py --model ViT-B/32 --batch-size 512 --precision bf16 --compile
    python benchmarks/train_step.py --model ViT-B/32 --batch-size 512 --precision bf16 --compile --caption-lengths real
    python benchmarks/train_step.py --model ViT-B/32 --batch-size 512 --caption-lengths real --bucket-text  # + a row
    python benchmarks/train_step.py --model tiny-vit --batch-size 64 --steps 10   # CPU smoke run
    python benchmarks/train_step.py --model clippo-B/16 --batch-size 256 --compile   # CLIPPO: no reference
    python benchmarks/train_step.py --model ViT-B/32 --batch-size 32768 --accum-steps 16 --loss-chunk-size 4096 \\
        --grad-checkpointing --precision bf16 --no-reference   # one GPU, gradient caching: clipforge alone

Caption lengths: both sides get the same token ids, padded to the context (77 for CLIP). ``full`` puts every
end-of-text token at the last position (the most text work there is). ``real`` draws each caption's length from
``benchmarks/data/caption_lengths.json`` (CC3M's published tokens-per-caption statistics in CLIP BPE tokens: its
source and derivation are inside). clipforge cuts each batch after its longest caption (``trim_tokens``, host-side,
as the training loop does); open_clip runs its normal path on the padded ids. ``--bucket-text`` adds a clipforge row
with the captions grouped by length, one text pass per group (``length_buckets``, the loop's ``bucket_text``). Each
side's step copies its text from the host, as a data loader would hand it over.

CLIPPO models take rendered alt-texts (uint8 pixels, rendered once before timing) as their text input;
open_clip has no CLIPPO, so they are timed alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import clipforge
from clipforge.models.config import CLIPConfig, CLIPPOConfig, ViTConfig
from clipforge.models.text import TokenBuckets, length_buckets, trim_tokens
from clipforge.train import Runtime
from clipforge.train.gradcache import forward_backward
from clipforge.train.loss import clip_loss

LENGTHS = Path(__file__).parent / "data" / "caption_lengths.json"
# Dense bf16/fp16 tensor-core peaks, FLOP/s (NVIDIA datasheets: half the "with sparsity" figure), for MFU.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def open_clip_model(config: CLIPConfig) -> torch.nn.Module:
    """The same architecture built by open_clip (random init)."""
    import open_clip

    v, t = config.vision, config.text
    if isinstance(v, ViTConfig):
        vision_cfg: dict[str, Any] = {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width,
                                      "layers": v.layers, "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio}
    else:
        vision_cfg = {"image_size": v.image_size, "layers": list(v.layers), "width": v.width, "head_width": 64}
    text_cfg = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
                "layers": t.layers, "mlp_ratio": t.mlp_ratio}
    return open_clip.model.CLIP(config.embed_dim, vision_cfg, text_cfg, quick_gelu=config.act == "quick_gelu")


def make_step(model: torch.nn.Module, encode: Callable, opt: torch.optim.Optimizer, amp: torch.dtype | None,
              device: torch.device, loss_fn: Callable[..., torch.Tensor] = clip_loss,
              accum_steps: int = 1) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimiser step on (images, text): the plain step, or clipforge's gradient caching for accum_steps > 1."""
    def step(images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if accum_steps > 1:
            loss = forward_backward(model, images, text, loss_fn, Runtime(), accum_steps=accum_steps, autocast=amp)
        else:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                image_features, text_features, scale = encode(images, text)
                loss = loss_fn(image_features, text_features, scale)
            loss.backward()
            loss = loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def caption_lengths(path: Path = LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    """(lengths, probabilities) of the shipped histogram of real caption token lengths."""
    histogram = json.loads(path.read_text(encoding="utf-8"))["histogram"]
    lengths = torch.tensor([int(k) for k in histogram])
    probs = torch.tensor([float(v) for v in histogram.values()], dtype=torch.float64)
    return lengths, probs / probs.sum()


def token_batches(config: CLIPConfig, batch_size: int, mode: str, count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` host batches of (batch_size, context) ids: start token, random ids, end-of-text at length − 1, 0s."""
    t = config.text
    eot = t.eot_token_id if t.eot_token_id is not None else t.vocab_size - 1
    sot = t.vocab_size - 2  # OpenAI's <|startoftext|> (49406); any id below end-of-text does for timing
    g = torch.Generator().manual_seed(seed)
    values, probs = caption_lengths()
    batches = []
    for _ in range(count):
        if mode == "full":
            lengths = torch.full((batch_size,), t.context_length)
        else:
            drawn = torch.multinomial(probs, batch_size, replacement=True, generator=g)
            lengths = values[drawn].clamp(2, t.context_length)
        tokens = torch.randint(1, sot, (batch_size, t.context_length), generator=g)
        positions = torch.arange(t.context_length)
        tokens[positions >= lengths[:, None]] = 0
        tokens[:, 0] = sot
        tokens[torch.arange(batch_size), lengths - 1] = eot
        batches.append(tokens)
    return batches


def rendered_text(model: torch.nn.Module, batch_size: int) -> torch.Tensor:
    """A batch of rendered alt-texts for a CLIPPO model (host uint8 pixels)."""
    words = "a photo of the red dog on green grass near an old house by river city street at sunset".split()
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[j] for j in torch.randint(len(words), (int(n),), generator=g))
             for n in torch.randint(3, 16, (batch_size,), generator=g)]
    return clipforge.get_text_processor(model)(texts)


def text_shape(text: torch.Tensor | TokenBuckets) -> tuple[int, ...]:
    """What a step's text work depends on: its width, or each length group's shape."""
    if isinstance(text, TokenBuckets):
        return tuple(n for part in text.parts for n in part.shape)
    return tuple(text.shape[1:])


def tokens_per_caption(text: torch.Tensor | TokenBuckets) -> float:
    """The positions the text tower runs per caption."""
    if isinstance(text, TokenBuckets):
        return sum(part.numel() for part in text.parts) / len(text.inverse)
    return float(text.shape[1])


def count_flops(step: Callable, images: torch.Tensor, text: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:  # counted eagerly on one step; compile does not change the arithmetic
        step(images, text)
    return int(counter.get_total_flops())


def bench(name: str, model: torch.nn.Module, encode: Callable, args: argparse.Namespace,
          config: CLIPConfig | CLIPPOConfig, device: torch.device, texts: list[torch.Tensor],
          prepare: Callable[[torch.Tensor], torch.Tensor], loss_fn: Callable[..., torch.Tensor] = clip_loss,
          accum_steps: int = 1) -> dict[str, Any]:
    """Times ``args.steps`` steps cycling over ``texts`` (host tensors; ``prepare`` makes each step's device text)."""
    model.to(device).train()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, fused=fused)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, "fp8": torch.bfloat16}[args.precision]
    eager = make_step(model, encode, opt, amp, device, loss_fn, accum_steps)
    step = torch.compile(eager, dynamic=False) if args.compile else eager  # one graph per trimmed width
    size = config.vision.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device)

    flops_by_width: dict[tuple[int, ...], int] = {}
    for text in texts:  # an eager step per distinct text width: its FLOPs, and a warm-up
        prepared = prepare(text)
        if text_shape(prepared) not in flops_by_width:
            flops_by_width[text_shape(prepared)] = count_flops(eager, images, prepared)
    for i in range(max(args.warmup, len(texts) if args.compile else 0)):  # compile sees every width
        step(images, prepare(texts[i % len(texts)]))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, flops, widths = [], [], []
    for i in range(args.steps):
        t0 = time.perf_counter()
        text = prepare(texts[i % len(texts)])
        step(images, text)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        flops.append(flops_by_width[text_shape(text)])
        widths.append(tokens_per_caption(text))
    median, mean_flops = statistics.median(times), statistics.mean(flops)
    result: dict[str, Any] = {
        "impl": name,
        "samples_per_s": round(args.batch_size / median, 1 if args.batch_size / median >= 100 else 3),
        "step_ms_median": round(median * 1000, 2),
        "gflops_per_step": round(mean_flops / 1e9, 1),
        "tflops_per_s": round(mean_flops / median / 1e12, 3),
    }
    if texts[0].ndim == 2:
        result["text_tokens_mean"] = round(statistics.mean(widths), 2)
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name()), None)
        if peak is not None and amp is not None:
            result["mfu"] = round(mean_flops / median / peak, 3)
    model.cpu()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32", "fp8"], default=None,
                        help="default: bf16 on CUDA, fp32 on CPU; fp8: clipforge's linear layers in float8 "
                             "(precision: fp8, the rest bf16), open_clip in bf16")
    parser.add_argument("--fp8-recipe", choices=["tensorwise", "rowwise", "rowwise_with_gw_hp"], default="tensorwise")
    parser.add_argument("--fp8-emulate", action="store_true", help="float8 numerics off Hopper/Ada GPUs (slow)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--caption-lengths", choices=["full", "real"], default="full",
                        help="full: every caption fills the context; real: lengths drawn from "
                             "benchmarks/data/caption_lengths.json (clipforge trims, open_clip pads)")
    parser.add_argument("--text-batches", type=int, default=4,
                        help="distinct token batches the timed steps cycle over (real lengths differ per batch)")
    parser.add_argument("--loss-chunk-size", type=int, default=None,
                        help="clipforge's chunked contrastive loss, this many rows per block")
    parser.add_argument("--accum-steps", type=int, default=1,
                        help="clipforge's gradient caching over this many micro-batches (no open_clip reference)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="clipforge recomputes activations")
    parser.add_argument("--no-trim", action="store_true", help="clipforge runs the padded ids too")
    parser.add_argument("--bucket-text", action="store_true",
                        help="also time clipforge with the captions grouped by length (bucket_text)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--no-reference", action="store_true", help="skip open_clip")
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "text_batches", "accum_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size % args.accum_steps:
        parser.error(f"--batch-size {args.batch_size} is not a multiple of --accum-steps {args.accum_steps}")
    if args.loss_chunk_size is not None and args.loss_chunk_size < 1:
        parser.error("--loss-chunk-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    model = clipforge.create_model(args.model)
    config = model.config
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.precision == "fp8":  # as precision: fp8 trains: the linear layers in float8, the rest under bf16 autocast
        from clipforge.train.fp8 import Fp8Config, convert_to_fp8

        args.fp8_layers = convert_to_fp8(model, Fp8Config(args.fp8_recipe, args.fp8_emulate), device)

    def ours(images: torch.Tensor, text: torch.Tensor, model: torch.nn.Module = model) -> tuple[torch.Tensor, ...]:
        out = model(images, text)
        return out.image_features, out.text_features, out.logit_scale

    def to_device(text: torch.Tensor) -> torch.Tensor:
        return text.to(device, non_blocking=True)

    if isinstance(config, CLIPConfig):
        texts = token_batches(config, args.batch_size, args.caption_lengths, args.text_batches)
        trim = not args.no_trim
        ours_prepare = (lambda t: to_device(trim_tokens(t, config.text))) if trim else to_device
    else:
        texts, ours_prepare = [rendered_text(model, args.batch_size)], to_device
    loss_fn: Callable[..., torch.Tensor] = clip_loss
    if args.loss_chunk_size is not None:
        loss_fn = functools.partial(clip_loss, chunk_size=args.loss_chunk_size)
    results = [bench("clipforge", model, ours, args, config, device, texts, ours_prepare, loss_fn, args.accum_steps)]
    bucketed = None  # the length-bucket row: token ids (CLIP) and the plain step only
    if args.bucket_text and isinstance(config, CLIPConfig) and args.accum_steps == 1:
        bucketed = bench("clipforge bucket_text", model, ours, args, config, device, texts,
                         lambda t: length_buckets(t, config.text).to(device, non_blocking=True), loss_fn)
    if not args.no_reference and args.accum_steps == 1 and isinstance(config, CLIPConfig):
        try:
            ref = open_clip_model(config)
        except ImportError:
            ref = None
        if ref is not None:  # open_clip's forward returns (image_features, text_features, logit_scale.exp())
            reference_args = argparse.Namespace(**{**vars(args), "precision": "bf16"}) if args.precision == "fp8" \
                else args  # float8 is clipforge's option: the reference trains in bf16
            results.append(bench("open_clip", ref, ref, reference_args, config, device, texts, to_device))
    report: dict[str, Any] = {
        "model": args.model, "batch_size": args.batch_size, "precision": args.precision, "compile": args.compile,
        **({"fp8_recipe": args.fp8_recipe, "fp8_emulate": args.fp8_emulate, "fp8_linear_layers": args.fp8_layers,
            "reference_precision": "bf16"}
           if args.precision == "fp8" else {}),
        "caption_lengths": args.caption_lengths if isinstance(config, CLIPConfig) else "rendered",
        "trim": isinstance(config, CLIPConfig) and not args.no_trim, "loss_chunk_size": args.loss_chunk_size,
        "accum_steps": args.accum_steps, "grad_checkpointing": args.grad_checkpointing, "steps": args.steps,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "results": results,
    }
    if len(results) == 2:
        # the ratio of the step medians (same batch), not of the rounded rates: a CPU step runs at a few samples/s
        report["speedup"] = round(results[1]["step_ms_median"] / results[0]["step_ms_median"], 3)
        report["flops_ratio"] = round(results[0]["gflops_per_step"] / results[1]["gflops_per_step"], 3)
    if bucketed is not None:
        results.append(bucketed)  # the trimmed step's median over the bucketed one's, the same batches
        report["bucket_speedup"] = round(results[0]["step_ms_median"] / bucketed["step_ms_median"], 3)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
