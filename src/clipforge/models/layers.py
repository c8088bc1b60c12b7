"""Building blocks shared by every tower: attention, MLP, residual blocks, the block stack, MAP pooling.

Attention always goes through ``F.scaled_dot_product_attention`` so the fused flash / memory-efficient
kernels run on GPU; causal attention uses ``is_causal=True`` rather than a float mask. A ``key_mask`` (B, T),
true at the tokens that may be attended to, keeps padding out of every attention (SigLIP 2 NaFlex batches
images of different patch counts padded to one length); it goes to SDPA as a boolean ``attn_mask``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP checkpoints were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> Callable[[], nn.Module]:
    """Returns a constructor for the activation called ``name`` (``quick_gelu`` or ``gelu``)."""
    acts: dict[str, Callable[[], nn.Module]] = {
        "quick_gelu": QuickGELU,
        "gelu": nn.GELU,
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    }
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected one of {list(acts)}")
    return acts[name]


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection, computed by SDPA.

    Args:
        width: Model width.
        heads: Number of heads; must divide ``width``.
        causal: Whether position i may attend only to positions <= i.
    """

    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's init, which OpenAI's image towers keep.
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over ``x`` (B, T, width); ``key_mask`` (B, T), if given, is true at the keys to use."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3×(B, nh, T, hs)
        if key_mask is None:
            x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, nh, T, hs)
        else:
            mask = key_mask.view(B, 1, 1, T)  # (B, 1, 1, T): every query, every head
            if self.causal:  # SDPA takes a mask or is_causal, not both
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(x.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """Two-layer MLP: ``fc`` → activation → ``proj``."""

    def __init__(self, width: int, hidden: int, act: Callable[[], nn.Module]):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = act()
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


def drop_path(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: ``branch`` (B, ...) zeroed for a random ``rate`` of the samples, the rest scaled by
    ``1 / (1 − rate)`` so the expectation is unchanged; ``branch`` itself when not training or ``rate`` is 0."""
    if not training or rate == 0.0:
        return branch
    keep = torch.empty((branch.shape[0],) + (1,) * (branch.ndim - 1), device=branch.device, dtype=branch.dtype)
    return branch * keep.bernoulli_(1.0 - rate) / (1.0 - rate)


class Block(nn.Module):
    """Pre-norm residual attention block; at training time ``dropout`` drops elements of its two branches' outputs
    and ``drop_path`` whole branches per sample."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: Callable[[], nn.Module], causal: bool = False,
                 norm_eps: float = 1e-5, drop_path: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)
        self.drop_path, self.dropout = drop_path, dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + drop_path(self._drop(self.attn(self.ln_1(x), key_mask)), self.drop_path, self.training)
        x = x + drop_path(self._drop(self.mlp(self.ln_2(x))), self.drop_path, self.training)
        return x

    def _drop(self, branch: torch.Tensor) -> torch.Tensor:
        return F.dropout(branch, self.dropout, self.training) if self.dropout else branch


class Transformer(nn.Module):
    """A stack of residual attention blocks on (batch, tokens, width) inputs.

    Args:
        width: Model width.
        layers: Number of blocks.
        heads: Attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``width``.
        act: Activation constructor.
        causal: Causal self-attention (text) or full (images).
        norm_eps: LayerNorm epsilon.
        drop_path: Stochastic depth of the last block; block ``i`` of ``L`` drops at ``drop_path · i / (L − 1)``.
        dropout: Dropout on every block's branch outputs.
    """

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: Callable[[], nn.Module],
                 causal: bool = False, norm_eps: float = 1e-5, drop_path: float = 0.0, dropout: float = 0.0):
        super().__init__()
        rates = [drop_path * i / max(layers - 1, 1) for i in range(layers)]
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, act, causal, norm_eps, rate, dropout)
                                    for rate in rates)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Runs the blocks on ``x`` (B, T, width); ``key_mask`` (B, T) bool, if given, hides the false tokens from
        every attention (they are still computed, and their own outputs are meaningless)."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, key_mask, use_reentrant=False)
            else:
                x = block(x, key_mask)
        return x


class MAPHead(nn.Module):
    """Multi-head attention pooling: a learned probe attends over all tokens (big_vision ``MAPHead``).

    ``probe`` → cross-attention over the tokens → ``x + mlp(norm(x))``; returns (B, width). A ``key_mask`` (B, T)
    bool keeps the false (padding) tokens out of the pooling.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: Callable[[], nn.Module], norm_eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out_proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)
        nn.init.xavier_uniform_(self.probe.view(1, width))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.heads
        q = self.q(self.probe.expand(B, -1, -1)).view(B, 1, self.heads, hs).transpose(1, 2)  # (B, nh, 1, hs)
        k, v = self.kv(x).view(B, T, 2, self.heads, hs).permute(2, 0, 3, 1, 4)  # 2×(B, nh, T, hs)
        mask = key_mask.view(B, 1, 1, T) if key_mask is not None else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, 1, C)
        x = self.out_proj(x)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]
