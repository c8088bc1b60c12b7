"""Tiny SentencePiece models trained on the spot, laid out like SigLIP's ``spiece.model`` or Gemma's
``tokenizer.model`` (SigLIP 2), so tests never download a vocabulary.

    path = train_spm(tmp_path, style="siglip")  # tmp_path / "spiece.model"
    path = train_spm(tmp_path, style="gemma")   # tmp_path / "tokenizer.model"
    write_hf_tokenizer_config(tmp_path, "gemma")  # so transformers' GemmaTokenizer.from_pretrained(tmp_path) loads it

Training takes a fraction of a second on the generated corpus (a few thousand short captions).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

# Words per script: the trained pieces cover them, and a few characters of each script appear rarely
# enough in the corpus that the test texts also meet characters outside the vocabulary.
WORDS = {
    "latin": "a the photo of dog cat two small red car on street house with garden blue sky tree river "
             "café naïve über straße garçon déjà vu piñata".split(),
    "cyrillic": "фото собака кошка красный дом улица небо дерево река большой маленький".split(),
    "cjk": "猫 狗 红色 汽车 房子 街道 蓝天 树 河 照片 一只 两个 東京 写真".split(),
    "arabic": "صورة كلب قطة سيارة حمراء بيت شارع سماء شجرة نهر".split(),
    "devanagari": "फोटो कुत्ता बिल्ली लाल गाड़ी घर सड़क आसमान पेड़ नदी".split(),
}
SYMBOLS = [*"0123456789.,;:!?'\"()-&/#%", "😀", "🐶", "👍🏽"]

# SigLIP's spiece.model (T5's layout): <pad>=0, </s>=1, <unk>=2, no <bos>; SiglipTokenizer pads with </s>.
SIGLIP_IDS = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1,
              "pad_piece": "<pad>", "eos_piece": "</s>", "unk_piece": "<unk>"}
# Gemma's tokenizer.model: <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4 (a control symbol), then
# user-defined symbols (chat markers, runs of newlines and spaces), byte fallback pieces <0x00>..<0xFF>.
GEMMA_IDS = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3,
             "pad_piece": "<pad>", "eos_piece": "<eos>", "bos_piece": "<bos>", "unk_piece": "<unk>"}
GEMMA_CONTROL = ["<mask>"]
GEMMA_USER_DEFINED = ["<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "▁▁", "▁▁▁", "\t"]


def training_corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """``n`` short captions mixing the scripts of ``WORDS``, digits, punctuation and some upper case."""
    rng = random.Random(seed)
    scripts = list(WORDS)
    lines = []
    for _ in range(n):
        words = WORDS[rng.choice(scripts)]
        line = [rng.choice(words) for _ in range(rng.randint(2, 9))]
        if rng.random() < 0.3:
            line.insert(rng.randrange(len(line) + 1), rng.choice(SYMBOLS))
        text = " ".join(line)
        lines.append(text.upper() if rng.random() < 0.1 else text.capitalize() if rng.random() < 0.3 else text)
    return lines


def train_spm(directory: str | Path, style: Literal["siglip", "gemma"] = "siglip", vocab_size: int | None = None,
              seed: int = 0, **trainer: Any) -> Path:
    """Trains a SentencePiece model in ``style``'s layout and writes it into ``directory``.

    Args:
        directory: Where the model goes (created if missing).
        style: ``"siglip"``: a unigram model with SigLIP's ids, NFKC normalisation and a dummy prefix, written
            as ``spiece.model``. ``"gemma"``: a BPE model with byte fallback, Gemma's ids, ``<mask>`` and a few
            user-defined symbols, identity normalisation, no dummy prefix, digits split, whitespace kept,
            written as ``tokenizer.model``.
        vocab_size: Pieces in the model (default 600 for ``siglip``, 1000 for ``gemma``: 256 of those are bytes).
        seed: Seed of the generated training corpus.
        trainer: More ``SentencePieceTrainer.train`` options, overriding the style's (e.g.
            ``normalization_rule_name="identity", remove_extra_whitespaces=False``).

    Returns:
        The model file's path.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    common = {"sentence_iterator": iter(training_corpus(seed=seed)), "minloglevel": 2, "num_threads": 1,
              "hard_vocab_limit": False}
    if style == "siglip":
        path = directory / "spiece.model"
        spec = {**SIGLIP_IDS, "model_type": "unigram", "vocab_size": vocab_size or 600,
                "character_coverage": 0.995}
    elif style == "gemma":
        path = directory / "tokenizer.model"
        spec = {**GEMMA_IDS, "model_type": "bpe", "vocab_size": vocab_size or 1000, "byte_fallback": True,
                "control_symbols": GEMMA_CONTROL, "user_defined_symbols": GEMMA_USER_DEFINED,
                "normalization_rule_name": "identity", "add_dummy_prefix": False,
                "remove_extra_whitespaces": False, "split_digits": True, "allow_whitespace_only_pieces": True,
                "character_coverage": 0.995}
    else:
        raise ValueError(f"style: expected 'siglip' or 'gemma', got {style!r}")
    with path.open("wb") as f:
        spm.SentencePieceTrainer.train(**{**common, **spec, **trainer}, model_writer=f)
    return path


def write_hf_tokenizer_config(directory: str | Path, style: Literal["siglip", "gemma"] = "siglip") -> Path:
    """Writes the ``tokenizer_config.json`` the released checkpoints carry, so transformers'
    ``SiglipTokenizer`` / ``GemmaTokenizer`` / ``Siglip2Tokenizer.from_pretrained(directory)`` load the model file
    as ``google/siglip-*`` / ``google/siglip2-*`` do (SigLIP 2: no ``<bos>``, ``<eos>`` appended, padded right)."""
    if style == "siglip":
        config = {"tokenizer_class": "SiglipTokenizer", "model_max_length": 64, "do_lower_case": True}
    else:
        config = {"tokenizer_class": "GemmaTokenizer", "model_max_length": 64, "add_bos_token": False,
                  "add_eos_token": True, "padding_side": "right"}
    path = Path(directory) / "tokenizer_config.json"
    path.write_text(json.dumps(config))
    return path
