"""DP-FPL: Tran et al., "Privacy-Preserving Personalized Federated Prompt Learning for Multimodal Large
Language Models" (ICLR 2025, arXiv 2501.13904).

Client ``i`` classifies with the context ``p_G + p_L,i`` (``(M, d)``): the global prompt ``p_G``
(``prompt_learner.sigma``) is shared; the local prompt ``p_L,i`` (``prompt_learner.local_ctx``) is
personal and never leaves the client. At every training step the local prompt is factorised as
``p_L = U V + R`` (paper Fig. 1) by one step of randomised power iteration (:func:`power_factorize`:
``U (M, r)`` and ``V (r, d)`` with orthonormal rows / columns, ``R = p_L - U V``); the step's forward
uses ``p_G + U V + R`` (the same context) with ``U``, ``V`` as leaves, so the loss has gradients for
``p_G``, ``U`` and ``V`` only.

Privacy (paper: "local differential privacy to the two low-rank components of the local prompt, and
global differential privacy to the global prompt"); the mechanism is DP-SGD (``trainers/privacy.py``):

* global prompt: each example's gradient is clipped to ``CLIP_NORM`` ``C``, the batch's sum is divided
  by the expected batch size ``B`` and sent to the server, which averages the ``N`` clients and adds
  ``N(0, (sigma C / (B N))^2)`` (central noise): what the server releases is differentially private;
* ``U``, ``V``: each example's ``(g_U, g_V)`` is clipped jointly to ``C``, summed, divided by ``B``, and
  the client adds ``N(0, (sigma C / B)^2)`` (local noise). The local prompt's gradient is rebuilt from
  the noisy factors' gradients as published, ``g_L = g_U V + U g_V + U (U^T g_U V)``
  (:func:`full_gradient`), so the local prompt (and ``R``) is a post-processing of noisy quantities.

``EPSILON`` is the target budget of each mechanism at ``DELTA``: the noise multiplier ``sigma`` is the
smallest one whose composition over every noisy step (rounds x steps per round, Poisson sampling
rate ``B / n_i`` of the client with the fewest examples) spends at most ``EPSILON`` by ``opacus``'s
accountant (``ACCOUNTANT`` rdp | prv). Each run reports the epsilon spent per mechanism and for the
client's personalised model (both mechanisms together) in ``results.json`` (``privacy``).
``EPSILON 0``: no privacy (no clipping, no noise). ``NOISE_MULTIPLIER > 0`` sets ``sigma`` directly.

Protocol: synchronous FedSGD (``ROUND_PROTOCOL = "fedsgd"``, ``federated/fedsgd.py``): per step every
client computes its gradients on one batch, the server averages the global-prompt gradients and adds
the noise, and each client applies the noisy global gradient and its own local gradient in one
optimiser step. This is the published protocol; with one step per synchronised gradient, the
central noise of global DP has a defined place (the average of the clients' clipped gradients).

Published behaviour behind flags (docs/REPRODUCING.md, DP-FPL): ``CLIPPING "batch_mean"`` (clip the
batch-mean gradient of ``p_G``, ``U``, ``V`` separately, which bounds no example's influence),
``NOISE_AS_EPSILON True`` (``sigma = sqrt(T ln(1/delta)) / EPSILON`` with ``T`` = rounds, noise std
``sigma C / B``; its epsilon is not a guarantee and is reported as ``null``), ``GRAD_SCALE 0.1`` (the
published division of the factors' gradients by 10), ``SAMPLING "shuffle"`` (fixed-size batches of a
shuffled pass instead of Poisson sampling; the accountant's figure then assumes Poisson sampling).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.lowrank_prompt import GlobalPersonalPromptLearner
from trainers.method import Range
from trainers.privacy import ACCOUNTANTS, clip_per_example, clip_tensor, gaussian_noise_like
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node

logger = logging.getLogger("fedtv.trainer")

CLIPPINGS = ("per_example", "batch_mean")
SAMPLINGS = ("poisson", "shuffle")


def power_factorize(local: torch.Tensor, rank: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of randomised power iteration on ``local`` ``(M, d)``: ``Omega ~ N(0, 1)`` ``(d, r)``,
    ``U = orth(local Omega)`` ``(M, r)``, ``V = orth(local^T U)^T`` ``(r, d)`` (orthonormal columns of ``U``
    and rows of ``V``; ``orth`` = reduced QR, Gram-Schmidt up to signs). No gradient."""
    with torch.no_grad():
        m, d = local.shape
        omega = torch.randn(d, rank, generator=generator, dtype=torch.float32).to(local.device, local.dtype)
        u = torch.linalg.qr(local @ omega).Q
        v = torch.linalg.qr(local.t() @ u).Q
        return u, v.t().contiguous()


