"""FedMVP: federated multimodal visual prompts generated from class attributes (Singha et al., ICCV 2025,
arXiv 2504.20860).

No text prompt is learnt: classes are recognised "by description". Each class ``c`` has attribute phrases
(LLM-written, read from ``<DATASET.ROOT>/attributes/<dataset>.json``; generated for the toy world;
``trainers/class_attributes.py``) turned into sentences ``"<prefix> <class>, <suffix>which is/has <attribute>"``.
Their normalised frozen CLIP text features ``e_{c,j}`` ``(K, D)`` (``K`` sentences over all classes) are
encoded once per class set (not per forward) and kept as a non-persistent buffer.

What is learnt is a generator of visual prompt tokens conditioned on those descriptions. With ``X`` the
ViT's patch tokens after the positional embedding (before ``ln_pre``) ``(B, P, w)``:

    T   = Linear(D, w)(E)                                          (K, w)  projected descriptions
    A   = MultiHeadAttention(q = LN_q(X), k = LN_kv(T), v = T)     (B, P, w)  heads H, no residual
    Z   = FFN(A) + A   (LN -> Linear(w, 8w) -> GEGLU -> Linear(4w, w))
    V   = AdaptiveAvgPool(Z over the patch axis) -> 4 tokens       (B, 4, w)
    f   = ViT([CLS, X, V])  (the 4 tokens appended before ln_pre; the ViT frozen)
    logit_{b,c} = exp(logit_scale) * mean_j <f_b / |f_b|, e_{c,j}>
    L   = CE + ALPHA * (1 - mean_b cos(f_b, f_clip(flip(x_b))))

(the values are the projected descriptions without layer norm, the keys with it, as published). The
consistency term compares the prompted feature with the frozen CLIP feature of the horizontally flipped
image; as published, the whole batch is flipped with probability ``FLIP_P`` 0.5 (``FLIP_P 1``: always).
The whole prompt learner (linear, norms, attention, FFN) is shared and averaged with an unweighted mean
(``fedavg_uniform``); nothing is personal.

The image path is prompted, so image features are not cacheable: every training step runs the ViT twice
(prompted, with gradient to the generator; frozen on the flipped batch, without gradient), every
evaluation encodes its images, and clients are trained one after another (``SEQUENTIAL``). The text
side costs nothing per step (the description features are cached per class set).

Differences from the official code (mainaksingha01/FedMVP), docs/REPRODUCING.md "FedMVP": the official
code does not run (a missing ``model/prompt_net`` module, ``image_encoder`` never assigned) and
back-propagates only the last batch of each round; here every step is back-propagated (the paper). One
sentence prefix per run (``PREFIX``; "" = the dataset's, or the held-out domain's in a leave-one-domain-out
run), where the official code used each domain's own prefix.

**The official client's LoRA switch** (``LORA True``; off by default, docs/REPRODUCING.md says why). The
generator gains rank-``LORA_RANK`` factors (:class:`InputLoRA`, ``N(0, 0.02)``) on the attention's inputs:

    q = X + X A_q B_q,   k = T + T A_k B_k,   v = T + T A_v B_v,   A = LN_q(q) attends LN_kv(k), values v

A client trains without them until the loss of a round's last batch is below ``LORA_THRESHOLD`` (0.5);
from its next round on it trains with them and with the cross-attention block (``norm_q``, ``norm_kv``,
``attn``, ``ffn``) frozen (run with detached parameters: no gradient, so the optimiser leaves it exactly
as downloaded); ``linear`` always trains. The switch is the client's own state
(``prompt_learner.lora_switch``, ``CLIENT_STATE``: personal, checkpointed, never aggregated, never switched
off); the factors are shared and averaged with the rest of the prompt learner. Evaluation uses the
averaged generator without the factors, as the official server's model, whose switch is never set.

Config ``TRAINER.FEDMVP``: ``N_TOKENS`` 4, ``HEADS`` 4, ``ALPHA`` 10.0, ``FLIP_P`` 0.5, ``PREFIX`` "",
``TRUNCATE_CHARS`` 77 (sentences cut to 77 characters before tokenising, as published; 0: not cut),
``LORA`` False, ``LORA_RANK`` 8, ``LORA_THRESHOLD`` 0.5, ``PREC``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.base import FederatedTrainer, load_frozen_clip
from trainers.class_attributes import class_attributes, description_sentences, description_style
from trainers.cross_attention import CrossAttention, geglu_ffn
from trainers.image_tokens import check_token_vit
from trainers.method import Range, RoundContext


class DescriptionFeatures(nn.Module):
    """``forward() -> (features (K, D), owner (K,))``: the normalised frozen text features of every description
    sentence of the current class set and the class each belongs to; encoded on first use of a class set and
    kept for the run (non-persistent: never part of a client's state)."""

    def __init__(self, clip, classnames: list[str], sentences_of, truncate: int = 77):
        super().__init__()
        self.clip = clip
        self.sentences_of = sentences_of  # classnames -> list of sentence lists, one per class
        self.truncate = int(truncate)
        self.register_buffer("features", None, persistent=False)
        self.register_buffer("owner", None, persistent=False)
        #: class set -> its encodings: clients with their own label spaces (class-chunks) and the base / novel
        #: evaluations switch class sets every round; each set is encoded once per run
        self._known: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.set_classnames(classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.features, self.owner = self._known.get(tuple(self.classnames), (None, None))

    @torch.no_grad()
    def _encode(self) -> None:
        per_class = self.sentences_of(self.classnames)
        texts = [s[: self.truncate] if self.truncate > 0 else s for sents in per_class for s in sents]
        owner = [c for c, sents in enumerate(per_class) for _ in sents]
        device = self.clip.model.logit_scale.device
        tokens = self.clip.tokenize(texts).to(device)
        with torch.autocast(device_type=device.type, enabled=False):
            self.features = F.normalize(self.clip.model.encode_text(tokens).float(), dim=-1)
        self.owner = torch.tensor(owner, device=device)
        self._known[tuple(self.classnames)] = (self.features, self.owner)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.features is None:
            self._encode()
        elif self.features.is_inference() and not torch.is_inference_mode_enabled():
            self.features, self.owner = self.features.clone(), self.owner.clone()
            self._known[tuple(self.classnames)] = (self.features, self.owner)
        return self.features, self.owner

    def class_features(self) -> torch.Tensor:
        """``(C, D)``: each class's mean description feature (not renormalised: logits are the mean of the
        per-description scores)."""
        feats, owner = self()
        sums = torch.zeros(len(self.classnames), feats.shape[1], device=feats.device).index_add_(0, owner, feats)
        counts = torch.bincount(owner, minlength=len(self.classnames)).clamp_min(1).unsqueeze(1)
        return sums / counts


class InputLoRA(nn.Module):
    """The official client's low-rank update of the attention's query, key and value *inputs*:
    ``x -> x + x A B`` with ``A`` ``(w, r)`` and ``B`` ``(r, w)``, one pair each, all ``N(0, 0.02)``.

    ``forward(queries (..., w), keys (..., w), values (..., w)) -> the three updated tensors``.
    """

    def __init__(self, width: int, rank: int = 8):
        super().__init__()
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_a", nn.Parameter(torch.randn(width, rank) * 0.02))
            setattr(self, f"{name}_b", nn.Parameter(torch.randn(rank, width) * 0.02))

    @staticmethod
    def update(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return x + x @ a.to(x.dtype) @ b.to(x.dtype)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.update(queries, self.query_a, self.query_b), self.update(keys, self.key_a, self.key_b),
                self.update(values, self.value_a, self.value_b))


def frozen_call(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with its parameters detached: gradients reach the inputs, never the parameters (their
    ``.grad`` stays None, so the optimiser leaves them exactly as they are: no weight decay, no momentum)."""
    return torch.func.functional_call(module, {n: p.detach() for n, p in module.named_parameters()}, args)


class VisualPromptGenerator(nn.Module):
    """Patch tokens ``(B, P, w)`` + description features ``(K, D)`` -> ``N`` visual prompt tokens ``(B, N, w)``.

    ``lora_rank`` > 0 adds :class:`InputLoRA` (``lora``) and the client-state buffer ``lora_switch`` (0-d, 1 =
    switched on). ``forward(..., lora=True)`` applies the LoRA update to the attention's inputs and runs the
    cross-attention block (``norm_q``, ``norm_kv``, ``attn``, ``ffn``) frozen; ``linear`` always trains.
    """

    def __init__(self, width: int, text_dim: int, n_tokens: int = 4, heads: int = 4, lora_rank: int = 0):
        super().__init__()
        self.n_tokens = int(n_tokens)
        self.linear = nn.Linear(text_dim, width)
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = CrossAttention(width, width, heads)
        self.ffn = geglu_ffn(width)
        if lora_rank > 0:  # built last: without LoRA the other parameters draw the same random numbers
            self.lora = InputLoRA(width, lora_rank)
            self.register_buffer("lora_switch", torch.zeros(()))

    def forward(self, patches: torch.Tensor, descriptions: torch.Tensor, lora: bool = False) -> torch.Tensor:
        kv = self.linear(descriptions.to(self.linear.weight.dtype))
        if lora:
            q, k, v = self.lora(patches, kv, kv)
            x = frozen_call(self.attn, frozen_call(self.norm_q, q), frozen_call(self.norm_kv, k), v)
            x = frozen_call(self.ffn, x) + x
        else:
            x = self.attn(self.norm_q(patches), self.norm_kv(kv), kv)
            x = self.ffn(x) + x
        return F.adaptive_avg_pool1d(x.transpose(1, 2), self.n_tokens).transpose(1, 2)


class MVPCLIP(nn.Module):
    """Frozen CLIP classifying by description, with generated visual prompt tokens in its ViT.

    ``encode_image(images) -> (B, D)`` prompted; ``frozen_image(images) -> (B, D)`` plain CLIP;
    ``eval_context() -> (C, D)`` class description means; ``logits(features (B, D), context (C, D)) -> (B, C)``.
    """

    def __init__(self, clip, descriptions: DescriptionFeatures, n_tokens: int = 4, heads: int = 4, lora_rank: int = 0):
        super().__init__()
        check_token_vit(clip.model.visual, "FedMVP's visual prompts")
        self.clip = clip
        self.image_encoder = clip.model.visual
        self.logit_scale = clip.model.logit_scale
        self.descriptions = descriptions
        width = int(self.image_encoder.transformer.width)
        self.prompt_learner = VisualPromptGenerator(width, int(clip.embed_dim), n_tokens, heads, lora_rank).to(
            clip.model.logit_scale.device)

    def encode_image(self, images: torch.Tensor, lora: bool = False) -> torch.Tensor:
        """Prompted features ``(B, D)``; ``lora``: the generator's LoRA update on, its cross-attention frozen."""
        feats, _ = self.descriptions()
        generator = self.prompt_learner

        def append(_module, args):
            x = args[0]  # (B, 1 + P, w): class token + patches after the positional embedding
            tokens = generator(x[:, 1:], feats, lora=lora)
            return (torch.cat([x, tokens.to(x.dtype)], dim=1), *args[1:])

        handle = self.image_encoder.ln_pre.register_forward_pre_hook(append)
        try:
            return self.image_encoder(images)
        finally:
            handle.remove()

    @torch.no_grad()
    def frozen_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def eval_context(self) -> torch.Tensor:
        return self.descriptions.class_features()

    def logits(self, image_features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = F.normalize(image_features, dim=-1).to(context.dtype)
        return self.logit_scale.exp() * x @ context.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_image(images), self.eval_context())

    def set_classnames(self, classnames: list[str]) -> None:
        self.descriptions.set_classnames(classnames)


@TRAINER_REGISTRY.register()
class FedMVP(FederatedTrainer):
    """Attribute-conditioned visual prompt generator, shared and averaged (unweighted); nothing personal."""

    CFG_NODE = "FEDMVP"
    SHARED = ("prompt_learner.*",)
    CLIENT_STATE = ("prompt_learner.lora_switch",)
    CFG_RULES = {"N_TOKENS": Range(1), "HEADS": Range(1), "ALPHA": Range(0), "FLIP_P": Range(0, 1),
                 "TRUNCATE_CHARS": Range(0), "LORA": (False, True), "LORA_RANK": Range(1),
                 "LORA_THRESHOLD": Range(0)}
    image_features_cacheable = False
    SEQUENTIAL = "its image tower is prompted: image features are not cacheable, every step encodes images"

    @classmethod
    def cfg_defaults(cls) -> CN:
        node = CN()
        node.N_TOKENS = 4
        node.HEADS = 4
        node.ALPHA = 10.0
        node.FLIP_P = 0.5
        node.PREFIX = ""
        node.TRUNCATE_CHARS = 77
        node.LORA = False
        node.LORA_RANK = 8
        node.LORA_THRESHOLD = 0.5
        node.PREC = "fp32"
        return node

    def sentence_style(self) -> tuple[str, str]:
        """``(prefix, suffix)`` of the description sentences (``PREFIX`` overrides the prefix)."""
        d = self.cfg.DATASET
        prefix, suffix = description_style(str(d.NAME), str(d.get("TARGET_DOMAIN", "") or ""))
        return (str(self.tcfg.PREFIX) or prefix), suffix

    def _sentences(self, classnames: list[str]) -> list[list[str]]:
        attributes = class_attributes(self.cfg.DATASET.ROOT, str(self.cfg.DATASET.NAME), classnames)
        prefix, suffix = self.sentence_style()
        return [description_sentences(n, attributes[n], prefix, suffix) for n in classnames]

    def build_model(self) -> None:
        from federated.errors import ConfigError
        from trainers.image_tokens import UnsupportedImageTower

        clip = load_frozen_clip(self.cfg, self.device)
        t = self.tcfg
        descriptions = DescriptionFeatures(clip, self.classnames, self._sentences, int(t.TRUNCATE_CHARS))
        try:
            self.model = MVPCLIP(clip, descriptions, int(t.N_TOKENS), int(t.HEADS),
                                 int(t.LORA_RANK) if bool(t.LORA) else 0)
        except (UnsupportedImageTower, ValueError) as err:
            raise ConfigError(f"FedMVP: {err}") from None
        self.model.to(self.device)
        self.register_model("model", self.model)
        self._lora_on = False  # the loaded client's switch, read when its training starts
        self._last_loss: torch.Tensor | None = None  # the loss of the latest training step

    def start_local_training(self, context: RoundContext) -> None:
        """``LORA``: read the client's switch (its client state, loaded with its personal tensors)."""
        self._lora_on = bool(self.tcfg.LORA) and bool(self.model.prompt_learner.lora_switch > 0.5)

    def finish_local_training(self, context: RoundContext) -> None:
        """``LORA``: switch the client's LoRA on once the loss of the round's last batch is below ``LORA_THRESHOLD``
        (from its next round on: LoRA update, cross-attention frozen; never switched off)."""
        if bool(self.tcfg.LORA) and not self._lora_on and self._last_loss is not None:
            if float(self._last_loss) < float(self.tcfg.LORA_THRESHOLD):
                self.model.prompt_learner.lora_switch.fill_(1.0)
        self._lora_on, self._last_loss = False, None

    def build_aggregator(self):
        """Unweighted FedAvg (the published server), unless ``FED.AGGREGATION`` says otherwise."""
        from federated.aggregation import build_aggregator

        return build_aggregator(self.cfg.FED.AGGREGATION or "fedavg_uniform", self.cfg)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Evaluation: prompted features ``(B, D)``. Training: ``(B, 2, D)``, the prompted features (with gradient
        to the generator) and the frozen CLIP features of the batch, flipped with probability ``FLIP_P``."""
        if not self.model.training or not torch.is_grad_enabled():
            with torch.no_grad(), self.autocast():
                return self.model.encode_image(images).float()
        flipped = images.flip(-1) if float(torch.rand(())) < float(self.tcfg.FLIP_P) else images
        with self.autocast():
            prompted = self.model.encode_image(images, lora=self._lora_on).float()
            frozen = self.model.frozen_image(flipped).float()
        return torch.stack([prompted, frozen], dim=1)

    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``CE(logits, labels) + ALPHA * (1 - mean cos(prompted, frozen flipped))`` on ``(B, 2, D)`` features."""
        prompted, frozen = image_features.unbind(1)
        logits = self.model.logits(prompted, self.model.eval_context())
        ce = F.cross_entropy(logits, labels)
        consistency = 1.0 - F.cosine_similarity(prompted, frozen, dim=-1, eps=1e-7).mean()
        loss = ce + float(self.tcfg.ALPHA) * consistency
        self._last_loss = loss.detach()
        return loss, logits, {"ce": ce.detach(), "vis": consistency.detach()}
