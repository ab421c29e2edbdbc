"""Low-rank adaptation (LoRA, Hu et al. 2021) of open_clip's transformer towers.

Why a weight re-parametrisation and not a wrapped ``nn.Linear``: open_clip's attention is
``nn.MultiheadAttention``, whose forward reads ``in_proj_weight`` and ``out_proj.weight`` directly
(``F.multi_head_attention_forward``); replacing ``out_proj`` by a module that adds ``x A B`` in its
own ``forward`` is never called. ``torch.nn.utils.parametrize`` instead replaces the *weight
tensor* by ``W + delta``: every read of ``out_proj.weight`` / ``in_proj_weight`` (including MHA's
fused inference path) sees the adapted weight. The same mechanism serves the MLP's ``c_fc`` /
``c_proj``. Hugging Face ``peft`` was not used: it is not installed, it would need to target
``nn.MultiheadAttention`` internals it does not model as separate q/k/v linears (open_clip packs
q, k, v into one ``in_proj_weight``), and it has no tri-matrix (CE-LoRA) variant; the module here
is ~100 lines.

For a linear map ``y = x W^T + b`` with ``W (out, in)`` the adapted weight is

    W' = W + s * (A @ B)^T          (LoRA, FLoRA: ``A (in, r)``, ``B (r, out)``)
    W' = W + s * (A @ C @ B)^T      (tri-matrix LoRA, CE-LoRA: ``C (r, r)``)

so ``y = x W^T + s * x A (C) B + b``, exactly the published ``linear(x) + s * (x @ W_a @ W_b)``.
For q / k / v the delta only touches rows ``[0, d)``, ``[d, 2d)``, ``[2d, 3d)`` of the packed
``in_proj_weight (3d, d)``.

Adaptation is applied to a *copy* of a tower (``copy_tower``): the shared frozen CLIP of the
process is never modified. ``copy_tower(share_weights=True)`` copies the module structure but
re-uses the frozen weight tensors (no extra memory for ViT-L); the parametrisation then lives only
on the copy.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

#: Targets inside every residual block: attention q / k / v (rows of ``in_proj_weight``), the
#: attention output projection, and the MLP's two linear layers.
TARGETS = ("q", "k", "v", "out", "mlp")
_QKV = ("q", "k", "v")


class LoRAFactors(nn.Module):
    """The low-rank factors of one adapted weight.

    ``A (in, r)``, ``B (r, out)`` and, for the tri-matrix form, ``C (r, r)``; ``delta()`` returns
    ``scaling * (A [C] B)^T`` with shape ``(out, in)`` (the layout of ``nn.Linear.weight``).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float, tri: bool = False):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.scaling = float(scaling)
        self.A = nn.Parameter(torch.zeros(in_features, rank))
        self.B = nn.Parameter(torch.zeros(rank, out_features))
        self.C = nn.Parameter(torch.zeros(rank, rank)) if tri else None

    def delta(self) -> torch.Tensor:
        """``(out, in)`` weight update, contiguous (the frozen weight's layout: same GEMM kernels)."""
        inner = self.A @ self.C if self.C is not None else self.A
        return self.scaling * (self.B.t() @ inner.t())


class LoRAWeight(nn.Module):
    """Parametrisation ``W -> W + delta`` of a weight ``(out, in)``; factors may cover row blocks.

    ``blocks`` maps a factor name to its row range ``(start, stop)`` in ``W`` (one block covering
    every row for an ordinary linear layer; q / k / v blocks for ``in_proj_weight``).
    """

    def __init__(self, factors: dict[str, LoRAFactors], blocks: dict[str, tuple[int, int]]):
        super().__init__()
        self.factors = nn.ModuleDict(factors)
        self.blocks = dict(blocks)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight
        for name, factors in self.factors.items():
            start, stop = self.blocks[name]
            delta = factors.delta().to(weight.dtype)
            if (start, stop) == (0, weight.shape[0]):
                out = out + delta
            else:
                out = out + torch.zeros_like(weight).slice_scatter(delta, dim=0, start=start, end=stop)
        return out


def copy_tower(module: nn.Module, share_weights: bool) -> nn.Module:
    """A copy of ``module``'s structure. ``share_weights``: re-use its (frozen) parameters and
    buffers instead of copying them (a LoRA copy adds only its factors)."""
    memo: dict[int, object] = {}
    if share_weights:
        memo.update({id(t): t for t in module.parameters()})
        memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)