def full_gradient(u: torch.Tensor, v: torch.Tensor, grad_u: torch.Tensor, grad_v: torch.Tensor) -> torch.Tensor:
    """The local prompt's gradient rebuilt from its factors' (published): ``g_U V + U g_V + U (U^T g_U V)``
    with ``U (M, r)``, ``V (r, d)``, ``g_U (M, r)``, ``g_V (r, d)``; returns ``(M, d)``."""
    gu_v = grad_u @ v
    return gu_v + u @ grad_v + u @ (u.t() @ gu_v)


class DPFPLPromptLearner(GlobalPersonalPromptLearner):
    """Global prompt ``sigma`` ``(M, d)`` (shared) + local prompt ``local_ctx`` ``(M, d)`` (personal), both
    N(0, 0.02); the personalised context is ``sigma + local_ctx`` (``global_only``: ``sigma``)."""

    def __init__(self, clip, classnames: list[str], rank: int, **kwargs):
        super().__init__(clip, classnames, **kwargs)
        if kwargs.get("csc"):
            raise ValueError("DP-FPL has one context for all classes (CSC is not supported)")
        if not 1 <= int(rank) <= min(self.n_ctx, self.ctx_dim):
            raise ValueError(f"RANK must be in [1, {min(self.n_ctx, self.ctx_dim)}], got {rank}")
        self.rank = int(rank)
        self.local_ctx = self.init_normal(self.n_ctx, self.ctx_dim)

    def delta(self) -> torch.Tensor:
        return self.local_ctx


def dpfpl_cfg_node() -> CN:
    """The CoOp prompt keys plus DP-FPL's (module docstring); defaults = the published runs' (rank 8,
    norm 10, delta 1e-5) and the paper's mechanism."""
    node = prompt_cfg_node()
    node.RANK = 8
    node.CLIP_NORM = 10.0
    node.EPSILON = 0.0
    node.DELTA = 1e-5
    node.NOISE_MULTIPLIER = 0.0
    node.ACCOUNTANT = "rdp"
    node.CLIPPING = "per_example"
    node.SAMPLING = "poisson"
    node.NOISE_AS_EPSILON = False
    node.GRAD_SCALE = 1.0
    return node


def _noise_as_epsilon_needs_epsilon(node) -> str | None:
    if node.NOISE_AS_EPSILON and float(node.EPSILON) <= 0:
        return "TRAINER.DPFPL.NOISE_AS_EPSILON needs EPSILON > 0 (the published --noise)"
    return None


