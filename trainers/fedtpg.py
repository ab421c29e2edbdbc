"""FedTPG: a federated text-driven prompt generator (Qiu et al., ICLR 2024, arXiv 2310.06123).

One prompt *generator* is shared by every client. It maps the class names of the current task to the
``M`` context vectors of a CoOp prompt, so the prompt generalises to classes never trained on: a new
class set gives a new prompt. With ``t_c`` the normalised frozen CLIP text feature of the bare class
name ``c`` (no template; computed once per class set, ``trainers/handcrafted.py``), ``T = (t_1..t_C)``
``(C, D)``, and ``Q`` the learnable queries ``(M, d)`` (N(0, 0.02)):

    A   = MultiHeadAttention(q = LN_q(Q), k = v = LN_kv(T))        (M, d)   heads H, no residual
    ctx = FFN(A) + A,  FFN = LN -> Linear(d, 8d) -> GEGLU -> Linear(4d, d)    (M, d)
    GEGLU(h) = a * GELU(g),  (a, g) = the two halves of h
    DEPTH > 0:  DEPTH times  ctx = SelfAttention(q = k = v = LN(ctx)) + ctx;  ctx = FFN(ctx) + ctx   (M, d)
    prompt_c = [SOS] ctx_1 .. ctx_M [CLASS_c] . [EOS]          (shallow: only the input tokens)
    logit_{b,c} = exp(logit_scale) * <x_b, normalise(TextEncoder(prompt_c))>

The image side is CLIP's frozen encoder (image features cacheable). Loss: cross-entropy. The whole
generator (queries, the two layer norms, attention projections, FFN) is shared and averaged with an
unweighted mean (``FED.AGGREGATION fedavg_uniform``, as published); nothing is personal.

Every evaluation conditions the generator on its own class names: a client's local test on its own
classes, base / novel on all base / novel names (``set_classnames`` resets the name features).

Deviations from the published code (boschresearch/FedTPG), flags and the protocol in
docs/REPRODUCING.md ("FedTPG"):

* the generator's parameters are fp32 (on GPU with ``PREC fp16``: autocast and gradient scaling);
  the published code casts the generator to fp16 and trains it with plain SGD;
* the attention is written with four ``Linear`` layers (q, k, v, out; biases) instead of
  ``nn.MultiheadAttention``: the same function and parameter count, and ``vmap``-able, so clients can be
  trained together;
* the optional self-attention stack (``DEPTH``, published default 0) is built as the paper's generator
  describes and the official code's option computes it: ``DEPTH`` pre-norm transformer blocks on the
  ``M`` context tokens after the cross-attention and its FFN (:class:`~trainers.cross_attention.
  SelfAttentionBlock`: self-attention with ``HEADS`` heads and a residual, then the GEGLU FFN with a
  residual); with ``DEPTH`` 0 nothing is built (the same parameters and random draws as without the key);
* only the shallow context (``D_CTX`` 1, the published default) is implemented; the unused visual context
  of the published model is not built.

Config ``TRAINER.FEDTPG``: ``N_CTX`` (4), ``HEADS`` (4, must divide the text width; also the self-attention
blocks' heads), ``DEPTH`` (0), ``PREC``.
"""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.cross_attention import CrossAttention, SelfAttentionBlock, geglu_ffn
from trainers.handcrafted import HandcraftedText
from trainers.method import Range
from trainers.prompt_learner import PromptLearner
from trainers.prompt_trainer import PromptTrainer


class PromptGenerator(nn.Module):
    """FedTPG's generator: class-name features ``(C, D)`` -> context ``(M, d)`` (module docstring); ``depth``
    self-attention blocks on the context after the cross-attention and FFN (0: none, the published default)."""

    def __init__(self, n_ctx: int, dim: int, name_dim: int, heads: int = 4, mult: int = 4, depth: int = 0):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_ctx, dim) * 0.02)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(name_dim)
        self.attn = CrossAttention(dim, name_dim, heads)
        self.ffn = geglu_ffn(dim, mult)
        # built last: with depth 0 (empty) the generator has the same parameters and random draws as without it
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, heads, mult) for _ in range(depth))

    def forward(self, names: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm_q(self.queries), self.norm_kv(names.to(self.queries.dtype)))
        x = self.ffn(x) + x
        for block in self.blocks:
            x = block(x)
        return x


class GeneratedPromptLearner(PromptLearner):
    """A unified CoOp context produced by :class:`PromptGenerator` from the current class names."""

    def __init__(self, clip, classnames: list[str], n_ctx: int = 4, heads: int = 4, depth: int = 0):
        super().__init__(clip, classnames, n_ctx=n_ctx, learn_ctx=False)
        self.names = HandcraftedText(clip, self.classnames, "{}")  # bare names, encoded once per class set
        self.generator = PromptGenerator(self.n_ctx, self.ctx_dim, int(clip.embed_dim), heads,
                                         depth=depth).to(self.device)

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        if hasattr(self, "names"):
            self.names.set_classnames(classnames)

    def context(self) -> torch.Tensor:
        """``(M, d)``: the generator's output for the current class set."""
        return self.generator(self.names())


def _heads_rule(node) -> str | None:
    return None if int(node.HEADS) >= 1 else f"TRAINER.FEDTPG.HEADS must be >= 1, got {node.HEADS}"


@TRAINER_REGISTRY.register()
class FedTPG(PromptTrainer):
    """A class-name-conditioned prompt generator, shared and averaged (unweighted); nothing personal."""

    CFG_NODE = "FEDTPG"
    SHARED = ("prompt_learner.generator.*",)
    CFG_RULES = {"N_CTX": Range(1), "HEADS": _heads_rule, "DEPTH": Range(0)}

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.N_CTX = 4
        node.HEADS = 4
        node.DEPTH = 0
        node.PREC = "fp32"
        return node

    def build_prompt_learner(self, clip) -> GeneratedPromptLearner:
        try:
            return GeneratedPromptLearner(clip, self.classnames, n_ctx=self.tcfg.N_CTX, heads=self.tcfg.HEADS,
                                          depth=int(self.tcfg.DEPTH))
        except ValueError as err:
            from federated.errors import ConfigError

            raise ConfigError(f"TRAINER.FEDTPG: {err}") from None

    def build_aggregator(self):
        """Unweighted FedAvg (the published server), unless ``FED.AGGREGATION`` says otherwise."""
        from federated.aggregation import build_aggregator

        return build_aggregator(self.cfg.FED.AGGREGATION or "fedavg_uniform", self.cfg)
