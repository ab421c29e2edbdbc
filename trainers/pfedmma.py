"""pFedMMA: personalised federated multi-modal adapters inside both CLIP towers.

Ghiasvand et al., "pFedMMA: Personalized Federated Fine-Tuning with Multi-Modal Adapter for
Vision-Language Models" (arXiv 2507.05394; official code sajjad-ucsb/pFedMMA), the federated version
of the Multi-Modal Adapter (MMA, Yang et al., CVPR 2024). For every residual block ``i`` (1-based) in
``ADAPTER_START .. ADAPTER_END`` of the text and of the image transformer:

    y_i = s * up_i^m( shared_i( down_i^m( LN_1(x) ) ) ),       block output = block(x) + y_i

with ``x`` the block input, ``LN_1`` the block's own (frozen) first layer norm, ``down_i^m``
``Linear(d_m, D_A) + ReLU`` and ``up_i^m`` ``Linear(D_A, d_m)`` per modality ``m`` (text / visual,
``d_m`` its width), ``shared_i`` ``Linear(D_A, D_A) + ReLU`` used by both modalities, ``s`` =
``ADAPTER_SCALE``. As in MMA's code, gradients are rescaled so that ``s`` does not shrink the adapters'
updates: the gradient reaching the adapter input is multiplied by ``s`` and the one leaving the adapter
output by ``1 / s`` (forward values unchanged; the block input receives its exact gradient, the adapter
parameters ``1 / s`` times theirs). Weights: Kaiming-normal (fan_out, ReLU), biases 0.

* shared (FedAvg weighted by client train-set size, as published): ``adapters.shared_adapter.*``;
* personal: ``adapters.text_adapter.*`` and ``adapters.visual_adapter.*`` (the down / up projections).

The class prompts are the fixed ``"a photo of a {}."`` (``TEXT_CTX_INIT``) through the adapted text tower;
logits ``logit_scale * cos(image, class text)``; loss cross-entropy. The frozen CLIP of the process is
untouched: both towers are copies sharing its frozen weights (``trainers/tuned_clip.py``).

**No feature cache, no batched clients.** The adapted image tower makes image features depend on the
trainable state, so every step runs the ViT (``image_features_cacheable`` False): the server trains the
clients one after another and logs why (``FED.BATCH_CLIENTS`` falls back), and evaluation encodes the
test images each time.

Config ``TRAINER.PFEDMMA`` (official ``configs/trainers/pFedMMA/vit_b16.yaml``, node ``MMADAPTER``):
``ADAPTER_START`` 5, ``ADAPTER_END`` 12 (clamped to each tower's depth), ``ADAPTER_DIM`` 32,
``ADAPTER_SCALE`` 0.001, ``TEXT_CTX_INIT`` "a photo of a", ``PREC`` "amp" (fp32 on CPU). Schedule
(official yaml + ``scripts/base2new.sh``): SGD lr 0.001, constant, momentum 0.9 / weight decay 5e-4
(Dassl defaults), batch 32 (the script's ``--train_batch_size``; the yaml's 16 is overridden), 100
rounds of 1 local epoch; protocol 10 clients, all sampled, pathological split of the base classes,
16 / 4 / 1 shots, Local / Base / Novel as FedPGP.

Differences from the official code (``docs/REPRODUCING.md``):

* Evaluation recomputes the class text features with the evaluated client's own adapters. The
  official ``CustomCLIP`` caches them at its first evaluation and never clears the cache, so every later
  evaluation (every client, every round) used the first client's first-round text adapters. No flag
  restores this: it is a stale cache, not a method choice.
* The optimiser is created per client per round (the official trainer is reused across clients).
"""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from federated.errors import ConfigError
from trainers.base import load_frozen_clip
from trainers.lora import copy_tower, residual_blocks
from trainers.tuned_clip import TextTower, TunedCLIP, TunedCLIPTrainer


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward pass; the backward pass multiplies the incoming gradient by ``factor``."""
    frozen = x.detach()
    return frozen + (x - frozen) * factor


def adapter_layers(start: int, end: int, depth: int) -> list[int]:
    """The 1-based block indices ``start .. min(end, depth)`` that get an adapter."""
    return list(range(start, min(end, depth) + 1))


def _kaiming(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return module


class ModalAdapter(nn.Module):
    """A modality's ``down`` (``Linear(width, dim) + ReLU``) and ``up`` (``Linear(dim, width)``)."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.down = nn.Sequential(nn.Linear(width, dim), nn.ReLU())
        self.up = nn.Linear(dim, width)
        _kaiming(self)


class MultiModalAdapters(nn.Module):
    """The adapters of both towers: ``text_adapter[i]``, ``visual_adapter[i]``, ``shared_adapter[i]``
    (``nn.ModuleDict`` keyed by the 1-based block index as a string)."""

    def __init__(self, text_width: int, text_layers: list[int], visual_width: int, visual_layers: list[int],
                 dim: int, scale: float):
        super().__init__()
        self.scale = float(scale)
        self.text_adapter = nn.ModuleDict({str(i): ModalAdapter(text_width, dim) for i in text_layers})
        self.visual_adapter = nn.ModuleDict({str(i): ModalAdapter(visual_width, dim) for i in visual_layers})
        shared = sorted(set(text_layers) | set(visual_layers))
        self.shared_adapter = nn.ModuleDict({str(i): _kaiming(nn.Sequential(nn.Linear(dim, dim), nn.ReLU()))
                                             for i in shared})

    def residual(self, modality: str, index: int, x: torch.Tensor, ln_1: nn.Module) -> torch.Tensor:
        """``s * up(shared(down(ln_1(x))))`` for block ``index`` of ``modality`` ("text" / "visual"),
        ``x`` ``(..., width)``, with MMA's gradient rescaling."""
        own = (self.text_adapter if modality == "text" else self.visual_adapter)[str(index)]
        y = ln_1(grad_scale(x, self.scale))
        y = own.up(self.shared_adapter[str(index)](own.down(y))) * self.scale
        return grad_scale(y, 1.0 / self.scale)


