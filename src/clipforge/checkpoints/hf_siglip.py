"""Hugging Face ``transformers.SiglipModel`` directories ↔ clipforge SigLIP (SigLIP, and SigLIP 2 at fixed resolution).

HF splits the fused q/k/v projection of every block into ``q_proj``/``k_proj``/``v_proj``; its MAP head is a
``torch.nn.MultiheadAttention`` (one ``in_proj_weight`` holding q, k and v, where clipforge keeps ``q`` and a fused
``kv``); positions are embeddings; the text ``head`` is an ``nn.Linear`` (the transpose of our ``x @ proj``), and
``logit_scale``/``logit_bias`` have shape (1,) where ours are scalars.

The released ``config.json`` files spell out only what differs from transformers' defaults (``google/siglip-base-
patch16-224`` names almost nothing), so every field missing here takes ``SiglipTextConfig``'s /
``SiglipVisionConfig``'s default (``HF_TEXT``, ``HF_VISION``). The text tower pools at the last position of the
padded text, so HF's ``pad_token_id``/``eos_token_id`` play no part in the model; the export writes the tokenizer's.

The tokenizer: a SigLIP directory carries ``spiece.model`` (``SiglipTokenizer``), a fixed-resolution SigLIP 2 one
(``google/siglip2-base-patch16-224``: ``model_type`` ``siglip`` with Gemma's 256k vocabulary) ``tokenizer.model`` /
``tokenizer.json`` (``GemmaTokenizer``); ``tokenizer_config.json``'s ``tokenizer_class`` decides, else the files,
else the vocabulary size. The export writes the files ``AutoTokenizer``/``SiglipProcessor`` load offline.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from clipforge.checkpoints.hf import ACTS_FROM_HF, ACTS_TO_HF, _hf_ratio, hf_model_type, read_hf_weights
from clipforge.checkpoints.native import CheckpointError
from clipforge.config import ConfigError, from_dict, read_config_text, shorten
from clipforge.models.config import ModelConfig, SigLIPConfig
from clipforge.models.size import check_model_size

if TYPE_CHECKING:
    from clipforge.models.clip import CLIP
    from clipforge.models.clippo import CLIPPO

# transformers' defaults (models/siglip/configuration_siglip.py), which released configs leave out.
HF_TEXT: dict[str, Any] = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072,
                           "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 64,
                           "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
HF_VISION: dict[str, Any] = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                             "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
                             "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True}
TOKENIZER_STYLES = {"SiglipTokenizer": "siglip", "SiglipTokenizerFast": "siglip", "GemmaTokenizer": "gemma",
                    "GemmaTokenizerFast": "gemma"}
# The special tokens of each style's HF tokenizer (clipforge.text.sentencepiece: SIGLIP_TOKENS, GEMMA_TOKENS).
HF_SPECIAL_TOKENS = {"siglip": {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"},
                     "gemma": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                               "unk_token": "<unk>"}}
HF_TOKEN_IDS: dict[str, dict[str, int | None]] = {
    "siglip": {"pad_token_id": 1, "eos_token_id": 1, "bos_token_id": None},
    "gemma": {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}}
IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def is_hf_siglip_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory with an HF ``config.json`` of model type ``siglip``."""
    return hf_model_type(path) == "siglip"


def _tower(hf: dict[str, Any], key: str, defaults: dict[str, Any], source: str) -> dict[str, Any]:
    """One tower's HF config with transformers' defaults filled in (``null`` or absent: all defaults)."""
    tower = hf.get(key)
    if tower is None:
        tower = {}
    if not isinstance(tower, dict):
        raise CheckpointError(f"{source}: {key} must be an object, got {shorten(tower)}")
    return {**defaults, **tower}


def _square(value: Any, source: str, field: str) -> Any:
    """An image or patch size as one integer: HF also allows ``[h, w]``, clipforge needs squares."""
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        return value[0]
    if isinstance(value, list | tuple):
        raise CheckpointError(f"{source}: vision_config.{field}={shorten(value)}: clipforge's ViT needs a square "
                              "size (one integer, or two equal ones)")
    return value


