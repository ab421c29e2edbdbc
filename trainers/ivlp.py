"""IVLP: independent vision-language prompts, federated (the baseline of FedMGP and of the federated
prompt-learning empirical study).

Independent V-L prompting (the "IVLP" baseline of MaPLe, Khattak et al., CVPR 2023): a learnable text
context and learnable visual prompt tokens, not coupled (MaPLe derives its visual prompts from the text
ones; IVLP learns both independently). Shallow, as the FedMGP code base's IVLP (``PROMPT_DEPTH`` 1 in
both towers):

* text: ``prompt_learner.ctx`` ``(n, d_text)``, ``n = N_CTX`` (2), initialised from the first ``n``
  tokens of ``CTX_INIT`` ("a photo of a"); the rest of the phrase stays fixed text, so the prompt reads
  ``[V1] [V2] of a {class}.``;
* vision: ``visual_prompt.ctx`` ``(n_v, d_vision)``, ``n_v = N_CTX_VISION`` (2), N(0, 0.02), appended to
  the ViT's input tokens after the positional embedding, before ``ln_pre`` (``trainers/visual_prompt.py``);
* logits ``logit_scale * cos(image, class text)``, loss cross-entropy.

**What is shared** (``AGGREGATE``, the official ``TRAINER.IVLP.AGGREGATE``): ``"all"`` (default) both
prompts are averaged (FedAvg weighted by the clients' train-set sizes, as published); ``"vision"`` only
the visual prompt is averaged and the text context stays personal; ``"language"`` only the text context
is averaged and the visual prompt stays personal. ``SHARED`` declares the default; the trainer's
instance narrows it to the configured modality (``SHARED_BY_AGGREGATE``).

The image tower is prompted: no feature cache, clients trained one after another
(``PromptedImageTower``). ViT backbones only.

Config ``TRAINER.IVLP`` (official ``configs/trainers/IVLP/base2novel_vit_b16.yaml`` and
``scripts/IVLP/base2novel_train.sh`` of the FedMGP code base): ``N_CTX`` 2, ``CTX_INIT`` "a photo of a",
``N_CTX_VISION`` 2, ``PREC`` fp16 (fp32 on CPU); SGD lr 0.001, constant, batch 8, 10 rounds of 2 local
epochs, 10 clients, pathological split of the base classes.

Differences from the official code: none in the method; a fresh optimiser per client per round (the
official learner reuses one trainer object across clients). Deep prompts (``PROMPT_DEPTH`` > 1) are not
implemented: the published federated runs are shallow.
"""
from __future__ import annotations

import torch
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node
from trainers.visual_prompt import PromptedImageTower, VisualPrompt, prompted_image_features

AGGREGATE_MODES = ("all", "vision", "language")


class IVLPCLIP(PromptCLIP):
    """``PromptCLIP`` (the text context) plus ``visual_prompt`` (tokens appended to the ViT's input)."""

    def __init__(self, clip, prompt_learner: PromptLearner, visual_prompt: VisualPrompt):
        super().__init__(clip, prompt_learner)
        self.visual_prompt = visual_prompt

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Prompted image features ``(B, D)``."""
        return prompted_image_features(self.image_encoder, images, self.visual_prompt.ctx)


@TRAINER_REGISTRY.register()
class IVLP(PromptedImageTower, PromptTrainer):
    """Independent text context and visual prompt tokens; both averaged, or one modality kept personal."""

    CFG_NODE = "IVLP"
    #: What ``AGGREGATE`` shares; ``SHARED`` is the default's.
    SHARED_BY_AGGREGATE = {"all": ("prompt_learner.ctx", "visual_prompt.ctx"),
                           "vision": ("visual_prompt.ctx",),
                           "language": ("prompt_learner.ctx",)}
    SHARED = SHARED_BY_AGGREGATE["all"]
    CFG_RULES = {"AGGREGATE": AGGREGATE_MODES,
                 "CSC": (False,), "CLASS_TOKEN_POSITION": ("end",),
                 "N_CTX_VISION": lambda t: None if int(t.N_CTX_VISION) >= 1 else
                 f"TRAINER.IVLP.N_CTX_VISION must be >= 1, got {t.N_CTX_VISION}"}

    def __init__(self, cfg, classnames: list[str] | None = None, dm=None):
        mode = cfg.TRAINER.get(self.CFG_NODE, {}).get("AGGREGATE", "all")
        self.SHARED = self.SHARED_BY_AGGREGATE.get(mode, self.SHARED)  # the rule names a bad mode
        super().__init__(cfg, classnames=classnames, dm=dm)

    @classmethod
    def cfg_defaults(cls) -> CN:
        node: CN = prompt_cfg_node(n_ctx=2, prec="fp16")
        node.CTX_INIT = "a photo of a"
        node.N_CTX_VISION = 2
        node.AGGREGATE = "all"
        return node

    def build_prompt_learner(self, clip) -> PromptLearner:
        learner = PromptLearner(clip, self.classnames, n_ctx=int(self.tcfg.N_CTX), ctx_init="")
        learner.learn_first_words(self.tcfg.CTX_INIT)
        return learner

    def build_clip_model(self, clip, prompt_learner) -> IVLPCLIP:
        return IVLPCLIP(clip, prompt_learner, VisualPrompt(clip.model.visual, int(self.tcfg.N_CTX_VISION), "IVLP"))
