"""FedMGP: personalised federated learning with multi-group text-visual prompts.

Bo et al., "FedMGP: Personalized Federated Learning with Multi-Group Text-Visual Prompts" (NeurIPS 2025;
official code weihao-bo/FedMGP). Every client holds G pairs of prompt groups:

* text group g: a context ``prompt_learner.ctx[g]`` ``(n, d_text)`` (``n = N_CTX`` 2) in front of the fixed
  rest of ``CTX_INIT`` ("a photo of a": ``[V1] [V2] of a {class}.``), initialised from the embedding of the
  phrase's first ``n`` tokens plus N(0, 0.01) noise (N(0, 0.02) without ``CTX_INIT``);
* visual group g: ``visual_prompt.ctx[g]`` ``(n_v, d_vision)`` (``N_CTX_VISION`` 2) appended to the ViT's input
  tokens after the positional embedding (shallow, ``trainers/visual_prompt.py``), N(0, 0.02);
* ``logits_g = logit_scale * cos(f_img^(g), t^(g))`` with image features ``f_img^(g)`` from visual group g and
  class text features ``t^(g)`` from text group g. Training loss ``mean_g CE(logits_g) + w * L_div``;
  inference ``mean_g logits_g``.

**Diversity loss** (``DIVERSITY_*``): for each modality, the mean over the group pairs ``g < h`` of a distance
between their normalised features -- text: each class's features ``t^(g)_c``, vision: each image's
``f^(g)_b`` -- averaged over classes / images; ``L1``: ``mean_d |a - b|``, ``cos``: ``1 - cos(a, b)``.
``L_div = -(d_text + d_vision)``: minimising it pushes the groups apart, as the paper describes (groups that
"specialise in distinct and complementary aspects"; default ``DIVERSITY_SIGN "paper"``). The official code
computes the same negative term but then replaces it by its absolute value when it is negative, so it
*minimises the distance* and pulls the groups together: ``DIVERSITY_SIGN "published"`` reproduces that
(``L_div = +(d_text + d_vision)``).

**Communication** (the method's server step): after local training each client chooses ``s = TOPK`` of its
G text groups and, independently, s of its G visual groups to upload --

* in its first training (round 1) uniformly at random;
* later from ``softmax(sim / T)`` (``TEMPERATURE`` T), without replacement, where ``sim_g = max_r cos(vec P_g,
  vec G_r)`` compares its group g with the s global groups ``G_r`` it downloaded at the start of the round;

the r-th group drawn is its upload of rank r. The server averages each rank over the clients, unweighted
(``G_r = mean_i P_i,r``); each client then overwrites the positions it uploaded with the global groups of
their ranks and keeps its other ``G - s`` groups personal.

How this maps onto the framework's state (the shared tensors are the upload, the same names every round):
``exchange.text_rank`` ``(s, n, d_text)`` and ``exchange.visual_rank`` ``(s, n_v, d_vision)`` are the shared
tensors: the uploaded groups in rank order, and the global groups downloaded back. ``exchange.text_sampled``
and ``exchange.visual_sampled`` ``(s,)`` are personal: the positions the client uploaded (-1 before its first
upload). Neither takes part in the forward pass (no gradient, so the optimiser leaves them alone).
``finish_local_training`` draws the positions and fills the rank tensors; ``load_state`` writes downloaded
rank tensors into the client's remembered positions (its prompt groups are personal tensors). With every
client trained every round (the published protocol), each client downloads exactly its own positions'
global groups; a client not sampled in a round keeps its previous positions.

The image tower is prompted G times (one pass over G x B sequences): no feature cache, clients trained one
after another (``PromptedImageTower``). ViT backbones only.

Config ``TRAINER.FEDMGP`` (official ``configs/trainers/FedMGP/base2novel_vit_b16.yaml`` and
``scripts/FedMGP/base2novel_train.sh``): ``NUM_GROUPS`` 5, ``TOPK`` 2, ``N_CTX`` 2, ``N_CTX_VISION`` 2,
``CTX_INIT`` "a photo of a", ``TEMPERATURE`` 1.0, ``DIVERSITY_WEIGHT`` 1.0, ``DIVERSITY_TYPE`` "l1", ``PREC``
fp16 (fp32 on CPU); SGD lr 0.001, constant, batch 8, 10 rounds of 2 local epochs, 10 clients, pathological
split of the base classes. Other differences from the official code (``docs/REPRODUCING.md``): the random
draws use their own seeds (derived from ``SEED``, round and client); a fresh optimiser per client per round.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from trainers.method import Range, RoundContext
from trainers.prompt_learner import PromptCLIP, PromptLearner
from trainers.prompt_trainer import PromptTrainer, prompt_cfg_node
from trainers.visual_prompt import PromptedImageTower, VisualPrompt, prompted_image_features

DIVERSITY_TYPES = ("l1", "cos")
DIVERSITY_SIGNS = ("paper", "published")


# ---------------------------------------------------------------------------- the defining computations
def group_sampling_probabilities(groups: torch.Tensor, global_groups: torch.Tensor,
                                 temperature: float) -> torch.Tensor:
    """``softmax(sim / T)`` over a client's G groups ``(G, ...)``, ``sim_g = max_r cos(vec groups[g],
    vec global_groups[r])`` over the s global groups ``(s, ...)``. Returns ``(G,)`` (float64, sums to 1)."""
    own = F.normalize(groups.detach().double().flatten(1), dim=1)
    glob = F.normalize(global_groups.detach().double().flatten(1), dim=1)
    sim = (own @ glob.t()).max(dim=1).values
    return torch.softmax(sim / float(temperature), dim=0)


def draw_groups(num_groups: int, count: int, generator: torch.Generator,
                probabilities: torch.Tensor | None = None) -> torch.Tensor:
    """``count`` distinct group positions ``(count,)`` (int64), in the order drawn: uniformly at random, or
    one after another with ``probabilities`` ``(G,)`` renormalised over the groups not drawn yet."""
    if probabilities is None:
        return torch.randperm(num_groups, generator=generator)[:count]
    return torch.multinomial(probabilities.float().cpu(), count, replacement=False, generator=generator)


def pairwise_distance(features: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over the group pairs ``g < h`` and the ``N`` items of the distance between ``features[g]`` and
    ``features[h]`` (``features`` ``(G, N, D)``, normalised by the caller): ``l1`` ``mean_d |a - b|``,
    ``cos`` ``1 - cos(a, b)``. 0 for one group."""
    pairs = list(itertools.combinations(range(features.shape[0]), 2))
    if not pairs:
        return features.sum() * 0.0
    g, h = (torch.tensor(side, device=features.device) for side in zip(*pairs, strict=True))
    a, b = features[g], features[h]  # (pairs, N, D)
    if kind == "l1":
        return (a - b).abs().mean()
    return (1.0 - F.cosine_similarity(a, b, dim=-1)).mean()


