"""Training-step throughput: clipforge vs open_clip, same architecture, same process, synthetic inputs.

Times forward + backward + AdamW steps and prints one JSON object: samples/s (median over timed
steps), TFLOP/s (FLOPs counted by torch.utils.flop_counter on one step), peak memory, and the ratio
to open_clip when it is importable.

    python benchmarks/train_step.py --model ViT-B/32 --batch-size 512 --precision bf16 --compile
    python benchmarks/train_step.py --model tiny-vit --batch-size 64 --steps 10   # CPU smoke run
    python benchmarks/train_step.py --model clippo-B/16 --batch-size 256 --compile   # CLIPPO: no reference

CLIPPO models take rendered alt-texts (uint8 pixels, rendered once before timing) as their text input;
open_clip has no CLIPPO, so they are timed alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import clipforge
from clipforge.models.config import CLIPConfig, CLIPPOConfig, ViTConfig
from clipforge.train.loss import clip_loss


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
              device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def step(images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            image_features, text_features, scale = encode(images, text)
            loss = clip_loss(image_features, text_features, scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def text_input(model: torch.nn.Module, batch_size: int, device: torch.device) -> torch.Tensor:
    """One batch of the model's text input: BPE ids (20 tokens then padding) or rendered alt-texts."""
    config = model.config
    if isinstance(config, CLIPConfig):
        tokens = torch.randint(1, 49406, (batch_size, config.text.context_length), device=device)
        tokens[:, 0], tokens[:, 20], tokens[:, 21:] = 49406, 49407, 0
        return tokens
    words = "a photo of the red dog on green grass near an old house by river city street at sunset".split()
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[j] for j in torch.randint(len(words), (int(n),), generator=g))
             for n in torch.randint(3, 16, (batch_size,), generator=g)]
    return clipforge.get_text_processor(model)(texts, device=device)


def bench(name: str, model: torch.nn.Module, encode: Callable, args: argparse.Namespace,
          config: CLIPConfig | CLIPPOConfig, device: torch.device, text: torch.Tensor) -> dict[str, Any]:
    model.to(device).train()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, fused=fused)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    step = make_step(model, encode, opt, amp, device)
    if args.compile:
        step = torch.compile(step)
    size = config.vision.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device)

    from torch.utils.flop_counter import FlopCounterMode

    for _ in range(args.warmup):
        step(images, text)
    counter = FlopCounterMode(display=False)
    with counter:  # counted eagerly on one step; compile does not change the arithmetic
        make_step(model, encode, opt, amp, device)(images, text)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(images, text)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    result = {
        "impl": name,
        "samples_per_s": round(args.batch_size / median, 1),
        "step_ms_median": round(median * 1000, 2),
        "tflops_per_s": round(flops / median / 1e12, 2),
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    model.cpu()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                        help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="skip open_clip")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    model = clipforge.create_model(args.model)
    config = model.config

    def ours(images: torch.Tensor, text: torch.Tensor, model: torch.nn.Module = model) -> tuple[torch.Tensor, ...]:
        out = model(images, text)
        return out.image_features, out.text_features, out.logit_scale

    text = text_input(model, args.batch_size, device)
    results = [bench("clipforge", model, ours, args, config, device, text)]
    if not args.no_reference and isinstance(config, CLIPConfig):
        try:
            ref = open_clip_model(config)
        except ImportError:
            ref = None
        if ref is not None:  # open_clip's forward returns (image_features, text_features, logit_scale.exp())
            results.append(bench("open_clip", ref, ref, args, config, device, text))
    report: dict[str, Any] = {
        "model": args.model, "batch_size": args.batch_size, "precision": args.precision, "compile": args.compile,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "results": results,
    }
    if len(results) == 2:
        report["speedup_vs_open_clip"] = round(results[0]["samples_per_s"] / results[1]["samples_per_s"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
