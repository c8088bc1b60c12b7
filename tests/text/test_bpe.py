"""The BPE tokenizer gives OpenAI's exact ids (checked against open_clip and HF), truncates as documented, and
learns vocabularies that round-trip through save/load."""

from __future__ import annotations

import html
import random
import string
import unicodedata
from pathlib import Path

import ftfy
import ftfy.badness
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipforge.text import cleanup
from clipforge.text.bpe import (
    _ASCII_PATTERN,
    MAX_CHARS,
    PATTERN,
    BPETokenizer,
    clean,
    get_default_tokenizer,
    merges_are_ordered,
)
from clipforge.text.bpe_train import train_bpe

PIECES = [
    "a photo of a", "The", "DOG", "cat", "très", "naïve", "Straße", "Москва", "東京タワー", "中文字符", "한국어",
    "مرحبا", "שלום", "😀", "👍🏽", "🇫🇷", "&amp;", "&amp;amp;", "&amp;amp;amp;", "&lt;b&gt;", "<b>bold</b>", "&#39;",
    "&nbsp;", "&eacute;", "&EACUTE;", "&#x1F600;", "&#128;", "&#0;", "&#28;", "&foo;", "& co", "3.14159", "1,000,000",
    "42", "!!!", "...", "?!?!", '!"!!', "--", "'s", "'S", "'ll", "'ſ", "don't", "I'M", "e-mail", "C++", "#hashtag",
    "@user", "http://example.com/a?b=c&d=e", "<|endoftext|>", "<|startoftext|>", "\t", "\n", "\r\n", "  ", "\x00",
    "\x1b[31m", "\x1c", "\x85", "\u200b", "\u00a0", "\u3000", "\u2028", "\x0b\x0c", "ﬁ", "ｆｕｌｌｗｉｄｔｈ", "ﾊﾝｶｸ",
    "â€™", "Ã©", "Ã ", "“quoted”", "‘single’", "e\u0301", "ǅ", "İstanbul", "ß", "Ω", "K", "∑", "½", "²", "⁹", "Ⅻ",
    "١٢٣", "\ud83d", "\U0010ffff",
]


def phrases(n: int, seed: int = 0) -> list[str]:
    """Caption-like strings built from ``PIECES``."""
    rng = random.Random(seed)
    return [rng.choice([" ", "", "  "]).join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def corpus(n: int, seed: int = 0) -> list[str]:
    """Deterministic strings: scripts, emoji, accents, HTML entities (nested), numbers, punctuation runs, control
    characters, mixed whitespace, printable ASCII (the fast path), overflowing and empty strings."""
    rng = random.Random(seed)
    out = ["", " ", "\n\t ", "a", "A" * 500, "word " * 100, "東京" * 200, "&amp;" * 100, "!" * 300]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.5:
            out.append(rng.choice([" ", "", "  ", "\n"]).join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))))
        elif kind < 0.65:
            out.append("".join(rng.choice(string.printable) for _ in range(rng.randint(0, 60))))
        elif kind < 0.8:
            out.append("".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 30))))
        elif kind < 0.95:
            out.append("".join(chr(rng.choice([rng.randint(0, 127), rng.randint(0xA0, 0x24F), rng.randint(0x1F300,
                                                                                                       0x1FAFF)]))
                               for _ in range(rng.randint(1, 40))))
        else:  # overflow: longer than the context once tokenised
            out.append(" ".join(rng.choice(PIECES) for _ in range(rng.randint(40, 120))))
    return out


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    return pytest.importorskip("open_clip.tokenizer").SimpleTokenizer()


def assert_same_ids(texts: list[str], reference, context_length: int = 77) -> None:
    ours = BPETokenizer()(texts, context_length=context_length)
    theirs = reference(texts, context_length=context_length)
    mismatches = (ours != theirs).any(1).nonzero().flatten().tolist()
    assert not mismatches, f"{len(mismatches)} mismatches, first: {texts[mismatches[0]]!r}"


