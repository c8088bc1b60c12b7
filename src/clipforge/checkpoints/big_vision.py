"""big_vision CLIPPO checkpoints (``.npz`` of flattened flax parameters) ↔ clipforge CLIPPO.

big_vision's one-tower CLIPPO keeps its ViT under ``img/`` (``params/img/`` in a training checkpoint)
and the log-temperature as ``t``. Flax kernels are (in, out) and attention kernels are split per head:
query/key/value (width, heads, head_dim), out (heads, head_dim, width); the patch embedding is HWIO.
The architecture is read off the tensor shapes; the renderer defaults to big_vision's pixel rules.
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
from clipforge.models.config import CLIPPOConfig, ViTConfig

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO

PREFIXES = ("params/img/", "img/", "opt/target/img/")


class BigVisionFormatError(ValueError):
    """The file is not a readable big_vision CLIPPO checkpoint."""


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


def config_from_arrays(arrays: dict[str, np.ndarray], path: str | Path = "<arrays>") -> CLIPPOConfig:
    """Infers the CLIPPO config from tensor shapes."""
    p = _prefix(arrays, path)

    def get(key: str, ndim: int) -> np.ndarray:
        if p + key not in arrays:
            raise BigVisionFormatError(f"{path}: missing {p + key!r}")
        array = arrays[p + key]
        if array.ndim != ndim or 0 in array.shape:
            raise BigVisionFormatError(f"{path}: {p + key} has shape {array.shape}, expected {ndim} non-empty axes")
        return array

    patch, _, in_ch, width = get("embedding/kernel", 4).shape
    if in_ch != 3:
        raise BigVisionFormatError(f"{path}: {p}embedding/kernel has {in_ch} input channels, expected 3")
    class_token = p + "cls" in arrays
    n_pos = get("pos_embedding", 3).shape[-2] - int(class_token)
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise BigVisionFormatError(f"{path}: {p}pos_embedding has {n_pos} patch positions, not a square grid")
    layers = 0
    while f"{p}Transformer/encoderblock_{layers}/LayerNorm_0/scale" in arrays:
        layers += 1
    if layers == 0:
        raise BigVisionFormatError(f"{path}: no '{p}Transformer/encoderblock_N' blocks found")
    heads = get("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel", 3).shape[1]
    mlp = get("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", 2).shape[1]
    if p + "head/kernel" not in arrays:
        raise BigVisionFormatError(f"{path}: missing {p}head/kernel (the projection to the embedding space)")
    embed_dim = get("head/kernel", 2).shape[1]
    pool: Literal["cls", "mean", "map"] = ("map" if p + "MAPHead_0/probe" in arrays
                                           else "cls" if class_token else "mean")
    try:
        vision = ViTConfig(image_size=grid * patch, patch_size=patch, width=width, layers=layers, heads=heads,
                           mlp_ratio=_ratio(mlp, width), pool=pool, class_token=class_token, ln_pre=False,
                           patch_bias=True, proj_bias=True)
        return CLIPPOConfig(embed_dim=embed_dim, vision=vision, render={"mode": "big_vision"})
    except ConfigError as e:  # shapes that no ViT has, e.g. a width the head count does not divide
        raise BigVisionFormatError(f"{path}: the tensor shapes describe no valid ViT ({e})") from None


def _ratio(hidden: int, width: int) -> float:
    """An ``mlp_ratio`` with int(width * ratio) == hidden exactly."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def state_dict_from_arrays(arrays: dict[str, np.ndarray], config: CLIPPOConfig) -> dict[str, torch.Tensor]:
    """Maps flax arrays to clipforge's CLIPPO state dict (shapes follow ``config``)."""
    p = _prefix(arrays, "<arrays>")
    v = cast(ViTConfig, config.vision)  # big_vision's CLIPPO is a ViT (config_from_arrays builds one)
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # np.array keeps 0-d arrays 0-d
    sd: dict[str, torch.Tensor] = {
        "visual.patch_embed.weight": t(arrays[p + "embedding/kernel"].transpose(3, 2, 0, 1)),
        "visual.patch_embed.bias": t(arrays[p + "embedding/bias"]),
        "visual.pos_embed": t(arrays[p + "pos_embedding"].reshape(-1, v.width)),
        "visual.ln_post.weight": t(arrays[p + "Transformer/encoder_norm/scale"]),
        "visual.ln_post.bias": t(arrays[p + "Transformer/encoder_norm/bias"]),
        "visual.proj": t(arrays[p + "head/kernel"]),
        "visual.proj_bias": t(arrays[p + "head/bias"]),
    }
    if v.class_token:
        sd["visual.class_token"] = t(arrays[p + "cls"].reshape(-1))
    for i in range(v.layers):
        src, dst = f"{p}Transformer/encoderblock_{i}/", f"visual.transformer.blocks.{i}."
        sd |= _norm(arrays, t, src + "LayerNorm_0/", dst + "ln_1.")
        sd |= _norm(arrays, t, src + "LayerNorm_1/", dst + "ln_2.")
        sd |= _attention(arrays, t, src + "MultiHeadDotProductAttention_0/", dst + "attn.", ("query", "key", "value"),
                         "qkv")
        sd |= _mlp(arrays, t, src + "MlpBlock_0/", dst + "mlp.")
    if v.pool == "map":
        src, dst = f"{p}MAPHead_0/", "visual.attn_pool."
        sd[dst + "probe"] = t(arrays[src + "probe"].reshape(1, 1, v.width))
        mha = src + "MultiHeadDotProductAttention_0/"
        sd |= _attention(arrays, t, mha, dst, ("query",), "q", out=False)
        sd |= _attention(arrays, t, mha, dst, ("key", "value"), "kv")
        sd |= _norm(arrays, t, src + "LayerNorm_0/", dst + "norm.")
        sd |= _mlp(arrays, t, src + "MlpBlock_0/", dst + "mlp.")
    temperature = next((arrays[k] for k in ("params/t", "t", "opt/target/t") if k in arrays), None)
    sd["logit_scale"] = t(np.asarray(temperature).reshape(())) if temperature is not None else torch.tensor(
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


def load_big_vision(path: str | Path) -> tuple[CLIPPOConfig, dict[str, torch.Tensor]]:
    """Reads a big_vision CLIPPO ``.npz`` into (config, clipforge state dict)."""
    arrays = read_npz(path)
    config = config_from_arrays(arrays, path)
    try:
        return config, state_dict_from_arrays(arrays, config)
    except KeyError as e:
        raise BigVisionFormatError(f"{path}: missing {e.args[0]!r}") from None
    except (ValueError, IndexError) as e:  # a tensor whose size does not fit the shapes read off the others
        raise BigVisionFormatError(f"{path}: a tensor does not fit the architecture inferred from the others "
                                   f"(width {config.vision.width}, {config.vision.heads} heads): {e}") from None


def to_big_vision_arrays(state_dict: dict[str, torch.Tensor], config: CLIPPOConfig,
                         prefix: str = "params/") -> dict[str, np.ndarray]:
    """The inverse of ``state_dict_from_arrays``: clipforge CLIPPO weights → flattened flax arrays."""
    v = cast(ViTConfig, config.vision)  # big_vision's CLIPPO is a ViT (save_big_vision refuses a ResNet)
    heads, hd = v.heads, v.width // v.heads
    n = lambda k: state_dict[k].detach().float().cpu().numpy()
    img = prefix + "img/"
    out: dict[str, np.ndarray] = {
        img + "embedding/kernel": n("visual.patch_embed.weight").transpose(2, 3, 1, 0),
        img + "embedding/bias": n("visual.patch_embed.bias"),
        img + "pos_embedding": n("visual.pos_embed")[None],
        img + "Transformer/encoder_norm/scale": n("visual.ln_post.weight"),
        img + "Transformer/encoder_norm/bias": n("visual.ln_post.bias"),
        img + "head/kernel": n("visual.proj"),
        img + "head/bias": n("visual.proj_bias"),
        prefix + "t": n("logit_scale").reshape(()),
    }
    if v.class_token:
        out[img + "cls"] = n("visual.class_token")[None, None]

    def attention(src: str, dst: str, names: tuple[str, ...], fused: str, with_out: bool = True) -> None:
        w, b = n(f"{src}{fused}.weight"), n(f"{src}{fused}.bias")
        for i, name in enumerate(names):
            rows = slice(i * v.width, (i + 1) * v.width)
            out[f"{dst}{name}/kernel"] = w[rows].T.reshape(v.width, heads, hd)
            out[f"{dst}{name}/bias"] = b[rows].reshape(heads, hd)
        if with_out:
            out[dst + "out/kernel"] = n(src + "out_proj.weight").T.reshape(heads, hd, v.width)
            out[dst + "out/bias"] = n(src + "out_proj.bias")

    def norm(src: str, dst: str) -> None:
        out[dst + "scale"], out[dst + "bias"] = n(src + "weight"), n(src + "bias")

    def mlp(src: str, dst: str) -> None:
        out[dst + "Dense_0/kernel"], out[dst + "Dense_0/bias"] = n(src + "fc.weight").T, n(src + "fc.bias")
        out[dst + "Dense_1/kernel"], out[dst + "Dense_1/bias"] = n(src + "proj.weight").T, n(src + "proj.bias")

    for i in range(v.layers):
        src, dst = f"visual.transformer.blocks.{i}.", f"{img}Transformer/encoderblock_{i}/"
        norm(src + "ln_1.", dst + "LayerNorm_0/")
        norm(src + "ln_2.", dst + "LayerNorm_1/")
        attention(src + "attn.", dst + "MultiHeadDotProductAttention_0/", ("query", "key", "value"), "qkv")
        mlp(src + "mlp.", dst + "MlpBlock_0/")
    if v.pool == "map":
        src, dst = "visual.attn_pool.", f"{img}MAPHead_0/"
        out[dst + "probe"] = n(src + "probe")
        attention(src, dst + "MultiHeadDotProductAttention_0/", ("query",), "q", with_out=False)
        attention(src, dst + "MultiHeadDotProductAttention_0/", ("key", "value"), "kv")
        norm(src + "norm.", dst + "LayerNorm_0/")
        mlp(src + "mlp.", dst + "MlpBlock_0/")
    return out


def save_big_vision(model: CLIP | CLIPPO, path: str | Path) -> None:
    """Writes a CLIPPO model as a big_vision ``.npz`` (``params/img/...`` and ``params/t``)."""
    config = model.config
    if not isinstance(config, CLIPPOConfig):
        raise ValueError("only CLIPPO models can be exported to big_vision's CLIPPO layout")
    if not isinstance(config.vision, ViTConfig):
        raise ValueError("big_vision's CLIPPO is a ViT; a CLIPPO model with a ResNet tower cannot be exported to it")
    if config.vision.stem != "patch":
        raise ValueError("big_vision's ViT has a patch-embedding stem; a conv-stem model cannot be exported to it")
    arrays = to_big_vision_arrays(model.state_dict(), config)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub: ** might fill savez's allow_pickle: bool
