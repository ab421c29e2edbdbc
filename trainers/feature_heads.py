"""FLoRA's lightweight references on frozen CLIP features: FedLC and FedAA. Everything trainable is
shared and FedAvg-aggregated; image features stay frozen (and cached).

FedLC: a linear classifier ``logits = W f + b`` on frozen image features ``f (B, D)``, with
``W (C, D)`` initialised from the zero-shot text weights (normalised ``template.format(name)``
features) and ``b = 0``, as FLoRA's ``fedlc``. ``NORMALIZE`` L2-normalises f first (then the
initial classifier is exactly zero-shot CLIP up to the logit scale); ``USE_LOGIT_SCALE`` multiplies
by CLIP's logit scale (off as published, where ``logits = fc(f)``). Its weights are tied to the
training classes: evaluating it on other classes (novel) raises ``ClassSpaceError``.

FedAA: FedCLIP's attention adapter ``a(f) = Softmax(Linear(D/red, D)(Tanh(Linear(D, D/red)(f))))``
applied as a gate ``f * a(f)`` before the usual cosine logits against the frozen class text
features. Both Linear layers are ``eye_``-initialised (identity on the leading ``min(in, out)``
coordinates; exact identity for the published ``REDUCTION 1``) with zero bias, as in FLoRA's
``fedaa``. ``ON ["vision"]`` (default) gates image features, ``"text"`` adds a second adapter on the
class text features (FLoRA's ``--aa_text``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from dassl.data.datasets import dataset_template
from dassl.engine import TRAINER_REGISTRY
from federated.errors import ClassSpaceError
from trainers.base import FederatedTrainer, load_frozen_clip
from trainers.zsclip import TemplateCLIP


class LinearHeadCLIP(TemplateCLIP):
    """Frozen image tower + a linear classifier ``head (D -> C)`` initialised from zero-shot text weights."""

    def __init__(self, clip, classnames: list[str], template: str, normalize: bool, use_logit_scale: bool):
        super().__init__(clip, classnames, template)
        self.normalize = normalize
        self.use_logit_scale = use_logit_scale
        self.head = nn.Linear(self.text_features.shape[1], len(classnames))
        with torch.no_grad():
            self.head.weight.copy_(self.text_features)
            self.head.bias.zero_()
        self.trained_classnames = list(classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        if hasattr(self, "trained_classnames") and list(classnames) != self.trained_classnames:
            raise ClassSpaceError("FedLC's linear classifier is tied to its training classes")
        super().set_classnames(classnames)

    def eval_context(self) -> None:
        return None

    def logits(self, image_features: torch.Tensor, context: None = None) -> torch.Tensor:
        f = image_features.float()
        f = F.normalize(f, dim=-1) if self.normalize else f
        out = self.head(f)
        return self.logit_scale.exp() * out if self.use_logit_scale else out


def attention_adapter(dim: int, reduction: int) -> nn.Sequential:
    """FedCLIP's ``Linear(D, D/red) -> Tanh -> Linear(D/red, D) -> Softmax``, eye_ init, zero bias."""
    if reduction < 1 or dim // reduction < 1:
        raise ValueError(f"FedAA REDUCTION must be in [1, {dim}], got {reduction}")
    hidden = dim // reduction
    adapter = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim), nn.Softmax(dim=-1))
    with torch.no_grad():
        for layer in (adapter[0], adapter[2]):
            nn.init.eye_(layer.weight)
            layer.bias.zero_()
    return adapter


class AdapterCLIP(TemplateCLIP):
    """Frozen CLIP whose image (and optionally class text) features are gated by attention adapters."""

    def __init__(self, clip, classnames: list[str], template: str, on: list[str], reduction: int):
        super().__init__(clip, classnames, template)
        dim = self.text_features.shape[1]
        self.adapters = nn.ModuleDict({side: attention_adapter(dim, reduction) for side in on})

    def gate(self, side: str, features: torch.Tensor) -> torch.Tensor:
        """``features * a(features)`` for ``side`` in the adapters, else unchanged; shape kept."""
        return features * self.adapters[side](features) if side in self.adapters else features

    def eval_context(self) -> torch.Tensor:
        return F.normalize(self.gate("text", self.text_features), dim=-1)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.gate("vision", image_features.float()), dim=-1)
        return self.logit_scale.exp() * img @ text_features.t()


@TRAINER_REGISTRY.register()
class FedLC(FederatedTrainer):
    """Federated linear probe on frozen image features, initialised from zero-shot text weights."""

    CFG_NODE = "FEDLC"
    SHARED = ("head.*",)

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.NORMALIZE = True
        node.USE_LOGIT_SCALE = False
        node.PREC = "fp32"
        return node

    def build_model(self) -> None:
        clip = load_frozen_clip(self.cfg, self.device)
        self.model = LinearHeadCLIP(clip, self.classnames, dataset_template(self.cfg),
                                    bool(self.tcfg.NORMALIZE), bool(self.tcfg.USE_LOGIT_SCALE))
        self.model.to(self.device)
        self.register_model("model", self.model)


@TRAINER_REGISTRY.register()
class FedAA(FederatedTrainer):
    """FedCLIP-style attention adapter(s) on frozen CLIP features, shared and averaged."""

    CFG_NODE = "FEDAA"
    SHARED = ("adapters.*",)

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.REDUCTION = 1
        node.ON = ["vision"]  # vision and/or text
        node.PREC = "fp32"
        return node

    def build_model(self) -> None:
        on = [str(s).lower() for s in self.tcfg.ON]
        if not on or set(on) - {"vision", "text"}:
            raise ValueError(f"TRAINER.FEDAA.ON must be a non-empty subset of ['vision', 'text'], got {on}")
        clip = load_frozen_clip(self.cfg, self.device)
        self.model = AdapterCLIP(clip, self.classnames, dataset_template(self.cfg), on, int(self.tcfg.REDUCTION))
        self.model.to(self.device)
        self.register_model("model", self.model)