def test_ids_equal_open_clip_on_12k_strings(open_clip_tokenizer) -> None:
    texts = corpus(12_000)
    assert sum(len(open_clip_tokenizer.encode(t)) > 75 for t in texts) > 500  # the truncation path is exercised
    assert_same_ids(texts, open_clip_tokenizer)  # open_clip truncates like us: end-of-text kept last


def test_ids_equal_open_clip_short_context(open_clip_tokenizer) -> None:
    assert_same_ids(corpus(1000, seed=4), open_clip_tokenizer, context_length=16)


@pytest.mark.slow
def test_ids_equal_open_clip_on_200k_strings(open_clip_tokenizer) -> None:
    assert_same_ids(corpus(200_000, seed=5), open_clip_tokenizer)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_ids_equal_open_clip_on_any_text(open_clip_tokenizer, text: str) -> None:
    assert get_default_tokenizer().encode(text) == open_clip_tokenizer.encode(text)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from([c for c in string.printable if c.isprintable() and c != "&"])))
def test_ascii_fast_path_is_exact(text: str) -> None:
    """Printable ASCII without '&' is what ``clean`` and ``encode`` take without ftfy/``regex``: both provably
    change nothing there, and whitespace only separates pre-tokens."""
    assert ftfy.fix_text(text) == text and html.unescape(text) == text
    assert clean(text) == " ".join(text.split()).lower()
    lowered = text.lower()
    assert _ASCII_PATTERN.findall(lowered) == PATTERN.findall(clean(text))


def openai_clean(text: str) -> str:
    """OpenAI's clean-up, step by step with ftfy itself: what ``clean`` must equal."""
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()


# Fragments at the edges of cleanup's shortcuts: HTML entities and a bare "&", "<" (turns ftfy's entity decoding
# off), line breaks, C1 and other control characters, terminal escapes, curly quotes, ligatures, full-width forms,
# NFC-composable pairs, lone surrogates, mojibake and its parts, text ftfy's mojibake regex looks at.
EDGE_FRAGMENTS = [
    "&", "&amp;", "&amp;amp;", "&#39;", "&quot;", "&lt;b&gt;", "&EACUTE;", "&nbsp;", "&#x2019;", "AT&T", "<", ">",
    ";", "\n", "\r\n", "\r", "\x85", "\u2028", "\u2029", "\x1b[31m", "\x00", "\x7f", "\x0b", "\x1c", "\ufeff",
    "“", "”", "‘", "’", "ʼ", "…", "—", "–", "ﬁ", "Ａ", "\u3000", "e\u0301", "\u0301", "\ud83d", "\U0001f600", "Ã©",
    "â€™", "Ã", "Â", "\xa0", "\xad", "é", "É", "°", "×²", "√±", "ГўВЂВ", "Ø³", "à²", "вЂ", "€", "™", "®", "東京",
    "Москва", "a", "B", "1", ".", "'", " ",
]
MOJIBAKE_CHARS = "".join(ftfy.badness.MOJIBAKE_CATEGORIES.values())
edge_text = st.lists(st.one_of(st.sampled_from(EDGE_FRAGMENTS), st.sampled_from(MOJIBAKE_CHARS),
                               st.text(alphabet="ab ", max_size=12), st.characters()), max_size=40).map("".join)


def test_fixer_guards_cover_every_character_a_fixer_changes() -> None:
    """Every code point its guard does not match, all in one string, passes each character fixer unchanged; as each
    fixer maps characters one by one (tables, one-character regexes) or needs a guarded character to start
    (``\\r\\n``, terminal escapes), text without a guarded character passes it unchanged."""
    every_code_point = "".join(map(chr, range(0x110000)))
    for fixer, guard in cleanup.GUARDED_FIXERS:
        others = guard.sub("", every_code_point)
        assert 1_000_000 < len(others) < 0x110000, fixer.__name__
        assert fixer(others) == others, fixer.__name__
    assert all(cleanup.FIXABLE.match(c) for c in "\x80\ufb01\uff01\u2019\u201c\r\ud800\x1b\x00")


