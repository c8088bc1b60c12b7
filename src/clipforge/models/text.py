"""CLIP's causal text transformer: features at the end-of-text token, projected."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, cast

import torch
from torch import nn

from clipforge.models.config import TextConfig
from clipforge.models.layers import Block, Transformer, make_act


def trim_tokens(tokens: torch.Tensor, config: TextConfig | None, multiple: int = 8) -> torch.Tensor:
    """``tokens`` (B, T) cut after the batch's longest caption, rounded up to a multiple of ``multiple`` (≤ T).

    Exact for a causal tower pooled at the end-of-text token (CLIP's): no position attends to a later one, so the
    positions after every caption's end-of-text token never change a feature. Anything else comes back unchanged:
    a bidirectional or last-position tower (SigLIP pads on purpose), a model without a token tower (CLIPPO's rendered
    text, ``config`` None), input that is not (B, T) ids. Call it host-side, before the copy to the device: reading
    the lengths is a sync on a GPU tensor.
    """
    if not cuttable(tokens, config):
        return tokens
    assert config is not None
    T = tokens.shape[1]
    length = int(eot_positions(tokens, config).max()) + 1 if tokens.shape[0] else T  # the tower reads no later position
    return tokens[:, :min(T, -(-length // multiple) * multiple)]


def cuttable(tokens: torch.Tensor, config: TextConfig | None) -> bool:
    """Whether cutting (B, T) ids after their end-of-text tokens leaves the features as they are: a causal tower
    pooled at the end-of-text token, fed token ids."""
    return config is not None and config.causal and config.pool != "last" and tokens.ndim == 2 \
        and not tokens.is_floating_point()


class TokenBuckets(NamedTuple):
    """A batch's token ids grouped by length, for a causal tower to run once per group (``length_buckets``).

    ``parts[i]`` is (n_i, T_i): the captions whose end-of-text token lies within T_i, cut there; ``inverse`` maps
    the concatenated parts' rows back to the batch's order.
    """

    parts: tuple[torch.Tensor, ...]
    inverse: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TokenBuckets:
        """The same buckets on ``device``."""
        return TokenBuckets(tuple(p.to(device, non_blocking=non_blocking) for p in self.parts),
                            self.inverse.to(device, non_blocking=non_blocking))


def length_buckets(tokens: torch.Tensor, config: TextConfig | None, multiple: int = 8) -> torch.Tensor | TokenBuckets:
    """``tokens`` (B, T) grouped by caption length, each group cut after its longest caption (a multiple of
    ``multiple``), so that each caption costs its own length rounded up rather than the batch's longest.

    Exact where ``trim_tokens`` is (a causal tower pooled at the end-of-text token: rows never interact, and no
    position reads a later one); anything else comes back unchanged, as from ``trim_tokens``. Call it host-side,
    before the copy to the device.
    """
    if not cuttable(tokens, config) or not tokens.shape[0]:
        return tokens
    assert config is not None
    T = tokens.shape[1]
    cut = ((eot_positions(tokens, config) + multiple) // multiple * multiple).clamp(max=T)  # (B,) each row's length
    order = torch.argsort(cut, stable=True)
    lengths, counts = torch.unique_consecutive(cut[order], return_counts=True)
    rows = order.split(counts.tolist())
    parts = tuple(tokens[r, :n] for r, n in zip(rows, lengths.tolist(), strict=True))
    return TokenBuckets(parts, torch.argsort(order))


def eot_positions(tokens: torch.Tensor, config: TextConfig) -> torch.Tensor:
    """(B,) where each sequence's features are read: see ``TextConfig.eot_token_id``."""
    if config.eot_token_id is None:
        return tokens.argmax(dim=-1)  # OpenAI: end-of-text is the highest id in its vocabulary
    return (tokens == config.eot_token_id).int().argmax(dim=-1)


class TextTransformer(nn.Module):
    """Token + positional embeddings → blocks → ``ln_final`` → pooling → projection.

    CLIP: causal blocks, features at the end-of-text token, a bias-free projection. SigLIP: bidirectional blocks,
    features at the last position of the padded text, a projection with bias (``TextConfig.causal/pool/proj_bias``).

    Args:
        config: The tower's shape and pooling rule.
        embed_dim: Output (shared embedding space) dimension.
        act: Activation name for the MLPs.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(self, config: TextConfig, embed_dim: int, act: str, norm_eps: float = 1e-5):
        super().__init__()
        self.config = config
        self.token_embed = nn.Embedding(config.vocab_size, config.width)
        self.pos_embed = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads, config.mlp_ratio, make_act(act),
                                       causal=config.causal, norm_eps=norm_eps, drop_path=config.drop_path,
                                       dropout=config.dropout)
        self.ln_final = nn.LayerNorm(config.width, eps=norm_eps)
        self.proj = nn.Parameter(torch.empty(config.width, embed_dim))
        self.proj_bias = nn.Parameter(torch.zeros(embed_dim)) if config.proj_bias else None
        self.init_weights()

    def init_weights(self) -> None:
        """OpenAI's initialisation (``CLIP.initialize_parameters``)."""
        width, layers = self.config.width, self.config.layers
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
        for block in cast(Iterable[Block], self.transformer.blocks):
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.proj.weight, std=proj_std)
        nn.init.normal_(self.proj, std=width**-0.5)

    def forward(self, tokens: torch.Tensor | TokenBuckets) -> torch.Tensor:
        """Encodes token ids (B, T ≤ context_length), or their ``length_buckets``, into (B, embed_dim) features
        (not L2-normalised)."""
        if isinstance(tokens, TokenBuckets):  # one pass per length, the rows put back in the batch's order
            return torch.cat([self.encode(part) for part in tokens.parts])[tokens.inverse]
        return self.encode(tokens)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``forward`` on (B, T) ids (within the module's own call, so hooks such as FSDP's run once)."""
        T = tokens.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"text input has {T} tokens; this model's context_length is {self.config.context_length}")
        x = self.token_embed(tokens) + self.pos_embed[:T]  # (B, T, width)
        x = self.transformer(x)
        x = self.ln_final(x)
        if self.config.pool == "last":
            x = x[:, -1]  # (B, width)
        else:
            x = x[torch.arange(x.shape[0], device=x.device), self.eot_positions(tokens)]  # (B, width)
        x = x @ self.proj
        return x + self.proj_bias if self.proj_bias is not None else x

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Where each sequence's features are read: see ``TextConfig.eot_token_id``."""
        return eot_positions(tokens, self.config)
