"""FedTV: "Robust Balance Between Generalization and Personalization in Federated Parameter-Efficient
Fine-Tuning" (official code ``wingslyz/FedTV``), and its earlier version FLORA (``wingslyz/FLORA``)
as configs of the same trainer (``configs/trainers/FedTV/flora_*.yaml``).

Text side (built on ``trainers/lowrank_prompt.py``): client ``i`` uses the context
``p_i = sigma + B_i diag(S_i) A_i`` with ``sigma (M, d)`` the shared global prompt and the personal
orthogonal low-rank term ``B (M, r)``, ``S (r,)``, ``A (r, d)`` (``ADAPTATION "bsa"``; B and A
orthogonally initialised, S ~ N(0, 0.02)). FLORA: ``p_i = sigma + B_i A_i`` (``ADAPTATION "ba"``,
``INIT "normal"``: B, A ~ N(0, 0.02) as its published code ends up with).

Image side, on the frozen (cacheable) image feature ``x (B, D)``: a global attention adapter
(shared), a local one (personal), ``x_glo = g(x) * x``, ``x_loc = l(x) * x``
(``trainers/visual_adapters.py``), and a dynamic visual fusion (personal, ALL its parameters) that
weighs ``[x, x_glo, x_loc]`` per image; the fused feature is L2-normalised for the cosine logits.

Loss: ``L_ce + MU * L_con + ORTHO_WEIGHT * L_orth + L2_WEIGHT * L_2`` with
``L_orth = ||B^T B - I_r||_F + ||A A^T - I_r||_F`` (Frobenius norm, not squared, summed over prompts;
``ORTHO_A False`` drops the A term, as FLORA), ``L_2 = ||B||_F + ||A||_F`` (FLORA only) and ``L_con``
the prompt-wise contrastive loss of ``lowrank_prompt.prompt_contrastive_loss``.

Server: similarity-aware aggregation (``federated/aggregation_saa.py``) of ``sigma`` and of the
global adapter, per tensor; ``AGGREGATION "fedavg"`` (or ``FED.AGGREGATION fedavg``) for FedAvg.

Config ``cfg.TRAINER.FEDTV`` (defaults = published FedTV) -- one flag per ablation:
  N_CTX 16, CSC, CTX_INIT, PREC, CLASS_TOKEN_POSITION     CoOp prompt keys
  ADAPTATION "bsa" | "ba" | "lowrank" | "fullrank"         personal term (B diag(S) A; FLORA's B A; FedPGP's U V; free)
  BOTTLENECK 8                                             rank r
  INIT "orthogonal" | "normal"                             init of B and A
  MU 1.0, TEMP 0.5                                         weight (MU 0: no contrastive loss) and temperature of L_con
  CONTRAST_POSITIVE / CONTRAST_NEGATIVE, NEGATIVE_PAIR "handcrafted" | "global", HANDCRAFTED "published" | "template"
  ORTHO_WEIGHT 0.1 (0: no orthogonality loss), ORTHO_A True, L2_WEIGHT 0.0
  GLOBAL_ADAPTER True, LOCAL_ADAPTER True, ADAPTER_BIAS False  adapters (FedTV: no bias; FLORA: bias)
  FUSION "dynamic" | "mean" | "adapted"                    how x and the adapted features are combined
  FUSION_HIDDEN 64, FUSION_SCALED False                    query/key size; divide the scores by sqrt(hidden)
  AGGREGATION "saa" | "fedavg", SAA_TEMP 1.0               server rule and SAA temperature

``FUSION``: "dynamic" is the attention fusion over ``[x, x_glo, x_loc]`` (only the enabled adapters);
"mean" (the no-fusion ablation) averages the same candidates with equal weights; "adapted" uses the
adapted features only (their mean; ``x`` when no adapter is on) -- FLORA's ``x <- adapter(x) * x``.
With no adapter, "dynamic" and "mean" both reduce to ``x`` (no fusion module is built).

Deliberate differences from the published code (docs/PUBLISHED_CODE.md), documented choices:

* ``MU`` is really used (the published FedTV code reads ``mu`` and adds L_con with weight 1; with the
  published default ``mu = 1`` the two agree).
* Every fusion parameter is personal, biases included (the published code keeps only the weights
  per client, so the biases leak between clients through the shared trainer).
* The SAA temperature is configurable (published: 1.0 hard-coded); the optimiser is created per
  client per round (the published code shares one SGD state across clients).
* The negative pair of L_con is ``(z_C, z_i)`` as both published codes compute it
  (``NEGATIVE_PAIR "handcrafted"``); FedPGP's ``(z_G, z_i)`` is ``"global"``. ``z_C`` is what the
  published code encodes, ``"X X ... X {class}."`` (``HANDCRAFTED "published"``, the default); the
  dataset's hand-crafted template prompt (the paper's wording) is ``"template"``.
* The fusion scores are not scaled by ``sqrt(hidden)``, as published (``FUSION_SCALED True`` scales).
* FLORA: its orthogonality term ``||B B^T - I||`` (``M x M``, rank r: never 0) is taken as the intended
  ``||B^T B - I||``; its L2 term, whose published condition ``'B' and 'A' in name`` reduces to
  ``'A' in name``, is applied to B and A (the low-rank factors); its extra full-rank ``ctx_local``
  (used only by that L2 term and an unused text pass) is not built; its adapter is FedAvg'd as
  the published server intends (the published dead code trains it sequentially across clients).
  One prompt set only (published FLORA default N = 2 concatenates logits without pooling).
"""
from __future__ import annotations