def test_windowed_is_bad_is_in_use_and_equals_ftfy() -> None:
    assert cleanup._ANCHORS is not None  # the installed ftfy's regex passed the structural checks
    assert cleanup._DEFAULTS_AS_ASSUMED  # and its default config is the one fix_text's steps follow
    texts = corpus(3000, seed=8) + [f"{'x' * n}Ã {'y' * m}" for n in range(12) for m in range(12)]
    texts += ["ГўВЂВ." + c for c in "a Z1"] + ["Ã ", "a Ã ", "Ã" + "-" * 20]
    assert any(ftfy.badness.is_bad(t) for t in texts) and not all(ftfy.badness.is_bad(t) for t in texts)
    for text in texts:
        assert cleanup.is_bad(text) == ftfy.badness.is_bad(text), text


@settings(max_examples=1500, deadline=None)
@given(edge_text)
def test_is_bad_equals_ftfy_on_edge_text(text: str) -> None:
    assert cleanup.is_bad(text) == ftfy.badness.is_bad(text)


@settings(max_examples=1500, deadline=None)
@given(edge_text)
def test_fix_text_and_clean_equal_ftfy_on_edge_text(text: str) -> None:
    assert cleanup.fix_text(text) == ftfy.fix_text(text)
    assert clean(text) == openai_clean(text)


def test_fix_text_known_answers_both_paths() -> None:
    """Mojibake goes to ftfy itself; entities, quotes, widths and line breaks are fixed by ftfy's steps here."""
    before = cleanup._ftfy_fix_text_cached.cache_info().misses
    assert cleanup.fix_text("caf\u00c3\u00a9 \u00e2\u20ac\u2122") == "caf\u00e9 '"
    assert cleanup._ftfy_fix_text_cached.cache_info().misses == before + 1
    assert cleanup.fix_text("\u201cit\u2019s\u201d &amp; \ufb01ne\uff01\r\nok") == '"it\'s" & fine!\nok'
    assert cleanup.fix_text("a &lt;b&gt;\n<i>&amp;</i>\n&amp;") == "a <b>\n<i>&amp;</i>\n&amp;"  # "<": entities kept
    assert cleanup._ftfy_fix_text_cached.cache_info().misses == before + 1


def test_clean_equals_openai_steps() -> None:
    for text in corpus(3000, seed=1):
        assert clean(text) == openai_clean(text), text


