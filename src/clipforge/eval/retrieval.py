"""Image–text retrieval: Recall@K in both directions, computed block by block.

With ``N`` images and ``M`` captions (each caption belongs to one image; an image may have several), the
metrics follow CLIP_benchmark (``metrics/zeroshot_retrieval.py``):

- ``image_retrieval_recall@K`` (text → image): the fraction of captions whose image ranks in the top K
  of all images;
- ``text_retrieval_recall@K`` (image → text): the fraction of images with at least one of their captions
  in the top K of all captions.

Neither needs the (N, M) similarity matrix. A query's rank is the number of non-matching candidates that
score strictly higher than its best match, so one pass over (text chunk × image chunk) blocks counts,
for every caption, the images above its own image and, for every image, the captions above its best
caption. Memory is one block (``text_chunk × image_chunk``) plus the embeddings; 100k images × 500k
captions is ~50 billion dot products and fits anywhere. Ties count in the query's favour (a tie with a
non-matching candidate does not push the match down), which only matters for degenerate embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from clipforge.eval.adapter import EvalModel
from clipforge.eval.datasets import EvalDataset, iter_batches


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
                    image_chunk: int = 4096, text_chunk: int = 4096, device: torch.device | str | None = None,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of the correct match for every caption (text → image) and every image (image → text).

    Args:
        image_emb: (N, D) image embeddings (normalised for cosine similarity).
        text_emb: (M, D) caption embeddings.
        text_to_image: (M,) index of each caption's image.
        image_chunk: Images per block.
        text_chunk: Captions per block.
        device: Where blocks are computed (the embeddings' device when ``None``).
        progress: Show a progress bar over caption chunks.

    Returns:
        ``(text_ranks (M,), image_ranks (N,))``; an image without captions gets rank -1.
    """
    device = torch.device(device) if device is not None else image_emb.device
    n, m = len(image_emb), len(text_emb)
    text_to_image = text_to_image.long().to(device)
    if m != len(text_to_image):
        raise ValueError(f"{m} caption embeddings but {len(text_to_image)} caption → image indices")
    if m and (text_to_image.min() < 0 or text_to_image.max() >= n):
        raise ValueError("a caption points to an image index outside the image embeddings")

    # Each caption's score with its own image; each image's best score over its captions.
    pos_text = torch.empty(m, device=device)
    for t0 in range(0, m, text_chunk):
        t = text_emb[t0:t0 + text_chunk].to(device).float()
        own = image_emb[text_to_image[t0:t0 + len(t)].to(image_emb.device)].to(device).float()  # (tc, D)
        pos_text[t0:t0 + len(t)] = (t * own).sum(-1)
    best_image = torch.full((n,), float("-inf"), device=device)
    best_image.scatter_reduce_(0, text_to_image, pos_text, reduce="amax")

    text_ranks = torch.zeros(m, dtype=torch.long, device=device)
    image_ranks = torch.zeros(n, dtype=torch.long, device=device)
    for t0 in tqdm(range(0, m, text_chunk), desc="retrieval", unit="chunk", disable=not progress):
        t = text_emb[t0:t0 + text_chunk].to(device).float()  # (tc, D)
        owner = text_to_image[t0:t0 + len(t)]  # (tc,)
        for i0 in range(0, n, image_chunk):
            im = image_emb[i0:i0 + image_chunk].to(device).float()  # (ic, D)
            scores = t @ im.T  # (tc, ic)
            # A caption's own image (and, for an image, its own captions) never counts against it: those few
            # matching pairs are set to -inf (masking, not comparing, so rounding cannot make a match outrank itself).
            rows = ((owner >= i0) & (owner < i0 + len(im))).nonzero().squeeze(1)
            scores[rows, owner[rows] - i0] = float("-inf")
            text_ranks[t0:t0 + len(t)] += (scores > pos_text[t0:t0 + len(t), None]).sum(1)
            image_ranks[i0:i0 + len(im)] += (scores > best_image[None, i0:i0 + len(im)]).sum(0)
    image_ranks[torch.isinf(best_image)] = -1
    return text_ranks.cpu(), image_ranks.cpu()


