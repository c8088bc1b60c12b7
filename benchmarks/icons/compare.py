"""The icon benchmark, side by side: OpenCLIP's trainer and clipforge's recipes on the same shards (issue #20).

Every run trains the same model shape on the same training shards of a ``benchmarks/icons/build.py`` output, for
the same number of samples (steps × batch), one process per run, one run after another; then clipforge's own
evaluator scores it on the cross-style zero-shot, cross-style retrieval and unseen-concept zero-shot folders.

    python benchmarks/icons/build.py --cache /tmp/icons-cache --out /tmp/icons-out --sizes 64 \\
        --sets ph tabler lucide bi --workers 2 --cross-style-classes eval
    python benchmarks/icons/compare.py --data /tmp/icons-out --work /tmp/icons-compare --seeds 0 1 2

Rows: ``openclip`` (``open_clip_train.main`` with a model config written from the clipforge preset, read back
and scored by ``clipforge eval``; always available) and the rows of ``recipes.yaml`` beside this script (or
``--recipes PATH``): each top-level key a row, its value train-config keys merged over the shared base
(:func:`row_config`). Three keys are the runner's, not the train config's: ``anchor`` (the row its ratios divide
by; default ``openclip``), and ``model`` / ``model_overrides``, which replace the base's model and overrides
whole when given. A ``model_overrides`` mapping is not merged into the base's ``{text: {layers: N}}``: CLIPPO rows
(``model: clippo-tiny``, one tower, no text tower) give ``model_overrides: {}``, and a CLIP row that changes
its overrides restates the text depth. CLIPPO's 96 px model reads the 64 px shards resized by its transforms.
Prints JSON: per row and seed the three scores and the training wall time, the mean ± std per row, and each
row's means as ratios to its anchor's (``ratio_to_<anchor>``), so CLIPPO rows compare with the plain ``clippo``
row and CLIP rows with OpenCLIP's. ``curve.py`` runs the same rows on the build's learning-curve subsets.

What is kept the same: shape, shards, samples seen, batch (unless a row sets its own ``batch_size``: then its steps
are the same samples over that batch; a row never sets ``steps``), AdamW's lr/betas/eps/weight decay, warm-up and
cosine schedule, gradient clipping, fp32, the training crop (RandomResizedCrop 0.9–1.0 of the area on both sides),
the evaluator. What differs (OpenCLIP's webdataset reader cannot do otherwise): its ``pilrgb`` decoder drops alpha
(the icons would be black on black), so it reads a copy of the shards with each PNG composited on white (clipforge's
rule for transparent images), and it takes the whole ``.txt`` as one caption, so the copy holds one seeded caption
line per sample and pass (``--passes`` copies of each image, each with its own line), where clipforge draws a line
per read. OpenCLIP also exempts gains and biases from weight decay; clipforge's optimiser groups are its own. Seeds
change initialisation and data order on both sides; the data split is the build's.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EVAL_SETS = {"cross_style": ("zeroshot", "cross_style_zeroshot"),
             "cross_style_retrieval": ("retrieval", "cross_style_retrieval"),
             "unseen_concepts": ("zeroshot", "unseen_concepts_zeroshot")}
METRICS = {"cross_style_top1": "cross_style/acc1", "unseen_concepts_top1": "unseen_concepts/acc1",
           "retrieval_image_r1": "cross_style_retrieval/image_retrieval_recall@1",
           "retrieval_text_r1": "cross_style_retrieval/text_retrieval_recall@1"}
OPENCLIP = "openclip"  # the row OpenCLIP's trainer runs: not in the recipes file
RECIPES_PATH = Path(__file__).resolve().with_name("recipes.yaml")
RUNNER_KEYS = ("anchor", "model", "model_overrides")  # a row's keys that are the runner's, not the train config's
OPEN_CLIP_MODEL = "clipforge-icons"
CLIPFORGE = str(Path(sys.executable).parent / "clipforge")  # the entry point of the running environment


def model_config(preset: str, overrides: dict[str, Any]) -> Any:
    """The clipforge ``CLIPConfig`` of ``preset`` with ``overrides`` (the train config's ``model_overrides``)."""
    from clipforge.models.factory import build_config

    return build_config(preset, **overrides)


def write_open_clip_config(config: Any, folder: Path, name: str = OPEN_CLIP_MODEL) -> Path:
    """Writes ``<folder>/<name>.json``: open_clip's model config for clipforge's ``config`` (the same shape)."""
    from clipforge.checkpoints.open_clip import open_clip_model_cfg

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(open_clip_model_cfg(config), indent=1), encoding="utf-8")
    return path