def test_ids_equal_hf_clip_tokenizer(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = BPETokenizer()
    tokenizer.save_hf(tmp_path)
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    # HF's CLIPTokenizer skips OpenAI's html.unescape and (in current transformers) ftfy, and recognises special
    # tokens inside text; its pre-tokenizer does not case-fold "'ſ" into the contraction "'s" and has older Unicode
    # tables than the ``regex`` module (U+088F is a letter to one, not the other); it lowercases a capital sigma
    # without Python's final-sigma rule. It differs wherever those matter; compare everything else.
    assert tokenizer.encode("&amp;") != hf("&amp;")["input_ids"][1:-1]

    def comparable(text: str) -> bool:
        return (not any(s in text for s in ("&", "<|", "ſ", "Σ")) and ftfy.fix_text(text) == text
                and all(unicodedata.ucd_3_2_0.category(c) != "Cn" for c in text) and len(tokenizer.encode(text)) <= 75)

    texts = [t for t in phrases(6000, seed=2) + corpus(6000, seed=6) if comparable(t)]
    assert len(texts) > 1000
    for text in texts:
        assert tokenizer.encode(text) == hf(text)["input_ids"][1:-1], text
    batch = hf(texts[:50], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    ours = tokenizer(texts[:50])
    assert torch.equal(ours[ours != 0], batch[ours != 0])  # HF pads with end-of-text, we with 0


def test_known_ids_shape_padding_and_special_tokens() -> None:
    tok = get_default_tokenizer()
    assert tok is get_default_tokenizer()
    assert tok.vocab_size == 49408 and tok.sot_token_id == 49406 and tok.eot_token_id == 49407
    assert tok.context_length == 77
    ids = tok(["a photo of a cat", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.int64
    assert ids[0, :6].tolist() == [49406, 320, 1125, 539, 320, 2368] and ids[0, 6] == 49407 and ids[0, 7:].sum() == 0
    assert ids[1, :2].tolist() == [49406, 49407]
    assert tok("x", context_length=8).shape == (1, 8)
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


def test_special_token_strings_are_plain_text(open_clip_tokenizer) -> None:
    """Documented choice: a caption cannot inject end-of-text (OpenAI's tokenizer would; open_clip does not)."""
    tok = get_default_tokenizer()
    ids = tok.encode("stop <|endoftext|> here")
    assert tok.eot_token_id not in ids and ids == open_clip_tokenizer.encode("stop <|endoftext|> here")


def test_truncation_both_behaviours() -> None:
    long_text = "word " * 200
    cut = BPETokenizer(truncate=True)([long_text, "short"])
    assert get_default_tokenizer().encode("word") == [2653]
    assert cut[0, -1] == 49407 and (cut[0] != 0).all() and cut[0, 1:-1].tolist() == [2653] * 75
    exact = BPETokenizer(truncate=False)(["word " * 75])  # 77 tokens: fits exactly
    assert exact[0, -1] == 49407
    with pytest.raises(ValueError, match=r"text 1 has 202 tokens, more than the context length 77"):
        BPETokenizer(truncate=False)(["fine", long_text])
    with pytest.raises(ValueError, match=r"text 0 has 12 tokens, more than the context length 8"):
        BPETokenizer(truncate=False)("word " * 10, context_length=8)
    with pytest.raises(ValueError, match="context_length must be at least 2"):
        get_default_tokenizer()("a", context_length=1)
    assert get_default_tokenizer()("a b c", context_length=2).tolist() == [[49406, 49407]]
    assert get_default_tokenizer()([]).shape == (0, 77)
    with pytest.raises(TypeError, match="text 1: expected a string"):
        get_default_tokenizer()(["ok", None])


def test_decode_and_batch_decode() -> None:
    tok = get_default_tokenizer()
    assert tok.decode(tok("A photo of a cat.")[0]) == "a photo of a cat ."
    assert tok.decode(tok("über große straße 東京 😀")[0]) == "über große straße 東京 😀"
    assert tok.decode(tok('!"!!')[0]) == '!"!!'  # id 0 is a real token (the byte "!"), not padding
    assert 0 in tok.encode('!"!!')
    assert tok.batch_decode(tok(["hello world", "bye"])) == ["hello world", "bye"]
    for text in corpus(500, seed=7):
        if len(tok.encode(text)) <= 75:
            assert tok.decode(tok(text)[0]).replace(" ", "") == clean(text).replace(" ", ""), text


def test_save_pretrained_round_trip_and_bad_files(tmp_path: Path) -> None:
    tok = BPETokenizer()
    path = tok.save_pretrained(tmp_path)
    again = BPETokenizer(vocab_path=path)
    assert again.vocab_size == 49408 and again.eot_token_id == 49407
    texts = corpus(300, seed=3)
    assert torch.equal(tok(texts), again(texts))
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        BPETokenizer(vocab_path=tmp_path / "nope.txt.gz")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a gzipped BPE merges file"):
        BPETokenizer(vocab_path=bad)


def training_corpus() -> list[str]:
    rng = random.Random(0)
    words = "the a dog cat sat on mat red blue green photo of house tree river café naïve 東京 2024 running".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice([".", "!", ""])
            for _ in range(800)]


def test_train_bpe_vocab_size_round_trip_and_reload(tmp_path: Path) -> None:
    texts = training_corpus()
    tok = train_bpe(texts, vocab_size=560)
    assert tok.vocab_size == 560 and len(tok.merges) == 560 - 514
    assert (tok.sot_token_id, tok.eot_token_id) == (558, 559)
    assert train_bpe(texts, vocab_size=560).merges == tok.merges  # deterministic
    assert [tok.decoder[i] for i in tok.encode("photo")] == ["photo</w>"]  # frequent words become single tokens
    assert train_bpe(texts, vocab_size=5000).vocab_size == 565  # every pair seen twice is merged by then
    for text in [*texts[:100], "unseen words: zebra Ωmega 😀"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size - 2 for i in ids)
        assert tok.decode(tok(text)[0]).replace(" ", "") == clean(text).replace(" ", "")
    assert sum(map(len, map(tok.encode, texts))) < 0.5 * sum(len(t.encode()) for t in texts)
    reloaded = BPETokenizer(vocab_path=tok.save_pretrained(tmp_path))
    assert reloaded.vocab_size == 560 and reloaded.eot_token_id == 559
    assert torch.equal(reloaded(texts), tok(texts))


def test_train_bpe_stops_at_min_frequency_and_rejects_tiny_vocab() -> None:
    texts = ["aaab aaab", "xyz"]
    tok = train_bpe(texts, vocab_size=1000, min_frequency=2)  # pairs seen twice or more only
    # a+a (4 times), then a tie at 2 between a+b</w> and aa+a goes to the smaller pair, then aa+ab</w>
    assert ["".join(m) for m in tok.merges] == ["aa", "ab</w>", "aaab</w>"]
    assert tok.vocab_size == 517 and tok.eot_token_id == 516 and tok.encode("aaab xyz") == [514, 87, 88, 345]
    with pytest.raises(ValueError, match="at least 514"):
        train_bpe(texts, vocab_size=300)


def test_trained_vocab_loads_in_hf(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = train_bpe(training_corpus(), vocab_size=600)
    tok.save_hf(tmp_path)
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    for text in training_corpus()[:200]:
        assert hf(text)["input_ids"] == [tok.sot_token_id, *tok.encode(text), tok.eot_token_id], text


# --- bounded work per caption (issue #17, class 3) -----------------------------------------------------------


def long_captions(n: int, seed: int = 0) -> list[str]:
    """Captions up to ``MAX_CHARS`` characters: long space-free runs of letters, digits and symbols, many words,
    long whitespace runs, and mixtures with the corpus pieces."""
    rng = random.Random(seed)
    out = ["a" * 3000, "ab" * 1500, "é" * 2000, "東" * 2000, "😀" * 1000, "x" * MAX_CHARS, " " * 5000 + "dog"]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.4:
            alphabet = rng.choice([string.ascii_letters, "aeiou", "ab", "thequickbrownfox", "éèàçñüßøå", "ΑΒΓδεζ"])
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(50, 3000))))
        elif kind < 0.7:
            out.append(" ".join(rng.choice(PIECES) for _ in range(rng.randint(200, 900)))[:MAX_CHARS])
        else:
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(40, 1500)))
            out.append(rng.choice(PIECES) + " " * rng.randint(0, 3000) + word + " " + rng.choice(PIECES))
    return out


