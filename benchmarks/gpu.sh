#!/usr/bin/env bash
# The GPU checks in one go, most important first, each writing its own file under OUTDIR so that a run cut
# short still leaves what it finished: the gpu-marked tests, training-step throughput against open_clip
# (bf16, torch.compile) for ViT-B/32 and ViT-B/16, CLIPPO B/16's training step, the renderer painting on the
# GPU, and a short CLIPPO training run through the CLI on CUDA. Issue #25's measurements follow the B/32 and B/16
# lines (b32 and b16 are full-length captions): real caption lengths (clipforge trims, open_clip pads; b32-real-bucket:
# trimmed against bucket_text, eager), then one GPU
# at a 32,768 batch (gradient caching + chunked loss + gradient checkpointing) beside the plain 2,048 step, for the
# time per sample; before them precision: fp8's B/16 step (b16-fp8) and its 1,000-step loss curve against bf16
# (fp8-curve, tiny-vit on the synthetic world). Then issue #23's FSDP2 runs on one GPU. Each #25/#23 run is capped
# with timeout so that the whole
# script stays near 8 minutes (not yet run on a GPU: the caps, not a measurement, bound it).
#
#   bash benchmarks/gpu.sh OUTDIR        (needs CUDA; open_clip for the reference rows)
set -uo pipefail
out=${1:?usage: benchmarks/gpu.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
run() {  # run NAME CMD...: the command's output to OUTDIR/NAME.log, its status to the summary
    local name=$1; shift
    local t0=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    echo "$name rc=$? ${SECONDS}s (after $((SECONDS - t0))s)" | tee -a "$out/summary.txt"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/summary.txt"
$py -c "import torch; print('torch', torch.__version__)" | tee -a "$out/summary.txt"
run tests $py -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests
run b32 $py benchmarks/train_step.py --model ViT-B/32 --batch-size 512 --precision bf16 --compile --steps 15 --warmup 3
run b32-real timeout 150 $py benchmarks/train_step.py --model ViT-B/32 --batch-size 512 --precision bf16 --compile \
    --caption-lengths real --steps 10 --warmup 3
run b32-real-bucket timeout 90 $py benchmarks/train_step.py --model ViT-B/32 --batch-size 512 --precision bf16 \
    --caption-lengths real --bucket-text --no-reference --steps 10 --warmup 3  # eager: trimmed vs length buckets
run b16 $py benchmarks/train_step.py --model ViT-B/16 --batch-size 256 --precision bf16 --compile --steps 15 --warmup 3
run b16-real timeout 150 $py benchmarks/train_step.py --model ViT-B/16 --batch-size 256 --precision bf16 --compile \
    --caption-lengths real --steps 10 --warmup 3
run b16-fp8 timeout 150 $py benchmarks/train_step.py --model ViT-B/16 --batch-size 256 --precision fp8 --compile \
    --caption-lengths real --steps 10 --warmup 3  # clipforge's precision: fp8 against open_clip in bf16
run fp8-curve timeout 120 $py benchmarks/fp8_curve.py --device cuda --steps 1000 --work /tmp/clipforge-fp8-curve
run b32-32k timeout 150 $py benchmarks/train_step.py --model ViT-B/32 --batch-size 32768 --accum-steps 16 \
    --loss-chunk-size 4096 --grad-checkpointing --precision bf16 --caption-lengths real --text-batches 1 --steps 3 \
    --warmup 1 --no-reference
run b32-plain2k timeout 90 $py benchmarks/train_step.py --model ViT-B/32 --batch-size 2048 --precision bf16 \
    --caption-lengths real --text-batches 1 --steps 5 --warmup 1 --no-reference
# Issue #23: FSDP2's own cost on one GPU (a group of one) beside the plain step, and a model too big for plain
# training on one GPU trained from CPU memory (FSDP2 CPU offload).
run fsdp-overhead timeout 90 $py benchmarks/fsdp.py --device cuda --nproc 1 --model ViT-B/16 --batch-size 128 \
    --steps 5 --warmup 2
run fsdp-offload-bigG timeout 150 $py benchmarks/fsdp.py --device cuda --nproc 1 --model ViT-bigG/14 --batch-size 16 \
    --steps 2 --warmup 1 --cpu-offload --fsdp-only
run clippo $py benchmarks/train_step.py --model clippo-B/16 --batch-size 256 --precision bf16 --compile --steps 15 \
    --warmup 3
run render $py benchmarks/render.py --n 4096 --repeats 3 --device cuda
run train $py -m clipforge.cli.main train --config configs/quickstart_clippo.yaml steps=300 plots=false \
    output_dir=/tmp/clipforge-gpu-train