def diversity_loss(text: torch.Tensor, image: torch.Tensor, kind: str = "l1", sign: str = "paper") -> torch.Tensor:
    """``L_div`` from normalised class text features ``(G, C, D)`` and image features ``(G, B, D)``:
    ``-(d_text + d_image)`` (``paper``: minimising it pushes the groups apart) or ``+(d_text + d_image)``
    (``published``: the official ``abs()`` of that negative term, which pulls them together)."""
    distance = pairwise_distance(text, kind) + pairwise_distance(image, kind)
    return distance if sign == "published" else -distance


# ---------------------------------------------------------------------------- the model
class GroupExchange(nn.Module):
    """What a client uploads and remembers (module docstring): ``text_rank`` ``(s, n, d_text)``,
    ``visual_rank`` ``(s, n_v, d_vision)``, ``text_sampled`` / ``visual_sampled`` ``(s,)`` (positions, -1:
    none yet). Parameters only so that they travel as state; they never receive a gradient."""

    def __init__(self, text_groups: torch.Tensor, visual_groups: torch.Tensor, topk: int):
        super().__init__()
        device = text_groups.device
        self.text_rank = nn.Parameter(torch.zeros(topk, *text_groups.shape[1:], device=device))
        self.visual_rank = nn.Parameter(torch.zeros(topk, *visual_groups.shape[1:], device=device))
        self.text_sampled = nn.Parameter(torch.full((topk,), -1.0, device=device))
        self.visual_sampled = nn.Parameter(torch.full((topk,), -1.0, device=device))

    def pairs(self, text_groups: nn.Parameter, visual_groups: nn.Parameter):
        """``(groups, rank tensor, positions, the rank tensor's state name)`` of each modality."""
        return ((text_groups, self.text_rank, self.text_sampled, "exchange.text_rank"),
                (visual_groups, self.visual_rank, self.visual_sampled, "exchange.visual_rank"))


class MultiGroupCLIP(PromptCLIP):
    """Frozen CLIP with G text and G visual prompt groups (module docstring).

    ``encode_image(images (B, 3, H, W)) -> (G, B, D)``; ``eval_context() -> (G, C, D)`` (normalised);
    ``group_logits(image (G, B, D), text (G, C, D)) -> (G, B, C)``; ``logits`` their mean ``(B, C)``.
    """

    def __init__(self, clip, prompt_learner: PromptLearner, visual_prompt: VisualPrompt, topk: int):
        super().__init__(clip, prompt_learner)
        self.visual_prompt = visual_prompt
        self.exchange = GroupExchange(prompt_learner.ctx, visual_prompt.ctx, topk)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return prompted_image_features(self.image_encoder, images, self.visual_prompt.ctx)

    def text_features(self) -> torch.Tensor:
        return torch.stack(self.encode_contexts(list(self.prompt_learner.ctx.unbind(0))))

    def group_logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image_features, dim=-1).to(text_features.dtype)
        return self.logit_scale.exp() * image @ text_features.transpose(1, 2)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.group_logits(image_features, text_features).mean(dim=0)


