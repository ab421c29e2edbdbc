"""Global prompt + personal term: the text side shared by FedPGP and FedTV / FLORA.

Client ``i`` classifies with the personalised context ``p_i = sigma + delta_i`` (FedPGP eq. 7):

* ``sigma`` (M, d) -- the global prompt p_G, shared with the server (``prompt_learner.sigma``);
* ``delta_i`` (M, d) -- a personal term that never leaves the client. Subclasses of
  :class:`GlobalPersonalPromptLearner` define it: :class:`LowRankPromptLearner` ``U (M, r) @ V (r, d)``
  (FedPGP eq. 9), :class:`FullRankPromptLearner` a free ``(M, d)`` matrix (FedPGP Table 6 ablation);
  FedTV adds ``B diag(S) A``. With class-specific context (CSC) every tensor gains a leading class
  dimension ``C``.

Text features (all L2-normalised, ``(C, D)``):

* ``z_i`` -- personalised prompts ``[SOS] p_i [CLASS] .``; they are also the classification features:
  ``logits = logit_scale.exp() * img @ z_i^T``;
* ``z_G`` -- global prompts ``[SOS] sigma [CLASS] .``, needed only by the contrastive loss;
* ``z_C`` -- the frozen CLIP's features of a hand-crafted prompt. They depend on no trainable tensor,
  so :class:`GlobalPersonalCLIP` computes them once per class set (lazily, on first use after
  ``set_classnames``; ``trainers/handcrafted.py``) and caches them. Two meanings (``HANDCRAFTED``):

  - ``"published"`` (default): what the published FedPGP/FedTV code encodes: the literal
    placeholder prompt ``"X X ... X {classname}."`` (``n_ctx`` X's; the ``CTX_INIT`` words when
    given) through the frozen token embedding and text tower;
  - ``"template"`` (the paper's text): the dataset's hand-crafted template, e.g.
    ``"a photo of a {}."`` -- "the text features of the hand-crafted prompt" of the FedPGP paper.

A training step encodes ``z_i`` and ``z_G`` in ONE batched text-tower pass over ``2C`` prompts (``C``
when no loss term needs ``z_G``). The published code also encodes the ``U V``-only prompts and never
uses them; we do not.

Prompt-wise contrastive loss (FedPGP eq. 12), per class ``c`` with ``s = cos``:

    L_con = -log( exp(s(z_G, z_C)/tau) / (exp(s(z_G, z_C)/tau) + exp(s(a, z_i)/tau)) )
          = softplus((s(a, z_i) - s(z_G, z_C)) / tau),     averaged over classes,

where the negative pair's anchor ``a`` is ``z_G`` (``NEGATIVE_PAIR "global"``: the FedPGP paper and
code) or ``z_C`` (``"handcrafted"``: what the published FedTV/FLORA code computes). Ablations
(FedPGP Tables 6/7) -- the two-way softmax degenerates to the constant 0 when one of its two terms is
removed, so each single-pair ablation is the poster's one-pair objective, written as a loss to
minimise (non-negative, 0 at the pair's optimum, no temperature):

* ``CONTRAST_NEGATIVE False`` ("w/o negative"): ``L = mean_c 1 - s(z_G, z_C)`` (= 1 - the poster's
  ``L_pos = sim(z_G, z_C)``: only pulls the global prompt toward CLIP's hand-crafted features);
* ``CONTRAST_POSITIVE False`` ("w/o positive"): ``L = mean_c s(a, z_i)`` (= 1 - the poster's
  ``L_neg = 1 - sim(z_G, z_i)``: only pushes the global and personalised features apart);
* both False: no contrastive term (and no ``z_G`` pass): ``L = L_ce``.

The total loss is ``L_ce + MU * L_con`` (eq. 13). It is computed in fp32 from the (possibly
autocast) text features, so mixed precision keeps L_con (the published amp path drops it).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from federated.errors import ClassSpaceError
from trainers.handcrafted import HandcraftedText
from trainers.method import Range
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node

logger = logging.getLogger("fedtv.trainer")

HANDCRAFTED_CHOICES = ("template", "published")
NEGATIVE_PAIRS = ("global", "handcrafted")


# ---------------------------------------------------------------------------------------------- loss
def prompt_contrastive_loss(z_global: torch.Tensor | None, z_handcrafted: torch.Tensor, z_personal: torch.Tensor,
                            tau: float, positive: bool = True, negative: bool = True,
                            negative_pair: str = "global") -> torch.Tensor:
    """FedPGP's prompt-wise contrastive loss (eq. 12) and its single-pair ablations (module docstring).

    Args:
        z_global: ``(C, D)`` features of the global prompts ``z_G`` (may be None when neither the
            positive pair nor a ``"global"`` negative pair needs it).
        z_handcrafted: ``(C, D)`` hand-crafted CLIP features ``z_C`` (constant).
        z_personal: ``(C, D)`` features of the personalised prompts ``z_i``.
        tau: temperature (> 0) of the two-way softmax.
        positive / negative: keep the pair ``(z_G, z_C)`` / the pair ``(anchor, z_i)``.
        negative_pair: ``"global"`` (anchor ``z_G``, FedPGP) or ``"handcrafted"`` (anchor ``z_C``, FedTV code).

    Inputs need not be normalised (cosine similarity is used). Returns a scalar (fp32); the mean over
    the ``C`` classes. Both terms off: a zero that keeps the graph's device.
    """
    if negative_pair not in NEGATIVE_PAIRS:
        raise ValueError(f"negative_pair must be one of {NEGATIVE_PAIRS}, got '{negative_pair}'")
    if tau <= 0:
        raise ValueError(f"the contrastive temperature must be > 0, got {tau}")
    if not (positive or negative):
        return z_personal.new_zeros((), dtype=torch.float32)
    if (positive or negative_pair == "global") and z_global is None:
        raise ValueError("z_global is needed by the positive pair and by the 'global' negative pair")
    z_c, z_i = z_handcrafted.float(), z_personal.float()
    z_g = z_global.float() if z_global is not None else None
    anchor = z_g if negative_pair == "global" else z_c
    if positive and negative:
        pos = F.cosine_similarity(z_g, z_c, dim=-1)
        neg = F.cosine_similarity(anchor, z_i, dim=-1)
        return F.softplus((neg - pos) / tau).mean()
    if positive:
        return (1.0 - F.cosine_similarity(z_g, z_c, dim=-1)).mean()
    return F.cosine_similarity(anchor, z_i, dim=-1).mean()


# --------------------------------------------------------------------------------------- prompt learners
class GlobalPersonalPromptLearner(PromptLearner):
    """Context ``sigma + delta()``: a shared global prompt plus a personal term defined by subclasses.

    ``sigma`` is ``(M, d)`` (``(C, M, d)`` with CSC), initialised N(0, 0.02) or from ``ctx_init``
    words. ``delta()`` must return a tensor of ``sigma``'s shape. ``forward()`` gives the personalised
    prompt embeddings ``(C, L, d)``, ``global_prompts()`` the global ones ``(C, L, d)``.
    """

    #: Whether the constructor takes ``rank=`` (the trainer passes ``BOTTLENECK``).
    TAKES_RANK: bool = False
    #: True: ``context()`` is the global prompt ``sigma`` alone (the trainer's ``global_model()``).
    global_only: bool = False

    def __init__(self, clip, classnames: list[str], n_ctx: int = 16, ctx_init: str = "", csc: bool = False,
                 class_token_position: str = "end"):
        super().__init__(clip, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc,
                         class_token_position=class_token_position, learn_ctx=False)
        self.sigma = nn.Parameter(self.init_context(self._init_words(), len(classnames)))

    def _init_words(self) -> torch.Tensor | None:
        """Token embeddings ``(M, d)`` of the ``ctx_init`` words (``prompt_prefix``), or None for X's."""
        if self.prompt_prefix == " ".join(["X"] * self.n_ctx):
            return None
        ids = self._tokenize([self.prompt_prefix]).to(self.device)
        with torch.no_grad():
            return self.token_embedding(ids)[0, 1 : 1 + self.n_ctx].float()

    @property
    def context_shape(self) -> tuple[int, ...]:
        """``(M, d)`` or ``(C, M, d)`` (CSC)."""
        return tuple(self.sigma.shape)

    def init_normal(self, *shape: int) -> nn.Parameter:
        """A parameter ``shape`` (``(C, *shape)`` with CSC) on the learner's device, N(0, 0.02)."""
        lead = self.context_shape[:-2]
        return nn.Parameter(nn.init.normal_(torch.empty(*lead, *shape, device=self.device), std=0.02))

    def delta(self) -> torch.Tensor:
        """The personal term, shape ``context_shape``."""
        raise NotImplementedError(f"{type(self).__name__} must define delta()")

    def context(self) -> torch.Tensor:
        """Personalised context ``sigma + delta()``: ``(M, d)`` or ``(C, M, d)`` (``sigma`` with ``global_only``)."""
        return self.sigma if self.global_only else self.sigma + self.delta()

    def global_prompts(self) -> torch.Tensor:
        """Prompt embeddings ``(C, L, d)`` of the global context ``sigma`` alone."""
        return self.construct_prompts(self.sigma)

    def set_classnames(self, classnames: list[str]) -> None:
        if self.csc and hasattr(self, "sigma") and self.sigma.shape[0] != len(classnames):
            raise ClassSpaceError("class-specific context (CSC) cannot be evaluated on other classes")
        super().set_classnames(classnames)


