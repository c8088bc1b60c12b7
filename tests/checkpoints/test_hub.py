"""``hf-hub:`` names and the hub cache: what is chosen, fetched and read, offline and online, and the errors.

Every test runs with the network off (``HF_HUB_OFFLINE=1``, patched where huggingface_hub reads it) against a cache
in huggingface_hub's own layout (``tests/helpers/hub_cache.py``), filled with random weights written by open_clip
and transformers themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
huggingface_hub = pytest.importorskip("huggingface_hub")

import clipforge  # noqa: E402
from clipforge.checkpoints import CheckpointError, load_any  # noqa: E402
from clipforge.checkpoints.hub import TEXT_FILES, choose_files, hub_snapshot, parse_hub_name  # noqa: E402
from clipforge.config import ConfigError  # noqa: E402
from helpers.hub_cache import add_directory, add_to_cache, offline_hub, randomise, save_open_clip_repo  # noqa: E402

TOL = 1e-5
CAPTIONS = ["a photo of a cat", "a diagram", "two dogs playing in the snow near a red house"]
# A tiny OpenCLIP CLIP (GELU) that no clipforge preset matches: three 32-wide heads a reader cannot guess.
TINY_CFG = {"embed_dim": 64,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 2, "head_width": 32},
            "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
REPO = "test-org/tiny-open-clip"


def tiny_open_clip(seed: int = 0) -> Any:
    """OpenCLIP's own model for ``TINY_CFG`` with every tensor randomised."""
    torch.manual_seed(seed)
    return randomise(open_clip.model.CLIP(**TINY_CFG), seed)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory as OpenCLIP publishes a model: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    return save_open_clip_repo(tiny_open_clip(), TINY_CFG, tmp_path_factory.mktemp("oc") / "repo")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return offline_hub(monkeypatch, tmp_path / "hf")


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return images, open_clip.tokenize(CAPTIONS, context_length=24)


def assert_parity(reference: Any, model: torch.nn.Module) -> None:
    images, tokens = inputs()
    with torch.no_grad():
        assert (model.encode_image(images) - reference.encode_image(images)).abs().max() <= TOL
        assert (model.encode_text(tokens) - reference.encode_text(tokens)).abs().max() <= TOL


def test_the_cache_helper_writes_huggingface_hubs_own_layout(hub: Path, tiny_repo: Path) -> None:
    snapshot = add_directory(hub, REPO, tiny_repo)
    info = huggingface_hub.scan_cache_dir(hub)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO and repo.repo_type == "model" and repo.nb_files == 2
    (revision,) = repo.revisions
    assert revision.refs == frozenset({"main"}) and revision.commit_hash == snapshot.name
    # huggingface_hub's own readers serve it offline.
    path = huggingface_hub.hf_hub_download(REPO, "open_clip_config.json")
    assert Path(path).read_bytes() == (tiny_repo / "open_clip_config.json").read_bytes()
    assert Path(huggingface_hub.snapshot_download(REPO)) == snapshot


def test_hf_hub_name_loads_an_open_clip_repo_with_parity(hub: Path, tiny_repo: Path) -> None:
    add_directory(hub, REPO, tiny_repo)
    model, eval_tf, tokenizer = clipforge.load(f"hf-hub:{REPO}")
    assert model.config.act == "gelu" and model.config.vision.heads == 3
    assert eval_tf.size == 32 and tokenizer(CAPTIONS).shape == (3, 24)
    assert_parity(tiny_open_clip(), model)


def test_revision_selects_the_commit(hub: Path, tmp_path: Path, tiny_repo: Path) -> None:
    """``@branch``, ``@tag`` and ``@commit`` each read their own snapshot; no revision reads ``main``."""
    other = save_open_clip_repo(tiny_open_clip(seed=7), TINY_CFG, tmp_path / "v1")
    main = add_directory(hub, REPO, tiny_repo)
    v1 = add_directory(hub, REPO, other, revision="v1")
    assert main != v1
    assert_parity(tiny_open_clip(), clipforge.load(f"hf-hub:{REPO}")[0])
    assert_parity(tiny_open_clip(seed=7), clipforge.load(f"hf-hub:{REPO}@v1")[0])
    assert_parity(tiny_open_clip(seed=7), clipforge.load(f"hf-hub:{REPO}@{v1.name}")[0])
    assert_parity(tiny_open_clip(), clipforge.load(f"hf-hub:{REPO}@main")[0])
    with pytest.raises(CheckpointError, match="v2"):
        clipforge.load(f"hf-hub:{REPO}@v2")


