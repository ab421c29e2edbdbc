"""FedCoCoOp: CoCoOp's conditional context (Zhou et al., CVPR 2022) with context and meta-net aggregated.

CoCoOp adds an image-conditioned bias to every context token. With ``x_b`` the normalised frozen
image feature of image ``b`` (``(D,)``, D = CLIP's joint dimension, the meta-net's ``vis_dim``):

    pi_b = MetaNet(x_b) = Linear(D//16, d)(ReLU(Linear(D, D//16)(x_b)))        (d,)
    prompt_{b,c} = [SOS] [ctx_1 + pi_b] ... [ctx_M + pi_b] [CLASS_c] . [EOS]
    w_{b,c} = normalise(TextEncoder(prompt_{b,c}))                            (B, C, D)
    logit_{b,c} = exp(logit_scale) * <x_b, w_{b,c}>                           (B, C)

Federated: both the context ``prompt_learner.ctx`` and the meta-net ``prompt_learner.meta_net`` are
shared and averaged (FedAvg); nothing is personal.

Batching (a deliberate change from the published per-image loop, docs/PUBLISHED_CODE.md): the ``B * C``
prompts of a step go through the text tower in one pass of shape ``(B*C, L, d)``. That costs the
text tower's activations for ``B * C`` prompts (ViT-B/16: about 29 MB per prompt kept for backward in
fp32, measured; about half in fp16; 32 images x 50 classes = 1600 prompts), so
``PROMPT_CHUNK`` bounds the prompts per pass: the images are split into chunks of
``max(1, PROMPT_CHUNK // C)`` images, and when gradients are needed each chunk runs under activation
checkpointing (its activations are recomputed in the backward pass), so peak memory follows one
chunk, not the whole batch. ``PROMPT_CHUNK 0`` encodes everything at once. Results are identical.

The meta-net takes the *frozen* image feature, so image features stay cacheable: ``logits`` works
from cached ``(B, D)`` features. ``eval_context()`` returns None: every text feature depends on the
image, there is nothing to precompute per evaluation pass.

Config ``TRAINER.FEDCOCOOP`` (CoCoOp's defaults): ``N_CTX`` 4, ``CTX_INIT`` "a photo of a" (its token
count then sets the context length), ``PREC`` "fp16" (autocast on GPU; fp32 on CPU), ``PROMPT_CHUNK``.
The class token is always at the end and the context is unified (CoCoOp has no CSC / position keys).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.method import Range
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer


def meta_net(vis_dim: int, ctx_dim: int) -> nn.Sequential:
    """CoCoOp's meta-net ``(B, vis_dim) -> (B, ctx_dim)``: Linear -> ReLU -> Linear, bottleneck vis_dim // 16."""
    hidden = max(1, vis_dim // 16)
    return nn.Sequential(OrderedDict([
        ("linear1", nn.Linear(vis_dim, hidden)),
        ("relu", nn.ReLU(inplace=True)),
        ("linear2", nn.Linear(hidden, ctx_dim)),
    ]))


class ConditionalPromptLearner(PromptLearner):
    """A unified CoOp context ``ctx (M, d)`` plus the meta-net producing a per-image bias ``(B, d)``."""

    def __init__(self, clip, classnames: list[str], n_ctx: int = 4, ctx_init: str = "a photo of a"):
        super().__init__(clip, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=False, class_token_position="end")
        self.meta_net = meta_net(int(clip.embed_dim), self.ctx_dim).to(self.device)

    def image_bias(self, image_features: torch.Tensor) -> torch.Tensor:
        """``pi``: meta-net output ``(B, d)`` for normalised image features ``(B, D)``."""
        return self.meta_net(image_features)

    def conditional_contexts(self, bias: torch.Tensor) -> torch.Tensor:
        """Per-image contexts ``ctx + bias[b]`` ``(B, M, d)`` for biases ``(B, d)``."""
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def conditional_prompts(self, bias: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``(B, C, L, d)`` whose context tokens are ``ctx + bias[b]`` for image ``b``."""
        ctx = self.conditional_contexts(bias)  # (B, M, d)
        b = ctx.shape[0]
        ctx = ctx.unsqueeze(1).expand(-1, self.n_cls, -1, -1)  # (B, C, M, d)
        prefix = self.token_prefix.to(ctx.dtype).unsqueeze(0).expand(b, -1, -1, -1)  # (B, C, 1, d)
        suffix = self.token_suffix.to(ctx.dtype).unsqueeze(0).expand(b, -1, -1, -1)  # (B, C, L-1-M, d)
        return torch.cat([prefix, ctx, suffix], dim=2)


class ConditionalCLIP(PromptCLIP):
    """Frozen CLIP whose class text features depend on the image through the meta-net.

    ``logits(image_features (B, D), context=None) -> (B, C)``; ``image_text_features`` gives the per-image
    class text features ``(B, C, D)``. ``prompt_chunk`` bounds the prompts per text-tower pass (0: no bound).
    """

    prompt_learner: ConditionalPromptLearner

    def __init__(self, clip, prompt_learner: ConditionalPromptLearner, prompt_chunk: int = 0):
        super().__init__(clip, prompt_learner)
        self.prompt_chunk = int(prompt_chunk)

    def encode_conditional(self, bias: torch.Tensor) -> torch.Tensor:
        """Normalised text features ``(B, C, D)`` for per-image biases ``(B, d)``: one pass over the B*C
        prompts -- with fast text, each image's SOS + context prefix once and the C class suffixes."""
        learner = self.prompt_learner
        if self.uses_shared_prefix:
            parts = learner.prefix_parts(learner.conditional_contexts(bias))
            return F.normalize(self.text_encoder.encode_shared_prefix(*parts), dim=-1)
        prompts = learner.conditional_prompts(bias)
        b, c, length, d = prompts.shape
        tokenized = learner.tokenized_prompts.repeat(b, 1)  # (B*C, L), image-major like prompts
        feats = self.text_encoder(prompts.reshape(b * c, length, d), tokenized)
        return F.normalize(feats, dim=-1).reshape(b, c, -1)

    def image_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image class text features ``(B, C, D)`` from frozen image features ``(B, D)`` (any norm)."""
        x = F.normalize(image_features.float(), dim=-1)
        bias = self.prompt_learner.image_bias(x)
        n_cls = self.prompt_learner.n_cls
        per_chunk = bias.shape[0] if self.prompt_chunk == 0 else max(1, self.prompt_chunk // n_cls)
        if per_chunk >= bias.shape[0]:
            return self.encode_conditional(bias)
        remat = torch.is_grad_enabled()
        chunks = [checkpoint(self.encode_conditional, part, use_reentrant=False) if remat
                  else self.encode_conditional(part) for part in bias.split(per_chunk)]
        return torch.cat(chunks)

    def eval_context(self) -> None:
        """Nothing is image-independent: the text features are computed per image in ``logits``."""
        return None

    def logits(self, image_features: torch.Tensor, context: None = None) -> torch.Tensor:
        """``(B, C)``: each image against its own class text features."""
        text = self.image_text_features(image_features)
        x = F.normalize(image_features, dim=-1).to(text.dtype)
        return self.logit_scale.exp() * torch.einsum("bd,bcd->bc", x, text)


@TRAINER_REGISTRY.register()
class FedCoCoOp(PromptTrainer):
    """CoCoOp in federated learning: the context and the meta-net are shared and averaged."""

    CFG_NODE = "FEDCOCOOP"
    SHARED = ("prompt_learner.ctx", "prompt_learner.meta_net.*")
    CFG_RULES = {"PROMPT_CHUNK": Range(0)}  # 0 = no bound

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.N_CTX = 4
        node.CTX_INIT = "a photo of a"
        node.PREC = "fp16"
        node.PROMPT_CHUNK = 0
        return node

    def build_prompt_learner(self, clip) -> ConditionalPromptLearner:
        return ConditionalPromptLearner(clip, self.classnames, n_ctx=self.tcfg.N_CTX, ctx_init=self.tcfg.CTX_INIT)

    def build_clip_model(self, clip, prompt_learner: ConditionalPromptLearner) -> ConditionalCLIP:
        return ConditionalCLIP(clip, prompt_learner, prompt_chunk=self.tcfg.PROMPT_CHUNK)
