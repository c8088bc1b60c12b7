"""SigLIP's and SigLIP 2's SentencePiece tokenizers: transformers' exact ids on a hostile multilingual corpus,
the rules known by heart, bad model files, configs and the saved model file."""

from __future__ import annotations

import random
import string
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from clipforge.config import ConfigError
from clipforge.text import TextProcessor
from clipforge.text.sentencepiece import (
    SentencePieceConfig,
    SentencePieceTokenizer,
    bpe_as_transformers,
    piece_types,
    saved_sentencepiece,
)

spm = pytest.importorskip("sentencepiece")

from helpers.spm import GEMMA_USER_DEFINED, SYMBOLS, WORDS, train_spm, write_hf_tokenizer_config  # noqa: E402

N_TEXTS = 3000
CTX = 64
# Spellings transformers treats specially (special tokens, user-defined pieces), whitespace of every kind,
# case and width oddities, characters outside the trained vocabularies.
ODD = ["</s>", "<unk>", "<pad>", "<eos>", "<bos>", "<mask>", "<EOS>", "<start_of_turn>", "<START_OF_TURN>", "▁", "▁▁",
       "\n", "\n\n", "\t", "\r\n", "  ", "   ", "     ", "\u3000", "\xa0", "\u200b", "ΟΔΟΣ", "ΣΑΣ", "İstanbul", "ẞ",
       "ǅ", "ﬁ", "①", "ｆｕｌｌ", "＜／ｓ＞", "<0x41>", "\x00", "\x1f", "x", "Q", "zz", "...", "!!", "?!", "--", "__",
       "a_b", "'s", "«»", "é", "ё", "ß", "Ω", "😀", "🇫🇷", "👍🏽", "\u1c89", "\U00010d50"]


def corpus(n: int = N_TEXTS, seed: int = 0) -> list[str]:
    """``n`` texts: captions of 0 to 120 words in five scripts with punctuation runs, odd whitespace, upper case,
    emoji and the ``ODD`` spellings; some only punctuation, some random code points, some empty."""
    rng = random.Random(seed)
    words = [w for ws in WORDS.values() for w in ws] + SYMBOLS + ODD
    gaps = [" ", " ", " ", "", "  ", "\t", "\n", ", ", ". ", "!!! ", " -- ", "\t \n "]
    texts = ["", " ", "\n\t", "!!!", string.punctuation, "</s>", "<eos>", "a" * 500, "dog " * 200]
    while len(texts) < n:
        r = rng.random()
        if r < 0.04:
            texts.append("".join(rng.choice(string.punctuation + " ") for _ in range(rng.randint(1, 12))))
        elif r < 0.08:
            texts.append("".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 40))))
        else:
            parts = []
            for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 40, 120])):
                word = rng.choice(words)
                word = word.upper() if rng.random() < 0.1 else word.capitalize() if rng.random() < 0.1 else word
                parts += [word, rng.choice(gaps)]
            texts.append("".join(parts))
    return texts


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SigLIP-layout unigram models (NFKC as usual; identity with whitespace kept, so canonicalisation alone
    collapses it) and a Gemma-layout BPE model, trained here (well under a second)."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("siglip", "siglip_identity", "gemma")}
    write_hf_tokenizer_config(folders["gemma"], "gemma")
    return {"siglip": train_spm(folders["siglip"], "siglip"), "gemma": train_spm(folders["gemma"], "gemma"),
            "siglip_identity": train_spm(folders["siglip_identity"], "siglip", normalization_rule_name="identity",
                                         remove_extra_whitespaces=False)}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus()


def reference(tokenizer, texts: list[str]) -> torch.Tensor:
    """transformers' ids as the SigLIP processors produce them."""
    with warnings.catch_warnings():  # "This sequence already has </s>" for texts ending in </s>
        warnings.simplefilter("ignore")
        return tokenizer(texts, padding="max_length", max_length=CTX, truncation=True, return_tensors="pt").input_ids


def assert_same_ids(mine: torch.Tensor, ref: torch.Tensor, texts: list[str]) -> None:
    assert mine.dtype == torch.int64 and mine.shape == ref.shape == (len(texts), CTX)
    rows = (mine != ref).any(dim=1).nonzero().flatten().tolist()
    detail = [(texts[i][:60], mine[i].tolist(), ref[i].tolist()) for i in rows[:3]]
    assert not rows, f"{len(rows)} of {len(texts)} rows differ, e.g. {detail}"