import torch
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from federated.aggregation import build_aggregator
from federated.aggregation_saa import SAA
from trainers.lowrank_prompt import (
    GlobalPersonalCLIP,
    GlobalPersonalPromptLearner,
    GlobalPersonalPromptTrainer,
    global_personal_cfg_node,
)
from trainers.method import Range
from trainers.visual_adapters import AttentionAdapter, VisualDynamicFusion

INIT_CHOICES = ("orthogonal", "normal")
FUSION_CHOICES = ("dynamic", "mean", "adapted")
AGGREGATION_CHOICES = ("saa", "fedavg")


# ---------------------------------------------------------------------------------------- text side
class OrthogonalLowRankPromptLearner(GlobalPersonalPromptLearner):
    """``delta = B diag(S) A``: ``B (M, r)``, ``S (r,)``, ``A (r, d)`` (a leading ``C`` with CSC).

    ``init "orthogonal"``: B with orthonormal columns and A with orthonormal rows (``nn.init.orthogonal_``
    per prompt), S ~ N(0, 0.02) (FedTV). ``"normal"``: everything N(0, 0.02) (FLORA's published init).
    """

    TAKES_RANK = True
    USE_S = True

    def __init__(self, clip, classnames: list[str], rank: int, init: str = "orthogonal", **kwargs):
        super().__init__(clip, classnames, **kwargs)
        if int(rank) < 1:
            raise ValueError(f"the low-rank bottleneck must be >= 1, got {rank}")
        if init not in INIT_CHOICES:
            raise ValueError(f"INIT must be one of {INIT_CHOICES}, got '{init}'")
        self.rank = int(rank)
        self.B = self.init_normal(self.n_ctx, self.rank)
        self.A = self.init_normal(self.rank, self.ctx_dim)
        if init == "orthogonal":
            with torch.no_grad():
                for factor in (self.B, self.A):
                    for matrix in factor.view(-1, *factor.shape[-2:]):
                        nn.init.orthogonal_(matrix)
        if self.USE_S:
            lead = self.context_shape[:-2]
            self.S = nn.Parameter(nn.init.normal_(torch.empty(*lead, self.rank, device=self.device), std=0.02))

    def delta(self) -> torch.Tensor:
        if self.USE_S:
            return self.B @ (self.S.unsqueeze(-1) * self.A)
        return self.B @ self.A

    def orthogonality_loss(self, include_a: bool = True) -> torch.Tensor:
        """``sum_prompts ||B^T B - I_r||_F (+ ||A A^T - I_r||_F)``: a scalar, 0 for orthonormal factors."""
        eye = torch.eye(self.rank, device=self.B.device, dtype=self.B.dtype)
        loss = torch.linalg.matrix_norm(self.B.transpose(-1, -2) @ self.B - eye).sum()
        if include_a:
            loss = loss + torch.linalg.matrix_norm(self.A @ self.A.transpose(-1, -2) - eye).sum()
        return loss

    def l2_loss(self) -> torch.Tensor:
        """``||B||_F + ||A||_F`` (summed over prompts): FLORA's L2 term."""
        return torch.linalg.matrix_norm(self.B).sum() + torch.linalg.matrix_norm(self.A).sum()


