"""pFedMoAP: every client's prompt is also an expert for the others, mixed by a personal attention gate.

Luo et al., "Mixture of Experts Made Personalized: Federated Prompt Learning for Vision-Language
Models" (ICLR 2025, arXiv 2410.10114; official code ljaiverson/pFedMoAP, MIT). Each client holds

* ``prompt_learner.ctx`` ``(M, d)`` -- a CoOp context (N(0, 0.02), class token at the end): **shared**,
  FedAvg'd by the clients' train-set sizes; every round a client starts from the FedAvg prompt;
* ``gating.*`` -- a multi-head attention gating network on ``P``-dimensional features: **personal**,
  never leaves the client (each client its own, from the same initial weights).

**Server step** (``federated/aggregation_experts.py``): the server keeps every client's latest uploaded
prompt (in the run state: checkpointed, so a resumed run is exact) and serves each client the latest
prompts of its K-1 nearest other clients (L2 distance between the prompts; ``K = min(NUM_EXPERTS,
clients)``) as frozen "non-local experts" -- a download that differs per client. A client that has not
trained yet, or the first round, gets none.

**Forward** with image features ``f`` ``(B, D)``, the local prompt's normalised class features ``t_0``
``(C, D)`` and the experts' ``t_1..t_E`` ``(C, D)`` (frozen: no gradient, computed once per expert set
and class list), ``pool(x) = x[..., ::D/P]`` (stride subsampling of the feature dimension, as published)
and ``s = logit_scale.exp()``:

    local  = s * normalize(f) @ t_0^T                                             (B, C)
    q_bc   = pool(normalize(f_b)),  keys_c = values_c = [pool(t_0c), pool(t_1c), ..., pool(t_Ec)]
    g_bc   = W_o concat_h( sum_j softmax_j(SCALING * <W_q^h q_bc, W_k^h k_cj>) W_v^h v_cj )  (P,)
    logits = LAMBDA * local + s * <pool(normalize(f_b)), g_bc>                   (g not normalised)

with ``HEADS`` heads of ``P / HEADS`` dimensions and the published score scale ``SCALING`` (10, not
``1/sqrt(d_head)``). Without experts the logits are ``local`` alone. The loss is cross-entropy. The
global model (``global_model()``, the shared prompt alone) is CoOp's ``local``.

Training uses the prompt being trained as ``t_0`` (``MoAPCLIP.train_context``); evaluation the client's
own latest trained prompt (``EVAL_PROMPT``, below). Two optimisers per client per round: the prompt's
(``OPTIM``) and the gating's (``GATING_LR``, constant, otherwise ``OPTIM``'s keys). The clients train one
after another (``SEQUENTIAL``): each mixes its own downloaded experts.

Config ``TRAINER.PFEDMOAP`` (defaults = the official code and ``train.sh``): the CoOp keys (``N_CTX``
16, ``CSC`` False, ``CTX_INIT`` "", ``PREC`` "fp16" (fp32 on CPU), ``CLASS_TOKEN_POSITION`` "end"),
``NUM_EXPERTS`` 10, ``SELECTION`` "nearest" ("random": a fixed per-client random order), ``LAMBDA``
0.5, ``SCALING`` 10, ``HEADS`` 8, ``EMBED_DIM`` 128 (``P``; the feature dimension ``D`` must be a
multiple), ``GATING_LR`` 0.01, ``EVAL_PROMPT`` "local", ``GATING`` "personal" ("published": below).

Differences from the official code (``docs/REPRODUCING.md``):

* Fixed bugs: the expert selection works for any number of clients and returns client ids (the
  published ``torch.topk`` over a Python list crashes above ``NUM_EXPERTS`` trained clients; no flag);
  the gating optimiser is fresh per client per round (published: one shared, never reset;
  ``FED.SHARED_OPTIMIZER True`` restores one optimiser carried across clients).
* Every client has its own gating network (``GATING "personal"``, the default). The published
  ``local_gatings`` starts as ``{}`` per client but is compared with ``[]``, so a client's stored gating
  is loaded only from its third selection on: at its second selection it loads ``{}`` (nothing) and trains
  on from the gating the single trainer module holds, i.e. the one the previously trained client ended
  with. ``GATING "published"`` restores that leak (:meth:`pFedMoAP.start_local_training`): with every
  client in every round (``FED.FRAC`` 1, required) the second selection is round 2, where the clients, in
  their training order, pass the gating along a chain that starts from the initial one (no client trains
  its gating in round 1: no experts yet); from round 3 each client trains on from its own. The passed-on
  gating lives in the process's trainer; a resumed run is exact, since the chain starts from the initial
  gating and no checkpoint falls inside round 2. With ``FED.FRAC`` < 1 the published code crashes (a
  never-trained client's evaluation calls ``load_ctx([])``), so that combination is refused. It runs in
  process only (:meth:`pFedMoAP.in_process_only`; a Flower run refuses it in one line): the leak exists
  because the published code simulates every client in one process with one gating module; its clients
  send nothing but the prompt. Reproducing the chain on Flower would need the server to relay each
  client's personal gating to the next and to train the round's clients strictly one after another,
  neither of which the published client does; a published client in a process of its own (a Flower node)
  would find its own untrained gating at its second selection, which is ``GATING "personal"``.
* Evaluation (``EVAL_PROMPT``): as the official code, a client is evaluated with its own latest trained
  prompt as the local expert (the server's memory serves it back as ``own``; the official client keeps
  it), its gating and its experts; a client not trained yet with the downloaded prompt. The official code
  tests a client right after its training; here every client is evaluated after the round's
  aggregation (this framework's protocol), with the experts selected then. ``EVAL_PROMPT "global"``:
  the downloaded FedAvg prompt as the local expert.
* fp32 on CPU; the published gating runs in CLIP's fp16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from federated.aggregation_experts import SELECTIONS, PromptExperts
from federated.errors import ConfigError
from trainers.base import load_frozen_clip
from trainers.method import Range, RoundContext
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node


def pool_features(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The published pooling: every ``(D / dim)``-th entry of the last dimension ``(..., D) -> (..., dim)``."""
    d = x.shape[-1]
    if d % dim:
        raise ValueError(f"feature dimension {d} is not a multiple of the gating dimension {dim}")
    return x[..., :: d // dim]


class GatingAttention(nn.Module):
    """Multi-head attention of one query per (image, class) over that class's expert features.

    ``forward(query (B, C, P), keys (C, K, P)) -> (B, C, P)``: per head ``h`` (``P / heads`` dims),
    ``softmax_k(scaling * <W_q q, W_k k_k>)`` weights ``W_v k_k`` (values = keys); heads concatenated,
    then ``W_o``. Linear layers with bias, torch's default initialisation.
    """

    def __init__(self, dim: int, heads: int, scaling: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"gating dimension {dim} is not a multiple of the {heads} heads")
        self.heads = int(heads)
        self.scaling = float(scaling)
        self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(dim, dim) for _ in range(4))

    def attention(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The attention weights ``(B, C, heads, K)`` (they sum to 1 over ``K``)."""
        b, c, p = query.shape
        q = self.w_q(query).view(b, c, self.heads, p // self.heads)
        k = self.w_k(keys).view(c, keys.shape[1], self.heads, p // self.heads)
        return torch.softmax(torch.einsum("bchd,ckhd->bchk", q, k) * self.scaling, dim=-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, c, p = query.shape
        v = self.w_v(keys).view(c, keys.shape[1], self.heads, p // self.heads)
        mixed = torch.einsum("bchk,ckhd->bchd", self.attention(query, keys), v).reshape(b, c, p)
        return self.w_o(mixed)


def mixture_logits(image_features: torch.Tensor, local_text: torch.Tensor, expert_text: torch.Tensor | None,
                   gating: GatingAttention, logit_scale: torch.Tensor, lam: float, dim: int) -> torch.Tensor:
    """pFedMoAP's logits ``(B, C)`` (module docstring). ``image_features`` ``(B, D)`` (any norm),
    ``local_text`` ``(C, D)`` and ``expert_text`` ``(E, C, D)`` normalised (None or E = 0: no experts)."""
    img = F.normalize(image_features, dim=-1).to(local_text.dtype)
    scale = logit_scale.exp()
    local = scale * img @ local_text.t()
    if expert_text is None or expert_text.shape[0] == 0:
        return local
    keys = pool_features(torch.cat([local_text.unsqueeze(0), expert_text]), dim).permute(1, 0, 2)  # (C, 1+E, P)
    query = pool_features(img, dim).unsqueeze(1).expand(-1, keys.shape[0], -1)  # (B, C, P)
    gated = gating(query, keys)  # (B, C, P)
    return lam * local + scale * (query * gated).sum(-1)


class MoAPCLIP(PromptCLIP):
    """Frozen CLIP + a CoOp prompt + the gating network; the experts are set per client."""

    def __init__(self, clip, prompt_learner: PromptLearner, gating: GatingAttention, lam: float, dim: int):
        super().__init__(clip, prompt_learner)
        self.gating = gating
        self.lam = float(lam)
        self.dim = int(dim)
        self.global_only = False  # the trainer's global_model(): the shared prompt alone
        self.experts: torch.Tensor | None = None  # (E, M, d) contexts served to this client
        self._expert_text: torch.Tensor | None = None  # their class features (E, C, D), computed once
        self.own: torch.Tensor | None = None  # (M, d) the client's latest trained prompt, evaluated with
        self.evaluate_own = True  # EVAL_PROMPT "local"

    def set_experts(self, experts: torch.Tensor | None, own: torch.Tensor | None = None) -> None:
        device = self.prompt_learner.device
        self.experts = None if experts is None or experts.shape[0] == 0 else experts.to(device)
        self.own = None if own is None else own.to(device)
        self._expert_text = None

    @torch.no_grad()
    def expert_text_features(self) -> torch.Tensor | None:
        """The experts' normalised class features ``(E, C, D)`` (frozen; computed once per experts and classes)."""
        if self.experts is None:
            return None
        if self._expert_text is None:
            ctx = self.experts.to(self.prompt_learner.ctx.dtype)
            self._expert_text = torch.stack(self.encode_contexts(list(ctx.unbind(0))))
        return self._expert_text

    def train_context(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training: the prompt being trained (started from the downloaded FedAvg prompt) and the experts."""
        return self.text_features(), self.expert_text_features()

    def eval_context(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Evaluation: the client's own latest trained prompt as its local expert (``EVAL_PROMPT "local"``, when
        served; else the downloaded prompt) and the experts; the global model: the shared prompt alone."""
        if self.global_only:
            return self.text_features(), None
        if self.evaluate_own and self.own is not None:
            local = self.encode_contexts([self.own.to(self.prompt_learner.ctx.dtype)])[0]
        else:
            local = self.text_features()
        return local, self.expert_text_features()

    def logits(self, image_features: torch.Tensor, context) -> torch.Tensor:
        local_text, expert_text = context
        return mixture_logits(image_features, local_text, expert_text, self.gating, self.logit_scale, self.lam,
                              self.dim)

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self._expert_text = None


def _gating_dims(node) -> str | None:
    if int(node.EMBED_DIM) % int(node.HEADS):
        return f"TRAINER.PFEDMOAP.EMBED_DIM {node.EMBED_DIM} must be a multiple of HEADS {node.HEADS}"
    return None


@TRAINER_REGISTRY.register()
class pFedMoAP(PromptTrainer):  # noqa: N801 - the method's published name
    """pFedMoAP (ICLR'25): a shared CoOp prompt; a personal gate mixes it with the K-1 nearest clients' prompts."""

    CFG_NODE = "PFEDMOAP"
    SHARED = ("prompt_learner.ctx",)
    SEQUENTIAL = "each client mixes its own downloaded experts with its own gating optimiser"
    CFG_RULES = {"NUM_EXPERTS": Range(1), "SELECTION": SELECTIONS, "LAMBDA": Range(0),
                 "SCALING": Range(0, low_open=True), "HEADS": Range(1), "EMBED_DIM": Range(1),
                 "GATING_LR": Range(0, low_open=True), "CSC": (False,), "EVAL_PROMPT": ("local", "global"),
                 "GATING": ("personal", "published"), "gating dims": _gating_dims}

    @classmethod
    def cfg_defaults(cls):
        node = prompt_cfg_node(n_ctx=16, prec="fp16")
        node.NUM_EXPERTS = 10
        node.SELECTION = "nearest"
        node.LAMBDA = 0.5
        node.SCALING = 10.0
        node.HEADS = 8
        node.EMBED_DIM = 128
        node.GATING_LR = 0.01
        node.EVAL_PROMPT = "local"
        node.GATING = "personal"
        return node

    def build_model(self) -> None:
        t = self.tcfg
        if str(t.GATING) == "published" and float(self.cfg.FED.FRAC) < 1:
            raise ConfigError(f"TRAINER.PFEDMOAP.GATING 'published' needs FED.FRAC 1 (got {self.cfg.FED.FRAC}): the "
                              f"published code crashes there (a never-trained client's evaluation loads an empty "
                              f"prompt); use GATING 'personal'")
        clip = load_frozen_clip(self.cfg, self.device)
        learner = self.build_prompt_learner(clip)
        width = int(clip.model.text_projection.shape[1])
        if width % int(t.EMBED_DIM):
            raise ConfigError(f"TRAINER.PFEDMOAP.EMBED_DIM {t.EMBED_DIM} must divide the backbone's feature "
                              f"dimension {width} (the published pooling keeps every {width}/EMBED_DIM-th entry)")
        gating = GatingAttention(int(t.EMBED_DIM), int(t.HEADS), float(t.SCALING))
        self.model = MoAPCLIP(clip, learner, gating, float(t.LAMBDA), int(t.EMBED_DIM)).to(self.device)
        self.model.evaluate_own = str(t.EVAL_PROMPT) == "local"
        self.register_model("prompt", learner)
        self.register_model("gating", gating)
        #: GATING "published": the gating the previously trained client ended with (the published single module)
        self._passed_gating: dict[str, torch.Tensor] | None = None

    def in_process_only(self) -> str:
        """``GATING "published"`` runs in process only: the leak passes one client's personal gating to the next
        client trained by the same process; on Flower the gating stays on its node (module docstring)."""
        if str(self.tcfg.GATING) == "published":
            return ("TRAINER.PFEDMOAP.GATING 'published' (the published leak: one client's personal gating passed to "
                    "the next client trained in the same process; on Flower the gating never leaves its node, so "
                    "use GATING 'personal' there)")
        return super().in_process_only()

    def optim_overrides(self) -> dict[str, dict]:
        """The gating's optimiser: ``GATING_LR``, constant (published: single_step with gamma 1)."""
        return {"gating": {"LR": float(self.tcfg.GATING_LR), "LR_SCHEDULER": "single_step", "STEPSIZE": (-1,),
                           "GAMMA": 1.0}}

    def start_local_training(self, context: RoundContext) -> None:
        """``GATING "published"``: at its second selection (round 2, every client in every round) a client trains
        on from the gating the previously trained client ended with (the first one of the round from the
        initial gating, which round 1 leaves untrained), as the published trainer module it never reloads."""
        if str(self.tcfg.GATING) == "published" and context.round == 2:
            gating = {k: v for k, v in self._initial_personal.items() if k.startswith("gating.")}
            self.load_state(self._passed_gating or gating)

    def finish_local_training(self, context: RoundContext) -> None:
        """``GATING "published"``: remember the gating this client ended with, for the next client."""
        if str(self.tcfg.GATING) == "published":
            self._passed_gating = self.get_state([k for k in self.personal_keys() if k.startswith("gating.")])

    def build_server_step(self) -> PromptExperts:
        t = self.tcfg
        return PromptExperts("prompt_learner.ctx", int(t.NUM_EXPERTS), str(t.SELECTION), int(self.cfg.SEED))

    def set_server_information(self, info: dict[str, torch.Tensor]) -> None:
        unknown = set(info) - {"experts", "own"}
        if unknown:
            raise ValueError(f"pFedMoAP received unknown server information {sorted(unknown)}")
        self.model.set_experts(info.get("experts"), info.get("own"))

    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Cross-entropy of the mixture logits with the prompt being trained (``MoAPCLIP.train_context``)."""
        logits = self.model.logits(image_features, self.model.train_context())
        return F.cross_entropy(logits, labels), logits, {}
