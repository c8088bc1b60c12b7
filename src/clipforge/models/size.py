"""What a model config costs, computed from the config alone, before anything is built.

``parameter_count`` is exact: the number ``sum(p.numel() for p in model.parameters())`` gives for the model
``build_model`` would make (tested against every preset and against random shapes). ``activation_bytes`` is an
estimate of the fp32 forward activations of one sample in the largest layer (input pixels, residual stream,
q/k/v, the attention scores a non-fused kernel materialises, the MLP's hidden layer) — an order of magnitude, not
a profile. Both are plain integer arithmetic, so a config with ``width: 65536`` or ``layers: 10**9`` is measured
in microseconds.

``check_model_size`` refuses a config beyond the limits, naming the fields that dominate the estimate:

- ``MAX_PARAMS`` (10 billion; ViT-bigG/14 has 2.5 billion): change with the ``max_params`` argument of
  ``build_model`` or the ``CLIPFORGE_MAX_PARAMS`` environment variable;
- ``MAX_ACTIVATION_BYTES`` (4 GiB per sample; the largest preset needs about 50 MB): change with
  ``max_activation_bytes`` or ``CLIPFORGE_MAX_ACTIVATION_BYTES``.

Either variable takes a positive number (``2e10`` is fine); the limit does not apply to a model built on the
meta device, which allocates nothing.
"""

from __future__ import annotations

import itertools
import math
import os

from clipforge.config import ConfigError
from clipforge.models.config import CLIPPOConfig, ModelConfig, ResNetConfig, TextConfig, ViTConfig

MAX_PARAMS = 10_000_000_000
MAX_ACTIVATION_BYTES = 4 * 2**30
PARAMS_ENV, ACTIVATION_ENV = "CLIPFORGE_MAX_PARAMS", "CLIPFORGE_MAX_ACTIVATION_BYTES"
FLOAT_BYTES = 4

Terms = list[tuple[str, int]]  # (what, with the config fields it comes from; how many)


def _hidden(width: int, ratio: float, where: str) -> int:
    """The MLP hidden width, ``int(width * mlp_ratio)`` as the layers compute it."""
    hidden = width * ratio
    if not math.isfinite(hidden):
        raise ConfigError(f"{where}.mlp_ratio: {where}.width × mlp_ratio = {width:.3g} × {ratio:.3g} is not finite")
    return int(hidden)


def _block(width: int, hidden: int) -> int:
    """Parameters of one ``layers.Block``: two LayerNorms, fused q/k/v, output projection, MLP."""
    return 2 * width + (3 * width * width + 3 * width) + (width * width + width) + 2 * width + (
        width * hidden + hidden) + (hidden * width + width)


def _conv_stem_channels(patch_size: int, width: int) -> list[int]:
    n = patch_size.bit_length() - 1
    return [3] + [max(16, width >> (n - i)) for i in range(n)]


def _vit_params(v: ViTConfig, embed_dim: int) -> Terms:
    w, hidden = v.width, _hidden(v.width, v.mlp_ratio, "vision")
    terms: Terms = []
    in_channels, kernel = 3, v.patch_size
    if v.stem == "conv":
        channels = _conv_stem_channels(v.patch_size, w)
        n = len(channels) - 1
        stem = sum(a * b * 9 + b for a, b in itertools.pairwise(channels))
        stem += sum(2 * c for c in channels[1:n])  # GroupNorm after every conv but the last
        terms.append(("vision conv stem (vision.width, vision.patch_size)", stem))
        in_channels, kernel = channels[-1], 1
    terms.append(("vision patch embedding (vision.patch_size² × vision.width)",
                  in_channels * w * kernel * kernel + (w if v.patch_bias else 0)))
    n_tokens = v.grid_size**2 + int(v.class_token)
    terms.append(("vision positions ((vision.image_size / vision.patch_size)² × vision.width)",
                  n_tokens * w + (w if v.class_token else 0) + (2 * w if v.ln_pre else 0)))
    terms.append(("vision blocks (vision.layers × vision.width² × vision.mlp_ratio)", v.layers * _block(w, hidden)))
    if v.pool == "map":
        terms.append(("vision MAP head (vision.width)", w + (w * w + w) + (2 * w * w + 2 * w) + (w * w + w) + 2 * w
                      + (w * hidden + hidden) + (hidden * w + w)))
    if v.proj:
        terms.append(("vision projection (vision.width × embed_dim)",
                      2 * w + w * embed_dim + (embed_dim if v.proj_bias else 0)))
    else:
        terms.append(("vision final norm (vision.width)", 2 * w))
    return terms