class FloraPromptLearner(OrthogonalLowRankPromptLearner):
    """FLORA: ``delta = B A`` (no scaling vector S)."""

    USE_S = False


# --------------------------------------------------------------------------------------- image side
class FedTVCLIP(GlobalPersonalCLIP):
    """``GlobalPersonalCLIP`` whose logits first pass the image feature through the adapters and the fusion.

    Trainable modules (names as in the state dict): ``glo_adapter`` (shared), ``loc_adapter`` and
    ``visual_fusion`` (personal); each is absent when switched off. ``logits(image_features (B, D),
    text_features (C, D)) -> (B, C)``.
    """

    def __init__(self, clip, prompt_learner: GlobalPersonalPromptLearner, *, global_adapter: bool = True,
                 local_adapter: bool = True, adapter_bias: bool = False, fusion: str = "dynamic",
                 fusion_hidden: int = 64, fusion_scaled: bool = False, **kwargs):
        super().__init__(clip, prompt_learner, **kwargs)
        if fusion not in FUSION_CHOICES:
            raise ValueError(f"FUSION must be one of {FUSION_CHOICES}, got '{fusion}'")
        dim = int(clip.embed_dim)
        device = prompt_learner.device
        self.glo_adapter = AttentionAdapter(dim, bias=adapter_bias).to(device) if global_adapter else None
        self.loc_adapter = AttentionAdapter(dim, bias=adapter_bias).to(device) if local_adapter else None
        self.fusion = fusion
        has_adapter = global_adapter or local_adapter
        self.visual_fusion = (VisualDynamicFusion(dim, fusion_hidden, scaled=fusion_scaled).to(device)
                              if fusion == "dynamic" and has_adapter else None)

    def adapted_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x_glo, x_loc]`` for the enabled adapters, each ``(B, D)``."""
        return [adapter(x) for adapter in (self.glo_adapter, self.loc_adapter) if adapter is not None]

    #: True: the global model -- the image feature through the global adapter alone (``x`` without one).
    global_only: bool = False

    def fuse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image feature used for classification ``(B, D)`` (not normalised) and, with dynamic
        fusion, the fusion weights ``(B, K)`` over ``[x, *adapted]``."""
        if self.global_only:
            return (x if self.glo_adapter is None else self.glo_adapter(x)), None
        adapted = self.adapted_features(x)
        if not adapted:
            return x, None
        if self.fusion == "adapted":
            return torch.stack(adapted, dim=1).mean(dim=1), None
        candidates = torch.stack([x, *adapted], dim=1)  # (B, K, D)
        if self.visual_fusion is None:  # "mean"
            return candidates.mean(dim=1), None
        return self.visual_fusion(x, candidates)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        fused, _ = self.fuse(image_features.to(text_features.dtype))
        return super().logits(fused, text_features)


# ------------------------------------------------------------------------------------------- trainer
def _factor_terms_rule(node) -> str | None:
    """ORTHO_WEIGHT / L2_WEIGHT act on the factors B and A of the ``bsa`` / ``ba`` terms."""
    if (float(node.ORTHO_WEIGHT) > 0 or float(node.L2_WEIGHT) > 0) and node.ADAPTATION not in ("bsa", "ba"):
        return ("TRAINER.FEDTV.ORTHO_WEIGHT / L2_WEIGHT act on B and A: they need ADAPTATION bsa or ba, "
                f"got '{node.ADAPTATION}' (set both weights to 0)")
    return None


