"""CLIP with a fine-tuned copy of its text tower (and optionally its image tower): the base of the
weight-tuning methods (FLoRA, CE-LoRA, FedFFT).

Classification is zero-shot style, as in FLoRA: the class prompts ``template.format(name)`` (the
dataset's template) go through the *adapted* text tower; logits are ``logit_scale * cos(image,
class text)``. Training losses (``TRAINER.<NODE>.LOSS``):

* ``contrastive`` (published FLoRA): the CLIP symmetric loss over a batch of B images and the class
  prompts of their labels. With ``T = text[labels] (B, D)`` and ``L = scale * img @ T^T (B, B)``,
  ``loss = (CE(L, arange(B)) + CE(L^T, arange(B))) / 2``; two images of the same class count as
  negatives of each other (as published). The class text features are computed once per step for
  all C classes and indexed by the labels (identical to encoding B prompts).
* ``ce``: cross-entropy of the image over all class prompts.

The frozen CLIP shared by the process is never modified: ``TextTower`` is a copy (sharing the
frozen weight tensors unless the tower is fully fine-tuned). When the image tower is adapted, image
features are no longer a pure function of the image: ``image_features_cacheable`` is False and
training steps encode images with gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clip import TextEncoder
from dassl.data.datasets import dataset_template
from trainers.base import FederatedTrainer, load_frozen_clip
from trainers.lora import copy_tower

LOSSES = ("contrastive", "ce")


class TextTower(nn.Module):
    """The pieces of open_clip's built-in text tower, copied from a CLIP (see ``copy_tower``).

    It has the attributes ``clip.TextEncoder`` reads (``transformer``, ``positional_embedding``,
    ``ln_final``, ``text_projection``, ``token_embedding``, ``attn_mask``, pooling), so
    ``TextEncoder(tower)`` runs it. ``copy_token_embedding=False`` keeps a reference to the frozen
    token embedding (49408 x d) instead of copying it.
    """

    def __init__(self, clip_model: nn.Module, share_weights: bool, copy_token_embedding: bool = False):
        super().__init__()
        if not hasattr(clip_model, "transformer") or not hasattr(clip_model, "token_embedding"):
            raise TypeError("weight-tuning trainers need an open_clip CLIP with a built-in text tower")
        self.transformer = copy_tower(clip_model.transformer, share_weights)
        self.ln_final = copy_tower(clip_model.ln_final, share_weights)
        self.token_embedding = (copy_tower(clip_model.token_embedding, share_weights) if copy_token_embedding
                                else clip_model.token_embedding)
        for name in ("positional_embedding", "text_projection"):
            value = getattr(clip_model, name)
            if isinstance(value, nn.Parameter) and not share_weights:
                value = nn.Parameter(value.detach().clone(), requires_grad=False)
            elif isinstance(value, nn.Module):
                value = copy_tower(value, share_weights)
            setattr(self, name, value)
        self.attn_mask = getattr(clip_model, "attn_mask", None)
        self.text_pool_type = getattr(clip_model, "text_pool_type", "argmax")
        self.text_eos_id = getattr(clip_model, "text_eos_id", None)


class TunedCLIP(nn.Module):
    """CLIP with an adapted text tower ``text_encoder`` and image tower ``visual`` (shared frozen or
    an adapted copy). ``eval_context()`` -> normalised class text features ``(C, D)``;
    ``logits(image_features (B, D'), text (C, D)) -> (B, C)``."""

    def __init__(self, clip, classnames: list[str], template: str, text_tower: TextTower,
                 visual: nn.Module | None = None):
        super().__init__()
        self.clip = clip
        self.template = template
        self.text_encoder = TextEncoder(text_tower)
        self.visual = visual if visual is not None else clip.model.visual
        self.logit_scale = clip.model.logit_scale
        self.set_classnames(classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        """Tokenise ``template.format(name)`` for every class (label order)."""
        tokens = self.clip.tokenize([self.template.format(n.replace("_", " ")) for n in classnames])
        self.register_buffer("class_tokens", tokens.to(self.logit_scale.device), persistent=False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def class_text_features(self) -> torch.Tensor:
        """Normalised text features ``(C, D)`` of the class prompts through the adapted text tower."""
        tokens = self.class_tokens
        return F.normalize(self.text_encoder(self.text_encoder.embed(tokens), tokens).float(), dim=-1)

    def eval_context(self) -> torch.Tensor:
        return self.class_text_features()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * F.normalize(image_features.float(), dim=-1) @ text_features.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_image(images), self.eval_context())


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss for paired ``image_features (B, D)`` / ``text_features (B, D)``
    (normalised here); the i-th image's positive is the i-th text, every other pair is negative."""
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    logits = logit_scale.exp() * img @ txt.t()
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class TunedCLIPTrainer(FederatedTrainer):
    """Base of trainers that adapt CLIP's weights (see the module docstring).

    Subclasses implement ``build_text_tower(clip_model) -> TextTower`` and may override
    ``build_visual(clip_model) -> nn.Module | None`` (None: the shared frozen image tower).
    """

    SEQUENTIAL = "it trains a copy of a CLIP tower: each client has its own text (or image) encoder"

    def build_text_tower(self, clip_model: nn.Module) -> TextTower:
        raise NotImplementedError

    def build_visual(self, clip_model: nn.Module) -> nn.Module | None:
        return None

    def build_model(self) -> None:
        loss = str(self.tcfg.LOSS).lower()
        if loss not in LOSSES:
            raise ValueError(f"TRAINER.{self.CFG_NODE}.LOSS must be one of {LOSSES}, got '{self.tcfg.LOSS}'")
        self.loss_name = loss
        clip = load_frozen_clip(self.cfg, self.device)
        visual = self.build_visual(clip.model)
        # An adapted image tower makes image features depend on the trainable state: no caching.
        self.image_features_cacheable = visual is None
        self.model = TunedCLIP(clip, self.classnames, dataset_template(self.cfg),
                               self.build_text_tower(clip.model), visual)
        self.model.to(self.device)
        self.register_model("model", self.model)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``(B, D)``; with gradient while training an adapted image tower."""
        if self.image_features_cacheable or not self.model.training:
            return super().encode_images(images)
        with self.autocast():
            return self.model.encode_image(images).float()

    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        text = self.model.eval_context()  # (C, D)
        logits = self.model.logits(image_features, text)  # (B, C)
        if self.loss_name == "ce":
            return F.cross_entropy(logits, labels), logits, {}
        return clip_contrastive_loss(image_features, text[labels], self.model.logit_scale), logits, {}
