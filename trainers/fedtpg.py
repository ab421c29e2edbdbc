"""FedTPG: a federated text-driven prompt generator (Qiu et al., ICLR 2024, arXiv 2310.06123).

One prompt *generator* is shared by every client. It maps the class names of the current task to the
``M`` context vectors of a CoOp prompt (and, with ``D_CTX`` > 1, to deep contexts for the first text
blocks), so the prompt generalises to classes never trained on: a new class set gives a new prompt. With
``t_c`` the normalised frozen CLIP text feature of the bare class name ``c`` (no template; computed once per
class set, ``trainers/handcrafted.py``), ``T = (t_1..t_C)`` ``(C, D)``, and ``Q`` the learnable queries
``(D_CTX * M, d)`` (N(0, 0.02)):

    A   = MultiHeadAttention(q = LN_q(Q), k = v = LN_kv(T))        (D_CTX*M, d)   heads H, no residual
    ctx = FFN(A) + A,  FFN = LN -> Linear(d, 8d) -> GEGLU -> Linear(4d, d)    (D_CTX*M, d)
    GEGLU(h) = a * GELU(g),  (a, g) = the two halves of h
    DEPTH > 0:  DEPTH times  ctx = SelfAttention(q = k = v = LN(ctx)) + ctx;  ctx = FFN(ctx) + ctx   (all rows)
    ctx -> (D_CTX, M, d): ctx[l] = rows l*M .. l*M+M-1 (the published reshape)
    prompt_c = [SOS] ctx[0]_1 .. ctx[0]_M [CLASS_c] . [EOS]          (the input tokens)
    D_CTX > 1: at the input of text block l = 1 .. D_CTX-1 the hidden states of positions 1..M are
               replaced by ctx[l] (MaPLe-style deep prompting, ``trainers/deep_prompts.py``)
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
  ``D_CTX * M`` context tokens after the cross-attention and its FFN (:class:`~trainers.cross_attention.
  SelfAttentionBlock`: self-attention with ``HEADS`` heads and a residual, then the GEGLU FFN with a
  residual); with ``DEPTH`` 0 nothing is built (the same parameters and random draws as without the key);
* the deep context (``D_CTX`` > 1; published default 1, shallow): the published text transformer replaces
  the context positions with ``ctx[1 + i]`` before block ``i`` (``i = 0 .. D_CTX-2``), so ``ctx[1]``
  overwrites the input context ``ctx[0]`` before the first block: ``ctx[0]`` has no effect on any output (a
  bug). ``DEEP_PLACEMENT per_layer`` (default) puts ``ctx[l]`` at block ``l`` (``ctx[0]`` in the input);
  ``DEEP_PLACEMENT published`` restores the published placement. With ``D_CTX`` 1 both are the shallow
  prompt, bit for bit the trainer of before (same parameters, draws and text features);
* the unused visual context of the published model is not built.

Config ``TRAINER.FEDTPG``: ``N_CTX`` (4), ``HEADS`` (4, must divide the text width; also the self-attention
blocks' heads), ``DEPTH`` (0), ``D_CTX`` (1; 1 .. the text tower's blocks), ``DEEP_PLACEMENT``
(``per_layer`` | ``published``), ``PREC``.
"""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.cross_attention import CrossAttention, SelfAttentionBlock, geglu_ffn
from trainers.deep_prompts import text_prompts
from trainers.handcrafted import HandcraftedText
from trainers.method import Range
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer


class PromptGenerator(nn.Module):
    """FedTPG's generator: class-name features ``(C, D)`` -> context rows ``(layers * M, d)`` (module
    docstring); ``depth`` self-attention blocks on all the rows after the cross-attention and FFN (0: none,
    the published default). Row ``l * M + j`` is token ``j`` of layer ``l``'s context (``layers`` = ``D_CTX``;
    :meth:`GeneratedPromptLearner.contexts` reshapes to ``(layers, M, d)``)."""

    def __init__(self, n_ctx: int, dim: int, name_dim: int, heads: int = 4, mult: int = 4, depth: int = 0,
                 layers: int = 1):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(layers * n_ctx, dim) * 0.02)
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


#: ``DEEP_PLACEMENT``: which text blocks the deep contexts ``ctx[1 .. D_CTX-1]`` enter (module docstring).
DEEP_PLACEMENTS = ("per_layer", "published")