# --- parity with transformers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "lower"), [("siglip", True), ("siglip_identity", False)])
def test_siglip_matches_siglip_tokenizer(models, texts, model, lower) -> None:
    transformers = pytest.importorskip("transformers")
    ref = reference(transformers.SiglipTokenizer(vocab_file=str(models[model]), do_lower_case=lower), texts)
    mine = SentencePieceTokenizer(models[model], SentencePieceConfig(lower=lower))(texts)
    assert_same_ids(mine, ref, texts)
    assert (ref[:, -2] != 1).sum() > 100 and (ref[:, 1] == 1).sum() > 10  # long rows truncated, and short ones


@pytest.mark.parametrize("lower", [False, True])
def test_gemma_matches_gemma_and_siglip2_tokenizers(models, texts, lower) -> None:
    pytest.importorskip("transformers")
    from transformers import GemmaTokenizer
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    hf = (Siglip2Tokenizer if lower else GemmaTokenizer).from_pretrained(models["gemma"].parent)
    assert (hf.add_bos_token, hf.add_eos_token, hf.padding_side) == (False, True, "right")
    ref = reference(hf, texts)
    mine = SentencePieceTokenizer(models["gemma"], SentencePieceConfig(style="gemma", lower=lower))(texts)
    assert_same_ids(mine, ref, texts)