def white_rgb_png(data: bytes) -> bytes:
    """A PNG composited on white and saved as RGB (clipforge's alpha rule), for a reader that drops alpha."""
    from PIL import Image

    image: Image.Image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode != "RGB":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def open_clip_shards(train_dir: Path, out_dir: Path, passes: int, seed: int = 0) -> tuple[list[Path], int]:
    """Copies the training shards for OpenCLIP's reader: white-composited RGB PNGs, one caption line a sample.

    Each source shard becomes ``passes`` shards; pass ``p`` holds every sample once, captioned with one line of
    its ``.txt`` drawn by a generator seeded with (``seed``, shard, pass).

    Returns:
        The written shard paths and the number of samples in them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(train_dir.glob("*.tar"))
    if not sources:
        raise ValueError(f"{train_dir}: no .tar shards (expected a build.py '<size>px/train' folder)")
    written: list[Path] = []
    count = 0
    for p in range(passes):
        for source in sources:
            rng = random.Random(f"{seed}/{source.name}/{p}")
            target = out_dir / f"{len(written):05d}.tar"
            with tarfile.open(source) as src, tarfile.open(target, "w") as dst:
                for member in src.getmembers():
                    f = src.extractfile(member)
                    if f is None:
                        continue
                    data, stem, ext = f.read(), *member.name.split(".", 1)
                    if ext == "png":
                        data = white_rgb_png(data)
                    elif ext == "txt":
                        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
                        data = rng.choice(lines).encode("utf-8")
                        count += 1
                    info = tarfile.TarInfo(f"{p}{stem}.{ext}")  # keys unique across passes
                    info.size = len(data)
                    dst.addfile(info, io.BytesIO(data))
            written.append(target)
    return written, count


def base_train_config(data: Path, size: int, preset: str, overrides: dict[str, Any], steps: int, batch_size: int,
                      lr: float, weight_decay: float, warmup: int) -> dict[str, Any]:
    """The train config every clipforge row starts from (a recipe adds its keys)."""
    folder = data / f"{size}px"
    sets = [{"name": name, "task": task, "data": str(folder / "eval" / sub), "every": 0}
            for name, (task, sub) in EVAL_SETS.items()]
    return {
        "model": preset, "model_overrides": overrides,
        "data": {"kind": "shards", "urls": str(folder / "train"), "augment": True, "num_workers": 0},
        "optim": {"lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.98], "eps": 1e-6, "grad_clip": 1.0},
        "schedule": {"warmup_steps": warmup},
        "eval": {"every": 0, "sets": sets},
        "steps": steps, "batch_size": batch_size, "log_every": 50, "checkpoint_every": 0,
        "channels_last": True, "precision": "fp32", "plots": False, "report_to": [],
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s keys (nested dicts merged)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipes(path: Path = RECIPES_PATH) -> dict[str, dict[str, Any]]:
    """The rows of a recipes file, in its order: row name → its keys (an empty or null value: the base alone).

    Raises:
        ValueError: naming the file and the row: not a mapping, a row named ``openclip`` (OpenCLIP's trainer, always
            a row), a ``model`` that is not a name, a ``model_overrides`` that is not a mapping, or an ``anchor``
            that is neither ``openclip`` nor a row of the file.
        FileNotFoundError: ``path`` does not exist.
    """
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of row name → train-config keys, got {type(data).__name__}")
    rows: dict[str, dict[str, Any]] = {}
    for name, keys in data.items():
        where = f"{path}: row {name!r}"
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: a row name must be a non-empty string")
        if name == OPENCLIP:
            raise ValueError(f"{where}: {OPENCLIP!r} is OpenCLIP's trainer, always a row; name file rows otherwise")
        keys = {} if keys is None else keys
        if not isinstance(keys, dict):
            raise ValueError(f"{where}: expected a mapping of train-config keys, got {type(keys).__name__}")
        if "model" in keys and not isinstance(keys["model"], str):
            raise ValueError(f"{where}: model must be a preset name, got {keys['model']!r}")
        if "model_overrides" in keys and not isinstance(keys["model_overrides"], dict):
            raise ValueError(f"{where}: model_overrides must be a mapping (it replaces the base's), "
                             f"got {keys['model_overrides']!r}")
        if "steps" in keys:
            raise ValueError(f"{where}: a row cannot set steps: every row trains the setup's number of samples; "
                             "set batch_size and the steps follow from it")
        batch = keys.get("batch_size")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"{where}: batch_size must be a positive integer, got {batch!r}")
        rows[name] = keys
    for name, keys in rows.items():
        anchor = keys.get("anchor", OPENCLIP)
        if anchor != OPENCLIP and anchor not in rows:
            raise ValueError(f"{path}: row {name!r}: anchor {anchor!r} is not a row (rows: {[OPENCLIP, *rows]})")
    return rows


def anchor_of(row: str, recipes: Mapping[str, Mapping[str, Any]]) -> str:
    """The row ``row``'s ratios divide by: its ``anchor`` key, else ``openclip`` (whose anchor is itself)."""
    return str(recipes.get(row, {}).get("anchor", OPENCLIP))


