"""FedPHA: a fixed-length global prompt, local prompts whose length may differ per client, and an
SVD-based projection of the local prompt away from the global prompt's principal directions.

Fang et al., "FedPHA: Federated Prompt Learning for Heterogeneous Client Adaptation" (ICML 2025;
official code CYFang6/FedPHA, trainers ``GL_SVDMSE`` (equal lengths) and ``GL_SVDMSE_HE``
(per-client lengths)). Client ``i`` holds

* ``prompt_learner.ctx_global`` ``(M_g, d)`` -- shared, FedAvg weighted by train-set size (as published);
* ``prompt_learner.ctx_local`` ``(L_i, d)`` -- personal; ``L_i`` is ``LOCAL_LENGTHS[i]`` (the list is
  cycled over the clients) or ``N_CTX_LOCAL`` for every client when the list is empty.

Both start N(0, 0.02). **Projection** (``null_space_projection``): with the SVD ``P_g = U S V^T`` of the
global prompt (``V`` ``(d, M_g)``, singular values descending) and ``k = int(M_g * (1 - RATIO))`` (the
official cut), the local prompt is projected onto the (approximate) null space of the global prompt,
the orthogonal complement of its ``k`` principal right-singular directions ``V_k``:

    P~_l = P_l (I - V_k V_k^T)        (paper; the basis is a constant: no gradient through the SVD)

``PROJECTION "published"`` is the official code: ``P~_l = P_l V_r V_r^T`` with ``V_r = V[:, k:]``, the
``M_g - k`` *weakest* directions of the reduced SVD. Those lie inside the row space of ``P_g``, so this
is not a null space (it drops everything orthogonal to ``P_g``, i.e. all but ``M_g - k`` of the ``d``
dimensions), and the official SVD is not detached (gradients reach ``P_g`` through it).

**Loss** (official ``GL_SVDMSE.py``; weights hard-coded 1.0 there), with normalised class text features
``t_l`` (local prompt), ``t_g`` (global prompt), ``t_p`` (projected local prompt), each ``(C, D)``:

    L = CE(s f t_l^T) + CE(s f t_g^T) + PULL * MSE(t_l, t_p) + PUSH * mean_c relu(ALPHA - ||t_l,c - t_g,c||_2)

(``s`` the logit scale, ``f`` the normalised image features, MSE the mean over all ``C x D`` entries).
Inference uses the local prompt only (``t_l``); the global model (``global_model()``: global metrics) is
the global prompt alone (``t_g``).

**Per-client lengths.** A client's ``ctx_local`` carries its length in its shape: ``load_state`` adopts
the shape of the state it is given (and re-tokenises the local prompts for that length), and
``initial_personal_state(cid)`` gives each client its own length. Each length is tokenised on its own,
so the text feature is read at the client's own EOT token (paper). ``LOCAL_EOT "published"``
reproduces the official ``GL_SVDMSE_HE``: the template is tokenised once for the longest prompt
``L_max``, so a client with a shorter prompt reads its feature ``L_max - L_i`` positions after its
EOT (exact as long as ``EOT_max + L_max - L_i < 77``; beyond it the official code reads its zero
padding, we read padding-token embeddings). Clients of different lengths cannot be stacked: the
batched engine trains them one after another (it says so); equal lengths are batched. On Flower each
node starts its client from that client's own length (``tests/test_fedpha.py``: simulation = in-process).

Config ``TRAINER.FEDPHA`` (official argparse defaults): ``N_CTX`` 16 (global), ``N_CTX_LOCAL`` 16,
``LOCAL_LENGTHS`` [] (official Office31: 16,16,16,32,32,16; OfficeHome: 4 x 16 + 4 x 32; CIFAR: a
seeded ``randint(4, 32)`` per client, give it as a list), ``RATIO`` 0.8, ``ALPHA`` 1.0, ``PULL_WEIGHT`` /
``PUSH_WEIGHT`` 1.0, ``PROJECTION`` "null_space" | "published", ``LOCAL_EOT`` "own" | "published",
``PREC`` "fp16" (fp32 on CPU). Schedule (no trainer yaml is merged officially; the dataset yamls of
DTD / Office31 / OfficeHome): SGD lr 0.001, constant, 1 local epoch, batch 32, 50 rounds; argparse
``--num_shots`` 2, Dirichlet beta 0.5 (``noniid-labeldir``), seed 1, ViT-B/16.

Other differences from the official code: one module per client instead of all clients' local
prompts in one ``ParameterList``; the AMP branch's crash (missing client index) does not exist here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.method import Range
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer

PROJECTIONS = ("null_space", "published")
EOT_MODES = ("own", "published")


def null_space_projection(p_local: torch.Tensor, p_global: torch.Tensor, ratio: float,
                          mode: str = "null_space") -> torch.Tensor:
    """Project the local prompt ``p_local`` ``(L, d)`` with the SVD of the global prompt ``p_global`` ``(M, d)``.

    ``k = int(M * (1 - ratio))`` principal right-singular directions ``V_k`` of ``p_global``:
    ``"null_space"``: ``p_local (I - V_k V_k^T)``, the basis detached; ``"published"``:
    ``p_local V_r V_r^T`` with ``V_r`` the other ``M - k`` right-singular vectors of the reduced SVD,
    gradients flowing through the SVD. Computed in float32; returns ``(L, d)``.
    """
    if mode not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got '{mode}'")
    p_local, p_global = p_local.float(), p_global.float()
    if mode == "null_space":
        p_global = p_global.detach()
    _, s, vh = torch.linalg.svd(p_global, full_matrices=False)  # vh (M, d), rows = right-singular vectors
    k = int(s.shape[-1] * (1.0 - ratio))
    if mode == "null_space":
        top = vh[..., :k, :]  # (k, d)
        return p_local - (p_local @ top.transpose(-1, -2)) @ top
    rest = vh[..., k:, :]  # (M - k, d)
    return (p_local @ rest.transpose(-1, -2)) @ rest


def fedpha_alignment(t_local: torch.Tensor, t_global: torch.Tensor, t_proj: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(MSE(t_local, t_proj), mean_c relu(alpha - ||t_local_c - t_global_c||_2))`` for features ``(C, D)``."""
    pull = F.mse_loss(t_local.float(), t_proj.float())
    push = F.relu(alpha - (t_local.float() - t_global.float()).norm(dim=-1)).mean()
    return pull, push


