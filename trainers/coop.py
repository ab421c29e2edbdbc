"""CoOp (each client learns its own prompt, nothing is aggregated) and PromptFL (FedAvg of the context).

CoOp: Zhou et al., "Learning to Prompt for Vision-Language Models" (IJCV 2022), run locally per
client. PromptFL: Guo et al., "PromptFL: Let Federated Participants Cooperatively Learn Prompts
Instead of Models" (2023): the learnable context is averaged by the server (FedAvg weighted by
client train-set size).
"""
from __future__ import annotations

from dassl.engine import TRAINER_REGISTRY
from trainers.prompt_trainer import PromptTrainer


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    """Local prompt learning: the context is personal, the server aggregates nothing."""

    CFG_NODE = "COOP"
    SHARED = ()


@TRAINER_REGISTRY.register()
class PromptFL(PromptTrainer):
    """Federated prompt learning: the context ``prompt_learner.ctx`` is shared and averaged."""

    CFG_NODE = "PROMPTFL"
    SHARED = ("prompt_learner.ctx",)