def row_config(base: dict[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The train config of one row: ``recipe``'s train-config keys merged over ``base`` (nested dicts merged, as
    :func:`merge` does); its ``model`` and ``model_overrides`` replace the base's whole (a mapping of overrides is
    not merged: ``{}`` drops the base's text depth, which a one-tower CLIPPO model has no tower for); ``anchor`` is
    left out. A row's ``batch_size`` keeps the base's sample budget: its steps are the budget over its batch (the
    warm-up stays the base's number of steps).

    Raises:
        ValueError: the row's batch does not divide the budget.
    """
    config = merge(base, {k: v for k, v in recipe.items() if k not in RUNNER_KEYS})
    for key in ("model", "model_overrides"):
        if key in recipe:
            config[key] = copy.deepcopy(recipe[key])
    if "batch_size" in recipe:  # the same samples in fewer, larger steps (or more, smaller ones)
        config["steps"] = steps_at(base["steps"], base["batch_size"], recipe["batch_size"])
    return config


def steps_at(steps: int, batch_size: int, new_batch_size: int) -> int:
    """The steps of ``new_batch_size`` that train the samples of ``steps`` × ``batch_size``.

    Raises:
        ValueError: ``new_batch_size`` does not divide that budget.
    """
    samples = steps * batch_size
    if samples % new_batch_size:
        raise ValueError(f"batch_size {new_batch_size} does not divide the budget of {samples} samples "
                         f"({steps} steps of {batch_size})")
    return samples // new_batch_size


def final_metrics(run_dir: Path) -> dict[str, float]:
    """The last record's scores in ``<run>/metrics.jsonl`` (the end-of-run evaluation)."""
    found: dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for short, key in METRICS.items():
            if key in record:
                found[short] = float(record[key])
    missing = sorted(set(METRICS) - set(found))
    if missing:
        raise RuntimeError(f"{run_dir}/metrics.jsonl: no {missing} (did the end-of-run evaluation run?)")
    return found


def run_clipforge(config: dict[str, Any], run_dir: Path, seed: int, threads: int) -> dict[str, float]:
    """Trains one clipforge row in its own process; returns its scores and ``train_s`` (the process's wall time)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    path = run_dir / "train.yaml"
    path.write_text(yaml.safe_dump({**config, "seed": seed, "output_dir": str(run_dir)}), encoding="utf-8")
    start = time.perf_counter()
    run([CLIPFORGE, "train", "--config", str(path), "--device", "cpu",
         "--threads", str(threads)], run_dir / "train.log")
    return {**final_metrics(run_dir), "train_s": round(time.perf_counter() - start, 1)}


def run(command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Runs ``command`` with stdout and stderr in ``log``; raises naming the log when it fails."""
    with log.open("w", encoding="utf-8") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()[-15:]
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}); {log}:\n" + "\n".join(tail))


