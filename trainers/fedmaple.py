"""FedMaPLe: MaPLe's coupled language and vision prompts, all aggregated by FedAvg.

MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023), federated as the baseline of
FedPGP / FedTV (every client trains the prompts locally, the server averages all of them):

* language prompts: ``n`` learnable context tokens in the text input (layer 0, ``prompt_learner.ctx``
  ``(n, d_text)``) and deep prompts ``compound_prompts_text[k]`` ``(n, d_text)`` replacing the hidden
  states of the same positions at the input of text blocks ``k + 1 = 1 .. J-1``;
* vision prompts, derived from the language prompts by per-layer coupling functions
  ``Linear(d_text, d_vision)``: ``proj(ctx)`` is appended to the ViT's input tokens and
  ``compound_prompt_projections[k](compound_prompts_text[k])`` replaces them at vision block ``k + 1``;
* ``J = PROMPT_DEPTH`` (MaPLe: 9), ``n = N_CTX`` (MaPLe: 2), class token at the end, one context for
  every class.

The prompts are injected through hooks installed per forward call (``trainers/deep_prompts.py``): the
shared frozen CLIP is not modified. The vision tower is prompted, so image features depend on the
trainable state: they are not cached and training steps run the image tower with gradient to the prompts
(``trainers/visual_prompt.py``, ``PromptedImageTower``). ViT backbones only (MaPLe prompts a ViT; a ResNet raises).

Published conventions kept (MaPLe's code and configs): with ``CTX_INIT "a photo of a"`` and
``N_CTX 2`` the learnable context is initialised from the first two words ("a photo") and the rest of
the phrase stays fixed text, i.e. the prompt reads ``[V1] [V2] of a {class}.``; the deep text prompts
are N(0, 0.02); the coupling functions start as identical copies of one ``nn.Linear`` initialisation.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.deep_prompts import text_prompts, vision_prompts
from trainers.image_tokens import check_token_vit
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node
from trainers.visual_prompt import PromptedImageTower


class MaPLePromptLearner(PromptLearner):
    """The text context plus MaPLe's deep text prompts and text-to-vision coupling functions.

    Parameters: ``ctx`` ``(n, d_text)``; ``proj`` Linear(d_text, d_vision); ``compound_prompts_text``
    J-1 tensors ``(n, d_text)``; ``compound_prompt_projections`` J-1 Linear(d_text, d_vision).
    """

    def __init__(self, clip, classnames: list[str], n_ctx: int = 2, ctx_init: str = "a photo of a",
                 depth: int = 9):
        check_token_vit(clip.model.visual, "MaPLe's vision prompts")
        layers = min(len(clip.model.transformer.resblocks), len(clip.model.visual.transformer.resblocks))
        if not 1 <= depth <= layers:
            raise ValueError(f"PROMPT_DEPTH must be in 1..{layers} for {clip.name} (blocks per tower), got {depth}")
        super().__init__(clip, classnames, n_ctx=n_ctx, ctx_init="")
        self.learn_first_words(ctx_init)
        d_text, d_vision = self.ctx_dim, int(clip.model.visual.transformer.width)
        self.proj = nn.Linear(d_text, d_vision).to(self.device)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(self.init_context(None, len(classnames))) for _ in range(depth - 1)])
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(self.proj) for _ in range(depth - 1)])

    def vision_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The input vision prompt ``(n, d_vision)`` and the deep ones (J-1 of them)."""
        deep = [f(p) for f, p in zip(self.compound_prompt_projections, self.compound_prompts_text, strict=True)]
        return self.proj(self.ctx), deep


class MaPLeCLIP(PromptCLIP):
    """Frozen CLIP run with MaPLe's prompts in both towers (installed per call)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Prompted image features ``(B, D)`` (with gradient to the prompts when enabled)."""
        first, deep = self.prompt_learner.vision_prompts()
        with vision_prompts(self.image_encoder, first, deep):
            return self.image_encoder(images)

    def text_features(self) -> torch.Tensor:
        """Normalised class text features ``(C, D)`` with the deep text prompts."""
        with text_prompts(self.text_encoder.transformer, list(self.prompt_learner.compound_prompts_text)):
            return super().text_features()


@TRAINER_REGISTRY.register()
class FedMaPLe(PromptedImageTower, PromptTrainer):
    """MaPLe prompts, every prompt and coupling function shared (FedAvg)."""

    CFG_NODE = "MAPLE"
    SHARED = ("prompt_learner.*",)

    @classmethod
    def cfg_defaults(cls) -> CN:
        node: CN = prompt_cfg_node(n_ctx=2, prec="fp16")
        node.CTX_INIT = "a photo of a"
        node.PROMPT_DEPTH = 9  # J: prompts in the input and at blocks 1..J-1 of both towers
        return node

    def build_prompt_learner(self, clip) -> MaPLePromptLearner:
        t = self.tcfg
        if t.CSC or t.CLASS_TOKEN_POSITION != "end":
            raise ValueError("FedMaPLe uses one context for all classes with the class token at the end "
                             "(TRAINER.MAPLE.CSC False, CLASS_TOKEN_POSITION end)")
        return MaPLePromptLearner(clip, self.classnames, n_ctx=t.N_CTX, ctx_init=t.CTX_INIT,
                                  depth=int(t.PROMPT_DEPTH))

    def build_clip_model(self, clip, prompt_learner) -> MaPLeCLIP:
        return MaPLeCLIP(clip, prompt_learner)
