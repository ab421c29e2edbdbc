"""Zero-shot CLIP with the dataset's hand-crafted template (no training, nothing to aggregate)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from dassl.data.datasets import dataset_template
from dassl.engine import TRAINER_REGISTRY
from trainers.base import FederatedTrainer, load_frozen_clip
from trainers.handcrafted import handcrafted_text_features


class TemplateCLIP(nn.Module):
    """CLIP whose class text features are the encoded hand-crafted prompts ``template.format(name)``."""

    def __init__(self, clip, classnames: list[str], template: str):
        super().__init__()
        self.clip = clip
        self.template = template
        self.image_encoder = clip.model.visual
        self.logit_scale = clip.model.logit_scale
        self.set_classnames(classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        text = handcrafted_text_features(self.clip, classnames, self.template)
        self.register_buffer("text_features", text, persistent=False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def eval_context(self) -> torch.Tensor:
        return self.text_features

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * F.normalize(image_features, dim=-1).to(text_features.dtype) @ text_features.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_image(images), self.text_features)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(FederatedTrainer):
    """Zero-shot CLIP: every client uses the same frozen model; the server only evaluates."""

    CFG_NODE = "ZSCLIP"
    SEQUENTIAL = "it has nothing to train"

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.TEMPLATE = ""  # "" = the dataset's own template
        node.PREC = "fp32"
        return node

    def build_model(self) -> None:
        clip = load_frozen_clip(self.cfg, self.device)
        self.model = TemplateCLIP(clip, self.classnames, dataset_template(self.cfg))
        self.register_model("model", self.model)