def _check_groups(t) -> str | None:
    if int(t.NUM_GROUPS) < 1 or not 1 <= int(t.TOPK) <= int(t.NUM_GROUPS):
        return f"TRAINER.FEDMGP needs 1 <= TOPK <= NUM_GROUPS, got TOPK {t.TOPK}, NUM_GROUPS {t.NUM_GROUPS}"
    if int(t.N_CTX_VISION) < 1:
        return f"TRAINER.FEDMGP.N_CTX_VISION must be >= 1, got {t.N_CTX_VISION}"
    return None


@TRAINER_REGISTRY.register()
class FedMGP(PromptedImageTower, PromptTrainer):
    """G paired text / visual prompt groups; s of them uploaded per round by similarity-guided sampling."""

    CFG_NODE = "FEDMGP"
    SHARED = ("exchange.text_rank", "exchange.visual_rank")
    CFG_RULES = {"NUM_GROUPS": _check_groups, "TEMPERATURE": Range(0, low_open=True),
                 "DIVERSITY_WEIGHT": Range(0), "DIVERSITY_TYPE": DIVERSITY_TYPES, "DIVERSITY_SIGN": DIVERSITY_SIGNS,
                 "CSC": (False,), "CLASS_TOKEN_POSITION": ("end",)}

    @classmethod
    def cfg_defaults(cls) -> CN:
        node: CN = prompt_cfg_node(n_ctx=2, prec="fp16")
        node.CTX_INIT = "a photo of a"
        node.N_CTX_VISION = 2
        node.NUM_GROUPS = 5
        node.TOPK = 2
        node.TEMPERATURE = 1.0
        node.DIVERSITY_WEIGHT = 1.0
        node.DIVERSITY_TYPE = "l1"
        node.DIVERSITY_SIGN = "paper"
        return node

    def build_prompt_learner(self, clip) -> PromptLearner:
        t = self.tcfg
        learner = PromptLearner(clip, self.classnames, n_ctx=int(t.N_CTX), ctx_init="", learn_ctx=False)
        groups = int(t.NUM_GROUPS)
        ctx = torch.empty(groups, learner.n_ctx, learner.ctx_dim, device=learner.device).normal_(std=0.02)
        learner.ctx = nn.Parameter(ctx)
        if str(t.CTX_INIT).strip():
            learner.learn_first_words(t.CTX_INIT)  # every group from the phrase's first words ...
            with torch.no_grad():  # ... plus its own N(0, 0.01) noise
                learner.ctx.add_(torch.randn_like(learner.ctx) * 0.01)
        return learner

    def build_clip_model(self, clip, prompt_learner) -> MultiGroupCLIP:
        t = self.tcfg
        visual = VisualPrompt(clip.model.visual, int(t.N_CTX_VISION), "FedMGP", groups=int(t.NUM_GROUPS))
        return MultiGroupCLIP(clip, prompt_learner, visual, int(t.TOPK))

    def build_aggregator(self):
        """Per-rank unweighted averaging (``FED.AGGREGATION`` overrides)."""
        from federated.aggregation import build_aggregator

        return build_aggregator(self.cfg.FED.AGGREGATION or "fedavg_uniform", self.cfg)

    def compute_loss(self, image_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        text = self.model.eval_context()  # (G, C, D)
        logits = self.model.group_logits(image_features, text)  # (G, B, C)
        ce = torch.stack([F.cross_entropy(group, labels) for group in logits]).mean()
        t = self.tcfg
        div = diversity_loss(text, F.normalize(image_features.float(), dim=-1), str(t.DIVERSITY_TYPE),
                             str(t.DIVERSITY_SIGN))
        loss = ce + float(t.DIVERSITY_WEIGHT) * div
        return loss, logits.mean(dim=0), {"ce": ce.detach(), "diversity": div.detach()}

    # ------------------------------------------------------------------ the group exchange
    def _generator(self, context: RoundContext) -> torch.Generator:
        parts = [int(self.cfg.SEED), int(context.round or 0), int(context.client or 0), 0x4D4750]
        seed = int(np.random.SeedSequence(parts).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def finish_local_training(self, context: RoundContext) -> None:
        """Choose the groups to upload (text first, then vision, from one generator seeded by SEED, round and
        client) and put them, in rank order, into the rank tensors; remember their positions."""
        generator = self._generator(context)
        model = self.model
        for groups, rank, sampled, _ in model.exchange.pairs(model.prompt_learner.ctx, model.visual_prompt.ctx):
            probabilities = None
            if bool((sampled >= 0).all()):  # the rank tensors hold the global groups downloaded this round
                probabilities = group_sampling_probabilities(groups, rank, float(self.tcfg.TEMPERATURE))
            positions = draw_groups(groups.shape[0], rank.shape[0], generator, probabilities).to(groups.device)
            rank.copy_(groups[positions])
            sampled.copy_(positions.to(sampled.dtype))

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``state``; downloaded rank tensors overwrite the groups at the client's remembered positions."""
        super().load_state(state)
        model = self.model
        for groups, rank, sampled, name in model.exchange.pairs(model.prompt_learner.ctx, model.visual_prompt.ctx):
            if name in state and bool((sampled >= 0).all()):
                groups[sampled.long()] = rank
