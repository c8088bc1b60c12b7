"""ONNX export: each tower as its own graph, checked against PyTorch with onnxruntime, in fp32, fp16 or int8.

``export_onnx(model, out_dir)`` writes ``image.onnx`` (and ``text.onnx`` for two-tower families), the text
processor's files and ``export.json`` (``clipforge.export.manifest``), then runs onnxruntime on random inputs
(two batch sizes; two text lengths where T is dynamic) beside PyTorch and records the largest absolute difference
and the lowest cosine similarity. An fp32 graph further than ``FP32_TOLERANCE`` from PyTorch is an error. ``fp16``
(weights and activations converted by onnxruntime's float16 utilities, inputs and outputs kept float32) and
``int8`` (``onnxruntime.quantization.quantize_dynamic`` on the fp32 graph: the weights of every MatMul and Gemm as
int8, a scale per output channel, activations quantised at run time) are approximations: their cosine similarity
to the fp32 PyTorch features is recorded, not enforced.

The exporter is PyTorch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``), chosen over the
``torch.export``-based one because with torch 2.14 it exports every tower with correct dynamic batch and text
length (SDPA with ``is_causal`` included) and also SigLIP 2's NaFlex tower, whose input checks are data-dependent
and make ``torch.export`` fail (``GuardOnDataDependentSymNode`` in ``clipforge.models.naflex.check_batch``);
tracing records them as the constants they are for valid input. It exports in a fraction of the time. Opsets:
14 (the first with ``scaled_dot_product_attention``) to 20 (the exporter's highest).

ONNX packages load lazily: ``pip install 'clipforge[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipforge.export.manifest import build_manifest, text_processor_record
from clipforge.export.towers import TowerExport, tower_exports
from clipforge.models.clip import ContrastiveModel

MIN_OPSET = 14  # aten::scaled_dot_product_attention has an ONNX form from opset 14
MAX_OPSET = 20  # the TorchScript exporter's highest (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
FP32_TOLERANCE = 1e-4  # largest absolute difference allowed between the fp32 graph and PyTorch
PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = ("int8",)
INT8_OP_TYPES = ("MatMul", "Gemm")  # weights quantised by quantize_dynamic; convolutions stay float (see below)
INSTALL_HINT = "pip install 'clipforge[onnx]'"
_EXPORT_FILES = ("export.json",)  # a directory holding one of these is an export that --overwrite may replace


class ExportError(ValueError):
    """An export that cannot be written or does not match PyTorch: the message names the tower and the cause."""


def _require(module: str, purpose: str) -> Any:
    """Imports an ONNX package, or raises ImportError with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{purpose} needs {module.split('.')[0]}, which is not installed: {INSTALL_HINT}") from e


def _check_options(towers: tuple[str, ...], opset: int, precision: str, quantize: str | None) -> tuple[str, ...]:
    if isinstance(towers, str):
        towers = (towers,)
    towers = tuple(dict.fromkeys(towers))
    if not towers or any(t not in ("image", "text") for t in towers):
        raise ValueError(f"towers must name 'image' and/or 'text', got {towers!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset!r} is outside what the exporter supports: {MIN_OPSET}..{MAX_OPSET} (torch "
                         f"{torch.__version__}'s TorchScript ONNX exporter; {MIN_OPSET} is the first opset with "
                         "scaled_dot_product_attention)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or one of {list(QUANTIZATIONS)}, got {quantize!r}")
    if quantize is not None and precision != "fp32":
        raise ValueError(f"quantize={quantize!r} quantises the fp32 graph; it cannot be combined with "
                         f"precision={precision!r}")
    return towers


