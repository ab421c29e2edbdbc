"""Shallow visual prompt tokens (VPT-shallow, Jia et al., ECCV 2022) and the trainer side of a prompted image tower.

``VisualPrompt``: ``ctx`` ``(n, d_vis)`` learnable tokens, N(0, 0.02) as VPT / IVLP / FedMGP. With
``prompted_image_features(visual, images, ctx)`` the ViT ``visual`` runs with them appended after the class
token and the patches, after the positional embedding and before ``ln_pre`` (they carry no positional
embedding; ``trainers/deep_prompts.py`` installs the hook for the duration of the call). The class token
still pools the output, so the prompt tokens act only through attention. The frozen CLIP is not modified.

``PromptedImageTower``: what every trainer whose image tower is prompted shares (FedMaPLe, IVLP, VPT,
FedMGP). Image features depend on the trainable state, so

* the frozen-feature caches are bypassed, explicitly: ``image_features_cacheable = False`` (the server
  builds no training feature cache, evaluation encodes the test images with each client's prompts);
* the clients of a round are trained one after another (``SEQUENTIAL``): the batched engine stacks the
  clients' prompts over cached image features, and a per-client ViT pass with gradient has no such form;
* training steps run the prompted ViT with gradient to the prompts; evaluation runs it without.

What the frozen tower would still allow to reuse is the patch embedding (``conv1`` + class token +
positional embedding), which precedes the prompt insertion. Across steps it is not cached: for ViT-B/16 it
is about 0.7 % of the tower's multiply-adds (196 x 768 x 768 of about 17.6 G), and training images are
augmented afresh every step. Within a step, several prompt sets (FedMGP's groups) share it: one tower pass
embeds the images once and runs the G prompted copies of the sequence together.
"""
from __future__ import annotations

import torch
from torch import nn

from trainers.deep_prompts import vision_prompts
from trainers.image_tokens import check_token_vit


class VisualPrompt(nn.Module):
    """``ctx`` ``(n, d_vis)``: ``n`` visual prompt tokens for the ViT ``visual`` (N(0, 0.02)); with ``groups``
    G: ``(G, n, d_vis)``, G sets of them (FedMGP's visual prompt groups)."""

    def __init__(self, visual: nn.Module, n_tokens: int, purpose: str = "visual prompt tokens",
                 groups: int | None = None):
        super().__init__()
        check_token_vit(visual, purpose)
        if int(n_tokens) < 1:
            raise ValueError(f"{purpose}: the number of visual prompt tokens must be >= 1, got {n_tokens}")
        shape = (int(n_tokens), int(visual.transformer.width))
        shape = shape if groups is None else (int(groups), *shape)
        self.ctx = nn.Parameter(torch.empty(shape, device=visual.conv1.weight.device).normal_(std=0.02))


def prompted_image_features(visual: nn.Module, images: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """Image features of ``images`` ``(B, 3, H, W)`` with the tokens ``ctx`` appended to the ViT's input
    sequence (see the module docstring); with gradient to ``ctx`` when enabled.

    ``ctx`` ``(n, d_vis)`` -> ``(B, D)``; ``ctx`` ``(G, n, d_vis)`` -> ``(G, B, D)``, the G prompt sets in one
    tower pass over ``G * B`` sequences (the images' patch embedding computed once)."""
    with vision_prompts(visual, ctx, []):
        out = visual(images)
    return out if ctx.dim() == 2 else out.view(ctx.shape[0], images.shape[0], -1)


class PromptedImageTower:
    """Mixin of a ``FederatedTrainer`` whose ``model.encode_image`` runs a prompted image tower (module docstring)."""

    image_features_cacheable = False
    SEQUENTIAL = "its image tower is prompted: image features are not cacheable, every step encodes images"

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Prompted image features ``(B, D)``; with gradient to the prompts while training."""
        if not self.model.training or not torch.is_grad_enabled():
            return super().encode_images(images)
        with self.autocast():
            return self.model.encode_image(images).float()
