"""clipforge as a drop-in for OpenCLIP: one OpenCLIP-style script run with ``import open_clip`` and with
``import clipforge as open_clip`` on the same cached checkpoint gives the same numbers (1e-5, fp32).

The default run registers a tiny OpenCLIP model and pretrained tags in both libraries (OpenCLIP's tables, and
clipforge's registry and alias table, the registry entry made by the generator of ``pretrained.json``), with random
weights written by open_clip itself into a hub cache in huggingface_hub's layout; ``-m slow`` runs the real
``ViT-B-32`` entries (random ViT-B-32 weights saved at the registry's repository and file). The network is off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("huggingface_hub")

import clipforge  # noqa: E402
from clipforge.checkpoints import hub, load_any  # noqa: E402
from clipforge.cli.eval import load_eval_model  # noqa: E402
from clipforge.config import ConfigError  # noqa: E402
from helpers import pretrained_registry  # noqa: E402
from helpers.hub_cache import add_directory, add_to_cache, offline_hub, randomise, save_open_clip_repo  # noqa: E402
from helpers.images import noise  # noqa: E402

TOL = 1e-5
TEXTS = ["a diagram", "a dog", "a cat", "two dogs playing in the snow near a red house"]
NAME, REPO = "tiny-test-ViT", "test-org/tiny-open-clip"
TINY_CFG = {"embed_dim": 64,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 2, "head_width": 32},
            "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
# The same model as clipforge data: a preset and the fields in which the OpenCLIP config differs.
TINY_ALIAS = {"preset": "tiny-vit", "overrides": {
    "embed_dim": 64, "vision": {"image_size": 32, "width": 96, "layers": 2, "heads": 3},
    "text": {"context_length": 24, "width": 64, "heads": 2, "layers": 2}}}
# Tags of the tiny model as OpenCLIP's table would hold them (``_pcfg`` / ``_slpcfg`` defaults and overrides).
TAGS = {"synthetic": {}, "synthetic_qg": {"quick_gelu": True},
        "synthetic_squash": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "resize_mode": "squash"}}


def openclip_style_script(lib: Any, name: str, pretrained: str | None, image: Any) -> dict[str, torch.Tensor]:
    """OpenCLIP's README example, verbatim but for the module it is given."""
    model, _, preprocess = lib.create_model_and_transforms(name, pretrained=pretrained)
    model.eval()
    tokenizer = lib.get_tokenizer(name)
    pixels = preprocess(image).unsqueeze(0)
    text = tokenizer(TEXTS)
    with torch.no_grad():
        image_features = model.encode_image(pixels)
        text_features = model.encode_text(text)
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        text_probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
    return {"pixels": pixels, "tokens": text, "image": image_features, "text": text_features, "probs": text_probs,
            "logits": logits}