def config_from_hf_siglip(hf: dict[str, Any], source: str = "config.json",
                          tokenizer: dict[str, Any] | None = None) -> SigLIPConfig:
    """A clipforge config from an HF ``SiglipConfig`` mapping (``config.json``).

    Args:
        hf: The parsed ``config.json``.
        source: Names the file in errors.
        tokenizer: The config's ``tokenizer`` settings (default: SigLIP's SentencePiece tokenizer).

    Raises:
        CheckpointError: A field clipforge cannot hold (no MAP head, towers whose epsilons or widths disagree, an
            unknown activation), naming the file and the field.
        ConfigError: A field of the wrong type or out of range.
    """
    t, v = _tower(hf, "text_config", HF_TEXT, source), _tower(hf, "vision_config", HF_VISION, source)
    try:
        if v["vision_use_head"] is not True:
            raise CheckpointError(f"{source}: vision_config.vision_use_head={shorten(v['vision_use_head'])}: "
                                  "clipforge's SigLIP pools with the MAP head (vision_use_head must be true)")
        if v["num_channels"] != 3:
            raise CheckpointError(f"{source}: vision_config.num_channels={shorten(v['num_channels'])}: clipforge "
                                  "reads RGB images (3 channels)")
        acts = {"text_config": t["hidden_act"], "vision_config": v["hidden_act"]}
        for where, act in acts.items():
            if not isinstance(act, str) or act not in ACTS_FROM_HF:
                raise CheckpointError(f"{source}: {where}.hidden_act={shorten(act)} is not supported; clipforge "
                                      f"needs one of {sorted(ACTS_FROM_HF)}")
        eps = (t["layer_norm_eps"], v["layer_norm_eps"])
        if eps[0] != eps[1]:
            raise CheckpointError(f"{source}: the towers' layer_norm_eps differ ({shorten(eps)}); clipforge uses one")
        projection = t.get("projection_size") if t.get("projection_size") is not None else t["hidden_size"]
        if projection != v["hidden_size"]:
            raise CheckpointError(f"{source}: text_config.projection_size={shorten(projection)} differs from "
                                  f"vision_config.hidden_size={shorten(v['hidden_size'])}: the image embedding "
                                  "(the MAP head's output, not projected) and the text embedding must have one size")
        text_act, vision_act = ACTS_FROM_HF[acts["text_config"]], ACTS_FROM_HF[acts["vision_config"]]
        data = {  # checked field by field by the config machinery, like any other outside config
            "embed_dim": projection, "act": text_act, "norm_eps": eps[0],
            "text": {"vocab_size": t["vocab_size"], "context_length": t["max_position_embeddings"],
                     "width": t["hidden_size"], "layers": t["num_hidden_layers"], "heads": t["num_attention_heads"],
                     "mlp_ratio": _hf_ratio(t, source, "text_config"), "causal": False, "pool": "last",
                     "proj_bias": True},
            "vision": {"kind": "vit", "image_size": _square(v["image_size"], source, "image_size"),
                       "patch_size": _square(v["patch_size"], source, "patch_size"), "width": v["hidden_size"],
                       "layers": v["num_hidden_layers"], "heads": v["num_attention_heads"],
                       "mlp_ratio": _hf_ratio(v, source, "vision_config"), "pool": "map", "class_token": False,
                       "ln_pre": False, "patch_bias": True, "proj": False,
                       "act": None if vision_act == text_act else vision_act},
            "tokenizer": tokenizer or {"kind": "sentencepiece", "style": "siglip"},
        }
    except TypeError as e:  # an unhashable or uncomparable field value
        raise CheckpointError(f"{source}: a field of the wrong type ({e})") from None
    try:
        return from_dict(SigLIPConfig, data, "config")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def hf_siglip_config(config: ModelConfig, style: str = "siglip") -> dict[str, Any]:
    """The ``config.json`` that makes ``transformers.SiglipModel`` build this model.

    Args:
        config: A clipforge SigLIP config.
        style: The tokenizer's style (``siglip`` or ``gemma``), whose pad/eos/bos ids the text config records.

    Raises:
        CheckpointError: The model is not one ``SiglipModel`` can hold, naming what differs.
    """
    if not isinstance(config, SigLIPConfig):
        raise CheckpointError(f"HF transformers' SiglipModel holds SigLIP models only, not {config.family!r}")
    v, t = config.vision, config.text
    if v.pool != "map" or v.class_token or v.ln_pre or not v.patch_bias or v.proj or v.stem != "patch":
        raise CheckpointError("HF's SiglipVisionModel is a patch-stem ViT with a MAP head, patch bias, no class "
                              f"token, no ln_pre and no projection; this one has pool={v.pool!r}, "
                              f"class_token={v.class_token}, ln_pre={v.ln_pre}, patch_bias={v.patch_bias}, "
                              f"proj={v.proj}, stem={v.stem!r}")
    if getattr(v, "naflex", False):
        raise CheckpointError("a NaFlex image tower is HF's Siglip2Model (clipforge.checkpoints.hf_siglip2), not "
                              "SiglipModel")
    if t.causal or t.pool != "last" or not t.proj_bias:
        raise CheckpointError("HF's SiglipTextModel is bidirectional, pooled at the last position, with a biased "
                              f"head; this one has causal={t.causal}, pool={t.pool!r}, proj_bias={t.proj_bias}")
    if config.init_logit_bias is None:
        raise CheckpointError("HF's SiglipModel has a logit bias; this model has none (init_logit_bias is null)")
    common = {"layer_norm_eps": config.norm_eps, "attention_dropout": 0.0}
    text = {**common, "model_type": "siglip_text_model", "vocab_size": t.vocab_size,
            "max_position_embeddings": t.context_length, "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio), "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads, "hidden_act": ACTS_TO_HF[t.act or config.act],
            "projection_size": config.embed_dim, **HF_TOKEN_IDS[style]}
    vision = {**common, "model_type": "siglip_vision_model", "image_size": v.image_size, "patch_size": v.patch_size,
              "num_channels": 3, "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio),
              "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
              "hidden_act": ACTS_TO_HF[v.act or config.act], "vision_use_head": True}
    return {"architectures": ["SiglipModel"], "model_type": "siglip", "initializer_factor": 1.0, "dtype": "float32",
            "text_config": text, "vision_config": vision}


