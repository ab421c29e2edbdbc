"""CoOp-style learnable text prompts and the CLIP wrapper every prompt method builds on.

Prompt layout (class token at the end): ``[SOS] [V]_1 ... [V]_M [CLASS] . [EOS] [PAD]...``; the
learnable context ``[V]`` replaces the embeddings of ``M`` placeholder tokens "X". The class-name
dependent pieces (SOS prefix and class/EOS suffix embeddings, token ids) are non-persistent
buffers: they are rebuilt by ``set_classnames`` and never part of a client's state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clip import TextEncoder


class PromptLearner(nn.Module):
    """Learnable context vectors for CLIP's text tower.

    Args:
        clip: the loaded CLIP (``clip.LoadedCLIP``).
        classnames: class names in label order.
        n_ctx: number of context tokens M (ignored when ``ctx_init`` is given: its token count is used).
        ctx_init: words to initialise the context from (e.g. "a photo of a"), or "" for N(0, 0.02).
        csc: class-specific context (one context per class) instead of one unified context.
        class_token_position: "end", "middle" or "front".
        learn_ctx: create the ``ctx`` parameter (subclasses that compose the context themselves,
            e.g. global + low-rank terms, pass False and override ``context``).

    Shapes: ``ctx`` is ``(M, d)`` (unified) or ``(C, M, d)`` (CSC); ``forward()`` returns prompt
    embeddings ``(C, L, d)``. ``L`` is the position of the last EOS token + 1 (trimmed padding) when
    the text tower is causal and pools at the EOS token, as CLIP's: the outputs at positions up to
    the EOS never see later (padding) positions, so the features are exactly those of the full
    context length, at a fraction of the cost (ViT-B/16: ~20 of 77 tokens for 16 context tokens).
    ``keep_padding(True)`` restores the full context length (the published cost, reference mode).
    """

    #: Trim the padding after the last EOS token (see the class docstring); ``keep_padding`` changes it.
    trim_padding: bool = True

    def __init__(self, clip, classnames: list[str], n_ctx: int = 16, ctx_init: str = "", csc: bool = False,
                 class_token_position: str = "end", learn_ctx: bool = True):
        super().__init__()
        if class_token_position not in ("end", "middle", "front"):
            raise ValueError(f"CLASS_TOKEN_POSITION must be end, middle or front, got '{class_token_position}'")
        self.clip = clip  # not a submodule: the frozen CLIP is shared, never part of a client's state
        self.ctx_dim = int(self.token_embedding.weight.shape[1])
        self.csc = bool(csc)
        self.class_token_position = class_token_position
        ctx_init = (ctx_init or "").strip().replace("_", " ")
        if ctx_init:
            init_ids = self._tokenize([ctx_init])[0]
            n_ctx = int((init_ids != 0).sum()) - 2
            with torch.no_grad():
                init_vectors = self.token_embedding(init_ids.unsqueeze(0).to(self.device))[0, 1 : 1 + n_ctx].float()
            self.prompt_prefix = ctx_init
        else:
            init_vectors = None
            self.prompt_prefix = " ".join(["X"] * n_ctx)
        self.n_ctx = int(n_ctx)
        if learn_ctx:
            self.ctx = nn.Parameter(self.init_context(init_vectors, len(classnames)))
        self.set_classnames(classnames)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The frozen CLIP's token embedding (deliberately not registered as a submodule)."""
        return self.clip.model.token_embedding

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.clip.tokenize(texts)

    def init_context(self, init_vectors: torch.Tensor | None, n_cls: int) -> torch.Tensor:
        """Initial context ``(M, d)`` or ``(C, M, d)``: from words, or N(0, 0.02) as CoOp."""
        shape = (n_cls, self.n_ctx, self.ctx_dim) if self.csc else (self.n_ctx, self.ctx_dim)
        if init_vectors is not None:
            return init_vectors.expand(shape).clone() if self.csc else init_vectors.clone()
        ctx = torch.empty(shape, device=self.device)
        nn.init.normal_(ctx, std=0.02)
        return ctx

    def set_classnames(self, classnames: list[str]) -> None:
        """Rebuild the class-dependent buffers for ``classnames`` (label order)."""
        if self.csc and hasattr(self, "ctx") and self.ctx.shape[0] != len(classnames):
            from trainers.base import ClassSpaceError

            raise ClassSpaceError("class-specific context (CSC) cannot be evaluated on other classes")
        names = [name.replace("_", " ") for name in classnames]
        prompts = [f"{self.prompt_prefix} {name}." for name in names]
        tokenized = self._tokenize(prompts).to(self.device)
        eot = tokenized.argmax(dim=-1)
        last = tokenized.shape[1] - 1
        too_long = [names[i] for i in range(len(names)) if tokenized[i, eot[i]] == 0 or eot[i] == last]
        if too_long:
            raise ValueError(
                f"prompts do not fit the text tower's {tokenized.shape[1]} tokens with {self.n_ctx} context tokens "
                f"for classes {too_long[:3]}: lower N_CTX"
            )
        if self.trim_padding and self._causal_eos_pooling():
            tokenized = tokenized[:, : int(eot.max()) + 1]
        name_ids = self._tokenize(names)
        self.name_lens = [int((ids != 0).sum()) - 2 for ids in name_ids]
        with torch.no_grad():
            embedding = self.token_embedding(tokenized).float()
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)
        self.register_buffer("token_prefix", embedding[:, :1, :], persistent=False)  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + self.n_ctx :, :], persistent=False)  # CLS . EOS
        self.n_cls = len(names)
        self.classnames = list(classnames)

    def _causal_eos_pooling(self) -> bool:
        """Whether the text tower is causal and pools at the EOS token (then padding can be trimmed)."""
        model = self.clip.model
        return getattr(model, "attn_mask", None) is not None and \
            getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")

    def keep_padding(self, keep: bool = True) -> None:
        """Encode prompts at the full context length (``keep``) or trimmed after the last EOS token."""
        self.trim_padding = not keep
        self.set_classnames(self.classnames)

    def context(self) -> torch.Tensor:
        """The context to use now: ``(M, d)`` or ``(C, M, d)``."""
        return self.ctx

    def construct_prompts(self, ctx: torch.Tensor) -> torch.Tensor:
        """Assemble prompt embeddings ``(C, L, d)`` from a context ``(M, d)`` or ``(C, M, d)``."""
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prefix = self.token_prefix.to(ctx.dtype)
        suffix = self.token_suffix.to(ctx.dtype)
        if self.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        half = self.n_ctx // 2
        prompts = []
        for i in range(self.n_cls):
            n = self.name_lens[i]
            name, rest = suffix[i : i + 1, :n], suffix[i : i + 1, n:]
            ctx_i = ctx[i : i + 1]
            if self.class_token_position == "middle":
                parts = [prefix[i : i + 1], ctx_i[:, :half], name, ctx_i[:, half:], rest]
            else:  # front
                parts = [prefix[i : i + 1], name, ctx_i, rest]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)

    def forward(self) -> torch.Tensor:
        return self.construct_prompts(self.context())


