"""VPT: visual prompt tokens with CLIP's fixed zero-shot text classifier, federated (the baseline of FedMGP
and of the federated prompt-learning empirical study).

Visual Prompt Tuning, shallow (Jia et al., ECCV 2022) on CLIP: ``visual_prompt.ctx`` ``(n_v, d_vision)``,
``n_v = N_CTX_VISION`` (4), N(0, 0.02), appended to the ViT's input tokens after the positional embedding,
before ``ln_pre`` (``trainers/visual_prompt.py``). The classifier is the frozen CLIP's zero-shot text
features of ``TEXT_TEMPLATE.format(class)`` ("a photo of a {}.", as published, whatever the dataset),
computed once per class set; logits ``logit_scale * cos(prompted image, class text)``, loss
cross-entropy. Only the visual prompt is trained, and it is shared: FedAvg weighted by the clients'
train-set sizes (as published); nothing is personal.

The image tower is prompted: no feature cache, clients trained one after another
(``PromptedImageTower``). ViT backbones only.

Config ``TRAINER.VPT`` (official ``configs/trainers/VPT/base2novel_vit_b16.yaml`` of the FedMGP code base):
``N_CTX_VISION`` 4, ``PREC`` fp16 (fp32 on CPU); SGD lr 0.001, constant, batch 8, 10 rounds of 2 local
epochs, 10 clients, pathological split of the base classes. Difference from the official code: a fresh
optimiser per client per round.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.base import FederatedTrainer, load_frozen_clip
from trainers.handcrafted import HandcraftedText
from trainers.visual_prompt import PromptedImageTower, VisualPrompt, prompted_image_features


class VPTCLIP(nn.Module):
    """Frozen CLIP with visual prompt tokens and a fixed hand-crafted text classifier.

    ``encode_image(images (B, 3, H, W)) -> (B, D)``; ``eval_context() -> (C, D)`` (normalised, constant);
    ``logits(features (B, D), text (C, D)) -> (B, C)``.
    """

    def __init__(self, clip, classnames: list[str], template: str, n_tokens: int):
        super().__init__()
        self.clip = clip
        self.image_encoder = clip.model.visual
        self.logit_scale = clip.model.logit_scale
        self.visual_prompt = VisualPrompt(self.image_encoder, n_tokens, "VPT")
        self.text = HandcraftedText(clip, classnames, template)

    def set_classnames(self, classnames: list[str]) -> None:
        self.text.set_classnames(classnames)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return prompted_image_features(self.image_encoder, images, self.visual_prompt.ctx)

    def eval_context(self) -> torch.Tensor:
        return self.text()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * F.normalize(image_features, dim=-1).to(text_features.dtype) @ text_features.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_image(images), self.eval_context())


@TRAINER_REGISTRY.register()
class VPT(PromptedImageTower, FederatedTrainer):
    """Visual prompt tokens with CLIP's zero-shot text classifier; the tokens averaged (FedAvg)."""

    CFG_NODE = "VPT"
    SHARED = ("visual_prompt.ctx",)
    CFG_RULES = {"N_CTX_VISION": lambda t: None if int(t.N_CTX_VISION) >= 1 else
                 f"TRAINER.VPT.N_CTX_VISION must be >= 1, got {t.N_CTX_VISION}",
                 "TEXT_TEMPLATE": lambda t: None if "{}" in str(t.TEXT_TEMPLATE) else
                 f"TRAINER.VPT.TEXT_TEMPLATE must contain '{{}}' for the class name, got '{t.TEXT_TEMPLATE}'"}

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.N_CTX_VISION = 4
        node.TEXT_TEMPLATE = "a photo of a {}."
        node.PREC = "fp16"
        return node

    def build_model(self) -> None:
        clip = load_frozen_clip(self.cfg, self.device)
        self.model = VPTCLIP(clip, self.classnames, str(self.tcfg.TEXT_TEMPLATE), int(self.tcfg.N_CTX_VISION))
        self.model.to(self.device)
        self.register_model("model", self.model)
