"""``PromptTrainer``: the shared base of every prompt-learning trainer (CoOp, PromptFL, FedPGP, FedTV ...).

It reads the CoOp prompt keys from ``cfg.TRAINER.<CFG_NODE>`` (``N_CTX``, ``CSC``, ``CTX_INIT``,
``PREC``, ``CLASS_TOKEN_POSITION``), loads the shared frozen CLIP and registers the model's
trainable part. Subclasses override ``build_prompt_learner`` / ``build_clip_model`` to add pieces.
"""
from __future__ import annotations

import logging

from yacs.config import CfgNode as CN

from trainers.base import FederatedTrainer, load_frozen_clip
from trainers.prompt_learner import PromptCLIP, PromptLearner

logger = logging.getLogger("fedtv.trainer")


def prompt_cfg_node(n_ctx: int = 16, prec: str = "fp32") -> CN:
    """The CoOp prompt keys every prompt trainer's node starts from."""
    node = CN()
    node.N_CTX = n_ctx
    node.CSC = False
    node.CTX_INIT = ""
    node.PREC = prec
    node.CLASS_TOKEN_POSITION = "end"
    return node


class PromptTrainer(FederatedTrainer):
    """Frozen CLIP + a learnable prompt; what is shared is declared by ``SHARED``."""

    @classmethod
    def cfg_defaults(cls) -> CN:
        return prompt_cfg_node()

    def build_prompt_learner(self, clip) -> PromptLearner:
        t = self.tcfg
        return PromptLearner(clip, self.classnames, n_ctx=t.N_CTX, ctx_init=t.CTX_INIT, csc=t.CSC,
                             class_token_position=t.CLASS_TOKEN_POSITION)

    def build_clip_model(self, clip, prompt_learner):
        return PromptCLIP(clip, prompt_learner)

    def build_model(self) -> None:
        clip = load_frozen_clip(self.cfg, self.device)
        learner = self.build_prompt_learner(clip)
        self.model = self.build_clip_model(clip, learner)
        self.model.to(self.device)
        # One optimiser over every trainable tensor of the model (prompt, adapters ...); the frozen
        # CLIP has requires_grad False and is skipped by ``build_optimizers``.
        self.register_model("model", self.model)