def assert_same(reference: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> None:
    assert torch.equal(reference["tokens"], ours["tokens"])
    for key in ("pixels", "image", "text", "probs", "logits"):
        assert reference[key].shape == ours[key].shape, key
        assert (reference[key] - ours[key]).abs().max() <= TOL, key


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """OpenCLIP-published repositories of the tiny model: GELU weights and QuickGELU-trained ones."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for key, quick_gelu in (("gelu", False), ("quick_gelu", True)):
        torch.manual_seed(0)
        model = randomise(open_clip.model.CLIP(**TINY_CFG, quick_gelu=quick_gelu), seed=3 if quick_gelu else 0)
        out[key] = save_open_clip_repo(model, {**TINY_CFG, "quick_gelu": quick_gelu}, root / key)
    return out


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_weights: dict[str, Path]) -> Path:
    """The tiny model and its tags registered in OpenCLIP and clipforge alike; returns the offline hub cache."""
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    registry, aliases = dict(hub.pretrained_registry()), dict(hub.open_clip_aliases())
    for name, quick in ((NAME, False), (NAME + "-quickgelu", True)):
        monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, {**TINY_CFG, "quick_gelu": quick})
        tags = {tag: kw for tag, kw in TAGS.items() if not quick or kw.get("quick_gelu")}
        monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {
            tag: open_clip.pretrained._pcfg(hf_hub=f"{REPO}-{tag}/", **kw) for tag, kw in tags.items()})
        registry[name] = {tag: pretrained_registry.entry(name, tag) for tag in tags}  # the generator's own entries
        aliases[name] = {**TINY_ALIAS, "overrides": {**TINY_ALIAS["overrides"], "act": "quick_gelu" if quick
                                                     else "gelu"}}
    monkeypatch.setattr(hub, "pretrained_registry", lambda: registry)
    monkeypatch.setattr(hub, "open_clip_aliases", lambda: aliases)
    for tag, kw in TAGS.items():
        add_directory(cache, f"{REPO}-{tag}", tiny_weights["quick_gelu" if kw.get("quick_gelu") else "gelu"])
    add_directory(cache, REPO, tiny_weights["gelu"])
    return cache


@pytest.mark.parametrize(("name", "reference_name", "pretrained"), [
    (NAME, NAME, "synthetic"),
    (NAME, NAME, "synthetic_squash"),
    # clipforge reads QuickGELU from the registry for any spelling of the name; OpenCLIP needs its -quickgelu name.
    (NAME, NAME + "-quickgelu", "synthetic_qg"),
    (NAME + "-quickgelu", NAME + "-quickgelu", "synthetic_qg"),
    (f"hf-hub:{REPO}", f"hf-hub:{REPO}", None),
])
def test_an_openclip_script_gives_the_same_numbers_with_clipforge(tiny: Path, name: str, reference_name: str,
                                                                  pretrained: str | None) -> None:
    image = noise(53, 41, seed=2)  # not square: the resize and crop (or squash) matter
    reference = openclip_style_script(open_clip, reference_name, pretrained, image)
    ours = openclip_style_script(clipforge, name, pretrained, image)
    assert_same(reference, ours)


def test_tags_carry_the_facts_the_weights_do_not_record(tiny: Path) -> None:
    plain = clipforge.create_model(NAME, pretrained="synthetic")
    assert plain.config.act == "gelu" and plain.config.vision.heads == 3
    assert clipforge.create_model(NAME, pretrained="synthetic_qg").config.act == "quick_gelu"
    squash = clipforge.create_model(NAME, pretrained="Synthetic-Squash")  # OpenCLIP's tag normalisation
    assert squash.config.mean == (0.5, 0.5, 0.5) and squash.config.image_resize == "squash"
    model, eval_tf, tokenizer = clipforge.load(f"{NAME}:synthetic")  # open_clip.list_pretrained(as_str=True)
    assert model.config == plain.config and eval_tf.size == 32 and tokenizer(["a"]).shape == (1, 24)


def test_a_tag_builds_its_names_architecture_when_the_reader_would_guess(tiny: Path, tiny_weights: dict[str, Path]
                                                                        ) -> None:
    """Weights cached without ``open_clip_config.json``: the reader guesses one 96-wide head (see test_hub); the
    name's config has three, and the numbers are OpenCLIP's."""
    cache = tiny
    snapshot = add_to_cache(cache, f"{REPO}-synthetic", {
        "open_clip_model.safetensors": tiny_weights["gelu"] / "open_clip_model.safetensors"}, revision="main")
    with pytest.warns(UserWarning, match="activation"):
        assert load_any(snapshot).config.vision.heads == 1  # what the reader alone makes of these files
    assert clipforge.create_model(NAME, pretrained="synthetic").config.vision.heads == 3
    image = noise(40, 40, seed=5)
    assert_same(openclip_style_script(open_clip, NAME, "synthetic", image),
                openclip_style_script(clipforge, NAME, "synthetic", image))


def test_pretrained_may_be_a_weights_file_or_directory(tiny: Path, tiny_weights: dict[str, Path]) -> None:
    """As in OpenCLIP, ``pretrained`` may name local weights; the name still decides the architecture."""
    reference = clipforge.create_model(NAME, pretrained="synthetic")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for source in (tiny_weights["gelu"] / "open_clip_model.safetensors", tiny_weights["gelu"]):
        model = clipforge.load(NAME, pretrained=str(source))[0]
        assert model.config.vision.heads == 3 and model.config.act == "gelu"
        with torch.no_grad():
            assert torch.equal(model.encode_image(images), reference.encode_image(images))


def test_get_tokenizer_matches_open_clips(tiny: Path) -> None:
    for name in ("ViT-B-32", "ViT-L-14-336", "RN50", NAME, f"hf-hub:{REPO}"):
        assert torch.equal(clipforge.get_tokenizer(name)(TEXTS), open_clip.get_tokenizer(name)(TEXTS)), name
    assert clipforge.get_tokenizer("ViT-B-32", context_length=16)(TEXTS).shape == (4, 16)
    assert clipforge.get_tokenizer(NAME, pretrained="synthetic")(TEXTS).shape == (4, 24)


def test_open_clip_names_build_what_open_clip_builds() -> None:
    """The activation follows OpenCLIP's name, not clipforge's preset of the same shape (where a name is both, as
    RN50 is, clipforge's preset wins: OpenAI's QuickGELU ResNet)."""
    for name, act in (("ViT-B-32", "gelu"), ("ViT-B-32-quickgelu", "quick_gelu"), ("ViT-L-14", "gelu"),
                      ("ViT-L-14-quickgelu", "quick_gelu"), ("RN50", "quick_gelu"), ("ViT-H-14", "gelu"),
                      ("ViT-H-14-quickgelu", "quick_gelu")):
        assert hub.build_named_config(name).act == act, name
    assert hub.build_named_config("ViT-B/32").act == "quick_gelu"  # OpenAI's, as before
    small = {"vision": {"layers": 1}, "text": {"layers": 1}}  # overrides apply after the alias's own
    model, _, eval_tf = clipforge.create_model_and_transforms("ViT-L-14-336", device="meta", **small)
    assert model.config.vision.image_size == 336 and eval_tf.size == 336 and model.config.act == "gelu"
    assert model.config.vision.layers == 1


def test_name_and_tag_mistakes_are_one_clear_error(tiny: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown pretrained tag 'laion2b_s34b_b78k'.*did you mean laion2b_s34b_b"):
        clipforge.create_model("ViT-B-32", pretrained="laion2b_s34b_b78k")
    with pytest.raises(ConfigError, match=r"known tags: .*openai"):
        clipforge.load("ViT-B-32", pretrained="nope")
    with pytest.raises(ConfigError, match=r"unknown model 'ViT-B-33'; did you mean ViT-B-32"):
        clipforge.create_model("ViT-B-33")
    with pytest.raises(ConfigError, match="architecture clipforge does not build"):
        clipforge.create_model("convnext_base", pretrained="laion400m_s13b_b51k")
    with pytest.raises(ConfigError, match="no released weights"):
        clipforge.load("tiny-vit", pretrained="openai")
    with pytest.raises(ConfigError, match="is a model name, not a checkpoint: pass pretrained="):
        clipforge.load("ViT-B-32")
    with pytest.raises(ConfigError, match="overrides"):
        clipforge.create_model(NAME, pretrained="synthetic", embed_dim=32)


def test_the_cli_resolves_the_same_names(tiny: Path) -> None:
    from clipforge.cli.main import build_parser

    reference = clipforge.load(NAME, pretrained="synthetic")[0]
    for spec, tag in ((NAME, "synthetic"), (f"{NAME}:synthetic", None), (f"hf-hub:{REPO}", None)):
        model, name, pretrained = load_eval_model(spec, "cpu", pretrained=tag)
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.allclose(model.model.encode_image(images), reference.encode_image(images), atol=TOL)
        assert pretrained == (tag or spec if spec.startswith("hf-hub:") else "synthetic") and name
    args = build_parser().parse_args(["eval", "zeroshot", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k",
                                      "--data", "x"])
    assert args.pretrained == "laion2b_s34b_b79k"
    _, name, pretrained = load_eval_model(NAME, "cpu")  # a name without a tag: random weights, as for presets
    assert (name, pretrained) == (NAME, "random")
    args = build_parser().parse_args(["classify", "x.png", "--labels", "a,b", "--model", NAME, "--pretrained",
                                      "synthetic"])
    assert args.pretrained == "synthetic"


@pytest.fixture(scope="module")
def vit_b_32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OpenCLIP's own random ViT-B-32, saved as OpenCLIP publishes it."""
    model = randomise(open_clip.create_model("ViT-B-32"))
    return save_open_clip_repo(model, open_clip.get_model_config("ViT-B-32"), tmp_path_factory.mktemp("b32") / "r")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "reference_name", "tag"), [
    ("ViT-B-32", "ViT-B-32", "laion2b_s34b_b79k"),
    ("ViT-B/32-gelu", "ViT-B-32", "laion2b_s34b_b79k"),
    ("ViT-B-32", "ViT-B-32-quickgelu", "openai"),  # OpenCLIP warns and builds GELU under the plain name
])
def test_real_registry_entries_give_open_clips_numbers(name: str, reference_name: str, tag: str,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       vit_b_32: Path) -> None:
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    _, entry = hub.pretrained_entry(name, tag)
    assert entry["files"][0] == "open_clip_model.safetensors"
    add_directory(cache, entry["repo"], vit_b_32)
    image = noise(300, 240, seed=1)
    assert_same(openclip_style_script(open_clip, reference_name, tag, image),
                openclip_style_script(clipforge, name, tag, image))


@pytest.mark.slow
def test_real_hf_hub_repository_gives_open_clips_numbers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         vit_b_32: Path) -> None:
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    add_directory(cache, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", vit_b_32)
    name = "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    image = noise(300, 240, seed=1)
    assert_same(openclip_style_script(open_clip, name, None, image),
                openclip_style_script(clipforge, name, None, image))


def test_classify_takes_pretrained(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from clipforge.cli.main import main

    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(photo)
    assert main(["classify", str(photo), "--labels", "a,b", "--model", NAME, "--pretrained", "synthetic",
                 "--device", "cpu"]) == 0
    with_tag = capsys.readouterr().out
    assert main(["classify", str(photo), "--labels", "a,b", "--model", f"{NAME}:synthetic", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == with_tag and "%" in with_tag
