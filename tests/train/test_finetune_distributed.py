"""Fine-tuning under ``torchrun --nproc_per_node 2`` (gloo, CPU) equals one process on the same global batch:
distillation from a checkpoint teacher (its features gathered like the student's) and ``eval.sets`` evaluated by rank
0 alone while the other rank waits, with the one-process run's values at the same steps.

Each run is ``clipforge train`` in its own processes. A small runner wraps the CLI to record, per rank, every
feature gather of the loss (``clipforge.train.gradcache.gather_features``) and every ``eval.sets`` evaluation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

import clipforge
from clipforge.checkpoints.native import save_pretrained
from clipforge.models.factory import build_model
from clipforge.train import Runtime, load_config, parse_overrides
from clipforge.train.distill import teacher_features
from clipforge.train.distributed import all_reduce_gradients, all_reduce_mean, init_runtime, shutdown
from clipforge.train.finetune_config import DistillConfig
from clipforge.train.flyp import write_synthetic_class_folders
from clipforge.train.gradcache import forward_backward
from clipforge.train.loss import LOSSES
from clipforge.train.metrics import read_metrics

pytestmark = pytest.mark.distributed

ARCH = ["model_overrides.embed_dim=16", "model_overrides.vision.image_size=32", "model_overrides.vision.patch_size=8",
        "model_overrides.vision.width=16", "model_overrides.vision.layers=1", "model_overrides.vision.heads=2",
        "model_overrides.text.width=16", "model_overrides.text.heads=2", "model_overrides.text.layers=1",
        "model_overrides.text.context_length=16"]
STEPS, BATCH, STUDENT_DIM, TEACHER_DIM = 4, 8, 16, 24
TOLERANCE = 1e-5  # test_train_distributed.py's: float32 sums in another order
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# ``clipforge train`` with two probes: each rank appends what it gathered and evaluated to $PROBE/rank<R>.jsonl.
RUNNER = """import inspect, json, os, sys
import clipforge.cli.main as entry
import clipforge.train.gradcache as gradcache
import clipforge.train.loop as loop

rank = os.environ.get("RANK", "0")
probe = open(os.path.join(os.environ["PROBE"], f"rank{rank}.jsonl"), "a")
gather, evaluate = gradcache.gather_features, loop.evaluate_eval_sets

def gather_features(features, runtime):
    out = gather(features, runtime)
    probe.write(json.dumps({"gather": [list(features.shape), list(out.shape)]}) + "\\n")
    return out

def evaluate_eval_sets(*args, **kwargs):
    named = evaluate(*args, **kwargs)
    step = inspect.signature(evaluate).bind(*args, **kwargs).arguments["step"]
    probe.write(json.dumps({"evaluated": step, "keys": sorted(named)}) + "\\n")
    return named

gradcache.gather_features, loop.evaluate_eval_sets = gather_features, evaluate_eval_sets
status = entry.main(sys.argv[1:])
probe.write(json.dumps({"exit": status}) + "\\n")
probe.close()
sys.exit(status)
"""


def _saved(root: Path, name: str, seed: int, *extra: str) -> Path:
    torch.manual_seed(seed)
    return save_pretrained(build_model(load_config(None, parse_overrides([*ARCH, *extra])).model_config()), root / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A distillation fine-tune with an ``eval.sets`` zero-shot set, run in one process and on two ranks (the plain
    global loss, and the local loss with gradient caching); each run's directory, and its probes beside it."""
    root = tmp_path_factory.mktemp("finetune_distributed")
    start = _saved(root, "start", 5)
    teacher = _saved(root, "teacher", 6, f"model_overrides.embed_dim={TEACHER_DIM}")  # wider: only logits meet
    write_synthetic_class_folders(root / "colours", size=30, task="colour", image_size=32)
    config = {
        "model": str(start), "steps": STEPS, "batch_size": BATCH, "log_every": 1, "checkpoint_every": 0,
        "plots": False, "schedule": {"warmup_steps": 1}, "data": {"train_size": 200}, "optim": {"lr": 5e-3},
        "distill": {"teacher": str(teacher), "weight": 1.0},
        "eval": {"every": 2, "size": 4, "retrieval_size": 0,
                 "sets": [{"name": "colours", "task": "zeroshot", "data": str(root / "colours/test"),
                           "templates": str(root / "colours/templates.txt")}]},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    load_config(root / "run.yaml")  # a bad field fails here, not in a subprocess
    runner = root / "runner.py"
    runner.write_text(RUNNER)
    launches = {"single": [], "two": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]}
    dirs = {}
    for name, launcher in launches.items():
        run_dir, probe = root / name, root / f"{name}_probe"
        probe.mkdir()
        done = subprocess.run([sys.executable, *launcher, str(runner), "train", "--config", str(root / "run.yaml"),
                               f"output_dir={run_dir}", "--device", "cpu"], env={**ENV, "PROBE": str(probe)},
                              cwd=root, capture_output=True, text=True, timeout=180)  # a deadlock fails, not hangs
        assert done.returncode == 0, f"{name}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        (run_dir / "stdout.txt").write_text(done.stdout)
        dirs[name] = run_dir
    return dirs


