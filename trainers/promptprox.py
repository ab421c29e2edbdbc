"""Prompt+Prox: PromptFL with the FedProx proximal term on the shared prompt.

FedProx (Li et al., MLSys 2020) adds ``(mu/2) * ||w - w_global||^2`` to each client's local loss,
``w_global`` being what the client downloaded at the start of the round. Prompt+Prox (the baseline
of the FedOTP / FedPGP / FedTV tables) applies it to PromptFL's shared context:

    L = CE + (mu/2) * sum_k ||p_k - p_k^global||_F^2        (k over the shared tensors)

whose gradient with respect to ``p_k`` is ``mu * (p_k - p_k^global)``.

Deviation from the published code (docs/PUBLISHED_CODE.md): the FedOTP / FedPGP ``promptfl.py``
computes the term from ``model.state_dict()`` tensors, which are detached, so the term changes the
logged loss but has **no gradient**: their Prompt+Prox trains exactly like PromptFL. We follow the
paper (live parameters, the term has its gradient). ``TRAINER.PROMPTPROX.PROX_DETACHED True``
reproduces the published behaviour for comparison (same loss value, zero gradient).

Config ``TRAINER.PROMPTPROX``: the CoOp prompt keys (``N_CTX`` 16, ``CSC``, ``CTX_INIT``, ``PREC``,
``CLASS_TOKEN_POSITION``) plus ``MU`` (0.5, FedOTP's ``--mu`` default) and ``PROX_DETACHED`` (False).
"""
from __future__ import annotations

from operator import attrgetter

import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from trainers.coop import PromptFL
from trainers.method import Range
from trainers.prompt_trainer import prompt_cfg_node


def proximal_term(params: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], mu: float,
                  detached: bool = False) -> torch.Tensor:
    """``(mu/2) * sum_k ||params[k] - anchors[k]||^2`` (a scalar tensor), over the keys of ``anchors``.

    ``params[k]`` and ``anchors[k]`` have the same (any) shape. With ``detached`` the parameters are
    detached first (the published no-gradient behaviour); otherwise the gradient with respect to
    ``params[k]`` is ``mu * (params[k] - anchors[k])``. The anchors never receive a gradient.
    """
    missing = [k for k in anchors if k not in params]
    if missing:
        raise KeyError(f"proximal term: no parameter for anchor(s) {missing}")
    if not anchors:
        raise ValueError("proximal term: no anchor tensors (the trainer shares nothing)")
    total = None
    for key, anchor in anchors.items():
        p = params[key].detach() if detached else params[key]
        sq = (p.float() - anchor.detach().float()).pow(2).sum()
        total = sq if total is None else total + sq
    return 0.5 * float(mu) * total


@TRAINER_REGISTRY.register()
class PromptProx(PromptFL):
    """PromptFL + FedProx: the shared context is pulled towards the round's downloaded context."""

    CFG_NODE = "PROMPTPROX"

    CFG_RULES = {"MU": Range(0)}
    NEEDS_ROUND_START_STATE = True

    @classmethod
    def cfg_defaults(cls):
        node = prompt_cfg_node()
        node.MU = 0.5
        node.PROX_DETACHED = False
        return node

    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Cross-entropy on ``(B, C)`` logits + the proximal term towards the round-start shared tensors
        (``self.round_context.round_start``, handed over by the engine training the client)."""
        anchors = self.round_context.round_start
        if not anchors:
            raise RuntimeError("PromptProx.compute_loss needs round_context.round_start: train through an engine "
                               "(local_train or the batched engine)")
        logits = self.model.logits(image_features, self.model.eval_context())
        ce = F.cross_entropy(logits, labels)
        params = {k: attrgetter(k)(self.model) for k in anchors}  # the live tensors (client rows when batched)
        prox = proximal_term(params, anchors, self.tcfg.MU, self.tcfg.PROX_DETACHED)
        return ce + prox, logits, {"ce": ce.detach(), "prox": prox.detach()}
