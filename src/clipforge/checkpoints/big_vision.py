"""big_vision checkpoints (``.npz`` of flattened flax parameters) ↔ clipforge: CLIPPO here, SigLIP beside it.

big_vision's one-tower CLIPPO keeps its ViT under ``img/`` (``params/img/`` in a training checkpoint)
and the log-temperature as ``t``. Flax kernels are (in, out) and attention kernels are split per head:
query/key/value (width, heads, head_dim), out (heads, head_dim, width); the patch embedding is HWIO.
The architecture is read off the tensor shapes; the renderer defaults to big_vision's pixel rules.

A file that also holds a text tower (``txt/Embed_0/embedding``) is a two-towers SigLIP model, read and written by
``big_vision_siglip.py`` with the ViT and transformer-block mappings of this module. Blocks saved with
``scan=True`` (one ``encoderblock`` whose arrays carry a leading layer axis) are unstacked on reading.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch

from clipforge.checkpoints.containers import check_zip
from clipforge.checkpoints.native import CheckpointError
from clipforge.config import ConfigError, shorten
from clipforge.models.config import CLIPPOConfig, SigLIPConfig, ViTConfig

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO

PREFIXES = ("params/img/", "img/", "opt/target/img/")


class BigVisionFormatError(ValueError):
    """The file is not a readable big_vision CLIPPO or SigLIP checkpoint."""


def is_big_vision_npz(path: str | Path) -> bool:
    """Whether ``path`` looks like a big_vision ``.npz`` with a ViT under ``img/``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n.removesuffix(".npy") for n in zf.namelist()}
    except Exception:  # a damaged zip fails in many ways (BadZipFile, UnicodeDecodeError, ValueError, …)
        return False
    return any(f"{p}embedding/kernel" in names for p in PREFIXES)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Loads every array of an ``.npz`` (never unpickling), with a clear error for a corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it and complain about pickles
        raise BigVisionFormatError(f"{path}: not a readable .npz checkpoint (not a zip archive: truncated or "
                                   "not an .npz file)")
    try:
        with zipfile.ZipFile(path) as zf:
            check_zip(zf, path)  # a zip bomb is refused from the directory, before anything is inflated
            for info in zf.infolist():
                if info.filename.endswith(".npy"):  # numpy returns other members as bytes
                    _check_npy_member(zf, info, path)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except CheckpointError as e:
        raise BigVisionFormatError(str(e)) from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise BigVisionFormatError(f"{path}: not a readable .npz checkpoint ({str(e)[:200]})") from None
    except Exception as e:  # a damaged archive fails in many ways inside zipfile and numpy
        raise BigVisionFormatError(f"{path}: not a readable .npz checkpoint ({type(e).__name__}: "
                                   f"{str(e)[:200]})") from None


def _check_npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Refuses an ``.npy`` member whose header declares more data than the member holds, before numpy allocates
    the array its header describes."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise CheckpointError(f"{path}: member {info.filename[:200]!r} is .npy version {version}, not 1.0 or 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        needed = math.prod(shape) * dtype.itemsize
        if needed > info.file_size - f.tell():
            raise CheckpointError(f"{path}: member {info.filename[:200]!r} declares an array of shape "
                                  f"{shorten(shape)} ({needed:,} bytes); the member holds {info.file_size:,}")


def _prefix(arrays: dict[str, np.ndarray], path: str | Path) -> str:
    for p in PREFIXES:
        if f"{p}embedding/kernel" in arrays:
            return p
    raise BigVisionFormatError(f"{path}: no big_vision ViT found (expected a key like 'params/img/embedding/kernel')")


def unscan(arrays: dict[str, np.ndarray], path: str | Path = "<arrays>") -> dict[str, np.ndarray]:
    """Unstacks blocks saved with ``scan=True``: ``.../encoderblock/X`` of shape (depth, ...) becomes
    ``.../encoderblock_{i}/X`` (big_vision's ``Encoder`` names them so without scan)."""
    depths: dict[str, set[int]] = {}
    for key, array in arrays.items():
        if "/encoderblock/" in key:
            depths.setdefault(key.split("/encoderblock/", 1)[0], set()).add(array.shape[0] if array.ndim else 0)
    for stack, found in depths.items():
        if len(found) > 1 or 0 in found:
            raise BigVisionFormatError(f"{path}: the scanned blocks of {stack}/encoderblock/ disagree on their layer "
                                       f"count (first axes {sorted(found)})")
    out = {}
    for key, array in arrays.items():
        if "/encoderblock/" not in key:
            out[key] = array
            continue
        stack, rest = key.split("/encoderblock/", 1)
        for i in range(array.shape[0]):
            out[f"{stack}/encoderblock_{i}/{rest}"] = array[i]
    return out