def _probe(run_dir: Path, rank: int) -> list[dict[str, Any]]:
    path = run_dir.parent / f"{run_dir.name}_probe/rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_distillation_finetune_on_two_ranks_ends_where_one_process_does(runs: dict[str, Path]) -> None:
    start = load_file(runs["single"].parent / "start/model.safetensors")
    single = load_file(runs["single"] / "final/model.safetensors")
    final = load_file(runs["two"] / "final/model.safetensors")
    assert final.keys() == single.keys() and any(not torch.equal(single[k], start[k]) for k in start)
    worst = {k: (final[k] - single[k]).abs().max().item() for k in single}
    assert max(worst.values()) <= TOLERANCE, sorted(worst.items(), key=lambda kv: -kv[1])[:3]
    ones = [r["loss"] for r in read_metrics(runs["single"] / "metrics.jsonl") if "loss" in r]
    twos = [r["loss"] for r in read_metrics(runs["two"] / "metrics.jsonl") if "loss" in r]
    assert len(twos) == STEPS and twos == pytest.approx(ones, abs=TOLERANCE)

    # The teacher's features are gathered like the student's: each rank's 4 rows to the global batch's 8, every step
    # (the student's image and text features for the contrastive loss and again for the distillation term).
    student = ((BATCH // 2, STUDENT_DIM), (BATCH, STUDENT_DIM))
    teacher = ((BATCH // 2, TEACHER_DIM), (BATCH, TEACHER_DIM))
    for rank in (0, 1):
        gathers = [tuple(map(tuple, r["gather"])) for r in _probe(runs["two"], rank) if "gather" in r]
        assert gathers.count(teacher) == 2 * STEPS, (rank, gathers[:6])
        assert gathers.count(student) == 4 * STEPS and len(gathers) == 6 * STEPS, (rank, gathers[:6])
    assert all(r["gather"][0] == r["gather"][1] for r in _probe(runs["single"], 0) if "gather" in r)  # one process


def test_eval_sets_on_two_ranks_run_on_rank_0_alone_with_the_one_process_values(runs: dict[str, Path]) -> None:
    def eval_set_records(run_dir: Path) -> dict[int, dict[str, float]]:
        return {r["step"]: {k: v for k, v in r.items() if k.startswith("colours/")}
                for r in read_metrics(run_dir / "metrics.jsonl") if any(k.startswith("colours/") for k in r)}

    expected = eval_set_records(runs["single"])
    assert sorted(expected) == [2, 4] and {"colours/acc1", "colours/acc5"} <= set(expected[4])
    rank0, rank1 = _probe(runs["two"], 0), _probe(runs["two"], 1)
    assert [r["evaluated"] for r in rank0 if "evaluated" in r] == [2, 4]  # rank 0 evaluates at the due steps
    assert not [r for r in rank1 if "evaluated" in r]  # rank 1 never does
    assert rank0[-1] == rank1[-1] == {"exit": 0}  # and both finish: rank 1 waited at the barrier
    assert eval_set_records(runs["two"]) == expected  # written once, with the one-process run's values
    out = (runs["two"] / "stdout.txt").read_text()
    assert out.count("step 2: colours/acc1") == 1 and out.count("step 4: colours/acc1") == 1, out


# Step level, in float64: every way a step combines the gather with the distillation term gives the one-process
# step's loss and gradients on the global batch (the loop's run above covers the plain global loss in float32,
# where Adam turns the local loss's other summation order into differences above the tolerance in rarely used
# token embeddings).
CASES = [(False, 1), (True, 1), (False, 2), (True, 2)]  # (local_loss, accum_steps)
STEP_MODEL = {"embed_dim": STUDENT_DIM, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                                    "heads": 2},
              "text": {"width": 32, "heads": 2, "layers": 1, "vocab_size": 100, "context_length": 8}}


def _distill_step(local_loss: bool, accum: int, runtime: Runtime) -> tuple[float, dict[str, torch.Tensor]]:
    """One distillation step on this rank's slice of a fixed global batch: the loss and the averaged gradients."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", **STEP_MODEL).double()
    torch.manual_seed(1)
    teacher = clipforge.create_model("tiny-vit", **{**STEP_MODEL, "embed_dim": TEACHER_DIM}).double().eval()
    g = torch.Generator().manual_seed(2)
    images = torch.randn(BATCH, 3, 32, 32, generator=g, dtype=torch.float64)
    texts = torch.randint(1, 100, (BATCH, 8), generator=g)
    local = BATCH // runtime.world_size
    rows = slice(runtime.rank * local, (runtime.rank + 1) * local)
    distill = teacher_features(teacher, images[rows], texts[rows], DistillConfig(teacher="t", weight=2.0), accum)
    loss = forward_backward(model, images[rows], texts[rows], LOSSES["clip"], runtime, accum_steps=accum,
                            local_loss=local_loss, distill=distill)
    all_reduce_gradients(list(model.parameters()), runtime)
    return all_reduce_mean(loss, runtime).item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _step_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    runtime = init_runtime("cpu")
    try:
        torch.save({case: _distill_step(*case, runtime) for case in CASES}, f"{out}/rank{rank}.pt")
    finally:
        shutdown(runtime)


def test_a_distillation_step_on_two_ranks_equals_the_global_batch_step(tmp_path: Path, free_port: int,
                                                                       one_thread: None) -> None:
    mp.spawn(_step_worker, args=(free_port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    plain = _distill_step(False, 1, Runtime())[0]
    for case in CASES:
        loss, grads = _distill_step(*case, Runtime())
        assert loss == pytest.approx(plain, abs=1e-12)  # one process: the local loss and caching change nothing
        for rank in ranks:
            rank_loss, rank_grads = rank[case]
            assert abs(rank_loss - loss) <= TOLERANCE, case
            for name, grad in grads.items():
                assert (rank_grads[name] - grad).abs().max().item() <= 1e-10, (case, name)
