"""Typed model configs: plain dataclasses, validated on construction, loaded from dicts strictly.

A config is data: it can be diffed, saved inside every checkpoint (``config.json``) and loaded back.
``from_dict`` rejects unknown keys and wrong types with a message naming the field, so a misspelled
override fails before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from clipforge.config import ConfigError, check_positive, from_dict, shorten

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

Activation = Literal["quick_gelu", "gelu", "gelu_tanh"]  # the MLP activation of every tower (``make_act``)
Scoring = Literal["softmax", "sigmoid"]  # how zero-shot logits become probabilities


@dataclass(frozen=True)
class ViTConfig:
    """A Vision Transformer image tower (Dosovitskiy et al. 2020, as used by CLIP).

    Attributes:
        image_size: Input side in pixels (square).
        patch_size: Patch side in pixels. With the ``patch`` stem a remainder of ``image_size`` is cut off, as the
            strided convolution of every released ViT does (SigLIP So400m/14 at 384 px: 27 × 27 patches of 14 px,
            the last 6 pixel rows and columns unseen); the ``conv`` stem needs a multiple.
        width: Residual stream width.
        layers: Number of residual attention blocks.
        heads: Attention heads; must divide ``width``.
        mlp_ratio: MLP hidden width as a multiple of ``width`` (hidden = int(width * mlp_ratio)).
        pool: ``cls`` (class token, CLIP), ``mean`` (average of patch tokens) or ``map`` (multi-head
            attention pooling with a learned probe, as in big_vision/SigLIP/CLIPPO).
        class_token: Whether a class token is prepended (CLIP: yes; big_vision MAP models: no).
        ln_pre: LayerNorm after the embeddings (CLIP: yes).
        patch_bias: Bias in the patch-embedding convolution (CLIP: no; big_vision: yes).
        patch_dropout: Fraction of patch tokens dropped at training time (FLIP, Li et al. 2022).
        drop_path: Stochastic depth (Huang et al. 2016, timm's ``drop_path_rate``): at training time each block's
            attention and MLP branches are dropped per sample with a rate rising linearly from 0 at the first block
            to this at the last; 0: off. A regulariser for small datasets; the weights and the eval-mode outputs
            do not depend on it.
        dropout: Dropout on each block's attention and MLP branch outputs at training time (the original
            Transformer's residual dropout); 0: off (every released CLIP). A regulariser for small datasets.
        proj_bias: A bias on the output projection (big_vision's ``head`` Dense has one; CLIP's has not).
        proj: Whether a linear projection to ``embed_dim`` follows the pooling (CLIP: yes). SigLIP's image tower has
            none: its MAP head's output is the embedding, so the model's ``embed_dim`` must equal ``width``.
        stem: ``patch`` (one strided convolution, as in every released ViT) or ``conv`` (a stack of 3×3
            stride-2 convolutions, channels doubling up to ``width / 2``, then a 1×1 projection: the
            early-convolution stem of Xiao et al. 2021, for small models and little data; ``patch_size`` must
            then be a power of two ≥ 2). Checkpoint export to OpenAI,
            open_clip, HF and big_vision layouts needs ``patch``.
        act: This tower's MLP activation when it differs from the model's ``act`` (``None``: the model's). OpenCLIP's
            SigLIP 2 B/16, for one, runs a timm image tower with exact GELU beside a tanh-GELU text tower.
        init_gain: Multiplies the initial patch-embedding and transformer weight matrices (PyTorch's default
            initialisation at 1). Above 1 the fresh tower is more nonlinear and tells similar inputs further
            apart, such as rendered captions, which all share the same glyph statistics (why clippo-tiny uses 4:
            docs/clippo.md). Initialisation only: loaded weights are unaffected.
        naflex: SigLIP 2 NaFlex (Tschannen et al. 2025, transformers ``Siglip2VisionModel``): each image keeps its
            aspect ratio, resized to at most ``max_num_patches`` patches of ``patch_size`` and padded to that many,
            with a mask that keeps padding out of every attention (``clipforge.models.naflex``). The learned
            positions stay a (image_size / patch_size)² grid (HF's ``num_patches``: 16 × 16 for the released
            models, so ``image_size`` 256 at patch 16), resized per image to its patch grid (bilinear,
            antialiased). The patch embedding is still stored as the convolution's weight and applied to
            flattened patches. Needs the ``patch`` stem, no class token, ``map`` or ``mean`` pooling and no patch
            dropout.
        max_num_patches: The NaFlex patch budget (HF's image processor ``max_num_patches``; 256 as released): the
            most patches one image may have, and the length every NaFlex input is padded to.
    """

    kind: Literal["vit"] = "vit"
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    pool: Literal["cls", "mean", "map"] = "cls"
    class_token: bool = True
    ln_pre: bool = True
    patch_bias: bool = False
    patch_dropout: float = 0.0
    drop_path: float = 0.0
    dropout: float = 0.0
    proj_bias: bool = False
    proj: bool = True
    stem: Literal["patch", "conv"] = "patch"
    act: Activation | None = None
    init_gain: float = 1.0
    naflex: bool = False
    max_num_patches: int = 256

    def __post_init__(self) -> None:
        check_positive("vision", image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                  layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio, init_gain=self.init_gain,
                  max_num_patches=self.max_num_patches)
        if self.image_size < self.patch_size or (self.stem == "conv" and self.image_size % self.patch_size):
            raise ConfigError(f"vision.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.width % self.heads:
            raise ConfigError(f"vision.width={self.width} is not divisible by heads={self.heads}")
        if self.pool == "cls" and not self.class_token:
            raise ConfigError("vision.pool='cls' needs class_token=True")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ConfigError(f"vision.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        if not 0.0 <= self.drop_path < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"vision.drop_path and vision.dropout must be in [0, 1), got {self.drop_path}, "
                              f"{self.dropout}")
        if self.proj_bias and not self.proj:
            raise ConfigError("vision.proj_bias=True needs proj=True (there is no projection to add a bias to)")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(f"vision.stem='conv' needs a power-of-two patch_size ≥ 2, got {self.patch_size}")
        if self.naflex and (self.stem != "patch" or self.class_token or self.pool == "cls" or self.patch_dropout):
            raise ConfigError("vision.naflex=True needs stem='patch', class_token=False, pool 'map' or 'mean' and "
                              f"patch_dropout=0; got stem={self.stem!r}, class_token={self.class_token}, "
                              f"pool={self.pool!r}, patch_dropout={self.patch_dropout}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ResNetConfig:
    """OpenAI's modified ResNet image tower (CLIP paper, section 2.4).

    Three-conv stem, anti-aliased strided bottlenecks (average pool before the strided conv) and an
    attention-pooling head in place of global average pooling.

    Attributes:
        image_size: Input side in pixels.
        layers: Bottleneck blocks in each of the four stages.
        width: Stem width; stage widths are width, 2×, 4×, 8× (×4 expansion at their outputs).
        heads: Attention-pool heads (OpenAI: width * 32 // 64).
        norm: ``batch`` (OpenAI's BatchNorm) or ``group`` (GroupNorm, no batch statistics: for a tower
            that one model runs on two kinds of input, as CLIPPO does, since shared running statistics
            would mix both and fit neither at evaluation).
    """

    kind: Literal["resnet"] = "resnet"
    image_size: int = 224
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    heads: int = 32
    norm: Literal["batch", "group"] = "batch"

    def __post_init__(self) -> None:
        check_positive("vision", image_size=self.image_size, width=self.width, heads=self.heads)
        if any(n <= 0 for n in self.layers):
            raise ConfigError(f"vision.layers must all be positive, got {self.layers}")
        if self.image_size % 32:
            raise ConfigError(f"vision.image_size={self.image_size} must be a multiple of 32 for a ResNet")
        if (self.width * 32) % self.heads:
            raise ConfigError(f"vision.heads={self.heads} must divide the pooled width {self.width * 32}")


@dataclass(frozen=True)
class TextConfig:
    """The text transformer: CLIP's causal one, or SigLIP's bidirectional one pooled at the last position.

    Attributes:
        vocab_size: Token embedding rows (OpenAI BPE: 49,408).
        context_length: Maximum tokens per text, including start and end tokens.
        width: Residual stream width.
        layers: Number of residual attention blocks.
        heads: Attention heads; must divide ``width``.
        mlp_ratio: MLP hidden width as a multiple of ``width``.
        eot_token_id: The pooling rule. ``None`` is OpenAI's rule: features are taken at the position
            of the highest token id, which is end-of-text in OpenAI's vocabulary. A custom vocabulary
            whose end-of-text token is not the highest id must set its id here; features are then
            taken at the first occurrence of that id. Used when ``pool == "eot"``.
        causal: Causal self-attention (CLIP) or bidirectional (SigLIP: every token sees the whole padded text).
        pool: ``eot`` (features at the end-of-text token, CLIP) or ``last`` (at the last position of the padded
            sequence, SigLIP: the texts are always padded to ``context_length``).
        proj_bias: A bias on the output projection (SigLIP's text ``head`` is a Linear with bias; CLIP's has none).
        act: This tower's MLP activation when it differs from the model's ``act`` (``None``: the model's).
        drop_path: Stochastic depth of the blocks at training time, as ``ViTConfig.drop_path``; 0: off.
        dropout: Residual-branch dropout at training time, as ``ViTConfig.dropout``; 0: off.
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    eot_token_id: int | None = None
    causal: bool = True
    pool: Literal["eot", "last"] = "eot"
    proj_bias: bool = False
    act: Activation | None = None
    drop_path: float = 0.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_path < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"text.drop_path and text.dropout must be in [0, 1), got {self.drop_path}, "
                              f"{self.dropout}")
        check_positive("text", vocab_size=self.vocab_size, context_length=self.context_length, width=self.width,
                  layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio)
        if self.width % self.heads:
            raise ConfigError(f"text.width={self.width} is not divisible by heads={self.heads}")
        if self.eot_token_id is not None and not 0 <= self.eot_token_id < self.vocab_size:
            raise ConfigError(f"text.eot_token_id={self.eot_token_id} is outside the vocabulary")


@dataclass(frozen=True)
class CLIPConfig:
    """A two-tower CLIP model: an image tower and a text tower projected into one embedding space.

    Attributes:
        embed_dim: Dimension of the shared embedding space.
        vision: The image tower (``ViTConfig`` or ``ResNetConfig``, chosen by its ``kind``).
        text: The text tower.
        act: Activation in every MLP: ``quick_gelu`` (OpenAI checkpoints), ``gelu`` (most OpenCLIP
            models) or ``gelu_tanh`` (big_vision/flax). A mismatch with the checkpoint silently ruins accuracy.
        norm_eps: LayerNorm epsilon (PyTorch/OpenAI: 1e-5; flax/big_vision: 1e-6).
        init_logit_scale: Initial log of the logit scale (CLIP: log(1/0.07)).
        init_logit_bias: Initial logit bias; ``None`` means the model has none (SigLIP uses -10).
        max_logit_scale: The logit scale is clamped at exp(max_logit_scale) when used (CLIP: log(100)).
        mean: Per-channel mean used to normalise images.
        std: Per-channel std used to normalise images.
        image_resize: ``shorter_crop`` (resize the shorter side, centre crop: OpenAI) or ``squash`` (resize
            both sides to the model's size: big_vision).
        scoring: How zero-shot scores become probabilities: ``softmax`` over the labels (a model trained with
            CLIP's loss) or ``sigmoid`` per label (one trained with SigLIP's loss: each label judged on its own).
    """

    embed_dim: int = 512
    vision: ViTConfig | ResNetConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    act: Activation = "quick_gelu"
    norm_eps: float = 1e-5
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    max_logit_scale: float = math.log(100)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    image_resize: Literal["shorter_crop", "squash"] = "shorter_crop"
    scoring: Scoring = "softmax"
    family: Literal["clip"] = "clip"

    def __post_init__(self) -> None:
        check_positive("", embed_dim=self.embed_dim, norm_eps=self.norm_eps)


@dataclass(frozen=True)
class CLIPPOConfig:
    """CLIPPO (Tschannen et al. 2022): one ViT encodes images and text rendered as images.

    There is no text tower and no tokenizer: strings become images through the renderer described by
    ``render`` (the fields of ``clipforge.text.render.RenderConfig``, validated when the renderer is
    built), and both kinds of image go through ``vision`` with the same parameters.

    Attributes:
        embed_dim: Output dimension of the head (768 for the paper's B/16).
        vision: The shared tower (the paper: a ViT-B/16 with MAP pooling and no class token). Beyond the
            paper, OpenAI's modified ResNet (``kind: resnet``) with ``norm: group``: BatchNorm's running
            statistics would mix the image and the text pass.
        render: The text renderer's config; saved with the model so it is always served with the
            renderer it was trained with.
        act, norm_eps, init_logit_scale, init_logit_bias, max_logit_scale, mean, std, image_resize, scoring:
            As in ``CLIPConfig``; defaults follow big_vision (tanh-GELU, eps 1e-6, temperature 10,
            pixels scaled to [-1, 1], images squashed to the model's size).
    """

    embed_dim: int = 768
    vision: ViTConfig | ResNetConfig = field(default_factory=lambda: ViTConfig(
        image_size=224, patch_size=16, width=768, layers=12, heads=12, pool="map", class_token=False,
        ln_pre=False, patch_bias=True, proj_bias=True))
    render: dict[str, Any] = field(default_factory=dict)
    act: Activation = "gelu_tanh"
    norm_eps: float = 1e-6
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float | None = None
    max_logit_scale: float = math.log(100)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_resize: Literal["shorter_crop", "squash"] = "squash"
    scoring: Scoring = "softmax"
    family: Literal["clippo"] = "clippo"

    def __post_init__(self) -> None:
        check_positive("", embed_dim=self.embed_dim, norm_eps=self.norm_eps)
        if isinstance(self.vision, ResNetConfig) and self.vision.norm != "group":
            raise ConfigError("vision.norm: a CLIPPO ResNet needs 'group' (one tower runs images and rendered "
                              f"text, and BatchNorm's running statistics would mix both), got {self.vision.norm!r}")
        if self.render.get("image_size", self.vision.image_size) != self.vision.image_size:
            raise ConfigError(f"render.image_size={shorten(self.render['image_size'])} differs from "
                              f"vision.image_size={self.vision.image_size}: rendered text must fit the ViT")


def _siglip_vision() -> ViTConfig:
    return ViTConfig(image_size=224, patch_size=16, width=768, layers=12, heads=12, pool="map", class_token=False,
                     ln_pre=False, patch_bias=True, proj=False)


def _siglip_text() -> TextConfig:
    return TextConfig(vocab_size=32000, context_length=64, width=768, layers=12, heads=12, causal=False, pool="last",
                      proj_bias=True)


@dataclass(frozen=True)
class SigLIPConfig:
    """SigLIP (Zhai et al. 2023) and SigLIP 2 (Tschannen et al. 2025): two towers trained with the sigmoid loss.

    The released architecture: a ViT with no class token, no pre-norm and a MAP head whose output is the embedding
    (no projection), and a bidirectional text transformer pooled at the last position with a linear head (with
    bias); LayerNorm eps 1e-6, tanh-GELU, a learnable logit scale (init log 10, not clamped) and bias (init −10).

    Attributes:
        embed_dim: The shared embedding dimension: the image tower's width (its MAP head has no projection).
        vision: The image tower.
        text: The text tower (defaults: SigLIP's 32k SentencePiece vocabulary, 64 tokens).
        tokenizer: The text processor's settings: ``{"kind": "sentencepiece", ...}`` (the fields of
            ``clipforge.text.sentencepiece.SentencePieceConfig``: SigLIP's tokenizer, or SigLIP 2's Gemma one with
            ``style: gemma``; the model file travels with the model directory) or ``{"kind": "bpe"}`` (OpenAI's
            byte-level BPE, for models trained from scratch without a SentencePiece vocabulary).
        act, norm_eps, init_logit_scale, init_logit_bias, mean, std, image_resize, scoring: As in ``CLIPConfig``;
            the defaults are SigLIP's (images squashed to the model's size, pixels scaled to [-1, 1], sigmoid scores).
        max_logit_scale: Clamp of the logit scale; ``None`` (SigLIP) leaves it unclamped.
    """

    embed_dim: int = 768
    vision: ViTConfig = field(default_factory=_siglip_vision)
    text: TextConfig = field(default_factory=_siglip_text)
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"kind": "sentencepiece", "style": "siglip"})
    act: Activation = "gelu_tanh"
    norm_eps: float = 1e-6
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float | None = -10.0
    max_logit_scale: float | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_resize: Literal["shorter_crop", "squash"] = "squash"
    scoring: Scoring = "sigmoid"
    family: Literal["siglip"] = "siglip"

    def __post_init__(self) -> None:
        check_positive("", embed_dim=self.embed_dim, norm_eps=self.norm_eps)
        if not self.vision.proj and self.embed_dim != self.vision.width:
            raise ConfigError(f"embed_dim={self.embed_dim} must equal vision.width={self.vision.width}: the image "
                              "tower has no projection (vision.proj=False)")
        kind = self.tokenizer.get("kind")
        if kind not in ("sentencepiece", "bpe"):
            raise ConfigError(f"tokenizer.kind: expected 'sentencepiece' or 'bpe', got {shorten(kind)}")


ModelConfig = CLIPConfig | CLIPPOConfig | SigLIPConfig


def model_config_from_dict(data: dict[str, Any], where: str = "model") -> ModelConfig:
    """Builds the config of the model family named by ``data['family']`` (default ``clip``)."""
    families: dict[str, type] = {"clip": CLIPConfig, "clippo": CLIPPOConfig, "siglip": SigLIPConfig}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {shorten(data)}")
    family = data.get("family", "clip")
    if not isinstance(family, str) or family not in families:
        raise ConfigError(f"{where}.family: expected one of {list(families)}, got {shorten(family)}")
    return from_dict(families[family], data, where)
