"""Projected image tokens of open_clip's image towers, for methods that match text to patches (FedOTP).

``image_tokens(visual, images (B, 3, H, W)) -> (B, 1 + P, D)``, in the joint embedding space ``D``:

* ViT (``open_clip.transformer.VisionTransformer`` with class-token pooling): the transformer's output
  tokens, each passed through ``ln_post`` and ``proj``. Token 0 is the class token and equals
  ``visual(images)``; tokens ``1..P`` are the patches in raster order. (open_clip's own
  ``output_tokens`` option returns the patch tokens *before* ``proj``, i.e. not in the joint space.)
  Extra tokens appended after the patches (deep vision prompts) are dropped.
* ModifiedResNet (RN50, ...): the attention pool evaluated with every position as a query, as in the
  ResNet branch of PLOT / FedOTP. Token 0 is the mean-token query and equals ``visual(images)``;
  tokens ``1..HW`` are the positions of the last feature map (7 x 7 for RN50 at 224 px).

The tower is run once, unchanged; a hook that is removed before returning captures the input of its
last stage (nothing is modified on the shared frozen CLIP).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn


class UnsupportedImageTower(TypeError):
    """The image tower does not expose tokens the way a method needs."""


def check_token_vit(visual: nn.Module, purpose: str) -> None:
    """Raise ``UnsupportedImageTower`` unless ``visual`` is a class-token-pooled open_clip ViT."""
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedImageTower(f"{purpose} needs a ViT image tower; got {type(visual).__name__}")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise UnsupportedImageTower(
            f"{purpose} needs class-token pooling (CLIP ViTs); this ViT pools with "
            f"{'an attentional pooler' if getattr(visual, 'attn_pool', None) is not None else visual.pool_type!r}"
        )


def _run_capturing(visual: nn.Module, stage: nn.Module, images: torch.Tensor, output: bool) -> torch.Tensor:
    """Run ``visual(images)`` and return the output (or the first input) of its submodule ``stage``."""
    captured: list[torch.Tensor] = []
    if output:
        handle = stage.register_forward_hook(lambda _m, _args, out: captured.append(out))
    else:
        handle = stage.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        visual(images)
    finally:
        handle.remove()
    return captured[-1]


def vit_tokens(visual: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + P, D)`` projected tokens of an open_clip ViT (see the module docstring)."""
    check_token_vit(visual, "image tokens")
    x = _run_capturing(visual, visual.transformer, images, output=True)  # (B, L, width), batch first
    num_patches = visual.grid_size[0] * visual.grid_size[1]
    x = visual.ln_post(x[:, : 1 + num_patches])
    return x @ visual.proj if visual.proj is not None else x


def resnet_tokens(visual: ModifiedResNet, images: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + HW, D)``: CLIP's attention pool with every position (and the mean token) as a query."""
    pool = visual.attnpool
    fmap = _run_capturing(visual, pool, images, output=False)  # (B, C, H, W)
    x = fmap.flatten(2).transpose(1, 2)  # (B, HW, C)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pool.positional_embedding.to(x.dtype)
    batch, length, width = x.shape
    heads = pool.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C / heads)
        return t.view(batch, length, heads, width // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(pool.q_proj(x)), split(pool.k_proj(x)), split(pool.v_proj(x)))
    return pool.c_proj(out.transpose(1, 2).reshape(batch, length, width))


def image_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Projected image tokens ``(B, 1 + P, D)``; token 0 is the pooled CLIP image feature."""
    if isinstance(visual, VisionTransformer):
        return vit_tokens(visual, images)
    if isinstance(visual, ModifiedResNet):
        return resnet_tokens(visual, images)
    raise UnsupportedImageTower(
        "image tokens are implemented for open_clip's VisionTransformer and ModifiedResNet, "
        f"not {type(visual).__name__}"
    )
