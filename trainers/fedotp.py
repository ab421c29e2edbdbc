"""FedOTP: a global and a local prompt per client, matched to image patches by optimal transport.

Li et al., "Global and Local Prompts Cooperation via Optimal Transport for Federated Learning"
(CVPR 2024; published trainer ``GLP_OT``). Each client holds ``N = NUM_PROMPTS`` CoOp contexts
(published: 2): the first ``NUM_GLOBAL`` (published ``avg_prompt`` 1) are shared and averaged by the
server (``prompt_learner.ctx_global`` ``(G, n_ctx, d)``), the others are personal
(``prompt_learner.ctx_local`` ``(N - G, n_ctx, d)``). For an image with patch tokens ``x_1..x_P``
and a class ``c`` with prompt features ``t_{c,1..N}`` (all L2-normalised):

* ``sim[p, n] = cos(x_p, t_{c,n})``, cost ``C = 1 - sim`` (P x N);
* transport plan ``T`` between the patches (mass ``1/P`` each) and the prompts: balanced Sinkhorn
  (``OT Sinkhorn``, mass ``1/N`` per prompt) or the unbalanced "COT" variant where the prompts take
  only ``TOP_PERCENT`` of the patches' mass (``TOP_PERCENT/N`` each, ``T 1 <= 1/P``), kernel
  ``exp(-C / EPS)``, at most ``MAX_ITER`` iterations, stop below ``THRESH`` (``STOP_RULE "published"``:
  the published rule, the mean change of the watched scaling vector; ``"marginal"``: the patch
  marginals' error, ``trainers/optimal_transport.py``);
* ``logit_c = logit_scale * sum(T * sim)``. The paper's ``1 - <T, C>`` differs from this by
  ``1 - sum(T)``, the same constant for every class (1 - TOP_PERCENT), so the softmax is identical.

The plan is a constant for autograd (as published). Patch tokens come from the frozen image tower
(``trainers/image_tokens.py``: ViT patches after ``ln_post`` and ``proj``; for ResNets the attention
pool evaluated at every position). They are a pure function of the image, so ``encode_images``
returns the tokens ``(B, 1 + P, D)`` and caching stays on: the evaluation cache holds
``(1 + P) * D`` float32 per test image (ViT-B/16: 197 x 512, about 0.4 MB per image; RN50: 50 x 1024)
and the training-view cache ``FED.CACHE_VIEWS`` float16 copies per training image on disk. When this
does not fit, ``FED.FEATURE_CACHE False`` turns the training cache off and
``TRAINER.FEDOTP.CACHE_TOKENS False`` both caches (every pass encodes the images again). Token 0 is
CLIP's pooled image feature, used by the zero-shot reference.

Differences from the published code (reasons in ``trainers/optimal_transport.py``): the OT iterations
run in the log domain in float32 (no NaN for small ``EPS``; a non-finite plan raises an error instead
of returning None; the published fp16 kernel underflows for EPS 0.01). ``STOP_RULE "marginal"`` (not
the default) makes ``THRESH`` bound the mass the next iteration would still move instead of the
published change of successive scaling vectors, whose scale depends on ``EPS``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from federated.errors import ClassSpaceError
from trainers.image_tokens import image_tokens
from trainers.method import Range
from trainers.optimal_transport import OT_METHODS, STOP_RULES, uniform_plan
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node


class MultiPromptLearner(PromptLearner):
    """``N`` CoOp contexts per class: ``ctx_global`` ``(G, n_ctx, d)`` and ``ctx_local`` ``(N - G, n_ctx, d)``
    (``(., C, n_ctx, d)`` with class-specific context). ``forward()`` returns ``(N * C, L, d)``, prompt-major."""

    def __init__(self, clip, classnames: list[str], n_prompts: int = 2, n_global: int = 1, n_ctx: int = 16,
                 ctx_init: str = "", csc: bool = False, class_token_position: str = "end"):
        if n_prompts < 1 or not 0 <= n_global <= n_prompts:
            raise ValueError(f"need NUM_PROMPTS >= 1 and 0 <= NUM_GLOBAL <= NUM_PROMPTS, got {n_prompts}, {n_global}")
        super().__init__(clip, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc,
                         class_token_position=class_token_position)
        first = self.ctx.detach().clone()
        del self.ctx
        # From words: every prompt starts from them; random: independent N(0, 0.02) draws.
        rest = [first.clone() if ctx_init else self.init_context(None, len(classnames)) for _ in range(n_prompts - 1)]
        contexts = torch.stack([first, *rest])
        self.n_prompts, self.n_global = int(n_prompts), int(n_global)
        if n_global:
            self.ctx_global = nn.Parameter(contexts[:n_global].clone())
        if n_prompts > n_global:
            self.ctx_local = nn.Parameter(contexts[n_global:].clone())

    #: True: the global prompts alone (the trainer's ``global_model()``).
    global_only: bool = False

    def context(self) -> torch.Tensor:
        """All contexts ``(N, n_ctx, d)`` or ``(N, C, n_ctx, d)``, global ones first (``global_only``: the
        ``G`` global ones)."""
        names = ("ctx_global",) if self.global_only and self.n_global else ("ctx_global", "ctx_local")
        parts = [getattr(self, name) for name in names if hasattr(self, name)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def set_classnames(self, classnames: list[str]) -> None:
        if self.csc and hasattr(self, "n_prompts") and self.context().shape[1] != len(classnames):
            raise ClassSpaceError("class-specific context (CSC) cannot be evaluated on other classes")
        super().set_classnames(classnames)

    def forward(self) -> torch.Tensor:
        return torch.cat([self.construct_prompts(ctx) for ctx in self.context()])


class OTPromptCLIP(PromptCLIP):
    """Frozen CLIP with ``N`` prompts per class scored against image patches through an OT plan."""

    def __init__(self, clip, prompt_learner: MultiPromptLearner, method: str = "cot", eps: float = 0.1,
                 thresh: float = 1e-3, max_iter: int = 100, top_percent: float = 0.8, stop_rule: str = "published"):
        super().__init__(clip, prompt_learner)
        self.method, self.eps, self.thresh = method.lower(), float(eps), float(thresh)
        self.max_iter, self.top_percent, self.stop_rule = int(max_iter), float(top_percent), str(stop_rule)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image tokens ``(B, 1 + P, D)``; token 0 is the pooled image feature."""
        return image_tokens(self.image_encoder, images)

    def text_features(self) -> torch.Tensor:
        """Normalised prompt features ``(N, C, D)``."""
        pl = self.prompt_learner
        n = pl.context().shape[0]  # N, or G with global_only
        feats = self.text_encoder(pl(), pl.tokenized_prompts.repeat(n, 1))
        return F.normalize(feats, dim=-1).view(n, pl.n_cls, -1)

    def transport_plan(self, sim: torch.Tensor) -> torch.Tensor:
        """Plan ``(..., P, N)`` for similarities ``(..., P, N)`` (no gradient)."""
        return uniform_plan(1.0 - sim.detach(), self.method, self.top_percent, self.eps, self.thresh, self.max_iter,
                            stop=self.stop_rule)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` = logit_scale * sum over patches and prompts of ``T * sim``.

        ``image_features``: tokens ``(B, 1 + P, D)``; ``text_features``: ``(N, C, D)``.
        """
        if image_features.dim() != 3 or text_features.dim() != 3:
            raise ValueError(f"FedOTP expects image tokens (B, 1+P, D) and text features (N, C, D); got "
                             f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
        patches = F.normalize(image_features[:, 1:], dim=-1).to(text_features.dtype)  # (B, P, D)
        sim = torch.einsum("bpd,ncd->bcpn", patches, text_features)  # (B, C, P, N)
        plan = self.transport_plan(sim).to(sim.dtype)
        return self.logit_scale.exp() * (plan * sim).sum(dim=(-2, -1))


@TRAINER_REGISTRY.register()
class FedOTP(PromptTrainer):
    """Global prompts shared (FedAvg), local prompts personal, OT between patches and prompts."""

    CFG_NODE = "FEDOTP"
    SHARED = ("prompt_learner.ctx_global",)
    CFG_RULES = {"OT": lambda node: None if str(node.OT).lower() in OT_METHODS else
                 f"TRAINER.FEDOTP.OT must be Sinkhorn or COT, got '{node.OT}'",
                 "TOP_PERCENT": Range(0, 1, low_open=True), "EPS": Range(0, low_open=True), "MAX_ITER": Range(1),
                 "STOP_RULE": STOP_RULES}
    #: ``encode_images`` returns projected tokens ``(B, 1 + P, D)``: a separate training-view cache.
    image_feature_kind = "tokens"

    @classmethod
    def cfg_defaults(cls) -> CN:
        node: CN = prompt_cfg_node(n_ctx=16, prec="fp16")
        node.NUM_PROMPTS = 2  # N prompts per class (published num_prompt)
        node.NUM_GLOBAL = 1  # the first ones are shared (published avg_prompt)
        node.OT = "COT"  # "Sinkhorn" (balanced) or "COT" (unbalanced, mass TOP_PERCENT)
        node.EPS = 0.1
        node.THRESH = 1e-3
        node.MAX_ITER = 100
        node.STOP_RULE = "published"  # early stop of the OT iterations: "published" | "marginal"
        node.TOP_PERCENT = 0.8
        node.CACHE_TOKENS = True  # cache the frozen image tokens of evaluation sets in memory
        return node

    def build_prompt_learner(self, clip) -> MultiPromptLearner:
        t = self.tcfg
        return MultiPromptLearner(clip, self.classnames, n_prompts=int(t.NUM_PROMPTS), n_global=int(t.NUM_GLOBAL),
                                  n_ctx=t.N_CTX, ctx_init=t.CTX_INIT, csc=t.CSC,
                                  class_token_position=t.CLASS_TOKEN_POSITION)

    def build_clip_model(self, clip, prompt_learner) -> OTPromptCLIP:
        t = self.tcfg
        self.image_features_cacheable = bool(t.CACHE_TOKENS)
        return OTPromptCLIP(clip, prompt_learner, method=str(t.OT), eps=float(t.EPS), thresh=float(t.THRESH),
                            max_iter=int(t.MAX_ITER), top_percent=float(t.TOP_PERCENT), stop_rule=str(t.STOP_RULE))

    def pooled_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP's pooled image feature ``(B, D)``: token 0 of the tokens ``(B, 1 + P, D)``."""
        return features[:, 0]