def open_clip_command(shards: list[Path], samples: int, config_path: Path, logs: Path, seed: int, batch_size: int,
                      lr: float, weight_decay: float, warmup: int, threads: int) -> list[str]:
    """``open_clip_train.main`` for one epoch of ``samples``, with the model config registered first."""
    first, last = shards[0].stem, shards[-1].stem
    pattern = str(shards[0].parent / f"{{{first}..{last}}}.tar")
    launcher = ("import sys, torch, open_clip; torch.set_num_threads(int(sys.argv[1])); "
                "open_clip.add_model_config(sys.argv[2]); from open_clip_train.main import main; main(sys.argv[3:])")
    return [sys.executable, "-c", launcher, str(threads), str(config_path),
            "--train-data", pattern, "--dataset-type", "webdataset", "--train-num-samples", str(samples),
            "--epochs", "1", "--batch-size", str(batch_size), "--lr", str(lr), "--wd", str(weight_decay),
            "--warmup", str(warmup), "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
            "--grad-clip-norm", "1.0", "--precision", "fp32", "--device", "cpu", "--workers", "1",
            "--seed", str(seed), "--logs", str(logs), "--name", f"seed{seed}", "--save-frequency", "1",
            "--zeroshot-frequency", "0", "--val-frequency", "0", "--report-to", "", "--log-every-n-steps", "50",
            "--model", config_path.stem]


