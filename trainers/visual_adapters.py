"""Image-side modules of FedTV / FLORA that act on the final (frozen) CLIP image embedding.

* ``AttentionAdapter``: a FedCLIP-style channel-attention gate. ``gate = softmax(W2 relu(W1 x))``
  over the D channels, output ``gate * x``. FedTV's published adapter has no biases, FLORA's has
  them (``bias``).
* ``VisualDynamicFusion``: FedTV's per-image weighting of K candidate features (the original
  feature, the globally and the locally adapted one). ``q = W_q x``, ``k_j = W_k c_j``,
  ``alpha = softmax_j(<q, k_j> / s)``, output ``sum_j alpha_j c_j``. The published code uses
  ``s = 1`` (no ``sqrt(hidden)`` scaling); that is our default too (``scaled=False``), because the
  published numbers were obtained with it; ``scaled=True`` gives the usual scaled dot product.
  The caller L2-normalises the output before the cosine logits.

Both act on ``(B, D)`` features, so the frozen image features stay cacheable.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class AttentionAdapter(nn.Module):
    """``x -> softmax(W2 relu(W1 x + b1) + b2) * x`` (channel gate, softmax over D).

    Args:
        dim: feature size D.
        bias: use biases in the two ``Linear(D, D)`` layers (FedTV published: False; FLORA: True).

    Shapes: ``x (B, D)`` -> ``(B, D)``; ``gate(x)`` is ``(B, D)`` with rows summing to 1.
    """

    def __init__(self, dim: int, bias: bool = False):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"adapter feature size must be positive, got {dim}")
        self.layer = nn.Sequential(nn.Linear(dim, dim, bias=bias), nn.ReLU(), nn.Linear(dim, dim, bias=bias),
                                   nn.Softmax(dim=-1))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights ``(B, D)`` (a softmax over channels)."""
        return self.layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x) * x


class VisualDynamicFusion(nn.Module):
    """Per-image attention over K candidate features (FedTV's dynamic visual fusion).

    Args:
        dim: feature size D.
        hidden: query/key size H (published 64).
        scaled: divide the scores by ``sqrt(H)`` (published: no scaling, the default).

    Shapes: ``x (B, D)`` (the query source, the original feature), ``candidates (B, K, D)``;
    returns the fused feature ``(B, D)`` and the weights ``(B, K)`` (each row sums to 1).
    """

    def __init__(self, dim: int, hidden: int = 64, scaled: bool = False):
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"fusion sizes must be positive, got dim={dim}, hidden={hidden}")
        self.w_query = nn.Linear(dim, hidden)
        self.w_key = nn.Linear(dim, hidden)
        self.scale = 1.0 / math.sqrt(hidden) if scaled else 1.0

    def weights(self, x: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Fusion weights ``(B, K)``: ``softmax_j(<W_q x, W_k c_j> * scale)``."""
        if candidates.dim() != 3 or candidates.shape[0] != x.shape[0] or candidates.shape[2] != x.shape[1]:
            raise ValueError(f"candidates must be (B, K, D) for x {tuple(x.shape)}, got {tuple(candidates.shape)}")
        query = self.w_query(x)  # (B, H)
        keys = self.w_key(candidates)  # (B, K, H)
        scores = torch.einsum("bh,bkh->bk", query, keys) * self.scale
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.weights(x, candidates)
        return torch.einsum("bk,bkd->bd", alpha, candidates), alpha