def _pairs(config: SigLIPConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(one-to-one name pairs ``(hf, clipforge)``, fused block-attention pairs ``(hf prefix, clipforge prefix)``)."""
    from clipforge.checkpoints.hf import _block_pairs

    head, pool = "vision_model.head.", "visual.attn_pool."
    pairs = [("vision_model.embeddings.patch_embedding.weight", "visual.patch_embed.weight"),
             ("vision_model.embeddings.patch_embedding.bias", "visual.patch_embed.bias"),
             ("vision_model.embeddings.position_embedding.weight", "visual.pos_embed"),
             ("text_model.embeddings.token_embedding.weight", "text.token_embed.weight"),
             ("text_model.embeddings.position_embedding.weight", "text.pos_embed"),
             ("text_model.head.bias", "text.proj_bias"),
             (head + "probe", pool + "probe")]
    for hf_name, ours in (("vision_model.post_layernorm", "visual.ln_post"), ("text_model.final_layer_norm",
                          "text.ln_final"), (head + "attention.out_proj", pool + "out_proj"),
                          (head + "layernorm", pool + "norm"), (head + "mlp.fc1", pool + "mlp.fc"),
                          (head + "mlp.fc2", pool + "mlp.proj")):
        pairs += [(f"{hf_name}.{p}", f"{ours}.{p}") for p in ("weight", "bias")]
    attention = []
    for tower, ours, layers in (("vision_model", "visual", config.vision.layers), ("text_model", "text",
                                                                                    config.text.layers)):
        for i in range(layers):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{ours}.transformer.blocks.{i}."
            pairs += _block_pairs(src, dst)
            attention.append((src + "self_attn.", dst + "attn.qkv."))
    return pairs, attention


def to_hf_siglip_state_dict(state: dict[str, torch.Tensor], config: SigLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge's state dict → HF ``SiglipModel`` tensors (works on meta tensors too: the reader's shape check)."""
    pairs, attention = _pairs(config)
    out = {src: state[dst] for src, dst in pairs}
    for src, dst in attention:
        for p in ("weight", "bias"):
            for n, chunk in zip("qkv", state[dst + p].chunk(3)):
                out[f"{src}{n}_proj.{p}"] = chunk
    for p in ("weight", "bias"):
        out[f"vision_model.head.attention.in_proj_{p}"] = torch.cat([state[f"visual.attn_pool.q.{p}"],
                                                                     state[f"visual.attn_pool.kv.{p}"]])
    out["text_model.head.weight"] = state["text.proj"].T
    out["logit_scale"] = state["logit_scale"].reshape(1)
    out["logit_bias"] = state["logit_bias"].reshape(1)
    return out


def _expected_shapes(config: SigLIPConfig) -> dict[str, tuple[int, ...]]:
    """HF names → shapes of the model ``config`` describes (built on the meta device: nothing is allocated)."""
    from clipforge.models.factory import build_model

    with torch.device("meta"):
        model = build_model(config)
    return {k: tuple(v.shape) for k, v in to_hf_siglip_state_dict(model.state_dict(), config).items()}


def from_hf_siglip_state_dict(state: dict[str, torch.Tensor], config: SigLIPConfig,
                              source: str = "<HF state dict>") -> dict[str, torch.Tensor]:
    """HF ``SiglipModel`` tensors → clipforge's state dict for ``config``.

    Every HF tensor is checked against the shape ``config`` implies first, so a missing, unexpected or misshapen
    tensor is an error naming its HF key and ``source``.
    """
    expected = _expected_shapes(config)
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}" + _more(missing))
    extra = sorted(k for k in state if k not in expected and k not in IGNORED_KEYS)
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r}" + _more(extra))
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{source}: {key!r} has shape {tuple(state[key].shape)}, config.json implies "
                                  f"{shape}")
    pairs, attention = _pairs(config)
    out = {dst: state[src] for src, dst in pairs}
    for src, dst in attention:
        for p in ("weight", "bias"):
            out[dst + p] = torch.cat([state[f"{src}{n}_proj.{p}"] for n in "qkv"])
    width = config.vision.width
    for p in ("weight", "bias"):
        fused = state[f"vision_model.head.attention.in_proj_{p}"]
        out[f"visual.attn_pool.q.{p}"], out[f"visual.attn_pool.kv.{p}"] = fused[:width], fused[width:]
    out["text.proj"] = state["text_model.head.weight"].T
    out["logit_scale"] = state["logit_scale"].reshape(())
    out["logit_bias"] = state["logit_bias"].reshape(())
    return out


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def _json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content, ``None`` when the file is absent; a damaged one is an error naming it."""
    if not path.is_file():
        return None
    try:
        data = json.loads(read_config_text(path))
    except (ValueError, RecursionError) as e:  # ConfigError (too large, not UTF-8) is a ValueError
        raise CheckpointError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def tokenizer_settings(directory: str | Path, vocab_size: int) -> dict[str, Any]:
    """The clipforge ``tokenizer`` settings for an HF directory's tokenizer files.

    ``tokenizer_config.json``'s ``tokenizer_class`` decides (``SiglipTokenizer`` → ``style: siglip``, with its
    ``do_lower_case``; ``GemmaTokenizer`` → ``style: gemma``); without one, ``spiece.model`` means SigLIP's and
    ``tokenizer.model``/``tokenizer.json`` Gemma's; with no tokenizer files, a vocabulary of 256,000 or more is
    Gemma's.

    Raises:
        CheckpointError: ``tokenizer_config.json`` is damaged or names a tokenizer clipforge does not have.
    """
    directory = Path(directory)
    settings = _json_object(directory / "tokenizer_config.json") or {}
    name = settings.get("tokenizer_class")
    if name is not None and (not isinstance(name, str) or name not in TOKENIZER_STYLES):
        raise CheckpointError(f"{directory / 'tokenizer_config.json'}: tokenizer_class {shorten(name)} is not one "
                              f"clipforge has; it reads {', '.join(TOKENIZER_STYLES)}")
    if name is not None:
        style = TOKENIZER_STYLES[name]
    elif (directory / "spiece.model").is_file():
        style = "siglip"
    elif (directory / "tokenizer.model").is_file() or (directory / "tokenizer.json").is_file():
        style = "gemma"
    else:
        style = "gemma" if vocab_size >= 256000 else "siglip"
    out: dict[str, Any] = {"kind": "sentencepiece", "style": style}
    lower = settings.get("do_lower_case")
    if style == "siglip" and lower is not None:
        if not isinstance(lower, bool):
            raise CheckpointError(f"{directory / 'tokenizer_config.json'}: do_lower_case must be true or false, "
                                  f"got {shorten(lower)}")
        if not lower:
            out["lower"] = False
    return out


def load_hf_siglip(directory: str | Path, allow_pickle: bool = False) -> tuple[SigLIPConfig, dict[str, torch.Tensor]]:
    """Reads an HF ``SiglipModel`` directory into (config, clipforge state dict)."""
    directory = Path(directory)
    if not is_hf_siglip_dir(directory):
        raise CheckpointError(f"{directory}: not an HF SigLIP directory (needs config.json with model_type "
                              "'siglip')")
    source = str(directory / "config.json")
    hf = json.loads(read_config_text(directory / "config.json"))  # hf_model_type parsed it already
    vocab = _tower(hf, "text_config", HF_TEXT, source)["vocab_size"]
    tokenizer = tokenizer_settings(directory, vocab if isinstance(vocab, int) else 0)
    config = config_from_hf_siglip(hf, source, tokenizer)
    check_model_size(config, where=source)  # before reading weights or renaming keys
    state = read_hf_weights(directory, allow_pickle)
    return config, from_hf_siglip_state_dict(state, config, str(directory))


def save_hf_siglip(model: CLIP | CLIPPO, directory: str | Path, text_processor: Any = None) -> Path:
    """Writes a directory that ``transformers.SiglipModel.from_pretrained`` (and ``AutoProcessor``) loads.

    ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` (``SiglipImageProcessor``: the model's
    size, mean and std, bicubic); with a SentencePiece ``text_processor`` of the model's vocabulary size also its
    model file (``spiece.model`` / ``tokenizer.model``, with a ``tokenizer.json`` found beside it),
    ``tokenizer_config.json`` and ``special_tokens_map.json``. HF does not clamp the logit scale: a model whose
    ``max_logit_scale`` is set is written with the scale it uses (clamped).

    Args:
        model: A clipforge SigLIP model.
        directory: Created if needed.
        text_processor: The model's tokenizer (``clipforge.text.sentencepiece.SentencePieceTokenizer``); another
            kind (OpenAI's BPE) is not written, since ``SiglipProcessor`` has no tokenizer for it.
    """
    hf_siglip_config(model.config)  # refuses what SiglipModel cannot hold, before anything else
    config = cast(SigLIPConfig, model.config)
    style = _style(text_processor, config)
    ids_style = style or config.tokenizer.get("style")  # without tokenizer files, the ids the config's style has
    hf = hf_siglip_config(config, ids_style if ids_style in HF_TOKEN_IDS else "siglip")
    return write_hf_directory(directory, model, config, to_hf_siglip_state_dict, hf, image_processor_config(config),
                              text_processor, style)


def write_hf_directory(directory: str | Path, model: torch.nn.Module, config: SigLIPConfig,
                       to_hf: Callable[[dict[str, torch.Tensor], SigLIPConfig], dict[str, torch.Tensor]],
                       hf: dict[str, Any], preprocessor: dict[str, Any], text_processor: Any, style: str | None
                       ) -> Path:
    """Writes an HF SigLIP-family directory: the weights renamed by ``to_hf`` (the logit scale clamped as the model
    uses it), ``config.json``, ``preprocessor_config.json`` and, for a SentencePiece ``style``, the tokenizer files."""
    from safetensors.torch import save_file

    state = dict(model.state_dict())
    if config.max_logit_scale is not None:
        state["logit_scale"] = state["logit_scale"].clamp(max=config.max_logit_scale)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in to_hf(state, config).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    _write_json(directory / "config.json", hf)
    _write_json(directory / "preprocessor_config.json", preprocessor)
    if style is not None:
        _write_tokenizer(directory, text_processor, style, config.text.context_length)
    return directory


def _style(text_processor: Any, config: SigLIPConfig) -> str | None:
    """The SentencePiece style of ``text_processor`` when its files should be written, else ``None``."""
    style = getattr(getattr(text_processor, "config", None), "style", None)
    model_path = getattr(text_processor, "model_path", None)
    if style not in HF_SPECIAL_TOKENS or not isinstance(model_path, Path) or not model_path.is_file():
        return None
    return style if getattr(text_processor, "vocab_size", None) == config.text.vocab_size else None


def image_processor_config(config: SigLIPConfig) -> dict[str, Any]:
    """``preprocessor_config.json`` for ``SiglipImageProcessor``: clipforge's eval transform of this model."""
    size = config.vision.image_size
    out: dict[str, Any] = {"image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
                           "do_convert_rgb": True, "do_resize": True, "size": {"height": size, "width": size},
                           "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                           "image_mean": list(config.mean), "image_std": list(config.std)}
    if config.image_resize == "shorter_crop":
        out.update(size={"shortest_edge": size}, do_center_crop=True, crop_size={"height": size, "width": size})
    return out


def _write_tokenizer(directory: Path, processor: Any, style: str, context_length: int) -> None:
    """The SentencePiece model file under HF's name, and the JSON files that configure HF's tokenizer."""
    model_file = directory / ("spiece.model" if style == "siglip" else "tokenizer.model")
    source = Path(processor.model_path)
    if not (model_file.exists() and model_file.samefile(source)):
        shutil.copyfile(source, model_file)
    fast = source.parent / "tokenizer.json"
    if style == "gemma" and fast.is_file() and not (directory / "tokenizer.json").exists():
        shutil.copyfile(fast, directory / "tokenizer.json")
    tokens = dict(HF_SPECIAL_TOKENS[style])
    settings: dict[str, Any] = {"tokenizer_class": "SiglipTokenizer" if style == "siglip" else "GemmaTokenizer",
                                "processor_class": "SiglipProcessor", "model_max_length": context_length,
                                "model_input_names": ["input_ids"], **tokens}
    if style == "siglip":
        settings.update(do_lower_case=bool(processor.config.lower), sp_model_kwargs={},
                        clean_up_tokenization_spaces=True)
    else:  # as google/siglip2-* configure GemmaTokenizer: no <bos>, <eos> appended, padded on the right
        settings.update(add_bos_token=False, add_eos_token=True, padding_side="right")
    _write_json(directory / "tokenizer_config.json", settings)
    _write_json(directory / "special_tokens_map.json", tokens)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


__all__ = ["config_from_hf_siglip", "from_hf_siglip_state_dict", "hf_siglip_config", "image_processor_config",
           "is_hf_siglip_dir", "load_hf_siglip", "save_hf_siglip", "to_hf_siglip_state_dict", "tokenizer_settings"]