def test_captions_that_fit_get_open_clip_ids(open_clip_tokenizer) -> None:
    """Every caption of at most ``max_chars`` characters keeps open_clip's ids, long runs and all (open_clip's own
    loop is quadratic in a run's length, so the runs stay in the thousands here)."""
    texts = long_captions(120)
    assert all(len(t) <= MAX_CHARS for t in texts)
    assert_same_ids(texts, open_clip_tokenizer)
    assert_same_ids(texts, open_clip_tokenizer, context_length=16)
    tok = BPETokenizer(truncate=False)
    for text in texts[:10]:  # not truncating, every id is still counted
        assert len(tok.encode(text)) == len(open_clip_tokenizer.encode(text)), text[:40]


def test_merges_are_ordered_and_heap_merge_equals_openai_loop() -> None:
    tok = get_default_tokenizer()
    assert merges_are_ordered(tok.merges) and tok._ordered
    assert merges_are_ordered(train_bpe(training_corpus(), vocab_size=600).merges)
    assert not merges_are_ordered([("a", "b"), ("c", "ab")][::-1])  # "ab" used before it is made
    rng = random.Random(3)
    for _ in range(1500):
        alphabet = rng.choice(["ab", "abc", "aeiou", string.ascii_lowercase, "é東😀a", "xyzq1!.", "\u00e9e"])
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400)))
        symbols = "".join(tok.byte_encoder[b] for b in text.encode())
        word = [*symbols[:-1], symbols[-1] + "</w>"]
        assert tok._bpe_heap(list(word)) == tok._bpe_loop(list(word)), text