def test_hf_hub_name_loads_a_transformers_clip_repo(hub: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 49408, "max_position_embeddings": 24, "hidden_size": 64, "intermediate_size": 256,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_act": "gelu", "eos_token_id": 49407,
                     "bos_token_id": 49406},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 96, "intermediate_size": 384,
                       "num_hidden_layers": 2, "num_attention_heads": 3, "hidden_act": "gelu"}, projection_dim=64)
    reference = randomise(transformers.CLIPModel(config))
    reference.save_pretrained(tmp_path / "hf")
    add_directory(hub, "test-org/tiny-hf-clip", tmp_path / "hf")
    model, _, tokenizer = clipforge.load("hf-hub:test-org/tiny-hf-clip")
    images, tokens = inputs()
    assert torch.equal(tokenizer(CAPTIONS), tokens)

    def features(output: Any) -> torch.Tensor:  # a tensor in transformers 4, an output object in 5
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    with torch.no_grad():
        assert (model.encode_image(images) - features(reference.get_image_features(pixel_values=images))
                ).abs().max() <= TOL
        assert (model.encode_text(tokens) - features(reference.get_text_features(input_ids=tokens))).abs().max() <= TOL


def test_uncached_name_offline_is_one_error_naming_the_repo_and_the_fetch(hub: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        clipforge.load("hf-hub:some-org/not-cached")
    message = str(e.value)
    assert "some-org/not-cached" in message and "HF_HUB_OFFLINE" in message and "hf download some-org/not-cached" in \
        message and str(hub) in message
    assert "\n" not in message
    with pytest.raises(CheckpointError) as e:
        clipforge.load("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(e.value)
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_model.safetensors" in str(e.value)


def test_a_cache_without_usable_weights_is_reported_as_not_cached(hub: Path) -> None:
    add_to_cache(hub, REPO, {"README.md": "# nothing here", "config.json": "{}"})
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        clipforge.load(f"hf-hub:{REPO}")


def test_pickled_weights_need_allow_pickle(hub: Path, tmp_path: Path) -> None:
    directory = save_open_clip_repo(tiny_open_clip(), TINY_CFG, tmp_path / "bin", safetensors=False, pickle=True)
    add_directory(hub, REPO, directory)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        clipforge.load(f"hf-hub:{REPO}")
    assert_parity(tiny_open_clip(), clipforge.load(f"hf-hub:{REPO}", allow_pickle=True)[0])


@pytest.mark.parametrize("name", ["hf-hub:", "hf-hub:no-slash", "hf-hub:a/b/c", "hf-hub:org/repo@", "hf-hub:a--b/c"])
def test_malformed_hub_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match="hf-hub:ORG/REPO"):
        parse_hub_name(name)


def test_hub_name_parsing() -> None:
    assert parse_hub_name("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K") == ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                                                                                None)
    assert parse_hub_name("hf-hub:timm/ViT-B-16-SigLIP@refs/pr/1") == ("timm/ViT-B-16-SigLIP", "refs/pr/1")