def recall_at_k(text_ranks: torch.Tensor, image_ranks: torch.Tensor,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """CLIP_benchmark's keys from ranks: ``image_retrieval_recall@K`` (over captions), ``text_retrieval_recall@K``
    (over images that have captions)."""
    valid = image_ranks[image_ranks >= 0]
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float((text_ranks < k).float().mean()) if len(text_ranks) else 0.0
        metrics[f"text_retrieval_recall@{k}"] = float((valid < k).float().mean()) if len(valid) else 0.0
    return metrics


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10), image_chunk: int = 4096, text_chunk: int = 4096,
                      device: torch.device | str | None = None) -> dict[str, float]:
    """Recall@K both ways (see the module docstring) from embeddings, block by block."""
    text_ranks, image_ranks = retrieval_ranks(image_emb, text_emb, text_to_image, image_chunk, text_chunk, device)
    return recall_at_k(text_ranks, image_ranks, ks)


def chunked_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 8192,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` keys for each query by dot product, streaming over key chunks (for search over big galleries).

    Args:
        queries: (Q, D).
        keys: (K, D); may live on the CPU while ``device`` is a GPU.
        k: How many to keep (at most K).
        chunk: Keys per block.
        device: Where blocks are computed.

    Returns:
        ``(scores (Q, k), indices (Q, k))``, best first.
    """
    device = torch.device(device) if device is not None else queries.device
    k = min(k, len(keys))
    q = queries.to(device).float()
    best_s = torch.full((len(q), 0), float("-inf"), device=device)
    best_i = torch.zeros((len(q), 0), dtype=torch.long, device=device)
    for k0 in range(0, len(keys), chunk):
        block = keys[k0:k0 + chunk].to(device).float()
        s = q @ block.T  # (Q, kc)
        s_top, i_top = s.topk(min(k, s.shape[1]), dim=1)
        merged_s = torch.cat([best_s, s_top], dim=1)
        merged_i = torch.cat([best_i, i_top + k0], dim=1)
        best_s, order = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
        best_i = merged_i.gather(1, order)
    return best_s.cpu(), best_i.cpu()


@dataclass
class RetrievalResult:
    """Metrics with the numbers of images and captions evaluated and the images skipped."""

    metrics: dict[str, float]
    n_images: int
    n_texts: int
    skipped: list[tuple[str, str]]


def evaluate_retrieval(model: EvalModel, dataset: EvalDataset | Iterable, batch_size: int = 64,
                       ks: Sequence[int] = (1, 5, 10), chunk: int = 4096, progress: bool = False) -> RetrievalResult:
    """Embeds a captioned dataset (images and their captions, batch by batch) and computes Recall@K.

    Args:
        model: The model.
        dataset: Yields samples with ``captions`` (one or more per image).
        batch_size: Images per batch.
        ks: The K of Recall@K.
        chunk: Block side for the ranking (see :func:`retrieval_ranks`).
        progress: Show progress bars.

    Raises:
        ValueError: When no image could be read or a sample has no captions.
    """
    image_embs, text_embs, owners = [], [], []
    n_images = 0
    for images, metas in tqdm(iter_batches(dataset, model.transform, batch_size), desc="embed", unit="batch",
                              disable=not progress):
        captions = []
        for j, meta in enumerate(metas):
            if not meta.captions:
                raise ValueError(f"{meta.source}: no captions (retrieval needs a caption column or 'txt' field)")
            captions.extend(meta.captions)
            owners.extend([n_images + j] * len(meta.captions))
        image_embs.append(model.encode_images(images))
        text_embs.append(model.encode_texts(captions))
        n_images += len(metas)
    skipped = list(getattr(dataset, "skipped", []))
    if n_images == 0:
        raise ValueError(f"no images could be read ({len(skipped)} skipped)")
    image_emb, text_emb = torch.cat(image_embs), torch.cat(text_embs)
    metrics = retrieval_metrics(image_emb, text_emb, torch.tensor(owners), ks, chunk, chunk, device=model.device)
    return RetrievalResult(metrics, n_images, len(text_emb), skipped)