@TRAINER_REGISTRY.register()
class FedTV(GlobalPersonalPromptTrainer):
    """sigma + global adapter shared; B, S, A, local adapter and fusion personal; SAA on the server."""

    CFG_NODE = "FEDTV"
    SHARED = ("prompt_learner.sigma", "glo_adapter.*")
    ADAPTATIONS = {
        **GlobalPersonalPromptTrainer.ADAPTATIONS,
        "bsa": OrthogonalLowRankPromptLearner,
        "ba": FloraPromptLearner,
    }
    CFG_RULES = {"ADAPTATION": tuple(ADAPTATIONS), "INIT": INIT_CHOICES, "FUSION": FUSION_CHOICES,
                 "AGGREGATION": AGGREGATION_CHOICES, "ORTHO_WEIGHT": Range(0), "L2_WEIGHT": Range(0),
                 "FUSION_HIDDEN": Range(1), "SAA_TEMP": Range(0, low_open=True), "ORTHO_A": _factor_terms_rule}

    @classmethod
    def cfg_defaults(cls):
        node = global_personal_cfg_node(bottleneck=8, mu=1.0, temp=0.5, negative_pair="handcrafted",
                                        handcrafted="published")
        node.ADAPTATION = "bsa"
        node.INIT = "orthogonal"
        node.ORTHO_WEIGHT = 0.1
        node.ORTHO_A = True
        node.L2_WEIGHT = 0.0
        node.GLOBAL_ADAPTER = True
        node.LOCAL_ADAPTER = True
        node.ADAPTER_BIAS = False
        node.FUSION = "dynamic"
        node.FUSION_HIDDEN = 64
        node.FUSION_SCALED = False
        node.AGGREGATION = "saa"
        node.SAA_TEMP = 1.0
        return node

    def build_prompt_learner(self, clip) -> GlobalPersonalPromptLearner:
        t = self.tcfg
        if t.ADAPTATION not in ("bsa", "ba"):
            return super().build_prompt_learner(clip)
        return self.ADAPTATIONS[t.ADAPTATION](
            clip, self.classnames, rank=int(t.BOTTLENECK), init=t.INIT, n_ctx=t.N_CTX, ctx_init=t.CTX_INIT,
            csc=t.CSC, class_token_position=t.CLASS_TOKEN_POSITION)

    def build_clip_model(self, clip, prompt_learner) -> FedTVCLIP:
        from dassl.data.datasets import dataset_template

        t = self.tcfg
        return FedTVCLIP(clip, prompt_learner, handcrafted=t.HANDCRAFTED, template=dataset_template(self.cfg),
                         global_adapter=bool(t.GLOBAL_ADAPTER), local_adapter=bool(t.LOCAL_ADAPTER),
                         adapter_bias=bool(t.ADAPTER_BIAS), fusion=t.FUSION, fusion_hidden=int(t.FUSION_HIDDEN),
                         fusion_scaled=bool(t.FUSION_SCALED))

    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``L_ce + MU L_con`` (base) ``+ ORTHO_WEIGHT L_orth + L2_WEIGHT L_2``; extra logs each term."""
        loss, logits, extra = super().compute_loss(image_features, labels)
        t, learner = self.tcfg, self.model.prompt_learner
        if float(t.ORTHO_WEIGHT) > 0:
            ortho = learner.orthogonality_loss(include_a=bool(t.ORTHO_A))
            loss = loss + float(t.ORTHO_WEIGHT) * ortho
            extra["loss_ortho"] = ortho.detach()
        if float(t.L2_WEIGHT) > 0:
            l2 = learner.l2_loss()
            loss = loss + float(t.L2_WEIGHT) * l2
            extra["loss_l2"] = l2.detach()
        return loss, logits, extra

    def build_aggregator(self):
        """SAA (round 1: FedAvg) unless FedAvg is asked for."""
        name = self.cfg.FED.AGGREGATION or self.tcfg.AGGREGATION
        if name.lower() != "saa":
            return build_aggregator(name, self.cfg)
        return SAA(self.cfg, temperature=float(self.tcfg.SAA_TEMP))

