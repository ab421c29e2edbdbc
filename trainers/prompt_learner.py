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
    embeddings ``(C, L, d)``.

    Fast text encoding (``fast_text``, on unless ``set_fast_text(False)``), exact for a causal text
    tower that pools at the EOS token, as CLIP's:

    * ``L`` is the position of the last EOS token + 1: padding after it is trimmed (the outputs up to
      the EOS never see later positions), e.g. ~20 of ViT-B/16's 77 tokens with 16 context tokens;
    * ``shares_prefix``: with one context for all classes and the class token at the end, the
      ``1 + M`` first tokens (SOS + context) are the same for every class, so ``prefix_parts`` gives
      them once per context set for ``TextEncoder.encode_shared_prefix``.

    ``set_fast_text(False)`` gives the published cost (reference mode): full context length, every
    prompt encoded densely.
    """

    #: Trim the padding and share the prefix (see the class docstring); ``set_fast_text`` changes it.
    fast_text: bool = True

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

    def first_word_embeddings(self, phrase: str) -> torch.Tensor:
        """The token embeddings ``(n_ctx, d)`` of the first ``n_ctx`` tokens of ``phrase`` (no gradient)."""
        ids = self._tokenize([phrase])[0]
        words = int((ids != 0).sum()) - 2
        if self.n_ctx > words:
            raise ValueError(f"N_CTX {self.n_ctx} exceeds the {words} tokens of CTX_INIT '{phrase}': "
                             f"lower N_CTX or set CTX_INIT ''")
        with torch.no_grad():
            return self.token_embedding(ids.unsqueeze(0).to(self.device))[0, 1 : 1 + self.n_ctx].float()

    def learn_first_words(self, phrase: str) -> None:
        """MaPLe's initialisation (also IVLP's and FedMGP's): the context becomes the embeddings of the first
        ``n_ctx`` tokens of ``phrase`` and the rest of ``phrase`` stays fixed text after it (``"a photo of a"``,
        ``n_ctx`` 2: ``[V1] [V2] of a {class}.``). ``phrase`` "": nothing changes (the N(0, 0.02) context)."""
        phrase = (phrase or "").strip().replace("_", " ")
        if not phrase:
            return
        first = self.first_word_embeddings(phrase)
        with torch.no_grad():
            self.ctx.copy_(first.expand_as(self.ctx))
        self.prompt_prefix = phrase
        self.set_classnames(self.classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        """Rebuild the class-dependent buffers for ``classnames`` (label order)."""
        if self.csc and hasattr(self, "ctx") and self.ctx.shape[0] != len(classnames):
            from federated.errors import ClassSpaceError

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
        if self.fast_text and self._causal_eos_pooling():
            tokenized = tokenized[:, : int(eot.max()) + 1]
        name_ids = self._tokenize(names)
        self.name_lens = [int((ids != 0).sum()) - 2 for ids in name_ids]
        with torch.no_grad():
            embedding = self.token_embedding(tokenized).float()
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)
        self.register_buffer("eos_in_suffix", eot - (1 + self.n_ctx), persistent=False)  # (C,), class token at the end
        self.register_buffer("token_prefix", embedding[:, :1, :], persistent=False)  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + self.n_ctx :, :], persistent=False)  # CLS . EOS
        self.n_cls = len(names)
        self.classnames = list(classnames)

    def _causal_eos_pooling(self) -> bool:
        """Whether the text tower is causal and pools at the EOS token (then padding can be trimmed)."""
        model = self.clip.model
        return getattr(model, "attn_mask", None) is not None and \
            getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")

    def set_fast_text(self, enabled: bool = True) -> None:
        """Fast text encoding (trimmed padding, shared prefix) or the published dense full-length prompts."""
        self.fast_text = bool(enabled)
        self.set_classnames(self.classnames)

    @property
    def shares_prefix(self) -> bool:
        """Whether every class's prompt starts with the same ``1 + M`` tokens (SOS + one shared context)."""
        return self.fast_text and not self.csc and self.class_token_position == "end" and self._causal_eos_pooling()

    def prefix_parts(self, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``G`` context sets ``(G, M, d)``: prefixes ``(G, 1 + M, d)`` (SOS + context), the class suffixes
        ``(C, S, d)`` (name, '.', EOS) and the EOS position in each suffix ``(C,)`` (``shares_prefix`` only)."""
        sos = self.token_prefix[:1].to(contexts.dtype).expand(contexts.shape[0], -1, -1)
        return torch.cat([sos, contexts], dim=1), self.token_suffix.to(contexts.dtype), self.eos_in_suffix

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

    @property
    def uses_shared_prefix(self) -> bool:
        """Whether the class prompts go through ``TextEncoder.encode_shared_prefix`` (the learner shares its
        prefix and the tower allows it)."""
        return self.shares_prefix_with(self.prompt_learner)

    def shares_prefix_with(self, learner: PromptLearner) -> bool:
        """Whether ``learner``'s class prompts can go through the tower's shared-prefix pass."""
        return learner.shares_prefix and getattr(self.text_encoder, "supports_shared_prefix", False)

    def encode_contexts(self, contexts: list[torch.Tensor], learner: PromptLearner | None = None) -> list[torch.Tensor]:
        """Normalised text features ``(C, D)`` of the class prompts of each context ``(M, d)`` of ``contexts``,
        from one text-tower pass: the shared-prefix pass when the learner and the tower allow it.

        ``learner``: whose tokenisation (context length, class suffixes) builds the prompts; default
        ``self.prompt_learner`` (methods with several context lengths pass one learner per length)."""
        learner = self.prompt_learner if learner is None else learner
        if self.shares_prefix_with(learner):
            feats = self.text_encoder.encode_shared_prefix(*learner.prefix_parts(torch.stack(contexts)))
            return list(F.normalize(feats, dim=-1).unbind(0))
        prompts = torch.cat([learner.construct_prompts(ctx) for ctx in contexts])
        tokenized = learner.tokenized_prompts.repeat(len(contexts), 1)
        return list(F.normalize(self.text_encoder(prompts, tokenized), dim=-1).split(learner.n_cls))

    def text_features(self) -> torch.Tensor:
        learner = self.prompt_learner
        if type(learner).forward is PromptLearner.forward and learner.context().dim() == 2:
            return self.encode_contexts([learner.context()])[0]
        return self.encode_prompts(learner())

    def eval_context(self) -> torch.Tensor:
        return self.text_features()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        image_features = F.normalize(image_features, dim=-1).to(text_features.dtype)
        return self.logit_scale.exp() * image_features @ text_features.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_image(images), self.eval_context())

    def set_classnames(self, classnames: list[str]) -> None:
        self.prompt_learner.set_classnames(classnames)
