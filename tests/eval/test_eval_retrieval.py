"""Retrieval Recall@K: hand-built embeddings with known ranks, chunked == unchunked == brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.eval import chunked_topk, evaluate_retrieval, retrieval_metrics, retrieval_ranks
from clipforge.eval.datasets import Sample
from helpers.fakes import COLOURS, fake_model, solid

# Three images on the axes; five captions with hand-computed similarities (see each comment).
IMAGES = torch.eye(3)
TEXTS = torch.tensor([
    [1.0, 0.0, 0.0],  # owner 0; scores (1, 0, 0): rank 0
    [0.0, 1.0, 0.0],  # owner 0; scores (0, 1, 0): image 1 above → rank 1
    [0.6, 0.8, 0.0],  # owner 1; scores (.6, .8, 0): rank 0
    [0.8, 0.0, 0.6],  # owner 2; scores (.8, 0, .6): image 0 above → rank 1
    [0.6, 0.64, 0.48],  # owner 2; scores (.6, .64, .48): images 0 and 1 above → rank 2
])
OWNERS = torch.tensor([0, 0, 1, 2, 2])
# Image → text: image 0's best caption (t0, 1.0) is top → 0; image 1's caption t2 (.8) is beaten by t1 (1.0,
# not its own) → 1; image 2's best caption t3 (.6) beats every other caption (0, 0, 0) → 0.


def test_known_ranks() -> None:
    text_ranks, image_ranks = retrieval_ranks(IMAGES, TEXTS, OWNERS)
    assert text_ranks.tolist() == [0, 1, 0, 1, 2]
    assert image_ranks.tolist() == [0, 1, 0]


def test_known_recalls_with_clip_benchmark_keys() -> None:
    m = retrieval_metrics(IMAGES, TEXTS, OWNERS, ks=(1, 2, 5))
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@2"] == pytest.approx(4 / 5)
    assert m["image_retrieval_recall@5"] == pytest.approx(1.0)
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)


@pytest.mark.parametrize("chunks", [(1, 1), (2, 3), (3, 2)])
def test_known_ranks_any_chunking(chunks: tuple[int, int]) -> None:
    text_ranks, image_ranks = retrieval_ranks(IMAGES, TEXTS, OWNERS, image_chunk=chunks[0], text_chunk=chunks[1])
    assert text_ranks.tolist() == [0, 1, 0, 1, 2]
    assert image_ranks.tolist() == [0, 1, 0]


def test_image_without_captions_is_left_out() -> None:
    images = torch.cat([IMAGES, F.normalize(torch.ones(1, 3), dim=-1)])
    _, image_ranks = retrieval_ranks(images, TEXTS, OWNERS)
    assert image_ranks[-1] == -1
    assert retrieval_metrics(images, TEXTS, OWNERS, ks=(1,))["text_retrieval_recall@1"] == pytest.approx(2 / 3)


def _brute_force(images: torch.Tensor, texts: torch.Tensor, owners: torch.Tensor) -> tuple[list[int], list[int]]:
    """Ranks from the full similarity matrix and a sort: the reference the chunked code must equal."""
    scores = texts @ images.T  # (M, N)
    order = scores.argsort(dim=1, descending=True)
    text_ranks = [int((order[t] == owners[t]).nonzero()) for t in range(len(texts))]
    order_t = scores.T.argsort(dim=1, descending=True)  # (N, M)
    image_ranks = []
    for i in range(len(images)):
        own = set((owners == i).nonzero().flatten().tolist())
        image_ranks.append(next(r for r, t in enumerate(order_t[i].tolist()) if t in own) if own else -1)
    return text_ranks, image_ranks


def test_chunked_equals_unchunked_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    n, per = 40, [1, 2, 3, 5]
    owners = torch.tensor([i for i in range(n) for _ in range(per[i % 4])])
    images = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
    texts = F.normalize(images[owners] + 0.9 * torch.randn(len(owners), 16, generator=g), dim=-1)
    ref = _brute_force(images, texts, owners)
    for ic, tc in [(10_000, 10_000), (7, 11), (1, 64), (13, 1)]:
        t, i = retrieval_ranks(images, texts, owners, image_chunk=ic, text_chunk=tc)
        assert (t.tolist(), i.tolist()) == ref
    m = retrieval_metrics(images, texts, owners)
    assert 0 < m["image_retrieval_recall@1"] < m["image_retrieval_recall@10"] < 1


def test_chunked_topk_equals_topk() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(9, 8, generator=g), torch.randn(100, 8, generator=g)
    s, i = chunked_topk(q, k, 7, chunk=13)
    ref = (q @ k.T).topk(7, dim=1)
    assert torch.equal(i, ref.indices)
    torch.testing.assert_close(s, ref.values)


def test_bad_owner_index_is_an_error() -> None:
    with pytest.raises(ValueError, match="outside"):
        retrieval_ranks(IMAGES, TEXTS, torch.tensor([0, 0, 1, 2, 3]))


def test_evaluate_retrieval_on_colour_images() -> None:
    samples = [Sample(solid(c), captions=[f"a {c} square", f"something {c}"]) for c in COLOURS]
    r = evaluate_retrieval(fake_model(), samples, batch_size=2)
    assert (r.n_images, r.n_texts) == (3, 6)
    assert r.metrics["image_retrieval_recall@1"] == 1.0
    assert r.metrics["text_retrieval_recall@1"] == 1.0