def check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuses an ``out_dir`` that exists with files in it, unless ``overwrite`` and it is an earlier export.

    Raises:
        FileExistsError: it exists (a file, or a folder with files) and ``overwrite`` is false.
        ValueError: ``overwrite`` is true but it is a file or a folder that is not an export (no export.json):
            replacing it could destroy something else.
    """
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    kind = "a folder with files" if out_dir.is_dir() else "a file"
    if not overwrite:
        raise FileExistsError(f"OUT {str(out_dir)!r} exists ({kind}); pass --overwrite (overwrite=True) to replace "
                              "an earlier export, or choose a new path")
    if not out_dir.is_dir() or not any((out_dir / name).is_file() for name in _EXPORT_FILES):
        raise ValueError(f"OUT {str(out_dir)!r} exists ({kind}) and is not an ONNX export (no export.json); "
                         "--overwrite replaces only an earlier export: choose a new path")


@contextlib.contextmanager
def _ready_for_export(model: nn.Module) -> Iterator[None]:
    """Eval mode, float32, on the CPU inside the block; each module's mode, the device and the dtype restored after."""
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    model.eval()
    if device.type != "cpu" or dtype != torch.float32:
        model.to("cpu", torch.float32)
    try:
        yield
    finally:
        if device.type != "cpu" or dtype != torch.float32:
            model.to(device, dtype)
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Sends file descriptors 1 and 2 to /dev/null: the exporter's C++ side prints its whole IR graph to stdout on
    failure (its log switch is always on in torch 2.14), hundreds of lines before the error that matters."""
    import ctypes

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no such descriptors (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)  # C stdio (which std::cout writes through) before the descriptors return
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _failing_module(error: BaseException, wrapper: nn.Module) -> str | None:
    """The module an export error came from, as ``name (Class)``: the scope of the graph node being converted
    (the exporter keeps it in a frame's ``node``), else the innermost module whose ``forward`` raised."""
    names = {id(m): name for name, m in wrapper.named_modules()}
    scope, module = None, None
    tb = error.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        node, owner = local.get("node"), local.get("self")
        if isinstance(node, torch._C.Node) and node.scopeName():
            scope = node.scopeName()
        if isinstance(owner, nn.Module) and id(owner) in names:
            module = owner
        tb = tb.tb_next
    if scope:  # "pkg.Wrapper::/pkg.VisionTransformer::visual/pkg.LayerNorm::ln_post": class::name per level
        path, qualified = "", ""
        for level in scope.split("/"):
            qualified, _, name = level.partition("::")
            # A level's name is the full path from the root for some modules, the attribute name for others.
            path = name if not path or name.startswith(path + ".") else f"{path}.{name}"
        if path:
            return f"{path} ({qualified.rsplit('.', 1)[-1]})"
    if module is not None and names[id(module)]:
        return f"{names[id(module)]} ({type(module).__name__})"
    return None


def _export_graph(tower: TowerExport, path: Path, opset: int) -> None:
    """Traces ``tower.module`` to ``path`` with the TorchScript exporter.

    Raises:
        ExportError: the exporter cannot express a layer, naming the module and the exporter's reason.
    """
    generator = torch.Generator().manual_seed(0)
    batch, length = tower.cases[-1]  # trace at a batch > 1, so no size-1 axis is specialised
    inputs = tower.make_inputs(batch, length, generator)
    try:
        with warnings.catch_warnings(), _quiet_native_output(), torch.no_grad():
            # Expected: the legacy-exporter notice, and the model's input checks becoming constants (valid input).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
            torch.onnx.export(tower.module, inputs, str(path), dynamo=False, opset_version=opset,
                              input_names=tower.input_names, output_names=["features"],
                              dynamic_axes=tower.dynamic_axes(), do_constant_folding=True)
    except OSError:
        raise
    except Exception as e:
        where = _failing_module(e, tower.module)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        subject = f"the module {where}" if where else "a layer"
        raise ExportError(f"{tower.name} tower: {subject} has no ONNX form at opset {opset} "
                          f"(TorchScript exporter): {reason}") from e


PROTO_LIMIT = 1_800_000_000  # bytes of weights above which a graph keeps them in <file>.data (protobuf's 2 GiB)


def _weight_bytes(model: Any) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _save(model: Any, dst: Path) -> None:
    """Saves a graph, its weights in one ``<file>.data`` beside it when they pass ``PROTO_LIMIT``."""
    onnx = _require("onnx", "an ONNX export")
    if _weight_bytes(model) > PROTO_LIMIT:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{dst.name}.data")
        _default_mode(dst.parent / f"{dst.name}.data")
    else:
        onnx.save_model(model, str(dst))


def _default_mode(path: Path) -> None:
    """The mode a new file gets (onnx writes external data as 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _move(src: Path, dst: Path) -> None:
    """Moves the exporter's graph into place. Over 2 GiB the exporter writes every weight as its own file beside
    the graph; those become one ``<file>.data``."""
    onnx = _require("onnx", "an ONNX export")
    if len(list(src.parent.iterdir())) == 1:
        os.replace(src, dst)
    else:
        _save(onnx.load(str(src)), dst)


def _to_fp16(src: Path, dst: Path) -> None:
    """Weights and activations as float16, inputs and outputs kept float32 (onnxruntime's float16 utilities)."""
    onnx = _require("onnx", "an fp16 export")
    float16 = _require("onnxruntime.transformers.float16", "an fp16 export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clamping of tiny initialisers to fp16's range is reported per value
        graph = onnx.load(str(src))
        # Shape inference serialises the whole graph, which protobuf refuses over 2 GiB; the graph has shapes.
        converted = float16.convert_float_to_float16(graph, keep_io_types=True,
                                                     disable_shape_infer=_weight_bytes(graph) > PROTO_LIMIT)
    _save(converted, dst)


def _to_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the fp32 graph: MatMul and Gemm weights as int8 with a scale per output channel
    (one scale per matrix loses zero-shot accuracy on small text towers, at the same speed), activations quantised
    at run time. Convolutions stay float: onnxruntime's ConvInteger is slower than its float Conv on CPU, a ViT's
    only convolution is its patch embedding, and quantize_dynamic cannot quantise a ResNet's convolutions once their
    BatchNorm is folded into them (their weights are no initialisers), so a ResNet image tower's int8 export
    quantises only its attention pool. ``benchmarks/onnx_speed.py`` measures each of these choices."""
    import logging

    quantization = _require("onnxruntime.quantization", "an int8 export")
    root = logging.getLogger()
    advice = _DropMessage("Please consider to run pre-processing")  # logged on every call, to the root logger
    root.addFilter(advice)
    try:
        large = sum(f.stat().st_size for f in src.parent.iterdir()) / 4 > PROTO_LIMIT
        quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8,
                                      op_types_to_quantize=list(INT8_OP_TYPES), per_channel=True, reduce_range=True,
                                      use_external_data_format=large)
    finally:
        root.removeFilter(advice)


class _DropMessage:
    """A logging filter dropping the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def filter(self, record: Any) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def _session(path: Path, tower: str) -> Any:
    """An onnxruntime CPU session on ``path``; a graph onnxruntime cannot run is an ExportError."""
    ort = _require("onnxruntime", "checking an export against PyTorch (check=True)")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"{tower} tower: onnxruntime {ort.__version__} cannot load {path.name}: "
                          f"{str(e).strip().splitlines()[0]}") from e


def _compare(features: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Largest absolute difference and lowest per-row cosine similarity of two (B, D) feature arrays."""
    a, b = features.astype(np.float64), reference.astype(np.float64)
    cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    return float(np.abs(a - b).max()), float(cosine.min())


def _parity(tower: TowerExport, sessions: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Runs every session and PyTorch on the tower's parity cases; one record per session."""
    generator = torch.Generator().manual_seed(1)
    worst = {label: (0.0, 1.0) for label in sessions}
    for batch, length in tower.cases:
        inputs = tower.make_inputs(batch, length, generator)
        with torch.no_grad():
            reference = tower.module(*inputs).float().numpy()
        feed = {name: x.numpy() for name, x in zip(tower.input_names, inputs)}
        for label, session in sessions.items():
            diff, cosine = _compare(session.run(["features"], feed)[0], reference)
            worst[label] = (max(worst[label][0], diff), min(worst[label][1], cosine))
    cases = [{"batch": b, **({"sequence": t} if tower.name == "text" else {})} for b, t in tower.cases]
    return {label: {"max_abs_diff": d, "cosine_min": c, "cases": cases} for label, (d, c) in worst.items()}


def _rendered_text_parity(model: ContrastiveModel, renderer: Any, session: Any) -> dict[str, Any]:
    """CLIPPO's text path: rendered strings, normalised as ``CLIPPO.encode_text`` does, through image.onnx."""
    texts = ["a photo of a dog", "Two small red cars on a street.", "x"]
    pixels = renderer(texts)  # uint8 (N, 3, H, W)
    mean = torch.tensor(model.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.std).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = model.encode_text(pixels).float().numpy()
    normalised = ((pixels.float() / 255 - mean) / std).numpy()
    diff, cosine = _compare(session.run(["features"], {"pixels": normalised})[0], reference)
    return {"max_abs_diff": diff, "cosine_min": cosine, "cases": [{"batch": len(texts)}], "via": "image.onnx"}


def _default_processor(model: ContrastiveModel) -> Any:
    from clipforge.text import build_text_processor

    try:
        return build_text_processor(model.config)
    except FileNotFoundError as e:
        raise ValueError(f"the text tower's processor needs its files: pass text_processor= (the processor "
                         f"clipforge.load returns), or export towers=('image',) ({e})") from e


def _versions(ort: Any) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        clipforge = version("clipforge")
    except PackageNotFoundError:
        clipforge = "unknown"
    onnx = _require("onnx", "an ONNX export")
    return {"exporter": "torch.onnx.export (TorchScript, dynamo=False)", "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__ if ort is not None else "not used",
            "clipforge": clipforge}


def export_onnx(model: ContrastiveModel, out_dir: str | Path, towers: tuple[str, ...] = ("image", "text"),
                opset: int = 18, precision: str = "fp32", quantize: str | None = None, text_processor: Any = None,
                check: bool = True, overwrite: bool = False) -> Path:
    """Exports a model's towers as ONNX graphs with export.json, checked against PyTorch.

    Args:
        model: A CLIP, CLIPPO or SigLIP model (any device and dtype: exported as float32 from the CPU, and left as
            it was).
        out_dir: The export directory; written in a temporary sibling and moved into place when complete.
        towers: ``image`` and/or ``text``. CLIPPO has one tower, written as image.onnx whichever is asked for.
        opset: ONNX opset, ``MIN_OPSET``..``MAX_OPSET``.
        precision: ``fp32`` or ``fp16`` (float16 inside, float32 inputs and outputs).
        quantize: ``None`` or ``int8`` (dynamic quantisation of the fp32 graph's MatMul/Gemm weights).
        text_processor: The model's text processor (its vocabulary is copied into the export); default: the one the
            config names (OpenAI's BPE vocabulary for CLIP; a SentencePiece model must be passed).
        check: Run onnxruntime beside PyTorch and record the parity in export.json; an fp32 graph further than
            ``FP32_TOLERANCE`` from PyTorch raises.
        overwrite: Replace an earlier export at ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: a bad option (the opset range is named), or ``out_dir`` is not an export and overwrite is set.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        ImportError: onnx (or, for check/fp16/int8, onnxruntime) is missing, naming ``pip install 'clipforge[onnx]'``.
        ExportError: a layer has no ONNX form (naming the module), or the fp32 graph differs from PyTorch.
    """
    towers = _check_options(towers, opset, precision, quantize)
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)
    _require("onnx", "an ONNX export")
    ort = _require("onnxruntime", "checking an export against PyTorch (check=True)") if check else None
    if quantize or precision != "fp32":
        _require("onnxruntime", f"an {quantize or precision} export")
    family = model.config.family
    needs_text = family == "clippo" or "text" in towers
    processor = text_processor if text_processor is not None or not needs_text else _default_processor(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()  # not mkdtemp: its 0700 would become the export's mode
    try:
        with _ready_for_export(model):
            records, parity = {}, {}
            for tower in tower_exports(model, towers, processor):
                records[tower.name], parity_records = _export_tower(model, tower, work, opset, precision, quantize,
                                                                    check, processor)
                parity.update(parity_records)
        text_record = text_processor_record(model.config, processor, work) if needs_text else None
        manifest = build_manifest(model, records, text_record, opset, precision, quantize, parity, _versions(ort))
        (work / "export.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        os.replace(work, out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _export_tower(model: ContrastiveModel, tower: TowerExport, work: Path, opset: int, precision: str,
                  quantize: str | None, check: bool, processor: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Writes one tower's graph into ``work``; returns its export.json entry and its parity records."""
    final = work / tower.file
    scratch = work / f".{tower.name}-fp32"  # the exporter's own output, alone in a folder (see _move)
    scratch.mkdir()
    fp32 = scratch / tower.file
    _export_graph(tower, fp32, opset)
    _require("onnx", "an ONNX export").checker.check_model(str(fp32))
    converted = precision != "fp32" or quantize is not None
    if precision == "fp16":
        _to_fp16(fp32, final)
    elif quantize == "int8":
        _to_int8(fp32, final)
    parity = _check_tower(model, tower, fp32, final if converted else None, processor) if check else {}
    if not converted:
        _move(fp32, final)
    shutil.rmtree(scratch)
    entry = {"file": tower.file, "inputs": dict(tower.input_shapes),
             "outputs": {"features": ["batch", _output_dim(model, tower)]},
             "dtypes": {**tower.input_dtypes, "features": "float32"}}
    if (work / f"{tower.file}.data").exists():
        entry["data_file"] = f"{tower.file}.data"  # the weights, beside the graph (over 2 GiB)
    return entry, parity


def _check_tower(model: ContrastiveModel, tower: TowerExport, fp32: Path, converted: Path | None,
                 processor: Any) -> dict[str, Any]:
    """The tower's parity records (and CLIPPO's rendered-text one): the fp32 graph must be within
    ``FP32_TOLERANCE`` of PyTorch; a converted (fp16, int8) graph's closeness is recorded."""
    sessions = {"fp32": _session(fp32, tower.name)}
    if converted is not None:
        sessions["converted"] = _session(converted, tower.name)
    measured = _parity(tower, sessions)
    exact = measured["fp32"]
    if exact["max_abs_diff"] > FP32_TOLERANCE:
        raise ExportError(f"{tower.name} tower: the fp32 ONNX graph differs from PyTorch by up to "
                          f"{exact['max_abs_diff']:.3g} (allowed {FP32_TOLERANCE:g}; cosine "
                          f"{exact['cosine_min']:.6f})")
    record: dict[str, Any] = {**measured.get("converted", exact), "reference": "pytorch fp32",
                              "tolerance": None if converted is not None else FP32_TOLERANCE}
    if converted is not None:
        record["fp32_graph"] = {k: exact[k] for k in ("max_abs_diff", "cosine_min")}
    parity = {tower.name: record}
    if model.config.family == "clippo":
        session = sessions.get("converted", sessions["fp32"])
        parity["text"] = {**_rendered_text_parity(model, processor, session), "reference": "pytorch fp32"}
    return parity


def _output_dim(model: ContrastiveModel, tower: TowerExport) -> int:
    """The feature dimension: the embedding dimension (the image tower's width when it has no projection)."""
    config: Any = model.config
    if tower.name == "image" and not getattr(config.vision, "proj", True):
        return int(config.vision.width)
    return int(config.embed_dim)