class LowRankPromptLearner(GlobalPersonalPromptLearner):
    """FedPGP: ``delta = U @ V`` with ``U (M, r)``, ``V (r, d)`` (batched ``(C, ...)`` with CSC), both N(0, 0.02)."""

    TAKES_RANK = True

    def __init__(self, clip, classnames: list[str], rank: int, **kwargs):
        super().__init__(clip, classnames, **kwargs)
        if int(rank) < 1:
            raise ValueError(f"the low-rank bottleneck must be >= 1, got {rank}")
        self.rank = int(rank)
        self.U = self.init_normal(self.n_ctx, self.rank)
        self.V = self.init_normal(self.rank, self.ctx_dim)

    def delta(self) -> torch.Tensor:
        return self.U @ self.V


class FullRankPromptLearner(GlobalPersonalPromptLearner):
    """Ablation (FedPGP Table 6, "full-rank adaption"): ``delta`` is a free ``(M, d)`` matrix, N(0, 0.02)."""

    def __init__(self, clip, classnames: list[str], **kwargs):
        super().__init__(clip, classnames, **kwargs)
        self.delta_full = self.init_normal(self.n_ctx, self.ctx_dim)

    def delta(self) -> torch.Tensor:
        return self.delta_full


# ------------------------------------------------------------------------------------------ CLIP wrapper
class GlobalPersonalCLIP(PromptCLIP):
    """Frozen CLIP + a :class:`GlobalPersonalPromptLearner`, with cached hand-crafted features ``z_C``.

    ``eval_context()`` gives the personalised features ``z_i`` ``(C, D)``; ``text_feature_sets`` gives
    ``z_i`` and optionally ``z_G`` from one text-tower pass; ``handcrafted_features()`` gives ``z_C``
    ``(C, D)`` (fp32, no gradient), encoded once per class set by ``trainers.handcrafted.HandcraftedText``.
    """

    def __init__(self, clip, prompt_learner: GlobalPersonalPromptLearner, handcrafted: str = "published",
                 template: str = "a photo of a {}."):
        super().__init__(clip, prompt_learner)
        if handcrafted not in HANDCRAFTED_CHOICES:
            raise ValueError(f"HANDCRAFTED must be one of {HANDCRAFTED_CHOICES}, got '{handcrafted}'")
        self.handcrafted = handcrafted
        # "published": the placeholder prompt "X X ... X {}." (the CTX_INIT words when given)
        self.template = template if handcrafted == "template" else f"{prompt_learner.prompt_prefix} {{}}."
        self.handcrafted_text = HandcraftedText(clip, prompt_learner.classnames, self.template)

    def handcrafted_features(self) -> torch.Tensor:
        """``z_C`` ``(C, D)``, L2-normalised fp32; encoded by the frozen text tower on first use only."""
        return self.handcrafted_text()

    def text_feature_sets(self, with_global: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(z_i, z_G)``, each ``(C, D)`` normalised; ``z_G`` is None unless ``with_global``.

        Both prompt sets go through the text tower in one pass (``encode_contexts``: ``2C`` prompts, or two
        shared prefixes and ``C`` class suffixes).
        """
        learner = self.prompt_learner
        if not with_global:
            return self.text_features(), None
        z_personal, z_global = self.encode_contexts([learner.context(), learner.sigma])
        return z_personal, z_global

    def step_text_features(self, with_global: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """What a training step needs: ``(z_i, z_G, z_C)``, each ``(C, D)`` normalised, from
        :meth:`text_feature_sets`; ``z_G`` None unless ``with_global``, ``z_C`` None: the cached
        :meth:`handcrafted_features`. (Reference mode replaces it by the published four passes,
        ``trainers/reference_cost.py``.)"""
        z_personal, z_global = self.text_feature_sets(with_global)
        return z_personal, z_global, None

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self.handcrafted_text.set_classnames(classnames)


# --------------------------------------------------------------------------------------------- trainer
def global_personal_cfg_node(bottleneck: int = 8, mu: float = 0.5, temp: float = 0.5,
                             negative_pair: str = "global", handcrafted: str = "published") -> CN:
    """The CoOp prompt keys plus the keys of the global + personal family (see the module docstring).

    ``BOTTLENECK`` rank r; ``ADAPTATION`` "lowrank" | "fullrank"; ``MU`` weight of L_con; ``TEMP`` tau;
    ``CONTRAST_POSITIVE`` / ``CONTRAST_NEGATIVE`` keep the positive / negative pair; ``NEGATIVE_PAIR``
    "global" (z_G vs z_i) | "handcrafted" (z_C vs z_i); ``HANDCRAFTED`` "published" | "template".
    """
    node = prompt_cfg_node()
    node.BOTTLENECK = bottleneck
    node.ADAPTATION = "lowrank"
    node.MU = mu
    node.TEMP = temp
    node.CONTRAST_POSITIVE = True
    node.CONTRAST_NEGATIVE = True
    node.NEGATIVE_PAIR = negative_pair
    node.HANDCRAFTED = handcrafted
    return node


class GlobalPersonalPromptTrainer(PromptTrainer):
    """Trainer base of the family: ``sigma`` shared, the personal term personal, ``L_ce + MU * L_con``.

    Subclasses set ``CFG_NODE``, ``cfg_defaults`` and may register other personal terms in
    ``ADAPTATIONS`` (name -> learner class; "lowrank" classes take ``rank=``) and in the
    ``ADAPTATION`` rule.
    """

    SHARED = ("prompt_learner.sigma",)
    ADAPTATIONS: dict[str, type[GlobalPersonalPromptLearner]] = {
        "lowrank": LowRankPromptLearner,
        "fullrank": FullRankPromptLearner,
    }
    CFG_RULES = {"ADAPTATION": tuple(ADAPTATIONS), "NEGATIVE_PAIR": NEGATIVE_PAIRS,
                 "HANDCRAFTED": HANDCRAFTED_CHOICES, "TEMP": Range(0, low_open=True), "MU": Range(0),
                 "BOTTLENECK": Range(1)}

    @classmethod
    def cfg_defaults(cls) -> CN:
        return global_personal_cfg_node()

    def build_prompt_learner(self, clip) -> GlobalPersonalPromptLearner:
        t = self.tcfg
        cls = self.ADAPTATIONS[t.ADAPTATION]
        if cls.TAKES_RANK and int(t.BOTTLENECK) >= int(t.N_CTX):
            logger.warning("TRAINER.%s.BOTTLENECK %d >= N_CTX %d: the personal term is not low-rank (full rank "
                           "is %d)", self.CFG_NODE, int(t.BOTTLENECK), int(t.N_CTX), int(t.N_CTX))
        kwargs = dict(n_ctx=t.N_CTX, ctx_init=t.CTX_INIT, csc=t.CSC, class_token_position=t.CLASS_TOKEN_POSITION)
        if cls.TAKES_RANK:
            kwargs["rank"] = int(t.BOTTLENECK)
        return cls(clip, self.classnames, **kwargs)

    def build_clip_model(self, clip, prompt_learner) -> GlobalPersonalCLIP:
        from dassl.data.datasets import dataset_template

        return GlobalPersonalCLIP(clip, prompt_learner, handcrafted=self.tcfg.HANDCRAFTED,
                                  template=dataset_template(self.cfg))

    @property
    def uses_contrast(self) -> bool:
        t = self.tcfg
        return float(t.MU) > 0 and bool(t.CONTRAST_POSITIVE or t.CONTRAST_NEGATIVE)

    def contrastive_loss(self, z_personal: torch.Tensor, z_global: torch.Tensor | None,
                         z_handcrafted: torch.Tensor | None = None) -> torch.Tensor:
        """``L_con`` of the current class set from ``z_i``, ``z_G`` and ``z_C`` (each ``(C, D)``; ``z_C``
        None: the model's cached hand-crafted features)."""
        t = self.tcfg
        if z_handcrafted is None:
            z_handcrafted = self.model.handcrafted_features()
        return prompt_contrastive_loss(z_global, z_handcrafted, z_personal, float(t.TEMP),
                                       positive=bool(t.CONTRAST_POSITIVE), negative=bool(t.CONTRAST_NEGATIVE),
                                       negative_pair=t.NEGATIVE_PAIR)

    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``L_ce(img @ z_i) + MU * L_con``; ``extra`` logs ``loss_ce`` and ``loss_con``."""
        t = self.tcfg
        need_global = self.uses_contrast and bool(t.CONTRAST_POSITIVE or t.NEGATIVE_PAIR == "global")
        z_personal, z_global, z_handcrafted = self.model.step_text_features(need_global)
        logits = self.model.logits(image_features, z_personal)
        loss_ce = F.cross_entropy(logits.float(), labels)
        if not self.uses_contrast:
            return loss_ce, logits, {"loss_ce": loss_ce.detach()}
        loss_con = self.contrastive_loss(z_personal, z_global, z_handcrafted)
        loss = loss_ce + float(t.MU) * loss_con
        return loss, logits, {"loss_ce": loss_ce.detach(), "loss_con": loss_con.detach()}
