"""FedPGP: Cui et al., "Harmonizing Generalization and Personalization in Federated Prompt Learning"
(ICML 2024, arXiv 2405.09771).

Client ``i`` classifies with ``p_i = p_G + U_i V_i`` (eqs. 7, 9): the global prompt ``p_G``
(``prompt_learner.sigma``, ``(n_ctx, d)``) is shared and averaged by the server (FedAvg weighted by
client train-set size); ``U_i (n_ctx, r)`` and ``V_i (r, d)`` are personal and never leave the client.
All three are initialised N(0, 0.02) as published. The loss is ``L_ce + MU * L_con`` (eq. 13) with the
prompt-wise contrastive loss of eq. 12, which pulls the global prompt's text features ``z_G`` toward
the frozen CLIP's hand-crafted features ``z_C`` and pushes them away from the personalised features
``z_i`` (details, ablation definitions and the two meanings of ``HANDCRAFTED``: ``trainers/lowrank_prompt.py``).

Config ``cfg.TRAINER.FEDPGP`` (defaults = the published scripts):
``N_CTX`` 16, ``CSC`` False, ``CTX_INIT`` "", ``PREC`` "fp32", ``CLASS_TOKEN_POSITION`` "end",
``BOTTLENECK`` 8 (rank r; argparse default 4, the scripts use 8), ``MU`` 0.5 (argparse default 1, the
scripts use 0.5), ``TEMP`` 0.5, ``ADAPTATION`` "lowrank" | "fullrank" (Table 6), ``CONTRAST_POSITIVE`` /
``CONTRAST_NEGATIVE`` (Tables 6/7), ``NEGATIVE_PAIR`` "global" (z_G vs z_i, paper and code),
``HANDCRAFTED`` "published" (code, default) | "template" (paper text).

Deliberate differences from the published code (docs/PUBLISHED_CODE.md):

* z_C follows the code by default (``HANDCRAFTED "published"``: ``"X X ... X {classname}."``); the
  paper's text, CLIP's hand-crafted template prompt, is ``HANDCRAFTED "template"``.
* z_C is encoded once per class set, z_G and z_i in one batched pass; the unused ``U V``-only text
  features are not computed.
* Mixed precision keeps L_con (the published amp path drops it).
* One prompt set (``N = 1``): the published ``N > 1`` path concatenates N*C logit columns without
  pooling, which is wrong; it is not offered.
* The optimiser is created per client per round (the published code shares one SGD state, momentum
  included, across clients and rounds).
* ``CTX_INIT`` works (initialises ``sigma`` from the words; the published branch crashes).
"""
from __future__ import annotations

from dassl.engine import TRAINER_REGISTRY
from trainers.lowrank_prompt import GlobalPersonalPromptTrainer, global_personal_cfg_node


@TRAINER_REGISTRY.register()
class FedPGP(GlobalPersonalPromptTrainer):
    """Global prompt ``sigma`` (shared) + personal ``U V`` (or a full-rank term), CE + MU * L_con."""

    CFG_NODE = "FEDPGP"

    @classmethod
    def cfg_defaults(cls):
        return global_personal_cfg_node(bottleneck=8, mu=0.5, temp=0.5, negative_pair="global",
                                        handcrafted="published")