def _resnet_params(r: ResNetConfig, embed_dim: int) -> Terms:
    w = r.width
    half = w // 2
    stem = 3 * half * 9 + 2 * half + half * half * 9 + 2 * half + half * w * 9 + 2 * w
    stages = 0
    in_planes = w
    for i, blocks in enumerate(r.layers):
        planes = w * 2**i
        out = 4 * planes
        block = planes * planes * 9 + 2 * planes + planes * out + 2 * out  # conv2, bn2, conv3, bn3
        first = in_planes * planes + 2 * planes + block + in_planes * out + 2 * out  # conv1, bn1, +downsample
        rest = out * planes + 2 * planes + block
        stages += first + (blocks - 1) * rest
        in_planes = out
    c, spatial = 32 * w, r.image_size // 32
    pool = (spatial**2 + 1) * c + 3 * (c * c + c) + c * embed_dim + embed_dim
    return [("vision stem (vision.width)", stem),
            ("vision stages (vision.layers × vision.width²)", stages),
            ("vision attention pool ((vision.image_size / 32)² × vision.width)", pool)]


def _text_params(t: TextConfig, embed_dim: int) -> Terms:
    w, hidden = t.width, _hidden(t.width, t.mlp_ratio, "text")
    return [("text token embedding (text.vocab_size × text.width)", t.vocab_size * w),
            ("text positions (text.context_length × text.width)", t.context_length * w),
            ("text blocks (text.layers × text.width² × text.mlp_ratio)", t.layers * _block(w, hidden)),
            ("text projection (text.width × embed_dim)", 2 * w + w * embed_dim + (embed_dim if t.proj_bias else 0))]


def parameter_terms(config: ModelConfig) -> Terms:
    """The model's parameters by part, each labelled with the config fields it grows with."""
    vision = config.vision
    terms = (_vit_params(vision, config.embed_dim) if isinstance(vision, ViTConfig)
             else _resnet_params(vision, config.embed_dim))
    if not isinstance(config, CLIPPOConfig):  # CLIPPO has no text tower
        terms += _text_params(config.text, config.embed_dim)
    terms.append(("logit scale and bias", 1 + int(config.init_logit_bias is not None)))
    return terms


def parameter_count(config: ModelConfig) -> int:
    """Exactly how many parameters ``build_model(config)`` has, from the config alone."""
    return sum(n for _, n in parameter_terms(config))


def _transformer_activations(tokens: int, width: int, heads: int, hidden: int) -> int:
    """Elements alive in one block's forward: residual, q/k/v, the (non-fused) attention scores, MLP hidden."""
    return tokens * width * 4 + heads * tokens * tokens + tokens * hidden


