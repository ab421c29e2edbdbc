"""FLoRA and its full fine-tuning reference FedFFT.

FLoRA: Nguyen, Muñoz, Jannesari, "FLoRA: Enhancing Vision-Language Models with Parameter-Efficient
Federated Learning" (arXiv 2404.15182). LoRA on CLIP's text tower (default: the attention output
projection of every layer, rank 2, alpha 32); the server averages the LoRA tensors weighted by
client data size (FedAvg); training uses CLIP's symmetric contrastive loss between a batch's images
and their class prompts; evaluation classifies with the class prompts through the adapted tower.
Published optimiser (set in ``configs/trainers/FLoRA/*.yaml``): Adam, lr 5e-5, betas (0.9, 0.98),
eps 1e-6, weight decay 0.2; ViT-B/32, 10 clients, 50 rounds, 1 local epoch, batch 128.

Choices (see ``trainers/lora.py`` for the mechanism):

* ``SCALING "alpha"`` (default) multiplies the update by alpha = 32, as the published code does
  (``linear(x) + alpha * x W_a W_b``); ``"alpha_over_r"`` is the usual LoRA ``alpha / r``. The paper
  text does not state a scaling, so the published behaviour is the default (REFERENCE pitfall 10).
* ``A ~ N(0, 1) / sqrt(r)``, ``B = 0`` (published), drawn from a generator seeded with ``SEED`` so
  every client starts from the same adapter.
* Targets: ``TEXT_TARGETS`` / ``VISION_TARGETS`` among q, k, v, out, mlp (published flags
  ``--lora_{query,key,value,projection,mlp}_{text,vision}``). Adapting the image tower disables the
  frozen-feature cache.

FedFFT (FLoRA's "full fine-tuning" reference): every weight of a copy of the text tower (and of the
image tower with ``TOWERS ['text', 'vision']``, the published whole-model variant) is trainable and
shared; ``TRAIN_TOKEN_EMBEDDING`` includes the 49408 x d token embedding (it is part of the text
encoder, and dominates the upload).
"""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.lora import LoRAFactors, add_lora, copy_tower, init_lora, parse_targets
from trainers.tuned_clip import TextTower, TunedCLIPTrainer

SCALINGS = ("alpha", "alpha_over_r")


def lora_cfg_node(rank: int, alpha: float, scaling: str) -> CN:
    """The keys every LoRA trainer's node has."""
    node = CN()
    node.RANK = rank
    node.ALPHA = alpha
    node.SCALING = scaling  # alpha | alpha_over_r
    node.TEXT_TARGETS = ["out"]  # among q, k, v, out, mlp
    node.VISION_TARGETS = []
    node.LOSS = "contrastive"  # contrastive | ce
    node.PREC = "fp32"
    return node


def lora_scaling(node) -> float:
    """``ALPHA`` or ``ALPHA / RANK`` according to ``SCALING``."""
    scaling = str(node.SCALING).lower()
    if scaling not in SCALINGS:
        raise ValueError(f"LoRA SCALING must be one of {SCALINGS}, got '{node.SCALING}'")
    return float(node.ALPHA) / (int(node.RANK) if scaling == "alpha_over_r" else 1)


class LoRATrainer(TunedCLIPTrainer):
    """LoRA factors on copies of the configured towers (frozen weights shared with the process CLIP).

    Subclasses choose the factor form (``TRI``) and their initialisation (``init_factors``).
    """

    TRI = False

    def build_text_tower(self, clip_model: nn.Module) -> TextTower:
        tower = TextTower(clip_model, share_weights=True)
        self._adapt(tower, self.tcfg.TEXT_TARGETS)
        return tower

    def build_visual(self, clip_model: nn.Module) -> nn.Module | None:
        if not list(self.tcfg.VISION_TARGETS):
            return None
        visual = copy_tower(clip_model.visual, share_weights=True)
        self._adapt(visual, self.tcfg.VISION_TARGETS)
        return visual

    def _adapt(self, tower: nn.Module, targets) -> None:
        targets = parse_targets(targets)
        if targets:
            self.init_factors(add_lora(tower, targets, int(self.tcfg.RANK), lora_scaling(self.tcfg), tri=self.TRI))

    def init_factors(self, factors: list[LoRAFactors]) -> None:
        raise NotImplementedError

    def build_model(self) -> None:
        self._init_generator = torch.Generator().manual_seed(int(self.cfg.SEED))
        super().build_model()
        if not self.trainable_parameters():
            raise ValueError(f"TRAINER.{self.CFG_NODE}: TEXT_TARGETS and VISION_TARGETS are both empty")


@TRAINER_REGISTRY.register()
class FLoRA(LoRATrainer):
    """LoRA on CLIP's text tower, every LoRA tensor shared and FedAvg-aggregated."""

    CFG_NODE = "FLORA"
    SHARED = ("text_encoder.*", "visual.*")

    @classmethod
    def cfg_defaults(cls) -> CN:
        return lora_cfg_node(rank=2, alpha=32.0, scaling="alpha")

    def init_factors(self, factors: list[LoRAFactors]) -> None:
        init_lora(factors, self._init_generator)


@TRAINER_REGISTRY.register()
class FedFFT(TunedCLIPTrainer):
    """Full fine-tuning of a copy of the text tower (optionally the image tower), all shared."""

    CFG_NODE = "FEDFFT"
    SHARED = ("text_encoder.*", "visual.*")

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.TOWERS = ["text"]  # text and/or vision
        node.TRAIN_TOKEN_EMBEDDING = True
        node.LOSS = "contrastive"
        node.PREC = "fp32"
        return node

    def _towers(self) -> set[str]:
        towers = {str(t).lower() for t in self.tcfg.TOWERS}
        if not towers or towers - {"text", "vision"}:
            raise ValueError(f"TRAINER.FEDFFT.TOWERS must be a non-empty subset of ['text', 'vision'], "
                             f"got {list(self.tcfg.TOWERS)}")
        return towers

    def build_text_tower(self, clip_model: nn.Module) -> TextTower:
        if "text" not in self._towers():
            return TextTower(clip_model, share_weights=True)
        copy_embedding = bool(self.tcfg.TRAIN_TOKEN_EMBEDDING)
        tower = TextTower(clip_model, share_weights=False, copy_token_embedding=copy_embedding)
        for name, p in tower.named_parameters():
            p.requires_grad_(copy_embedding or not name.startswith("token_embedding."))
        return tower

    def build_visual(self, clip_model: nn.Module) -> nn.Module | None:
        if "vision" not in self._towers():
            return None
        visual = copy_tower(clip_model.visual, share_weights=False)
        visual.requires_grad_(True)
        return visual