LAION_LISTING = {".gitattributes", "README.md", "config.json", "model.safetensors", "pytorch_model.bin",
                 "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "preprocessor_config.json"}


def test_choice_of_files_takes_only_what_one_format_needs() -> None:
    text = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
            "preprocessor_config.json"]
    # A repository with both OpenCLIP's and transformers' files (laion's): OpenCLIP's, never both weights.
    assert choose_files("x", LAION_LISTING) == ["open_clip_model.safetensors", "open_clip_config.json", *text]
    # transformers only (google/siglip-*): its config, weights and tokenizer.
    hf = {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json", "special_tokens_map.json"}
    assert choose_files("x", hf) == ["model.safetensors", "config.json", "tokenizer_config.json", "spiece.model",
                                     "special_tokens_map.json"]
    sharded = {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors"}
    assert choose_files("x", sharded) == ["model.safetensors.index.json", "model-*-of-*.safetensors", "config.json"]
    # A registry entry names its files; a text-only choice takes no weights.
    assert choose_files("x", LAION_LISTING, weights=["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
                        )[:2] == ["open_clip_model.safetensors", "open_clip_config.json"]
    assert choose_files("x", LAION_LISTING, weights=()) == ["open_clip_config.json", "config.json", *text]
    assert set(TEXT_FILES) >= {"spiece.model", "tokenizer.model", "tokenizer.json"}
    with pytest.raises(CheckpointError, match="pickle"):
        choose_files("x", {"open_clip_pytorch_model.bin", "open_clip_config.json"})
    with pytest.raises(CheckpointError, match="no checkpoint clipforge reads"):
        choose_files("x", {"README.md", "flax_model.msgpack"})


def test_online_resolution_fetches_only_the_chosen_files(hub: Path, tiny_repo: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With the network on, the Hub's listing decides and snapshot_download gets exactly those patterns."""
    snapshot = add_directory(hub, REPO, tiny_repo)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, revision=None, **_: sorted(LAION_LISTING))

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert hub_snapshot(REPO, "v1") == snapshot
    (call,) = calls
    assert call["repo_id"] == REPO and call["revision"] == "v1"
    assert call["allow_patterns"][:2] == ["open_clip_model.safetensors", "open_clip_config.json"]
    assert not {"model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"} & set(call["allow_patterns"])


def test_an_unreachable_hub_falls_back_to_the_cache(hub: Path, tiny_repo: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    add_directory(hub, REPO, tiny_repo)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args: Any, **kwargs: Any) -> list[str]:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    assert_parity(tiny_open_clip(), clipforge.load(f"hf-hub:{REPO}")[0])
    with pytest.raises(CheckpointError, match="could not be reached"):
        clipforge.load("hf-hub:some-org/not-cached")


def test_a_missing_repository_online_is_named(monkeypatch: pytest.MonkeyPatch, hub: Path) -> None:
    from huggingface_hub.utils import RepositoryNotFoundError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def missing(*args: Any, **kwargs: Any) -> list[str]:
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its constructor wants an HTTP response
        Exception.__init__(error, "404 Client Error: Repository Not Found")
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", missing)
    with pytest.raises(CheckpointError, match="no repository some-org/nothing on the Hugging Face Hub"):
        clipforge.load("hf-hub:some-org/nothing")


def test_cache_dir_argument_wins_over_the_environment(hub: Path, tmp_path: Path, tiny_repo: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    add_directory(elsewhere, REPO, tiny_repo)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        clipforge.load(f"hf-hub:{REPO}")
    assert_parity(tiny_open_clip(), clipforge.load(f"hf-hub:{REPO}", cache_dir=elsewhere)[0])


def test_the_readers_guess_is_what_the_registry_corrects(hub: Path, tiny_repo: Path) -> None:
    """Without ``open_clip_config.json`` the reader cannot know the three 32-wide heads: load_any guesses one of 96
    (so the embeddings differ), which is why a pretrained tag builds its name's config instead (test_hub_open_clip)."""
    snapshot = add_to_cache(hub, REPO, {"open_clip_model.safetensors": tiny_repo / "open_clip_model.safetensors"})
    with pytest.warns(UserWarning, match="activation"):
        guessed = load_any(snapshot)
    assert guessed.config.vision.heads == 1
    images, _ = inputs()
    with torch.no_grad():
        assert (guessed.encode_image(images) - tiny_open_clip().encode_image(images)).abs().max() > 1e-3


def test_an_open_clip_config_without_quick_gelu_means_gelu(hub: Path, tiny_repo: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """laion's repositories (hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K) record no ``quick_gelu``: OpenCLIP builds
    GELU. A QuickGELU preset of the same shapes (as OpenAI's ViT-B/32 is for laion's B/32) must not win."""
    from clipforge.models import presets

    monkeypatch.setitem(presets._PRESETS, "tiny-quickgelu-twin", {
        "embed_dim": 64, "act": "quick_gelu",
        "vision": {"kind": "vit", "image_size": 32, "patch_size": 8, "width": 96, "layers": 2, "heads": 3},
        "text": {"width": 64, "heads": 2, "layers": 2, "context_length": 24}})
    add_directory(hub, REPO, tiny_repo)
    model = clipforge.load(f"hf-hub:{REPO}")[0]
    assert model.config.act == "gelu"
    assert_parity(tiny_open_clip(), model)


@pytest.mark.distributed
def test_hf_hub_offline_set_before_python_starts_is_honoured(tmp_path: Path, tiny_repo: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's way: HF_HUB_OFFLINE=1 and HF_HOME in the environment of a fresh interpreter (nothing patched)."""
    cache = offline_hub(monkeypatch, tmp_path / "hf")  # only to write the cache; the child reads the environment
    add_directory(cache, REPO, tiny_repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {
        "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    script = (f"import clipforge\nm, _, t = clipforge.load('hf-hub:{REPO}')\nprint(m.config.vision.heads, "
              "t(['a cat']).shape[1])\ntry:\n    clipforge.load('hf-hub:some-org/not-cached')\n"
              "except clipforge.checkpoints.CheckpointError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()[:2]
    assert first == "3 24"
    assert "some-org/not-cached is not in the Hugging Face cache" in second and "HF_HUB_OFFLINE is set" in second