def activation_terms(config: ModelConfig) -> Terms:
    """The fp32 bytes of one sample's activations in each tower's largest layer, labelled with their fields."""
    v = config.vision
    if isinstance(v, ViTConfig) and v.naflex:  # every image padded to the patch budget, whatever its size
        terms: Terms = [("vision input (3 × vision.max_num_patches × vision.patch_size²)",
                         3 * v.max_num_patches * v.patch_size**2 * FLOAT_BYTES)]
        block = _transformer_activations(v.max_num_patches, v.width, v.heads, _hidden(v.width, v.mlp_ratio, "vision"))
        terms.append(("vision blocks (vision.heads × vision.max_num_patches² attention scores + tokens × "
                      "vision.width × vision.mlp_ratio)", block * FLOAT_BYTES))
        return terms + _text_activations(config)
    pixels = 3 * v.image_size**2
    terms = [("vision input (3 × vision.image_size²)", pixels * FLOAT_BYTES)]
    if isinstance(v, ViTConfig):
        tokens = v.grid_size**2 + int(v.class_token)
        block = _transformer_activations(tokens, v.width, v.heads, _hidden(v.width, v.mlp_ratio, "vision"))
        terms.append(("vision blocks (vision.heads × ((vision.image_size / vision.patch_size)²)² attention scores "
                      "+ tokens × vision.width × vision.mlp_ratio)", block * FLOAT_BYTES))
        if v.stem == "conv":
            first = _conv_stem_channels(v.patch_size, v.width)[1]
            terms.append(("vision conv stem (vision.width × (vision.image_size / 2)²)",
                          2 * first * (v.image_size // 2) ** 2 * FLOAT_BYTES))
    else:  # the stem's last conv runs at half resolution with the full stem width; later stages are no larger
        terms.append(("vision stem (vision.width × (vision.image_size / 2)²)",
                      3 * v.width * (v.image_size // 2) ** 2 * FLOAT_BYTES))
    return terms + _text_activations(config)


def _text_activations(config: ModelConfig) -> Terms:
    """The text tower's share of ``activation_terms`` (none for CLIPPO, which has no text tower)."""
    if isinstance(config, CLIPPOConfig):
        return []
    t: TextConfig = config.text
    block = _transformer_activations(t.context_length, t.width, t.heads, _hidden(t.width, t.mlp_ratio, "text"))
    return [("text blocks (text.heads × text.context_length² attention scores "
             "+ text.context_length × text.width × text.mlp_ratio)", block * FLOAT_BYTES)]


def activation_bytes(config: ModelConfig) -> int:
    """An estimate of one sample's fp32 forward activations in the largest layers (see the module docstring)."""
    return sum(n for _, n in activation_terms(config))


def _num(n: int) -> str:
    """A count in three significant figures (``1.5e+12``), for any size of integer."""
    try:
        return f"{n:,}" if n < 10**6 else f"{float(n):.3g}"
    except OverflowError:
        return "more than 1e308"


def _limit(value: int | None, env: str, default: int) -> int:
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"a size limit must be a positive integer, got {value!r}")
        return value
    text = os.environ.get(env)
    if text is None or not text.strip():
        return default
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{env}: expected a positive number, got {text[:80]!r}")
    return int(number)


def check_model_size(config: ModelConfig, max_params: int | None = None, max_activation_bytes: int | None = None,
                     where: str = "model") -> None:
    """Refuses a config whose model would exceed the parameter or per-sample activation limit.

    Args:
        config: The model config.
        max_params: The parameter limit (default: ``CLIPFORGE_MAX_PARAMS`` or ``MAX_PARAMS``).
        max_activation_bytes: The per-sample activation limit in bytes (default:
            ``CLIPFORGE_MAX_ACTIVATION_BYTES`` or ``MAX_ACTIVATION_BYTES``).
        where: Names the config in the error.

    Raises:
        ConfigError: naming the estimate, the limit, how to change it, and the part (with its fields) that
            contributes most.
    """
    params_limit = _limit(max_params, PARAMS_ENV, MAX_PARAMS)
    terms = parameter_terms(config)
    total = sum(n for _, n in terms)
    if total > params_limit:
        part, n = max(terms, key=lambda term: term[1])
        raise ConfigError(f"{where}: {_num(total)} parameters, over the limit of {_num(params_limit)} ({PARAMS_ENV} "
                          f"or max_params= raises it); most are in the {part}: {_num(n)}")
    bytes_limit = _limit(max_activation_bytes, ACTIVATION_ENV, MAX_ACTIVATION_BYTES)
    terms = activation_terms(config)
    total = sum(n for _, n in terms)
    if total > bytes_limit:
        part, n = max(terms, key=lambda term: term[1])
        raise ConfigError(f"{where}: about {_num(total)} bytes of activations per sample, over the limit of "
                          f"{_num(bytes_limit)} ({ACTIVATION_ENV} or max_activation_bytes= raises it); most are in "
                          f"the {part}: {_num(n)} bytes")