class GeneratedPromptLearner(PromptLearner):
    """A unified CoOp context produced by :class:`PromptGenerator` from the current class names, with
    ``d_ctx - 1`` deep contexts for the text tower's blocks (``d_ctx`` 1: shallow only)."""

    def __init__(self, clip, classnames: list[str], n_ctx: int = 4, heads: int = 4, depth: int = 0,
                 d_ctx: int = 1):
        layers = len(clip.model.transformer.resblocks)
        if not 1 <= d_ctx <= layers:
            raise ValueError(f"D_CTX must be in 1..{layers} for {clip.name} (text blocks), got {d_ctx}")
        super().__init__(clip, classnames, n_ctx=n_ctx, learn_ctx=False)
        self.d_ctx = int(d_ctx)
        self.names = HandcraftedText(clip, self.classnames, "{}")  # bare names, encoded once per class set
        self.generator = PromptGenerator(self.n_ctx, self.ctx_dim, int(clip.embed_dim), heads,
                                         depth=depth, layers=self.d_ctx).to(self.device)

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        if hasattr(self, "names"):
            self.names.set_classnames(classnames)

    def contexts(self) -> torch.Tensor:
        """``(D_CTX, M, d)``: the generator's output for the current class set; ``[0]`` is the input context."""
        return self.generator(self.names()).unflatten(0, (self.d_ctx, self.n_ctx))

    def context(self) -> torch.Tensor:
        """``(M, d)``: the input (layer-0) context for the current class set."""
        return self.contexts()[0]


class GeneratedPromptCLIP(PromptCLIP):
    """The frozen CLIP with the generated contexts: ``ctx[0]`` in the input embeddings, ``ctx[1:]`` replacing
    the context positions' hidden states at the blocks ``DEEP_PLACEMENT`` names (installed per call)."""

    def __init__(self, clip, prompt_learner: GeneratedPromptLearner, deep_placement: str = "per_layer"):
        super().__init__(clip, prompt_learner)
        self.first_deep_block = 1 if deep_placement == "per_layer" else 0

    def text_features(self) -> torch.Tensor:
        """Normalised class text features ``(C, D)``."""
        ctx = self.prompt_learner.contexts()
        with text_prompts(self.text_encoder.transformer, list(ctx[1:]), self.first_deep_block):
            return self.encode_contexts([ctx[0]])[0]


def _heads_rule(node) -> str | None:
    return None if int(node.HEADS) >= 1 else f"TRAINER.FEDTPG.HEADS must be >= 1, got {node.HEADS}"


@TRAINER_REGISTRY.register()
class FedTPG(PromptTrainer):
    """A class-name-conditioned prompt generator, shared and averaged (unweighted); nothing personal."""

    CFG_NODE = "FEDTPG"
    SHARED = ("prompt_learner.generator.*",)
    CFG_RULES = {"N_CTX": Range(1), "HEADS": _heads_rule, "DEPTH": Range(0), "D_CTX": Range(1),
                 "DEEP_PLACEMENT": DEEP_PLACEMENTS}

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.N_CTX = 4
        node.HEADS = 4
        node.DEPTH = 0
        node.D_CTX = 1
        node.DEEP_PLACEMENT = "per_layer"
        node.PREC = "fp32"
        return node

    def build_prompt_learner(self, clip) -> GeneratedPromptLearner:
        try:
            return GeneratedPromptLearner(clip, self.classnames, n_ctx=self.tcfg.N_CTX, heads=self.tcfg.HEADS,
                                          depth=int(self.tcfg.DEPTH), d_ctx=int(self.tcfg.D_CTX))
        except ValueError as err:
            from federated.errors import ConfigError

            raise ConfigError(f"TRAINER.FEDTPG: {err}") from None

    def build_clip_model(self, clip, prompt_learner) -> GeneratedPromptCLIP:
        return GeneratedPromptCLIP(clip, prompt_learner, str(self.tcfg.DEEP_PLACEMENT))

    def build_aggregator(self):
        """Unweighted FedAvg (the published server), unless ``FED.AGGREGATION`` says otherwise."""
        from federated.aggregation import build_aggregator

        return build_aggregator(self.cfg.FED.AGGREGATION or "fedavg_uniform", self.cfg)