def parse_targets(targets: Iterable[str]) -> list[str]:
    """Validated target names (lower case) from ``TARGETS``; raises a clear ValueError otherwise."""
    out = [str(t).strip().lower() for t in targets]
    bad = [t for t in out if t not in TARGETS]
    if bad:
        raise ValueError(f"unknown LoRA target(s) {bad}; valid: {', '.join(TARGETS)}")
    return list(dict.fromkeys(out))


def residual_blocks(tower: nn.Module) -> list[nn.Module]:
    """The residual attention blocks of an open_clip text transformer or ViT (``transformer.resblocks``)."""
    transformer = getattr(tower, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise TypeError(f"{type(tower).__name__} has no transformer.resblocks: LoRA supports open_clip "
                        "transformer towers (ViT image towers and the built-in text tower), not ResNets")
    for block in blocks:
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise TypeError(f"residual block {type(block).__name__} does not use nn.MultiheadAttention")
    return list(blocks)


def _make_factors(weight: torch.Tensor, rows: int, rank: int, scaling: float, tri: bool) -> LoRAFactors:
    f = LoRAFactors(weight.shape[1], rows, rank, scaling, tri)
    return f.to(device=weight.device)


def add_lora(tower: nn.Module, targets: Iterable[str], rank: int, scaling: float,
             tri: bool = False) -> list[LoRAFactors]:
    """Parametrise the ``targets`` of every residual block of ``tower`` in place (call on a copy).

    Factors are created zero; initialise them with ``init_lora`` / ``init_tri_lora``.
    Returns the created ``LoRAFactors`` in block order.
    """
    targets = parse_targets(targets)
    created: list[LoRAFactors] = []
    for block in residual_blocks(tower):
        attn = block.attn
        qkv = [t for t in _QKV if t in targets]
        if qkv:
            if not attn._qkv_same_embed_dim:
                raise TypeError("LoRA on q/k/v needs a packed in_proj_weight (kdim == vdim == embed_dim)")
            w, d = attn.in_proj_weight, attn.embed_dim
            factors = {t: _make_factors(w, d, rank, scaling, tri) for t in qkv}
            blocks = {t: (_QKV.index(t) * d, (_QKV.index(t) + 1) * d) for t in qkv}
            parametrize.register_parametrization(attn, "in_proj_weight", LoRAWeight(factors, blocks))
            created.extend(factors.values())
        linears = []
        if "out" in targets:
            linears.append(("out", attn.out_proj))
        if "mlp" in targets:
            linears += [("mlp", block.mlp.c_fc), ("mlp", block.mlp.c_proj)]
        for name, linear in linears:
            w = linear.weight
            factors = {name: _make_factors(w, w.shape[0], rank, scaling, tri)}
            parametrize.register_parametrization(linear, "weight", LoRAWeight(factors, {name: (0, w.shape[0])}))
            created.extend(factors.values())
    return created


@torch.no_grad()
def init_lora(factors: Iterable[LoRAFactors], generator: torch.Generator | None = None) -> None:
    """FLoRA / LoRA init: ``A ~ N(0, 1) / sqrt(r)``, ``B = 0`` (the adapted model starts as the frozen one)."""
    for f in factors:
        r = f.A.shape[1]
        f.A.copy_(torch.randn(f.A.shape, generator=generator) / math.sqrt(r))
        f.B.zero_()


@torch.no_grad()
def init_tri_lora(factors: Iterable[LoRAFactors], mode: str = "zero_c",
                  generator: torch.Generator | None = None) -> None:
    """CE-LoRA init.

    ``zero_c`` (default): ``A ~ N(0, 1/in)``, ``B ~ N(0, 1/r)``, ``C = 0``: the adapted model starts
    as the frozen one and C (the shared matrix) receives a non-zero gradient from the first step.
    ``published``: ``A ~ N(0, 1e-3^2)``, ``C = I``, ``B = 0`` (CE-LoRA's code): C's gradient is
    exactly zero while B = 0, so with only C trainable nothing is ever learned.
    """
    if mode not in ("zero_c", "published"):
        raise ValueError(f"CE-LoRA init must be 'zero_c' or 'published', got '{mode}'")
    for f in factors:
        if f.C is None:
            raise ValueError("init_tri_lora needs tri-matrix factors (tri=True)")
        (n_in, r), n_out = f.A.shape, f.B.shape[1]
        if mode == "zero_c":
            f.A.copy_(torch.randn(n_in, r, generator=generator) / math.sqrt(n_in))
            f.B.copy_(torch.randn(r, n_out, generator=generator) / math.sqrt(r))
            f.C.zero_()
        else:
            f.A.copy_(torch.randn(n_in, r, generator=generator) * 1e-3)
            f.B.zero_()
            f.C.copy_(torch.eye(r))