def test_unordered_merges_use_openai_loop() -> None:
    """Merges out of order (a part used before a merge makes it) keep OpenAI's loop, whose result they define."""
    merges = [("c", "ab</w>"), ("a", "b</w>"), ("x", "x")]
    tok = BPETokenizer.from_merges(merges)
    assert not tok._ordered
    assert [tok.decoder[i] for i in tok.encode("cab")] == ["cab</w>"]  # rank 1 makes the rank-0 pair
    assert [tok.decoder[i] for i in tok.encode("x" * 100)] == ["xx"] * 49 + ["x", "x</w>"]


class WorkCounter:
    """Counts the symbols the BPE merge functions of one tokenizer are given, and the chunks it tokenises."""

    def __init__(self, tok: BPETokenizer, monkeypatch: pytest.MonkeyPatch):
        self.symbols = self.chunks = 0
        for name in ("_bpe_heap", "_bpe_loop"):
            merge = getattr(tok, name)

            def counted(word: list[str], merge=merge) -> list[str]:
                self.symbols += len(word)
                return merge(word)

            monkeypatch.setattr(tok, name, counted)
        chunk = tok._chunk

        def counted_chunk(text: str) -> tuple[int, ...]:
            self.chunks += 1
            return chunk(text)

        monkeypatch.setattr(tok, "_chunk", counted_chunk)


def test_a_100k_letter_word_costs_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 73-second caption of issue #17: only ``max_chars`` characters reach the BPE, and a run that long is
    merged by the priority queue, not the quadratic loop."""
    tok = BPETokenizer()
    work = WorkCounter(tok, monkeypatch)
    word = "".join(random.Random(0).choice(string.ascii_lowercase) for _ in range(100_000))
    ids = tok([word, "é" * 100_000])
    assert work.symbols <= MAX_CHARS + 2 * MAX_CHARS  # one byte per letter, two per "é"
    assert ids.shape == (2, 77) and (ids[:, -1] == tok.eot_token_id).all()
    assert torch.equal(ids, BPETokenizer()([word[:MAX_CHARS], "é" * MAX_CHARS]))
    fresh = BPETokenizer()
    monkeypatch.setattr(fresh, "_bpe_loop", lambda w: pytest.fail(f"quadratic loop on {len(w)} symbols"))
    fresh(["q" * 100_000])  # one run of MAX_CHARS letters: the priority queue only


def test_tokenising_stops_once_the_context_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """100,000 distinct words: with truncation only the chunks that can reach the context are tokenised."""
    tok = BPETokenizer()
    work = WorkCounter(tok, monkeypatch)
    words = [f"w{i}x" for i in range(100_000)]
    ids = tok(" ".join(words))  # cut to MAX_CHARS characters, then 76 chunks give more than 75 ids
    assert work.chunks <= 76
    assert torch.equal(ids, BPETokenizer()(" ".join(words[:200])))
    assert torch.equal(tok(["a b c", " ".join(words)]), BPETokenizer()(["a b c", " ".join(words[:200])]))


def test_max_chars_cuts_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    tok = BPETokenizer(max_chars=10, truncate=False)
    assert tok.encode("a photo of a cat") == tok.encode("a photo of")
    assert torch.equal(tok(["a photo of a cat"]), tok(["a photo of"]))
    seen = []
    monkeypatch.setattr("clipforge.text.bpe.clean", lambda t: seen.append(t) or clean(t))
    tok.encode("caf\u00e9 " * 1000)
    assert seen == ["caf\u00e9 " * 2]  # clean-up sees the cut text only
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_chars must be a whole number"):
            BPETokenizer(max_chars=bad)