def vit_fields_from_arrays(arrays: dict[str, np.ndarray], p: str, path: str | Path,
                           head_required: bool = True) -> tuple[dict[str, Any], int | None]:
    """The ``ViTConfig`` fields a big_vision ViT under prefix ``p`` has, and its head's output size (``None``: no
    ``head``, as in SigLIP, whose MAP output is the embedding)."""

    def get(key: str, ndim: int) -> np.ndarray:
        if p + key not in arrays:
            raise BigVisionFormatError(f"{path}: missing {p + key!r}")
        array = arrays[p + key]
        if array.ndim != ndim or 0 in array.shape:
            raise BigVisionFormatError(f"{path}: {p + key} has shape {array.shape}, expected {ndim} non-empty axes")
        return array

    patch, patch_w, in_ch, width = get("embedding/kernel", 4).shape
    if in_ch != 3 or patch_w != patch:
        raise BigVisionFormatError(f"{path}: {p}embedding/kernel has shape {(patch, patch_w, in_ch, width)}, "
                                   "expected square patches of 3 channels")
    class_token = p + "cls" in arrays
    n_pos = get("pos_embedding", 3).shape[-2] - int(class_token)
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise BigVisionFormatError(f"{path}: {p}pos_embedding has {n_pos} patch positions, not a square grid")
    layers, heads, mlp = encoder_shape(arrays, p + "Transformer/", path)
    if head_required and p + "head/kernel" not in arrays:
        raise BigVisionFormatError(f"{path}: missing {p}head/kernel (the projection to the embedding space)")
    embed_dim = get("head/kernel", 2).shape[1] if p + "head/kernel" in arrays else None
    pool: Literal["cls", "mean", "map"] = ("map" if p + "MAPHead_0/probe" in arrays
                                           else "cls" if class_token else "mean")
    fields = {"image_size": grid * patch, "patch_size": patch, "width": width, "layers": layers, "heads": heads,
              "mlp_ratio": _ratio(mlp, width), "pool": pool, "class_token": class_token, "ln_pre": False,
              "patch_bias": True, "proj": embed_dim is not None, "proj_bias": embed_dim is not None}
    return fields, embed_dim