def test_gemma_merges_as_transformers_not_as_sentencepiece(models) -> None:
    """Eight spaces: SentencePiece matches the user-defined ▁▁▁ longest first, transformers merges ▁▁ pair by pair
    (this vocabulary has no ▁▁▁▁): the rewritten model follows transformers."""
    assert piece_types(models["gemma"].read_bytes())[:12] == [3, 3, 3, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    raw = spm.SentencePieceProcessor(model_file=str(models["gemma"]))
    rewritten = spm.SentencePieceProcessor(model_proto=bpe_as_transformers(models["gemma"].read_bytes()))
    assert raw.encode("a" + " " * 8, out_type=str)[1:] == ["▁▁▁", "▁▁▁", "▁▁"]
    assert rewritten.encode("a" + " " * 8, out_type=str)[1:] == ["▁▁"] * 4
    tok = SentencePieceTokenizer(models["gemma"], SentencePieceConfig(style="gemma"))
    assert tok("a" + " " * 8)[0, 1:6].tolist() == [9, 9, 9, 9, 1]


# --- the rules, by heart -------------------------------------------------------------------------------------


def test_siglip_rules(models) -> None:
    tok = SentencePieceTokenizer(models["siglip"])
    assert (tok.eos_token_id, tok.pad_token_id, tok.context_length) == (1, 1, 64)
    empty = tok(["", "!!! ,.", "</s>", "   "])  # nothing left, or only the end of text itself
    assert empty.shape == (4, 64) and (empty == 1).all()
    assert torch.equal(tok("A Photo, of the DOG!"), tok("a photo of the dog"))  # canonicalised
    assert torch.equal(tok("a ▁photo"), tok("a photo"))
    ids = tok.encode("the photo")
    assert tok("the photo")[0, : len(ids) + 1].tolist() == [*ids, 1]
    long = tok("the " * 100)[0]  # truncated before the end of text, which stays last
    assert long[-1] == 1 and (long[:-1] == tok.encode("the")[0]).all()
    # the spelling </s> is the token; the text after it loses its word start (transformers' unk-prefix trick)
    assert tok("a </s> b")[0, :4].tolist() == [*tok.encode("a"), 1, tok.sp.piece_to_id("b"), 1]
    assert tok("the photo", context_length=3).tolist() == [[*ids[:2], 1]]
    assert tok.decode(tok("the small red car")[0]) == "the small red car"


def test_gemma_rules(models) -> None:
    tok = SentencePieceTokenizer(models["gemma"], SentencePieceConfig(style="gemma"))
    assert (tok.eos_token_id, tok.pad_token_id) == (1, 0)
    assert tok("")[0, :3].tolist() == [1, 0, 0]
    assert tok("<eos>")[0, :3].tolist() == [1, 1, 0]  # a special token's spelling is that token
    assert tok("x<start_of_turn>y")[0, 1].item() == 5
    assert torch.equal(tok("The DOG"), tok("the dog"))  # lower=True
    cased = SentencePieceTokenizer(models["gemma"], SentencePieceConfig(style="gemma", lower=False))
    assert not torch.equal(cased("The DOG"), cased("the dog"))
    assert cased.encode("ΟΔΟΣ".lower()) != tok.encode("ΟΔΟΣ")  # final sigma: per character, σ not ς
    long = tok("dog " * 100)[0]
    assert long[-1] == 1 and (long != 0).all()  # sticky end of text, no padding
    assert tok.decode(tok("the small red car")[0]) == "the small red car"


def test_one_string_max_chars_and_bad_text(models) -> None:
    tok = SentencePieceTokenizer(models["siglip"], SentencePieceConfig(max_chars=10))
    assert tok("the photo").shape == (1, 64)
    assert torch.equal(tok("the photo of a dog"), tok("the photo "))  # cut to 10 characters first
    assert torch.equal(tok("dog \ud800 cat"), tok("dog \ufffd cat"))  # lone surrogate: U+FFFD, no crash
    with pytest.raises(TypeError, match="text 1: expected a string"):
        tok(["ok", None])  # type: ignore[list-item]
    assert isinstance(tok, TextProcessor)


# --- files, configs, errors ----------------------------------------------------------------------------------


def test_save_pretrained_round_trip(models, texts, tmp_path) -> None:
    for style in ("siglip", "gemma"):
        path = models[style]
        config = SentencePieceConfig.from_dict({"style": style})
        tok = SentencePieceTokenizer(path, config)
        saved = tok.save_pretrained(tmp_path / style)
        assert saved == tmp_path / style / path.name and saved.read_bytes() == path.read_bytes()
        assert saved_sentencepiece(tmp_path / style) == saved
        again = SentencePieceTokenizer.from_directory(tmp_path / style, SentencePieceConfig.from_dict(config.to_dict()))
        assert torch.equal(again(texts[:300]), tok(texts[:300]))
        assert again.save_pretrained(tmp_path / style) == saved  # saving onto itself keeps the file
        assert saved.read_bytes() == path.read_bytes()
    assert saved_sentencepiece(tmp_path) is None and saved_sentencepiece(None) is None


def test_config() -> None:
    config = SentencePieceConfig.from_dict({"style": "gemma", "context_length": 64, "lower": False})
    assert config.model_file == "tokenizer.model" and SentencePieceConfig().model_file == "spiece.model"
    assert SentencePieceConfig.from_dict(config.to_dict()) == config
    cases: list[tuple[dict[str, Any], str]] = [
        ({"stile": "gemma"}, "did you mean 'style'"), ({"style": "t5"}, "sentencepiece.style"),
        ({"lower": "yes"}, "sentencepiece.lower"), ({"context_length": 0}, "context_length"),
        ({"file": "../spiece.model"}, "sentencepiece.file"), ({"max_chars": 0}, "max_chars")]
    for bad, field in cases:
        with pytest.raises(ConfigError, match=field):
            SentencePieceConfig.from_dict(bad)


def test_bad_model_files(models, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.model.*expected spiece.model"):
        SentencePieceTokenizer(tmp_path / "nowhere.model")
    data = models["gemma"].read_bytes()
    rng = random.Random(0)
    flipped = bytearray(data)
    flipped[10:60] = rng.randbytes(50)
    for name, content in [("empty", b""), ("random", rng.randbytes(4000)), ("truncated", data[: len(data) // 2]),
                          ("text", b"not a model\n" * 50), ("flipped", bytes(flipped))]:
        path = tmp_path / f"{name}.model"
        path.write_bytes(content)
        for style in ("siglip", "gemma"):
            with pytest.raises(ValueError, match=f"not a SentencePiece model: .*{name}.model"):
                SentencePieceTokenizer(path, SentencePieceConfig.from_dict({"style": style}))
    with pytest.raises(ValueError, match="unigram.*'gemma' style expects a BPE model"):
        SentencePieceTokenizer(models["siglip"], SentencePieceConfig(style="gemma"))
    with pytest.raises(ValueError, match="no '</s>' piece"):
        SentencePieceTokenizer(models["gemma"], SentencePieceConfig(style="siglip"))


def test_missing_sentencepiece_names_the_extra(models, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'clipforge\[sentencepiece\]'"):
        SentencePieceTokenizer(models["siglip"])


def test_lower_case_is_tokenizers_lower_case() -> None:
    """Every code point of planes 0 and 1 (all of ``_NEWER_LOWER``'s) at once: ``tokenizers``' Lowercase (per
    character, its Unicode tables) is ours."""
    normalizers = pytest.importorskip("tokenizers.normalizers")
    from clipforge.text.sentencepiece import _lower_per_character

    text = "".join(chr(c) for c in range(0x20000) if not 0xD800 <= c < 0xE000) + " ΟΔΟΣ Σ"
    assert normalizers.Lowercase().normalize_str(text) == _lower_per_character(text)


def test_user_defined_pieces_of_the_gemma_layout(models) -> None:
    types = piece_types(models["gemma"].read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(models["gemma"]))
    assert [sp.id_to_piece(i) for i, kind in enumerate(types) if kind == 4] == GEMMA_USER_DEFINED