class ShiftedEOTLearner(PromptLearner):
    """Class-prompt tokenisation for a context of ``n_ctx`` tokens (no parameter of its own).

    ``eot_shift > 0`` reproduces the official heterogeneous-length bug: the feature is pooled
    ``eot_shift`` positions after the EOT token (dense full-length prompts, no shared prefix).
    """

    def __init__(self, clip, classnames: list[str], n_ctx: int, eot_shift: int = 0):
        self.eot_shift = int(eot_shift)
        if self.eot_shift:
            self.fast_text = False
        super().__init__(clip, classnames, n_ctx=n_ctx, learn_ctx=False)

    def set_fast_text(self, enabled: bool = True) -> None:
        super().set_fast_text(enabled and not self.eot_shift)

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        if self.eot_shift:
            ids = self.tokenized_prompts
            eot = ids.argmax(dim=-1)
            pos = (eot + self.eot_shift).clamp(max=ids.shape[1] - 1)
            marker = torch.zeros_like(ids)
            rows = torch.arange(ids.shape[0], device=ids.device)
            marker[rows, pos] = ids[rows, eot]  # the pooling (argmax / EOS id) lands on the shifted position
            self.register_buffer("tokenized_prompts", marker, persistent=False)


class FedPHAPromptLearner(nn.Module):
    """``ctx_global`` ``(M_g, d)`` and ``ctx_local`` ``(L, d)`` with one tokenisation per length.

    ``global_tok`` / ``local_tok`` (:class:`ShiftedEOTLearner`) build the class prompts of each length;
    ``set_local_length`` re-creates ``ctx_local`` for another length (a client's own).
    """

    #: True: classify with the global prompt alone (the trainer's ``global_model()``).
    global_only: bool = False

    def __init__(self, clip, classnames: list[str], n_ctx_global: int, n_ctx_local: int, max_local: int,
                 eot: str = "own"):
        super().__init__()
        self.clip = clip
        self.classnames = list(classnames)
        self.eot, self.max_local = eot, int(max_local)
        self.global_tok = ShiftedEOTLearner(clip, classnames, n_ctx_global)
        self.ctx_dim = self.global_tok.ctx_dim
        device = self.global_tok.device
        self.ctx_global = nn.Parameter(0.02 * torch.randn(n_ctx_global, self.ctx_dim, device=device))
        self.ctx_local = nn.Parameter(0.02 * torch.randn(n_ctx_local, self.ctx_dim, device=device))
        self._build_local_tok(n_ctx_local)

    def _build_local_tok(self, length: int) -> None:
        shift = self.max_local - length if self.eot == "published" else 0
        fast = self.global_tok.fast_text
        self.local_tok = ShiftedEOTLearner(self.clip, self.classnames, length, eot_shift=shift)
        self.local_tok.set_fast_text(fast)

    @property
    def local_length(self) -> int:
        return int(self.ctx_local.shape[0])

    def set_local_length(self, length: int) -> None:
        """A fresh ``ctx_local`` ``(length, d)`` (values to be loaded) and the prompts of that length."""
        if length != self.local_length:
            self.ctx_local = nn.Parameter(torch.zeros(length, self.ctx_dim, device=self.ctx_local.device))
            self._build_local_tok(length)

    @property
    def n_cls(self) -> int:
        return self.global_tok.n_cls

    def set_classnames(self, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.global_tok.set_classnames(classnames)
        self.local_tok.set_classnames(classnames)

    def set_fast_text(self, enabled: bool = True) -> None:
        self.global_tok.set_fast_text(enabled)
        self.local_tok.set_fast_text(enabled)


class FedPHACLIP(PromptCLIP):
    """Frozen CLIP with FedPHA's three text-feature sets; classification uses the local prompt."""

    def __init__(self, clip, prompt_learner: FedPHAPromptLearner, ratio: float, projection: str):
        super().__init__(clip, prompt_learner)
        self.ratio, self.projection = float(ratio), projection

    def feature_sets(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(t_l, t_g, t_p)``, each ``(C, D)`` normalised: local, global and projected-local prompts
        (local and projected in one text-tower pass, the global prompt in another unless of equal tokenisation)."""
        pl = self.prompt_learner
        p_proj = null_space_projection(pl.ctx_local, pl.ctx_global, self.ratio, self.projection).to(pl.ctx_local.dtype)
        if pl.local_tok.n_ctx == pl.global_tok.n_ctx and not pl.local_tok.eot_shift:
            t_l, t_p, t_g = self.encode_contexts([pl.ctx_local, p_proj, pl.ctx_global], pl.local_tok)
        else:
            t_l, t_p = self.encode_contexts([pl.ctx_local, p_proj], pl.local_tok)
            (t_g,) = self.encode_contexts([pl.ctx_global], pl.global_tok)
        return t_l, t_g, t_p

    def text_features(self) -> torch.Tensor:
        """The local prompt's class features ``(C, D)`` (FedPHA's inference); the global prompt's under the
        trainer's ``global_model()``."""
        pl = self.prompt_learner
        if pl.global_only:
            return self.encode_contexts([pl.ctx_global], pl.global_tok)[0]
        return self.encode_contexts([pl.ctx_local], pl.local_tok)[0]


def _lengths_rule(t) -> str | None:
    lengths = [int(t.N_CTX), int(t.N_CTX_LOCAL), *[int(n) for n in t.LOCAL_LENGTHS]]
    if min(lengths) < 1:
        return f"TRAINER.FEDPHA.N_CTX, N_CTX_LOCAL and LOCAL_LENGTHS must be >= 1, got {lengths}"
    return None


@TRAINER_REGISTRY.register()
class FedPHA(PromptTrainer):
    """Global prompt shared (FedAvg), per-client-length local prompt personal, SVD projection + alignment."""

    CFG_NODE = "FEDPHA"
    SHARED = ("prompt_learner.ctx_global",)
    CFG_RULES = {"PROJECTION": PROJECTIONS, "LOCAL_EOT": EOT_MODES, "RATIO": Range(0, 1),
                 "LOCAL_LENGTHS": _lengths_rule, "ALPHA": Range(0), "PULL_WEIGHT": Range(0), "PUSH_WEIGHT": Range(0)}

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.N_CTX = 16
        node.N_CTX_LOCAL = 16
        node.LOCAL_LENGTHS = []
        node.RATIO = 0.8
        node.ALPHA = 1.0
        node.PULL_WEIGHT = 1.0
        node.PUSH_WEIGHT = 1.0
        node.PROJECTION = "null_space"
        node.LOCAL_EOT = "own"
        node.PREC = "fp16"
        return node

    def local_length(self, cid: int) -> int:
        """Client ``cid``'s local prompt length."""
        lengths = list(self.tcfg.LOCAL_LENGTHS)
        return int(lengths[cid % len(lengths)]) if lengths else int(self.tcfg.N_CTX_LOCAL)

    def build_prompt_learner(self, clip) -> FedPHAPromptLearner:
        t = self.tcfg
        lengths = [int(n) for n in t.LOCAL_LENGTHS] or [int(t.N_CTX_LOCAL)]
        return FedPHAPromptLearner(clip, self.classnames, int(t.N_CTX), self.local_length(0), max(lengths),
                                   eot=t.LOCAL_EOT)

    def build_clip_model(self, clip, prompt_learner) -> FedPHACLIP:
        return FedPHACLIP(clip, prompt_learner, float(self.tcfg.RATIO), self.tcfg.PROJECTION)

    # ------------------------------------------------------------------ per-client prompt length
    def initial_personal_state(self, cid: int) -> dict[str, torch.Tensor]:
        """Client ``cid``'s starting local prompt ``(L_cid, d)``: its own N(0, 0.02) draw (as the official
        per-client prompts), from a generator seeded by ``(SEED, cid)`` (the global RNG stream is untouched)."""
        gen = torch.Generator().manual_seed(int(self.cfg.SEED) * 1_000_003 + int(cid))
        ctx = torch.randn(self.local_length(cid), self.model.prompt_learner.ctx_dim, generator=gen) * 0.02
        return {"prompt_learner.ctx_local": ctx}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """As the base class; a ``ctx_local`` of another length switches the model to that length."""
        local = state.get("prompt_learner.ctx_local")
        if local is not None and local.dim() == 2:
            self.model.prompt_learner.set_local_length(int(local.shape[0]))
        super().load_state(state)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``CE(local) + CE(global) + PULL * MSE(t_l, t_p) + PUSH * hinge``; logits ``(B, C)`` of the local prompt."""
        t = self.tcfg
        t_l, t_g, t_p = self.model.feature_sets()
        logits = self.model.logits(image_features, t_l)
        ce_local = F.cross_entropy(logits.float(), labels)
        ce_global = F.cross_entropy(self.model.logits(image_features, t_g).float(), labels)
        pull, push = fedpha_alignment(t_l, t_g, t_p, float(t.ALPHA))
        loss = ce_local + ce_global + float(t.PULL_WEIGHT) * pull + float(t.PUSH_WEIGHT) * push
        return loss, logits, {"ce_local": ce_local.detach(), "ce_global": ce_global.detach(),
                              "pull": pull.detach(), "push": push.detach()}