def encoder_shape(arrays: dict[str, np.ndarray], p: str, path: str | Path) -> tuple[int, int, int]:
    """(layers, heads, MLP width) of the ``encoderblock_N`` stack under ``p`` (``.../Transformer/``)."""
    layers = 0
    while f"{p}encoderblock_{layers}/LayerNorm_0/scale" in arrays:
        layers += 1
    if layers == 0:
        raise BigVisionFormatError(f"{path}: no '{p}encoderblock_N' blocks found")
    for key, ndim in (("MultiHeadDotProductAttention_0/query/kernel", 3), ("MlpBlock_0/Dense_0/kernel", 2)):
        name = f"{p}encoderblock_0/{key}"
        if name not in arrays:
            raise BigVisionFormatError(f"{path}: missing {name!r}")
        if arrays[name].ndim != ndim or 0 in arrays[name].shape:
            raise BigVisionFormatError(f"{path}: {name} has shape {arrays[name].shape}, expected {ndim} non-empty "
                                       "axes")
    query = arrays[f"{p}encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"]
    return layers, query.shape[1], arrays[f"{p}encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape[1]


def config_from_arrays(arrays: dict[str, np.ndarray], path: str | Path = "<arrays>") -> CLIPPOConfig:
    """Infers the CLIPPO config from tensor shapes."""
    fields, embed_dim = vit_fields_from_arrays(arrays, _prefix(arrays, path), path)
    try:
        return CLIPPOConfig(embed_dim=cast(int, embed_dim), vision=ViTConfig(**fields), render={"mode": "big_vision"})
    except ConfigError as e:  # shapes that no ViT has, e.g. a width the head count does not divide
        raise BigVisionFormatError(f"{path}: the tensor shapes describe no valid ViT ({e})") from None


def _ratio(hidden: int, width: int) -> float:
    """An ``mlp_ratio`` with int(width * ratio) == hidden exactly."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))  # np.array keeps 0-d arrays 0-d


def vit_state_from_arrays(arrays: dict[str, np.ndarray], p: str, v: ViTConfig) -> dict[str, torch.Tensor]:
    """The image tower's tensors (``visual.*``) from a big_vision ViT under prefix ``p``."""
    t = _tensor
    sd: dict[str, torch.Tensor] = {
        "visual.patch_embed.weight": t(arrays[p + "embedding/kernel"].transpose(3, 2, 0, 1)),
        "visual.patch_embed.bias": t(arrays[p + "embedding/bias"]),
        "visual.pos_embed": t(arrays[p + "pos_embedding"].reshape(-1, v.width)),
        "visual.ln_post.weight": t(arrays[p + "Transformer/encoder_norm/scale"]),
        "visual.ln_post.bias": t(arrays[p + "Transformer/encoder_norm/bias"]),
    }
    if v.proj:
        sd["visual.proj"] = t(arrays[p + "head/kernel"])
        sd["visual.proj_bias"] = t(arrays[p + "head/bias"])
    if v.class_token:
        sd["visual.class_token"] = t(arrays[p + "cls"].reshape(-1))
    sd |= encoder_from_arrays(arrays, p + "Transformer/", "visual.transformer.", v.layers)
    if v.pool == "map":
        src, dst = f"{p}MAPHead_0/", "visual.attn_pool."
        sd[dst + "probe"] = t(arrays[src + "probe"].reshape(1, 1, v.width))
        mha = src + "MultiHeadDotProductAttention_0/"
        sd |= _attention(arrays, t, mha, dst, ("query",), "q", out=False)
        sd |= _attention(arrays, t, mha, dst, ("key", "value"), "kv")
        sd |= _norm(arrays, t, src + "LayerNorm_0/", dst + "norm.")
        sd |= _mlp(arrays, t, src + "MlpBlock_0/", dst + "mlp.")
    return sd


def encoder_from_arrays(arrays: dict[str, np.ndarray], src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    """big_vision ``Encoder`` blocks (``{src}encoderblock_N/``) → clipforge blocks (``{dst}blocks.N.``)."""
    t = _tensor
    sd: dict[str, torch.Tensor] = {}
    for i in range(layers):
        block, out = f"{src}encoderblock_{i}/", f"{dst}blocks.{i}."
        sd |= _norm(arrays, t, block + "LayerNorm_0/", out + "ln_1.")
        sd |= _norm(arrays, t, block + "LayerNorm_1/", out + "ln_2.")
        sd |= _attention(arrays, t, block + "MultiHeadDotProductAttention_0/", out + "attn.",
                         ("query", "key", "value"), "qkv")
        sd |= _mlp(arrays, t, block + "MlpBlock_0/", out + "mlp.")
    return sd


def state_dict_from_arrays(arrays: dict[str, np.ndarray], config: CLIPPOConfig) -> dict[str, torch.Tensor]:
    """Maps flax arrays to clipforge's CLIPPO state dict (shapes follow ``config``)."""
    p = _prefix(arrays, "<arrays>")
    sd = vit_state_from_arrays(arrays, p, cast(ViTConfig, config.vision))  # big_vision's CLIPPO is a ViT
    temperature = next((arrays[k] for k in ("params/t", "t", "opt/target/t") if k in arrays), None)
    sd["logit_scale"] = _tensor(np.asarray(temperature).reshape(())) if temperature is not None else torch.tensor(
        config.init_logit_scale)
    return sd


def _norm(a: dict[str, np.ndarray], t: Any, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {dst + "weight": t(a[src + "scale"]), dst + "bias": t(a[src + "bias"])}


def _mlp(a: dict[str, np.ndarray], t: Any, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {
        dst + "fc.weight": t(a[src + "Dense_0/kernel"].T), dst + "fc.bias": t(a[src + "Dense_0/bias"]),
        dst + "proj.weight": t(a[src + "Dense_1/kernel"].T), dst + "proj.bias": t(a[src + "Dense_1/bias"]),
    }


def _attention(a: dict[str, np.ndarray], t: Any, src: str, dst: str, names: tuple[str, ...], fused: str,
               out: bool = True) -> dict[str, torch.Tensor]:
    """Per-head flax q/k/v kernels (width, heads, hd) → one fused torch Linear; ``out`` (heads, hd, width)."""
    weights = [a[f"{src}{n}/kernel"].reshape(a[f"{src}{n}/kernel"].shape[0], -1).T for n in names]
    biases = [a[f"{src}{n}/bias"].reshape(-1) for n in names]
    sd = {f"{dst}{fused}.weight": t(np.concatenate(weights)), f"{dst}{fused}.bias": t(np.concatenate(biases))}
    if out:
        kernel = a[src + "out/kernel"]
        sd[dst + "out_proj.weight"] = t(kernel.reshape(-1, kernel.shape[-1]).T)
        sd[dst + "out_proj.bias"] = t(a[src + "out/bias"])
    return sd


def load_big_vision(path: str | Path) -> tuple[CLIPPOConfig | SigLIPConfig, dict[str, torch.Tensor]]:
    """Reads a big_vision ``.npz`` into (config, clipforge state dict): a CLIPPO ViT, or a two-towers SigLIP model
    when the file has a text tower (``txt/``)."""
    arrays = unscan(read_npz(path), path)
    p = _prefix(arrays, path)
    config: CLIPPOConfig | SigLIPConfig
    if p.removesuffix("img/") + "txt/Embed_0/embedding" in arrays:
        from clipforge.checkpoints.big_vision_siglip import siglip_config_from_arrays, siglip_state_from_arrays

        config = siglip_config_from_arrays(arrays, p, path)
        read = lambda: siglip_state_from_arrays(arrays, p, config)
    else:
        config = config_from_arrays(arrays, path)
        read = lambda: state_dict_from_arrays(arrays, config)
    try:
        return config, read()
    except KeyError as e:
        raise BigVisionFormatError(f"{path}: missing {e.args[0]!r}") from None
    except (ValueError, IndexError) as e:  # a tensor whose size does not fit the shapes read off the others
        raise BigVisionFormatError(f"{path}: a tensor does not fit the architecture inferred from the others "
                                   f"(width {config.vision.width}, {config.vision.heads} heads): {e}") from None


Numpy = Any  # a callable: clipforge key → float32 numpy array


def vit_to_arrays(n: Numpy, v: ViTConfig, img: str) -> dict[str, np.ndarray]:
    """The inverse of ``vit_state_from_arrays``: an image tower's weights (``n(key)``) → arrays under ``img``.

    A missing patch or head bias is written as zeros (big_vision's Dense and Conv always have one)."""
    width = v.width
    out: dict[str, np.ndarray] = {
        img + "embedding/kernel": n("visual.patch_embed.weight").transpose(2, 3, 1, 0),
        img + "embedding/bias": n("visual.patch_embed.bias") if v.patch_bias else np.zeros(width, np.float32),
        img + "pos_embedding": n("visual.pos_embed")[None],
        img + "Transformer/encoder_norm/scale": n("visual.ln_post.weight"),
        img + "Transformer/encoder_norm/bias": n("visual.ln_post.bias"),
    }
    if v.proj:
        out[img + "head/kernel"] = proj = n("visual.proj")
        out[img + "head/bias"] = n("visual.proj_bias") if v.proj_bias else np.zeros(proj.shape[1], np.float32)
    if v.class_token:
        out[img + "cls"] = n("visual.class_token")[None, None]
    out |= encoder_to_arrays(n, "visual.transformer.", img + "Transformer/", v.layers, width, v.heads)
    if v.pool == "map":
        src, dst = "visual.attn_pool.", f"{img}MAPHead_0/"
        mha = dst + "MultiHeadDotProductAttention_0/"
        out[dst + "probe"] = n(src + "probe")
        out |= _attention_to(n, src, mha, ("query",), "q", width, v.heads, with_out=False)
        out |= _attention_to(n, src, mha, ("key", "value"), "kv", width, v.heads)
        out[dst + "LayerNorm_0/scale"], out[dst + "LayerNorm_0/bias"] = n(src + "norm.weight"), n(src + "norm.bias")
        out |= _mlp_to(n, src + "mlp.", dst + "MlpBlock_0/")
    return out


def encoder_to_arrays(n: Numpy, src: str, dst: str, layers: int, width: int, heads: int) -> dict[str, np.ndarray]:
    """The inverse of ``encoder_from_arrays``."""
    out: dict[str, np.ndarray] = {}
    for i in range(layers):
        block, to = f"{src}blocks.{i}.", f"{dst}encoderblock_{i}/"
        for ln, name in (("ln_1.", "LayerNorm_0/"), ("ln_2.", "LayerNorm_1/")):
            out[to + name + "scale"], out[to + name + "bias"] = n(block + ln + "weight"), n(block + ln + "bias")
        out |= _attention_to(n, block + "attn.", to + "MultiHeadDotProductAttention_0/", ("query", "key", "value"),
                             "qkv", width, heads)
        out |= _mlp_to(n, block + "mlp.", to + "MlpBlock_0/")
    return out


def _attention_to(n: Numpy, src: str, dst: str, names: tuple[str, ...], fused: str, width: int, heads: int,
                  with_out: bool = True) -> dict[str, np.ndarray]:
    out, hd = {}, width // heads
    w, b = n(f"{src}{fused}.weight"), n(f"{src}{fused}.bias")
    for i, name in enumerate(names):
        rows = slice(i * width, (i + 1) * width)
        out[f"{dst}{name}/kernel"] = w[rows].T.reshape(width, heads, hd)
        out[f"{dst}{name}/bias"] = b[rows].reshape(heads, hd)
    if with_out:
        out[dst + "out/kernel"] = n(src + "out_proj.weight").T.reshape(heads, hd, width)
        out[dst + "out/bias"] = n(src + "out_proj.bias")
    return out


def _mlp_to(n: Numpy, src: str, dst: str) -> dict[str, np.ndarray]:
    return {dst + "Dense_0/kernel": n(src + "fc.weight").T, dst + "Dense_0/bias": n(src + "fc.bias"),
            dst + "Dense_1/kernel": n(src + "proj.weight").T, dst + "Dense_1/bias": n(src + "proj.bias")}


def numpy_getter(state_dict: dict[str, torch.Tensor]) -> Numpy:
    """``n(key)``: the float32 numpy copy of one tensor of ``state_dict``."""
    return lambda key: state_dict[key].detach().float().cpu().numpy()


def to_big_vision_arrays(state_dict: dict[str, torch.Tensor], config: CLIPPOConfig,
                         prefix: str = "params/") -> dict[str, np.ndarray]:
    """The inverse of ``state_dict_from_arrays``: clipforge CLIPPO weights → flattened flax arrays."""
    n = numpy_getter(state_dict)
    out = vit_to_arrays(n, cast(ViTConfig, config.vision), prefix + "img/")  # save_big_vision refuses a ResNet
    out[prefix + "t"] = n("logit_scale").reshape(())
    return out


def check_exportable_vit(vision: Any, family: str) -> ViTConfig:
    """The ViT tower of a model to export, or a ``ValueError`` saying why big_vision's ViT cannot hold it."""
    if not isinstance(vision, ViTConfig):
        raise ValueError(f"big_vision's {family} is a ViT; a {family} model with a ResNet tower cannot be exported "
                         "to it")
    if vision.stem != "patch":
        raise ValueError("big_vision's ViT has a patch-embedding stem; a conv-stem model cannot be exported to it")
    if vision.ln_pre:
        raise ValueError("big_vision's ViT has no LayerNorm before its blocks; a model with vision.ln_pre=True "
                         "cannot be exported to it")
    if getattr(vision, "naflex", False):
        raise ValueError("a NaFlex image tower (vision.naflex=True) has big_vision's naflex_vit layout, not its ViT's; "
                         "it cannot be exported to this one")
    return vision


def save_big_vision(model: CLIP | CLIPPO, path: str | Path) -> None:
    """Writes a CLIPPO model (``params/img/...``, ``params/t``) or a SigLIP model (``params/img/...``,
    ``params/txt/...``, ``params/t``, ``params/b``) as a big_vision ``.npz``."""
    config = model.config
    if isinstance(config, SigLIPConfig):
        from clipforge.checkpoints.big_vision_siglip import siglip_to_big_vision_arrays

        arrays = siglip_to_big_vision_arrays(model.state_dict(), config)
    elif isinstance(config, CLIPPOConfig):
        check_exportable_vit(config.vision, "CLIPPO")
        arrays = to_big_vision_arrays(model.state_dict(), config)
    else:
        raise ValueError("only CLIPPO and SigLIP models can be exported to big_vision's layouts; this is a "
                         f"{config.family!r} model")
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub: ** might fill savez's allow_pickle: bool
