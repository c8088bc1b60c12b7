"""OpenAI CLIP checkpoints (``ViT-B-32.pt``, ``RN50.pt``, ...) and the OpenAI key layout ↔ clipforge.

OpenAI released its models as TorchScript archives: a zip holding ``<name>/data.pkl`` (the pickled module
tree), ``<name>/data/<key>`` (raw tensor storages), ``constants.pkl`` and ``code/``. ``read_torchscript``
reads the weights without running any of that code: a restricted unpickler records every TorchScript module
as a plain object, builds tensors only through torch's tensor-rebuild function from the ``data/`` entries,
and refuses every other global. ``torch.jit.load`` (which executes the archive's code) is used only when the
caller passes ``allow_jit=True``.

The OpenAI key layout (``visual.transformer.resblocks.N.attn.in_proj_weight``, ``text_projection``, ...) is
also open_clip's; ``from_openai_keys`` / ``to_openai_keys`` rename between it and clipforge's module names.
The architecture is inferred from tensor shapes exactly as OpenAI's ``clip/model.py::build_model`` does.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, cast

import torch

from clipforge.checkpoints.containers import check_member, check_zip
from clipforge.checkpoints.native import CheckpointError, read_safetensors
from clipforge.config import shorten
from clipforge.models.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig

# Tensors OpenAI's and open_clip's state dicts carry that are not weights (attributes or derived buffers).
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask")

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


# ----------------------------------------------------------------------------------------------------------------
# Reading TorchScript archives without running them.


class _Recorded:
    """Stands in for a TorchScript module/class: keeps the attribute dict pickle hands to it."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _is_count(value: Any) -> bool:
    """A non-negative integer that fits torch's int64 sizes."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors from ``data/`` entries, modules as ``_Recorded``."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, torch.Tensor] = {}
        self.keys: dict[int, str] = {}  # id(storage) → its archive key, to name it in errors
        self.classes: dict[str, type] = {}

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *args: Any) -> torch.Tensor:
        """torch._utils._rebuild_tensor_v2 over a flat tensor standing in for the storage, the view checked:
        every element it addresses lies inside the storage."""
        key = self.keys.get(id(storage))
        if key is None:
            raise CheckpointError(f"{self.path}: a tensor is rebuilt from something that is not a storage")
        if not (isinstance(size, tuple | list) and isinstance(stride, tuple | list) and _is_count(offset)
                and all(map(_is_count, size)) and all(map(_is_count, stride)) and len(size) == len(stride)):
            raise CheckpointError(f"{self.path}: storage data/{key}: a view with offset {shorten(offset)}, size "
                                  f"{shorten(size)} and stride {shorten(stride)} is not a valid tensor view")
        n = storage.numel()
        last = offset + sum((d - 1) * s for d, s in zip(size, stride, strict=True))  # the last element addressed
        if (math.prod(size) and last >= n) or offset > n:
            raise CheckpointError(f"{self.path}: storage data/{key}: a view of size {shorten(size)} at offset "
                                  f"{offset:,} with stride {shorten(stride)} reaches element {last:,}; the storage "
                                  f"holds {n:,}")
        try:
            return storage.as_strided(size, stride, offset)
        except (RuntimeError, TypeError) as e:  # sizes whose product overflows int64
            raise CheckpointError(f"{self.path}: storage data/{key}: not a valid view ({_first_line(e)})") from None
        return storage.as_strided(size, stride, offset)

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):  # a scripted module or class: record its state, run nothing
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (_Recorded,), {"__module__": "clipforge.checkpoints.recorded"})
            return self.classes[qualified]
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return self.rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, requires_grad, hooks: data
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, type_str: value
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda *args: args[0] if len(args) == 1 else list(args)
        raise CheckpointError(f"{self.path}: refusing to load global {module}.{name} from a TorchScript archive "
                              "(only tensors are read; pass allow_jit=True to run the archive with torch.jit.load)")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], str)
                and pid[1] in _STORAGE_DTYPES and isinstance(pid[2], str) and _is_count(pid[4])):
            raise CheckpointError(f"{self.path}: unsupported persistent id {shorten(pid)}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            dtype = _STORAGE_DTYPES[storage_type]
            name = f"{self.prefix}data/{key}"
            # The declared size is checked before anything is inflated: the pickle's element count against
            # the member's size in the zip directory.
            check_member(self.archive, name, numel * dtype.itemsize, self.path)
            raw = bytearray(self.archive.read(name))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self.storages[key] = flat
            self.keys[id(flat)] = key
        return self.storages[key]


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return lines[0][:200] if lines else ""


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``data.pkl`` and ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except Exception:  # a damaged zip fails in many ways (BadZipFile, UnicodeDecodeError, ValueError, …)
        return False
    return any(n.endswith("/data.pkl") for n in names) and any(n.endswith("constants.pkl") for n in names)


def read_torchscript(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads every tensor attribute of a TorchScript archive's module tree, without running its code.

    Returns what ``torch.jit.load(path).state_dict()`` would (parameters and buffers by dotted name), plus any
    other tensor attributes the modules hold (callers drop the ones they do not need).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            check_zip(zf, path)  # a zip bomb is refused from the directory, before anything is inflated
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1), None)
            if pkl is None:
                raise CheckpointError(f"{path}: no '<name>/data.pkl' in the archive; not a TorchScript file")
            prefix = pkl[: -len("data.pkl")]
            root = _TorchScriptUnpickler(zf.read(pkl), zf, prefix, path).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable TorchScript archive ({_first_line(e)})") from None
    except Exception as e:  # a damaged pickle fails in many ways (TypeError, IndexError, struct.error, …)
        raise CheckpointError(f"{path}: not a readable TorchScript archive ({type(e).__name__}: "
                              f"{_first_line(e)})") from None
    if not isinstance(root, _Recorded):
        raise CheckpointError(f"{path}: the archive's root object is {type(root).__name__}, not a module")
    state_dict: dict[str, torch.Tensor] = {}
    _walk(root, "", state_dict)
    return state_dict


def _walk(obj: _Recorded, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.state if isinstance(obj.state, dict) else {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _Recorded):
            _walk(value, f"{prefix}{name}.", out)


def read_openai_file(path: str | Path, allow_pickle: bool = False, allow_jit: bool = False) -> dict[str, torch.Tensor]:
    """The raw (OpenAI-layout) state dict of an OpenAI ``.pt``: a TorchScript archive or a pickled state dict.

    Args:
        path: The file.
        allow_pickle: Allow reading a pickled (non-TorchScript) state dict, with ``torch.load(weights_only=True)``.
        allow_jit: Read TorchScript archives with ``torch.jit.load``, which runs the code inside the archive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if is_torchscript(path):
        if allow_jit:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        return read_torchscript(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_pickled_state_dict(path, allow_pickle)


def read_pickled_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict, read only when the caller opts in, and then with ``weights_only=True``."""
    if not allow_pickle:
        raise CheckpointError(f"{path}: this is a pickled file; loading it needs an explicit opt-in "
                              "(allow_pickle=True, or --allow-pickle on the command line). It is then read with "
                              "torch.load(weights_only=True), which only rebuilds tensors.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for corrupt or unsafe pickles
        raise CheckpointError(f"{path}: cannot read the pickled state dict ({type(e).__name__}: {e})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a state dict (name → tensor), found {type(data).__name__}")
    return dict(data)


# ----------------------------------------------------------------------------------------------------------------
# The OpenAI key layout.


def _count(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    """How many distinct indices N the keys matching ``pattern`` (with one ``(\\d+)`` group) have."""
    regex = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := regex.match(k))})


def _ratio(hidden: int, width: int) -> float:
    """An ``mlp_ratio`` with int(width * ratio) == hidden exactly."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _get(state_dict: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointError(f"{source}: missing key {key!r}; not an OpenAI/open_clip-layout CLIP checkpoint")
    return state_dict[key]


def config_from_openai_state_dict(state_dict: dict[str, torch.Tensor], act: str = "quick_gelu",
                                  source: str = "<state dict>", vision_heads: int | None = None,
                                  text_heads: int | None = None) -> CLIPConfig:
    """Infers the model config from OpenAI-layout tensor shapes, as ``clip/model.py::build_model`` does.

    Heads are not visible in the shapes; like OpenAI, they default to width // 64 (ResNet attention pool:
    width * 32 // 64).

    Args:
        state_dict: OpenAI-layout tensors.
        act: The MLP activation (OpenAI's released models: ``quick_gelu``).
        source: Named in error messages.
        vision_heads: Image-tower heads, when known.
        text_heads: Text-tower heads, when known.
    """
    sd = state_dict
    if "visual.attn_pool.attn.in_proj_weight" in sd or any(k.startswith("text.") for k in sd):
        raise CheckpointError(f"{source}: an open_clip variant (attentional pooler or custom text tower) that "
                              "clipforge's CLIP does not implement")
    if "visual.proj" in sd:
        conv = _get(sd, "visual.conv1.weight", source)
        width, patch = conv.shape[0], conv.shape[-1]
        n_pos = _get(sd, "visual.positional_embedding", source).shape[0]
        grid = round((n_pos - 1) ** 0.5)
        if grid * grid + 1 != n_pos:
            raise CheckpointError(f"{source}: visual.positional_embedding has {n_pos} rows, not 1 + a square grid")
        layers = _count(sd, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")
        hidden = _get(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", source).shape[0]
        vision: ViTConfig | ResNetConfig = ViTConfig(
            image_size=patch * grid, patch_size=patch, width=width, layers=layers,
            heads=vision_heads or max(1, width // 64), mlp_ratio=_ratio(hidden, width),
            ln_pre="visual.ln_pre.weight" in sd)
    else:
        stages = cast(tuple[int, int, int, int], tuple(_count(sd, rf"visual\.layer{b}\.(\d+)\.") for b in (1, 2, 3, 4)))
        if 0 in stages:
            raise CheckpointError(f"{source}: neither 'visual.proj' (ViT) nor four 'visual.layerK' stages (ResNet)")
        width = _get(sd, "visual.layer1.0.conv1.weight", source).shape[0]
        n_pos = _get(sd, "visual.attnpool.positional_embedding", source).shape[0]
        grid = round((n_pos - 1) ** 0.5)
        if grid * grid + 1 != n_pos:
            raise CheckpointError(f"{source}: visual.attnpool.positional_embedding has {n_pos} rows, "
                                  "not 1 + a square grid")
        vision = ResNetConfig(image_size=grid * 32, layers=stages, width=width,
                              heads=vision_heads or width * 32 // 64)
    text_width = _get(sd, "ln_final.weight", source).shape[0]
    text_hidden = _get(sd, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0]
    text = TextConfig(
        vocab_size=_get(sd, "token_embedding.weight", source).shape[0],
        context_length=_get(sd, "positional_embedding", source).shape[0],
        width=text_width, layers=_count(sd, r"transformer\.resblocks\.(\d+)\."),
        heads=text_heads or max(1, text_width // 64), mlp_ratio=_ratio(text_hidden, text_width))
    embed_dim = _get(sd, "text_projection", source).shape[1]
    kwargs: dict[str, Any] = {}
    if "logit_bias" in sd:
        kwargs["init_logit_bias"] = float(sd["logit_bias"])
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, act=act, **kwargs)  # type: ignore[arg-type]


def _block_pairs(src: str, dst: str) -> list[tuple[str, str]]:
    """OpenAI ``ResidualAttentionBlock`` ↔ clipforge ``Block`` names, without the trailing ``weight``/``bias``."""
    return [
        (f"{src}ln_1.weight", f"{dst}ln_1.weight"), (f"{src}ln_1.bias", f"{dst}ln_1.bias"),
        (f"{src}attn.in_proj_weight", f"{dst}attn.qkv.weight"), (f"{src}attn.in_proj_bias", f"{dst}attn.qkv.bias"),
        (f"{src}attn.out_proj.weight", f"{dst}attn.out_proj.weight"),
        (f"{src}attn.out_proj.bias", f"{dst}attn.out_proj.bias"),
        (f"{src}ln_2.weight", f"{dst}ln_2.weight"), (f"{src}ln_2.bias", f"{dst}ln_2.bias"),
        (f"{src}mlp.c_fc.weight", f"{dst}mlp.fc.weight"), (f"{src}mlp.c_fc.bias", f"{dst}mlp.fc.bias"),
        (f"{src}mlp.c_proj.weight", f"{dst}mlp.proj.weight"), (f"{src}mlp.c_proj.bias", f"{dst}mlp.proj.bias"),
    ]


def _bn(src: str, dst: str) -> list[tuple[str, str]]:
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return [(src + n, dst + n) for n in names]


def key_pairs(config: CLIPConfig) -> list[tuple[str, str]]:
    """Every (OpenAI key, clipforge key) pair of a model with this config; all tensors keep their shape."""
    pairs: list[tuple[str, str]] = []
    v = config.vision
    if isinstance(v, ViTConfig):
        if v.pool != "cls" or not v.class_token or v.patch_bias or v.proj_bias or v.stem != "patch":
            raise CheckpointError("the OpenAI/open_clip layout holds only patch-stem class-token ViTs without patch "
                                  f"or projection biases; this config has pool={v.pool!r}, class_token={v.class_token}"
                                  f", patch_bias={v.patch_bias}, proj_bias={v.proj_bias}, stem={v.stem!r}")
        pairs += [("visual.conv1.weight", "visual.patch_embed.weight"),
                  ("visual.class_embedding", "visual.class_token"),
                  ("visual.positional_embedding", "visual.pos_embed"), ("visual.proj", "visual.proj"),
                  ("visual.ln_post.weight", "visual.ln_post.weight"), ("visual.ln_post.bias", "visual.ln_post.bias")]
        if v.ln_pre:
            pairs += [("visual.ln_pre.weight", "visual.ln_pre.weight"), ("visual.ln_pre.bias", "visual.ln_pre.bias")]
        for i in range(v.layers):
            pairs += _block_pairs(f"visual.transformer.resblocks.{i}.", f"visual.transformer.blocks.{i}.")
    else:
        for i in (1, 2, 3):
            pairs += [(f"visual.conv{i}.weight", f"visual.conv{i}.weight"), *_bn(f"visual.bn{i}.", f"visual.bn{i}.")]
        for stage, blocks in enumerate(v.layers, start=1):
            for b in range(blocks):
                p = f"visual.layer{stage}.{b}."
                for i in (1, 2, 3):
                    pairs += [(f"{p}conv{i}.weight", f"{p}conv{i}.weight"), *_bn(f"{p}bn{i}.", f"{p}bn{i}.")]
                if b == 0:  # OpenAI's downsample is Sequential("-1": avgpool, "0": conv, "1": bn); ours 0, 1, 2
                    pairs += [(f"{p}downsample.0.weight", f"{p}downsample.1.weight")]
                    pairs += _bn(f"{p}downsample.1.", f"{p}downsample.2.")
        pairs.append(("visual.attnpool.positional_embedding", "visual.attn_pool.pos_embed"))
        for src, dst in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("c_proj", "out_proj")):
            pairs += [(f"visual.attnpool.{src}.{n}", f"visual.attn_pool.{dst}.{n}") for n in ("weight", "bias")]
    pairs += [("token_embedding.weight", "text.token_embed.weight"), ("positional_embedding", "text.pos_embed"),
              ("ln_final.weight", "text.ln_final.weight"), ("ln_final.bias", "text.ln_final.bias"),
              ("text_projection", "text.proj"), ("logit_scale", "logit_scale")]
    for i in range(config.text.layers):
        pairs += _block_pairs(f"transformer.resblocks.{i}.", f"text.transformer.blocks.{i}.")
    if config.init_logit_bias is not None:
        pairs.append(("logit_bias", "logit_bias"))
    return pairs


def _rename(state_dict: dict[str, torch.Tensor], pairs: list[tuple[str, str]], source: str,
            ignore: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Renames every key by ``pairs`` (from → to); a missing or left-over key is an error naming it."""
    out, mapping = {}, dict(pairs)
    for src, dst in pairs:
        if src not in state_dict:
            if src.endswith("num_batches_tracked"):  # some exporters drop this counter; it never affects outputs
                out[dst] = torch.tensor(0, dtype=torch.long)
                continue
            raise CheckpointError(f"{source}: missing key {src!r} (expected for {dst!r})")
        out[dst] = state_dict[src]
    extra = sorted(k for k in state_dict if k not in mapping and k not in ignore)
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r}" + (f" (and {len(extra) - 1} more)"
                                                                            if len(extra) > 1 else ""))
    return out


def from_openai_keys(state_dict: dict[str, torch.Tensor], config: CLIPConfig,
                     source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """OpenAI/open_clip-layout tensors → clipforge's state dict for ``config``."""
    return _rename(state_dict, key_pairs(config), source, ignore=NON_WEIGHT_KEYS)


def to_openai_keys(state_dict: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge's state dict → OpenAI/open_clip-layout tensors (what ``open_clip.model.CLIP`` loads)."""
    return _rename(state_dict, [(dst, src) for src, dst in key_pairs(config)], "<clipforge model>")


def load_openai(path: str | Path, allow_pickle: bool = False, allow_jit: bool = False,
                act: str = "quick_gelu") -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Reads an OpenAI checkpoint into (config, clipforge state dict); OpenAI's models all use QuickGELU."""
    raw = read_openai_file(path, allow_pickle=allow_pickle, allow_jit=allow_jit)
    config = config_from_openai_state_dict(raw, act=act, source=str(path))
    return config, from_openai_keys(raw, config, str(path))
