"""Cross-attention blocks of the prompt generators (FedTPG's text-conditioned prompt generator, FedMVP's
attribute-conditioned visual prompts): multi-head attention of queries over a set of condition features,
the GEGLU feed-forward network that follows it, and the pre-norm self-attention block FedTPG may stack on
its queries."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GEGLU(nn.Module):
    """``(..., 2h) -> (..., h)``: the first half times GELU of the second half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``(*, M, d)`` over keys and values ``(N, D)`` (shared by every leading
    index) or ``(*, N, D)`` -> ``(*, M, d)``.

    ``softmax(q_h k_h^T / sqrt(d / H)) v_h`` per head ``h`` (``q = W_q x + b_q`` in ``d``, ``k, v`` from
    ``D`` to ``d``), heads concatenated and projected by ``out``; as ``nn.MultiheadAttention(d, H,
    kdim=D, vdim=D)``.
    """

    def __init__(self, dim: int, kv_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = int(heads)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``(*, L, d) -> (*, H, L, d / H)``."""
        return x.reshape(*x.shape[:-1], self.heads, -1).transpose(-3, -2)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """``values`` (default: ``keys``) may differ from the keys (FedMVP: keys layer-normed, values not)."""
        values = keys if values is None else values
        q, k, v = self._split(self.q(queries)), self._split(self.k(keys)), self._split(self.v(values))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (*, H, M, N)
        out = (weights @ v).transpose(-3, -2)  # (*, M, H, d / H)
        return self.out(out.reshape(*out.shape[:-2], -1))


def geglu_ffn(dim: int, mult: int = 4) -> nn.Sequential:
    """``(*, d) -> (*, d)``: LayerNorm -> Linear(d, 2 mult d) -> GEGLU -> Linear(mult d, d)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * mult * dim), GEGLU(), nn.Linear(mult * dim, dim))


class SelfAttentionBlock(nn.Module):
    """A pre-norm transformer block on a set of tokens ``(*, M, d) -> (*, M, d)``:

        x = Attention(q = k = v = LN(x)) + x,   x = FFN(x) + x   (FFN: :func:`geglu_ffn`, its own LN first)

    with :class:`CrossAttention` of the tokens over themselves (``heads`` heads).
    """

    def __init__(self, dim: int, heads: int, mult: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, dim, heads)
        self.ffn = geglu_ffn(dim, mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = self.attn(h, h) + x
        return self.ffn(x) + x