def run_open_clip(shards: list[Path], samples: int, config: Any, work: Path, seed: int, batch_size: int,
                  lr: float, weight_decay: float, warmup: int, threads: int, data: Path, size: int,
                  pythonpath: str) -> dict[str, float]:
    """Trains the OpenCLIP row in its own process, then scores its checkpoint with ``clipforge eval``."""
    shutil.rmtree(work / "logs", ignore_errors=True)  # open_clip refuses to overwrite an experiment
    work.mkdir(parents=True, exist_ok=True)
    config_path = write_open_clip_config(config, work / "model_configs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p)}
    command = open_clip_command(shards, samples, config_path, work / "logs", seed, batch_size, lr, weight_decay,
                                warmup, threads)
    start = time.perf_counter()
    run(command, work / "train.log", env)
    train_s = round(time.perf_counter() - start, 1)
    checkpoint = work / "logs" / f"seed{seed}" / "checkpoints" / "epoch_1.pt"
    # Beside the checkpoint, open_clip's config tells clipforge's reader the heads and the activation.
    (checkpoint.parent / "open_clip_config.json").write_text(config_path.read_text(encoding="utf-8"), "utf-8")
    scores: dict[str, float] = {}
    for name, (task, sub) in EVAL_SETS.items():
        out = work / f"{name}.json"
        run([CLIPFORGE, "eval", task, "--model", str(checkpoint), "--allow-pickle",
             "--data", str(data / f"{size}px" / "eval" / sub), "--output", str(out), "--device", "cpu",
             "--no-progress"], work / f"eval_{name}.log")
        metrics = json.loads(out.read_text(encoding="utf-8"))["metrics"]
        for short, key in METRICS.items():
            prefix, metric = key.split("/")
            if prefix == name:
                scores[short] = float(metrics[metric])
    import torch  # the weights stay for by_style.py; the optimiser state is not needed once scored

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({key: state[key] for key in ("epoch", "name", "state_dict") if key in state}, checkpoint)
    return {**scores, "train_s": train_s}


def summarise(results: Mapping[str, list[dict[str, float]]], anchor: str = OPENCLIP,
              anchors: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Mean and sample std (n − 1; 0 for one seed) per row and score, and each row's means over its anchor's.

    Args:
        results: Row name → one dict of scores per seed.
        anchor: The row the ratios divide by, for rows ``anchors`` does not name.
        anchors: Row name → the row its ratios divide by (``ratio_to_<anchor>``; null where the anchor's mean is 0;
            left out where the anchor has no results).
    """
    stats_of: dict[str, dict[str, dict[str, float]]] = {}
    for row, seeds in results.items():
        keys = [k for k in seeds[0] if all(k in s for s in seeds)] if seeds else []
        stats = {}
        for k in keys:
            values = [s[k] for s in seeds]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            stats[k] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
        stats_of[row] = stats
    summary: dict[str, Any] = {}
    for row, stats in stats_of.items():
        summary[row] = dict(stats)
        base_row = (anchors or {}).get(row, anchor)
        if base_row in stats_of:
            ratios = {}
            for k, s in stats.items():
                base = stats_of[base_row].get(k, {}).get("mean")
                ratios[k] = None if not base else s["mean"] / base
            summary[row]["ratio_to_" + base_row] = ratios
    return summary


@dataclass(frozen=True)
class Setup:
    """What every row and seed of a comparison shares: the build, the model shape, the budget and the optimiser."""

    data: Path
    size: int = 64
    model: str = "tiny-rn"
    text_layers: int = 2
    steps: int = 400
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 30
    threads: int = 2
    open_clip_pythonpath: str = ""
    overrides: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", {"text": {"layers": self.text_layers}})

    @property
    def samples(self) -> int:
        """The sample budget of every run: steps × batch."""
        return self.steps * self.batch_size

    def base_config(self, train_dir: Path) -> dict[str, Any]:
        """The base train config (:func:`base_train_config`) reading its training shards from ``train_dir``."""
        base = base_train_config(self.data, self.size, self.model, self.overrides, self.steps, self.batch_size,
                                 self.lr, self.weight_decay, self.warmup)
        base["data"]["urls"] = str(train_dir)
        return base


def open_clip_inputs(train_dir: Path, out_dir: Path, pairs: int, samples: int) -> list[Path]:
    """OpenCLIP's copy of ``train_dir`` (:func:`open_clip_shards`) with enough passes for ``samples``, written once:
    a ``done.json`` in ``out_dir`` naming the same source and passes is reused.

    Raises:
        ValueError: The copy holds fewer samples than the budget (``pairs`` is wrong for ``train_dir``).
    """
    passes = math.ceil(samples / pairs)
    done = out_dir / "done.json"
    want = {"train_dir": str(train_dir.resolve()), "passes": passes}
    if done.exists():
        record = json.loads(done.read_text(encoding="utf-8"))
        if {k: record.get(k) for k in want} == want:
            return [out_dir / name for name in record["shards"]]
    shutil.rmtree(out_dir, ignore_errors=True)
    shards, count = open_clip_shards(train_dir, out_dir, passes)
    if count < samples:
        raise ValueError(f"{train_dir}: {count} samples for OpenCLIP, fewer than the {samples} budget")
    done.write_text(json.dumps({**want, "count": count, "shards": [p.name for p in shards]}), encoding="utf-8")
    return shards


def run_row(setup: Setup, row: str, recipes: Mapping[str, Mapping[str, Any]], train_dir: Path, pairs: int,
            work: Path, seed: int) -> dict[str, float]:
    """Trains and scores one row and seed on the ``pairs`` training pairs in ``train_dir``, in ``work/<row>/seed<s>``
    (OpenCLIP's shard copy in ``work/open_clip_shards``); returns the scores and ``train_s``."""
    run_dir = work / row / f"seed{seed}"
    done = run_dir / "scores.json"  # a finished run of the same row, setup and seed is not trained again
    key = json.dumps({"row": recipes.get(row), "setup": describe(setup, [row], recipes), "train": str(train_dir)},
                     sort_keys=True, default=str)
    saved = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else {}
    if saved.get("key") == key:
        return saved["scores"]
    scores = _train_row(setup, row, recipes, train_dir, pairs, work, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"key": key, "scores": scores}), encoding="utf-8")
    return scores


def _train_row(setup: Setup, row: str, recipes: Mapping[str, Mapping[str, Any]], train_dir: Path, pairs: int,
               work: Path, seed: int) -> dict[str, float]:
    if row == OPENCLIP:
        shards = open_clip_inputs(train_dir, work / "open_clip_shards", pairs, setup.samples)
        return run_open_clip(shards, setup.samples, model_config(setup.model, setup.overrides),
                             work / OPENCLIP / f"seed{seed}", seed, setup.batch_size, setup.lr, setup.weight_decay,
                             setup.warmup, setup.threads, setup.data, setup.size, setup.open_clip_pythonpath)
    config = row_config(setup.base_config(train_dir), recipes[row])
    return run_clipforge(config, work / row / f"seed{seed}", seed, setup.threads)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``compare.py`` and ``curve.py`` share: the build, the rows, the shape, the budget, the seeds."""
    p.add_argument("--data", type=Path, help="a build.py --out folder")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--work", type=Path, help="runs and OpenCLIP's shard copy (outside the repo)")
    p.add_argument("--recipes", type=Path, default=RECIPES_PATH, help="the rows' file (default: recipes.yaml here)")
    p.add_argument("--rows", nargs="+", help=f"{OPENCLIP} and rows of --recipes (default: all of them)")
    p.add_argument("--model", default="tiny-rn", help="the base's clipforge CLIP preset (tiny-rn, tiny-vit)")
    p.add_argument("--text-layers", type=int, default=2, help="the base's text tower depth (the quickstart's 2)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2, help="torch threads of each training process")
    p.add_argument("--jobs", type=int, default=1, help="training processes at once (each with --threads)")
    p.add_argument("--open-clip-pythonpath", default="",
                   help="folders with open_clip_train's missing imports (webdataset, braceexpand, a pandas stub)")


def parse_setup(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Setup, dict[str, dict[str, Any]]]:
    """The shared setup and the recipes file's rows; sets ``args.rows`` (default: every row). Exits through
    ``p.error`` naming the argument: no ``--data``/``--work``, a bad recipes file, a row not in it."""
    if args.data is None or args.work is None:
        p.error("--data and --work are required")
    try:
        recipes = load_recipes(args.recipes)
    except (ValueError, OSError) as e:
        p.error(f"argument --recipes: {e}")
    choices = [OPENCLIP, *recipes]
    args.rows = args.rows or choices
    unknown = [r for r in args.rows if r not in choices]
    if unknown:
        p.error(f"argument --rows: invalid choice: {unknown} (choose from {choices})")
    for row in args.rows:
        anchor = anchor_of(row, recipes)
        if anchor not in args.rows:
            print(f"[compare] {row}'s anchor {anchor} is not among --rows: no ratio_to_{anchor}", file=sys.stderr)
    setup = Setup(args.data, args.size, args.model, args.text_layers, args.steps, args.batch_size, args.lr,
                  args.weight_decay, args.warmup, args.threads, args.open_clip_pythonpath)
    return setup, recipes


def describe(setup: Setup, rows: Sequence[str], recipes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON's header: the shared setup and each row's keys (``open_clip_train.main`` for OpenCLIP's)."""
    return {"model": setup.model, "model_overrides": setup.overrides, "image_size": setup.size, "steps": setup.steps,
            "batch_size": setup.batch_size, "samples": setup.samples, "lr": setup.lr,
            "weight_decay": setup.weight_decay, "warmup": setup.warmup,
            "recipes": {row: recipes[row] if row != OPENCLIP else "open_clip_train.main" for row in rows},
            "anchors": {row: anchor_of(row, recipes) for row in rows}}


def main() -> None:
    """Parses arguments, runs every row and seed, prints the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args()
    setup, recipes = parse_setup(p, args)
    train_dir = args.data / f"{args.size}px" / "train"
    pairs = json.loads((args.data / "manifest.json").read_text(encoding="utf-8"))["data"][str(args.size)]["train"]
    results: dict[str, list[dict[str, float]]] = {}
    started = time.perf_counter()
    if OPENCLIP in args.rows:  # its shard copy, once, before any job needs it
        open_clip_inputs(train_dir, args.work / "open_clip_shards", pairs["pairs"], setup.samples)
    runs = [(seed, row) for seed in args.seeds for row in args.rows]  # seeds outer: the first seeds finish first

    def one(run: tuple[int, str]) -> dict[str, float]:
        scores = run_row(setup, run[1], recipes, train_dir, pairs["pairs"], args.work, run[0])
        print(f"[compare] {run[1]} seed {run[0]}: {scores}", file=sys.stderr, flush=True)
        return scores

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each job is its own training process
        for (seed, row), scores in zip(runs, pool.map(one, runs), strict=True):
            results.setdefault(row, []).append({"seed": seed, **scores})
    per_seed = {row: [{k: v for k, v in s.items() if k != "seed"} for s in seeds] for row, seeds in results.items()}
    anchors = {row: anchor_of(row, recipes) for row in args.rows}
    print(json.dumps({
        **describe(setup, args.rows, recipes), "train_pairs": pairs["pairs"], "seeds": args.seeds,
        "results": results, "summary": summarise(per_seed, anchors=anchors),
        "wall_s": round(time.perf_counter() - started, 1), "jobs": args.jobs, "threads": args.threads,
    }, indent=1))


if __name__ == "__main__":
    main()