class AdaptedBlock(nn.Module):
    """A residual block whose output gains its adapter's residual (the adapters are not registered here:
    they live in one :class:`MultiModalAdapters` so that their parameter names say what is shared)."""

    def __init__(self, block: nn.Module, adapters: MultiModalAdapters, modality: str, index: int):
        super().__init__()
        self.block = block
        self.modality, self.index = modality, int(index)
        self.__dict__["_adapters"] = adapters  # a plain reference, not a submodule

    def __getattr__(self, name: str):
        """The wrapped block's attributes (``mlp``, ``ln_1`` ...: the tower inspects them, e.g. for its dtype)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.block, name)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.block(x, *args, **kwargs) + self._adapters.residual(self.modality, self.index, x, self.block.ln_1)


def insert_adapters(tower: nn.Module, adapters: MultiModalAdapters, modality: str, layers: list[int]) -> None:
    """Wrap blocks ``layers`` (1-based) of ``tower.transformer.resblocks`` in :class:`AdaptedBlock`."""
    blocks = tower.transformer.resblocks
    for i in layers:
        blocks[i - 1] = AdaptedBlock(blocks[i - 1], adapters, modality, i)


class MMACLIP(TunedCLIP):
    """``TunedCLIP`` whose adapted towers read their adapters from ``self.adapters``."""

    def __init__(self, clip, classnames: list[str], template: str, text_tower: TextTower, visual: nn.Module,
                 adapters: MultiModalAdapters):
        super().__init__(clip, classnames, template, text_tower, visual)
        self.adapters = adapters


@TRAINER_REGISTRY.register()
class pFedMMA(TunedCLIPTrainer):  # noqa: N801 - the method's published name
    """Multi-modal adapters in both towers; the shared projection is averaged, down / up stay personal."""

    CFG_NODE = "PFEDMMA"
    SHARED = ("adapters.shared_adapter.*",)
    SEQUENTIAL = "its adapters sit inside both towers: image features are not cacheable, every step encodes images"
    CFG_RULES = {
        "ADAPTER_END": lambda t: None if 1 <= int(t.ADAPTER_START) <= int(t.ADAPTER_END) else
        f"TRAINER.PFEDMMA needs 1 <= ADAPTER_START <= ADAPTER_END, got {t.ADAPTER_START}, {t.ADAPTER_END}",
        "ADAPTER_SCALE": lambda t: None if int(t.ADAPTER_DIM) >= 1 and float(t.ADAPTER_SCALE) > 0 else
        f"TRAINER.PFEDMMA needs ADAPTER_DIM >= 1 and ADAPTER_SCALE > 0, got {t.ADAPTER_DIM}, {t.ADAPTER_SCALE}",
    }

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.ADAPTER_START = 5
        node.ADAPTER_END = 12
        node.ADAPTER_DIM = 32
        node.ADAPTER_SCALE = 0.001
        node.TEXT_CTX_INIT = "a photo of a"
        node.PREC = "amp"
        return node

    def build_model(self) -> None:
        t = self.tcfg
        clip = load_frozen_clip(self.cfg, self.device)
        text_tower = TextTower(clip.model, share_weights=True)
        visual = copy_tower(clip.model.visual, share_weights=True)
        try:
            text_depth, visual_depth = len(residual_blocks(text_tower)), len(residual_blocks(visual))
        except TypeError as err:
            raise ConfigError(f"pFedMMA needs transformer towers (ViT image tower): {err}") from None
        if int(t.ADAPTER_START) > min(text_depth, visual_depth):
            raise ConfigError(f"TRAINER.PFEDMMA.ADAPTER_START {t.ADAPTER_START} is past the last block (text "
                              f"{text_depth}, image {visual_depth} blocks)")
        start, end = int(t.ADAPTER_START), int(t.ADAPTER_END)
        text_layers = adapter_layers(start, end, text_depth)
        visual_layers = adapter_layers(start, end, visual_depth)
        adapters = MultiModalAdapters(int(text_tower.ln_final.weight.shape[0]), text_layers,
                                      int(visual.ln_post.weight.shape[0]), visual_layers,
                                      int(t.ADAPTER_DIM), float(t.ADAPTER_SCALE)).to(self.device)
        insert_adapters(text_tower, adapters, "text", text_layers)
        insert_adapters(visual, adapters, "visual", visual_layers)
        self.loss_name = "ce"
        self.image_features_cacheable = False  # the image tower is adapted: a full ViT pass per step
        template = f"{str(t.TEXT_CTX_INIT).strip()} {{}}."
        self.model = MMACLIP(clip, self.classnames, template, text_tower, visual, adapters)
        self.model.to(self.device)
        self.register_model("model", self.model)
