"""PromptFolio: a global and a local text prompt mixed as a portfolio of their text features.

Pan et al., "Federated Learning from Vision-Language Foundation Models: Theoretical Analysis and
Method" (NeurIPS 2024, arXiv 2409.19610; official code PanBikang/PromptFolio). Each client holds two
CoOp contexts (``trainers/fedotp.py``'s :class:`MultiPromptLearner` with 2 prompts, 1 global):

* ``prompt_learner.ctx_global`` ``(1, M, d)`` -- shared, averaged by the server (FedAvg weighted by
  client train-set size, as published);
* ``prompt_learner.ctx_local`` ``(1, M, d)`` -- personal, never leaves the client.

Both start N(0, 0.02) (independent draws) or from the ``CTX_INIT`` words. For the class prompts of
each context the frozen text tower gives normalised features ``t_g`` and ``t_l`` ``(C, D)`` (one pass
for both sets); the classifier is their mixture

    t = (1 - THETA) * t_g + THETA * t_l        (NOT re-normalised, as published)

and ``logits = logit_scale.exp() * normalize(f_img) @ t^T``; the loss is cross-entropy. ``THETA`` 0 is
PromptFL (fully global), 1 is local CoOp. The image path is frozen, so image features are cached and
clients can be batched (only ``compute_loss``, the base class's cross-entropy, runs per step).

Config ``TRAINER.PROMPTFOLIO`` (defaults = the official code): ``N_CTX`` 8 (argparse ``--n_ctx``),
``THETA`` 0.4 (argparse ``--frac_p``), ``CSC`` False, ``CTX_INIT`` "", ``PREC`` "fp16"
(``TRAINER.PLOT.PREC``; fp32 on CPU), ``CLASS_TOKEN_POSITION`` "end". Schedule (``configs/trainers/
PromptFolio/vit_b16.yaml``, from the official ``configs/trainers/PromptFolio/vit_b16.yaml``, which
overrides argparse): SGD lr 0.002, momentum 0.9, weight decay 5e-4, cosine over 5 local epochs with
one warm-up epoch at constant 1e-5; batch 16 (argparse ``--train_batch_size``, which overrides the
yaml's 32); 10 rounds; protocol (README): 10 clients, all sampled, Dirichlet label skew beta 0.3,
16 shots, personal accuracy.

Differences from the official code (none changes the method; ``docs/REPRODUCING.md``):

* Two named tensors instead of one ``ctx`` ``(2, M, d)`` sliced by the aggregator (same values).
* The optimiser and cosine schedule are created per client per round; the official code shares
  one SGD state and one scheduler across all clients (momentum leaks, and the cosine LR cycles across
  clients). ``FED.SHARED_OPTIMIZER True`` restores the published sharing.
* The unused similarity-structure loss and the unused second image forward of the fp16 branch are
  not computed.
"""
from __future__ import annotations

import torch
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from trainers.fedotp import MultiPromptLearner
from trainers.method import Range
from trainers.prompt_learner import PromptCLIP
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node


def portfolio_mix(t_global: torch.Tensor, t_local: torch.Tensor, theta: float) -> torch.Tensor:
    """``(1 - theta) * t_global + theta * t_local`` for text features ``(C, D)``; not re-normalised."""
    if t_global.shape != t_local.shape:
        raise ValueError(f"global {tuple(t_global.shape)} and local {tuple(t_local.shape)} features differ in shape")
    return (1.0 - theta) * t_global + theta * t_local


class PortfolioCLIP(PromptCLIP):
    """Frozen CLIP whose class features mix a global and a local prompt's features (``portfolio_mix``)."""

    def __init__(self, clip, prompt_learner: MultiPromptLearner, theta: float):
        super().__init__(clip, prompt_learner)
        self.theta = float(theta)

    def text_feature_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t_g, t_l)``: normalised features ``(C, D)`` of the global and the local prompts, one pass."""
        learner = self.prompt_learner
        t_global, t_local = self.encode_contexts([learner.ctx_global[0], learner.ctx_local[0]])
        return t_global, t_local

    def text_features(self) -> torch.Tensor:
        """The mixed class features ``(C, D)`` (not unit-norm unless THETA is 0 or 1); the global prompt's
        alone (THETA 0) under the trainer's ``global_model()``."""
        if self.prompt_learner.global_only:
            return self.encode_contexts([self.prompt_learner.ctx_global[0]])[0]
        return portfolio_mix(*self.text_feature_pair(), self.theta)


@TRAINER_REGISTRY.register()
class PromptFolio(PromptTrainer):
    """Global context shared (FedAvg), local context personal, text features mixed by ``THETA``."""

    CFG_NODE = "PROMPTFOLIO"
    SHARED = ("prompt_learner.ctx_global",)
    CFG_RULES = {"THETA": Range(0, 1)}

    @classmethod
    def cfg_defaults(cls):
        node = prompt_cfg_node(n_ctx=8, prec="fp16")
        node.THETA = 0.4
        return node

    def build_prompt_learner(self, clip) -> MultiPromptLearner:
        t = self.tcfg
        return MultiPromptLearner(clip, self.classnames, n_prompts=2, n_global=1, n_ctx=t.N_CTX,
                                  ctx_init=t.CTX_INIT, csc=t.CSC, class_token_position=t.CLASS_TOKEN_POSITION)

    def build_clip_model(self, clip, prompt_learner: nn.Module) -> PortfolioCLIP:
        return PortfolioCLIP(clip, prompt_learner, float(self.tcfg.THETA))