@TRAINER_REGISTRY.register()
class DPFPL(PromptTrainer):
    """Global prompt (shared, central DP) + local prompt ``U V + R`` (personal, local DP on ``U``, ``V``)."""

    CFG_NODE = "DPFPL"
    SHARED = ("prompt_learner.sigma",)
    SEQUENTIAL = "it trains by synchronous FedSGD: the server adds noise to every step's averaged gradient"
    ROUND_PROTOCOL = "fedsgd"
    CFG_RULES = {"RANK": Range(1), "CLIP_NORM": Range(0, low_open=True), "EPSILON": Range(0),
                 "DELTA": Range(0, 1, low_open=True, high_open=True), "NOISE_MULTIPLIER": Range(0),
                 "ACCOUNTANT": ACCOUNTANTS, "CLIPPING": CLIPPINGS, "SAMPLING": SAMPLINGS,
                 "GRAD_SCALE": Range(0, low_open=True), "NOISE_AS_EPSILON": _noise_as_epsilon_needs_epsilon}

    @classmethod
    def cfg_defaults(cls) -> CN:
        return dpfpl_cfg_node()

    def build_prompt_learner(self, clip) -> DPFPLPromptLearner:
        t = self.tcfg
        return DPFPLPromptLearner(clip, self.classnames, rank=int(t.RANK), n_ctx=t.N_CTX, ctx_init=t.CTX_INIT,
                                  csc=t.CSC, class_token_position=t.CLASS_TOKEN_POSITION)

    @property
    def private(self) -> bool:
        """Whether steps clip and add noise (``EPSILON`` or ``NOISE_MULTIPLIER`` > 0)."""
        return float(self.tcfg.EPSILON) > 0 or float(self.tcfg.NOISE_MULTIPLIER) > 0

    # ------------------------------------------------------------------ one client's step
    def per_example_context_grads(self, context: torch.Tensor, features: torch.Tensor,
                                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example gradients ``(B, M, d)`` of the cross-entropy w.r.t. the context ``(M, d)``, and the
        batch's logits ``(B, C)`` and mean loss.

        The class text features ``z (C, D)`` do not depend on the example: one text-tower pass gives
        ``z``; example ``b``'s gradient w.r.t. ``z`` is ``s (p_b - onehot(y_b)) f_b^T`` (``f_b`` the
        normalised image feature, ``s`` the logit scale, ``p_b`` the softmax); the ``B`` vector-Jacobian
        products through the tower are batched (``is_grads_batched``)."""
        ctx = context.detach().requires_grad_(True)
        z = self.model.encode_contexts([ctx])[0]
        with torch.no_grad():
            f = F.normalize(features.float(), dim=-1)
            scale = self.model.logit_scale.exp().float()
            logits = scale * f @ z.float().t()
            loss = F.cross_entropy(logits, labels)
            dlogits = logits.softmax(dim=-1)
            dlogits[torch.arange(len(labels), device=labels.device), labels] -= 1.0
            cotangent = scale * dlogits[:, :, None] * f[:, None, :]  # (B, C, D)
        cotangent = cotangent.to(z.dtype)
        try:
            grads = torch.autograd.grad(z, ctx, grad_outputs=cotangent, is_grads_batched=True, retain_graph=True)[0]
        except RuntimeError as err:  # an op of the tower without a batching rule: one backward per example
            logger.debug("per-example gradients one example at a time (%s)", err)
            grads = torch.stack([torch.autograd.grad(z, ctx, grad_outputs=c, retain_graph=True)[0] for c in cotangent])
        return grads.float(), logits, loss

    def client_gradients(self, features: torch.Tensor, labels: torch.Tensor, expected_batch: int, sigma: float,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """One client's step on a batch (``features (b, D)``, ``labels (b,)``; ``b`` may be 0 with Poisson
        sampling) with the loaded state.

        Returns ``(g_global (M, d), g_local (M, d), summary)``: the global prompt's gradient to send (clipped,
        summed and divided by ``expected_batch`` when private; the batch mean otherwise; never noised here:
        the server adds the noise), the local prompt's gradient rebuilt from the (noised) factor gradients,
        and the batch's ``loss`` / ``acc``. ``sigma``: the noise multiplier of the local mechanism (std
        ``sigma C / expected_batch``). ``generator`` draws the factorisation and the local noise.
        """
        t = self.tcfg
        learner = self.model.prompt_learner
        local = learner.local_ctx.detach()
        u, v = power_factorize(local, learner.rank, generator)
        residual = local - u @ v
        g_global = torch.zeros_like(local)
        g_u, g_v = torch.zeros_like(u), torch.zeros_like(v)
        summary = {"loss": float("nan"), "acc": float("nan")}
        if len(labels) > 0:
            context = learner.sigma.detach() + u @ v + residual
            per_example = self.private and t.CLIPPING == "per_example"
            if per_example:
                g_ctx, logits, loss = self.per_example_context_grads(context, features, labels)
                clip = float(t.CLIP_NORM)
                (g_g,), _ = clip_per_example([g_ctx], clip)
                (g_uu, g_vv), _ = clip_per_example([g_ctx @ v.t(), u.t() @ g_ctx], clip)
                g_global = g_g.sum(0) / expected_batch
                g_u, g_v = g_uu.sum(0) / expected_batch, g_vv.sum(0) / expected_batch
            else:
                glob = learner.sigma.detach().requires_grad_(True)
                uu, vv = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
                z = self.model.encode_contexts([glob + uu @ vv + residual])[0]
                logits = self.model.logits(features, z).float()
                loss = F.cross_entropy(logits, labels)
                g_global, g_u, g_v = torch.autograd.grad(loss, [glob, uu, vv])
                if self.private:  # the published clipping of the batch-mean gradients
                    clip = float(t.CLIP_NORM)
                    g_global, g_u, g_v = (clip_tensor(g, clip) for g in (g_global, g_u, g_v))
            summary = {"loss": float(loss.detach()), "acc": float((logits.argmax(1) == labels).float().mean() * 100)}
        if self.private:
            std = sigma * float(t.CLIP_NORM) / expected_batch
            g_u = g_u + gaussian_noise_like(g_u, std, generator)
            g_v = g_v + gaussian_noise_like(g_v, std, generator)
        scale = float(t.GRAD_SCALE)
        return g_global.detach(), full_gradient(u, v, g_u * scale, g_v * scale).detach(), summary

    def apply_gradients(self, g_global: torch.Tensor, g_local: torch.Tensor, optimizer) -> None:
        """One optimiser step of the loaded client with the (noisy, averaged) global and its local gradient."""
        learner = self.model.prompt_learner
        optimizer.zero_grad(set_to_none=True)
        learner.sigma.grad = g_global.to(learner.sigma.dtype).clone()
        learner.local_ctx.grad = g_local.to(learner.local_ctx.dtype).clone()
        optimizer.step()