class PromptCLIP(nn.Module):
    """A frozen CLIP whose class text features come from a prompt learner.

    ``encode_image`` gives frozen image features ``(B, D)``; ``eval_context`` computes what does
    not depend on the image (normalised class text features ``(C, D)``); ``logits`` combines them
    into ``(B, C)`` scaled cosine similarities.
    """

    def __init__(self, clip, prompt_learner: PromptLearner):
        super().__init__()
        self.clip = clip
        self.prompt_learner = prompt_learner
        self.text_encoder = TextEncoder(clip.model)
        self.image_encoder = clip.model.visual
        self.logit_scale = clip.model.logit_scale

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def encode_prompts(self, prompts: torch.Tensor) -> torch.Tensor:
        """Normalised text features ``(C, D)`` of prompt embeddings ``(C, L, d)``."""
        return F.normalize(self.text_encoder(prompts, self.prompt_learner.tokenized_prompts), dim=-1)

    def text_features(self) -> torch.Tensor:
        return self.encode_prompts(self.prompt_learner())

    def eval_context(self) -> torch.Tensor:
        return self.text_features()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        image_features = F.normalize(image_features, dim=-1).to(text_features.dtype)
        return self.logit_scale.exp() * image_features @ text_features.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_image(images), self.eval_context())

    def set_classnames(self, classnames: list[str]) -> None:
        self.prompt_learner.set_classnames(classnames)
