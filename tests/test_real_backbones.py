"""Every shipped trainer config of a real CLIP backbone (ViT-B/16, ViT-B/32, RN50) validates, builds its
trainer on the real architecture and trains one federated round, offline.

No pretrained weights can be downloaded here, so the module writes one randomly initialised state dict per
backbone to a temporary file (``torch.save`` of the OpenAI-layout state dict, the format of converted
OpenAI weights) and passes it as ``--clip-weights FILE``: the real local-file path of ``clip/loading.py``
builds the architecture and fills it. ``trainers/base.py`` caches the loaded CLIP per (backbone, file), so
each architecture is loaded once for the whole module (and dropped at its end).

Per config (the method's own keys as shipped; only the protocol is shrunk: 2 clients, 2 base classes of the
toy world (its 32 px images resized to the backbone's 224), 1 shot each, batch 2, 1 round of 1 local epoch,
one cached view):

* the command line's checks (``check_args``: every key and name against the catalogue) and ``build_cfg``;
* the architecture: text width 512, context length 77, vision width 768 for the ViTs, embedding 512 for
  the ViTs and 1024 for RN50 (the published CLIP models); the trainable tensors have the shapes the method
  defines on that architecture (``ANCHORS``, written per method from its config keys and those widths);
* the shared / personal split agrees with the golden table (``tests/golden/method_tensors.json``, built
  with the tiny backbone): no tensor changes side when the backbone changes;
* the round: a finite loss, the shared tensors (the personal ones for a method with none shared) differ
  from their initial values afterwards, and the frozen CLIP is unchanged.

The configs of ``FAST`` (one per family of trainers: text prompts, global + personal prompts with
adapters, LoRA on a tower, a feature head, a prompted image tower, and the RN50 / ViT-B/32 backbones) run in
the default test run; the others are marked ``slow`` (``python -m pytest --run-slow
tests/test_real_backbones.py`` runs every config: several minutes on one core).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import yaml

from dassl.engine import TRAINER_REGISTRY, build_trainer
from federated.cli import build_cfg, check_args, parse_args
from federated.config import backbone_slug
from federated.data import build_federated_data
from federated.server import FederatedServer
from tests.fedtv_testing import REPO
from trainers.base import _CLIP_CACHE, load_frozen_clip

CONFIG_ROOT = os.path.join(REPO, "configs", "trainers")
GOLDEN = os.path.join(REPO, "tests", "golden", "method_tensors.json")
#: file names that say which backbone a config is for
BACKBONE_FILES = {"tiny": "tiny", "vit_b16": "ViT-B/16", "vit_b32": "ViT-B/32", "rn50": "RN50"}


@dataclass(frozen=True)
class Arch:
    """The published CLIP architecture's sizes: text width, vision width (None: a ResNet), joint embedding,
    context length, and the ViT's input tokens (class token + patches at 224 px)."""

    text: int
    vision: int | None
    embed: int
    context: int
    tokens: int | None


ARCHS = {"ViT-B/16": Arch(512, 768, 512, 77, 1 + 14 * 14),
         "ViT-B/32": Arch(512, 768, 512, 77, 1 + 7 * 7),
         "RN50": Arch(512, None, 1024, 77, None)}


@dataclass(frozen=True)
class Case:
    trainer: str
    path: str  # relative to the repository
    backbone: str

    @property
    def id(self) -> str:
        return os.path.relpath(self.path, os.path.join("configs", "trainers"))


def _yaml(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _backbone(data: dict) -> str | None:
    return ((data.get("MODEL") or {}).get("BACKBONE") or {}).get("NAME")


def real_backbone_configs() -> list[Case]:
    """Every ``configs/trainers/<trainer>/*.yaml`` whose backbone is not ``tiny``."""
    cases = []
    for path in sorted(glob.glob(os.path.join(CONFIG_ROOT, "*", "*.yaml"))):
        data = _yaml(path)
        backbone = _backbone(data) or "tiny"
        if backbone != "tiny":
            trainer = (data.get("TRAINER") or {}).get("NAME") or os.path.basename(os.path.dirname(path))
            cases.append(Case(trainer, os.path.relpath(path, REPO), backbone))
    return cases


CASES = real_backbone_configs()
FAST = {"PromptFL/vit_b16.yaml", "FedTV/vit_b16.yaml", "FLoRA/vit_b32.yaml", "FedLC/vit_b16.yaml",
        "IVLP/vit_b16.yaml", "CoOp/rn50.yaml"}


# ------------------------------------------------------------------------------- trainable shapes
#: base classes of the 4-class toy world of the small run: every client holds both (iid split)
NUM_CLASSES = 2
#: trainer -> {tensor name, ``*`` standing for a layer number: its shape from (method config node, Arch)}.
#: Every trainable tensor of the trainer must match one of them; the shapes are the methods' definitions.
Shape = Callable[[object, Arch], tuple]


def _ctx(n, a: Arch) -> tuple:
    return (n.N_CTX, a.text)


def _cross_attention(prefix: str, width: Callable[[Arch], int]) -> dict[str, Shape]:
    """``trainers/cross_attention.py``: pre-norms, q / k / v / out projections of ``width`` and the GEGLU
    feed-forward block (LayerNorm, Linear(w, 8 w), GEGLU, Linear(4 w, w))."""
    out: dict[str, Shape] = {}
    for name in ("norm_q", "norm_kv", "ffn.0"):
        out[f"{prefix}{name}.weight"] = out[f"{prefix}{name}.bias"] = lambda n, a: (width(a),)
    for name in ("q", "k", "v", "out"):
        out[f"{prefix}attn.{name}.weight"] = lambda n, a: (width(a), width(a))
        out[f"{prefix}attn.{name}.bias"] = lambda n, a: (width(a),)
    out.update({f"{prefix}ffn.1.weight": lambda n, a: (8 * width(a), width(a)),
                f"{prefix}ffn.1.bias": lambda n, a: (8 * width(a),),
                f"{prefix}ffn.3.weight": lambda n, a: (width(a), 4 * width(a)),
                f"{prefix}ffn.3.bias": lambda n, a: (width(a),)})
    return out


def _text_block(prefix: str) -> dict[str, Shape]:
    """The trainable text tower of full fine-tuning (open_clip's text transformer)."""
    block = {"ln_1.weight": lambda n, a: (a.text,), "ln_1.bias": lambda n, a: (a.text,),
             "ln_2.weight": lambda n, a: (a.text,), "ln_2.bias": lambda n, a: (a.text,),
             "attn.in_proj_weight": lambda n, a: (3 * a.text, a.text), "attn.in_proj_bias": lambda n, a: (3 * a.text,),
             "attn.out_proj.weight": lambda n, a: (a.text, a.text), "attn.out_proj.bias": lambda n, a: (a.text,),
             "mlp.c_fc.weight": lambda n, a: (4 * a.text, a.text), "mlp.c_fc.bias": lambda n, a: (4 * a.text,),
             "mlp.c_proj.weight": lambda n, a: (a.text, 4 * a.text), "mlp.c_proj.bias": lambda n, a: (a.text,)}
    return {f"{prefix}positional_embedding": lambda n, a: (a.context, a.text),
            f"{prefix}text_projection": lambda n, a: (a.text, a.embed),
            f"{prefix}token_embedding.weight": lambda n, a: (49408, a.text),
            f"{prefix}ln_final.weight": lambda n, a: (a.text,), f"{prefix}ln_final.bias": lambda n, a: (a.text,),
            **{f"{prefix}transformer.resblocks.*.{k}": v for k, v in block.items()}}


_LORA = "text_encoder.transformer.resblocks.*.attn.out_proj.parametrizations.weight.*.factors.out."
_ADAPTERS = {**{f"{side}_adapter.layer.*.weight": lambda n, a: (a.embed, a.embed) for side in ("glo", "loc")},
             **{f"{side}_adapter.layer.*.bias": lambda n, a: (a.embed,) for side in ("glo", "loc")}}

ANCHORS: dict[str, dict[str, Shape]] = {
    "CoOp": {"prompt_learner.ctx": _ctx},
    "PromptFL": {"prompt_learner.ctx": _ctx},
    "PromptProx": {"prompt_learner.ctx": _ctx},
    "KgCoOp": {"prompt_learner.ctx": _ctx},
    "FedCoCoOp": {"prompt_learner.ctx": _ctx,  # CoCoOp's meta-net: embedding -> embedding / 16 -> text width
                  "prompt_learner.meta_net.linear1.weight": lambda n, a: (a.embed // 16, a.embed),
                  "prompt_learner.meta_net.linear1.bias": lambda n, a: (a.embed // 16,),
                  "prompt_learner.meta_net.linear2.weight": lambda n, a: (a.text, a.embed // 16),
                  "prompt_learner.meta_net.linear2.bias": lambda n, a: (a.text,)},
    "FedOTP": {"prompt_learner.ctx_global": lambda n, a: (n.NUM_GLOBAL, n.N_CTX, a.text),
               "prompt_learner.ctx_local": lambda n, a: (n.NUM_PROMPTS - n.NUM_GLOBAL, n.N_CTX, a.text)},
    "PromptFolio": {"prompt_learner.ctx_global": lambda n, a: (1, n.N_CTX, a.text),
                    "prompt_learner.ctx_local": lambda n, a: (1, n.N_CTX, a.text)},
    "FedPHA": {"prompt_learner.ctx_global": _ctx,
               "prompt_learner.ctx_local": lambda n, a: (n.N_CTX_LOCAL, a.text)},
    "DPFPL": {"prompt_learner.sigma": _ctx, "prompt_learner.local_ctx": _ctx},
    "FedPGP": {"prompt_learner.sigma": _ctx, "prompt_learner.U": lambda n, a: (n.N_CTX, n.BOTTLENECK),
               "prompt_learner.V": lambda n, a: (n.BOTTLENECK, a.text)},
    "FedTV": {"prompt_learner.sigma": _ctx, "prompt_learner.B": lambda n, a: (n.N_CTX, n.BOTTLENECK),
              "prompt_learner.A": lambda n, a: (n.BOTTLENECK, a.text), "prompt_learner.S": lambda n, a: (n.BOTTLENECK,),
              **_ADAPTERS,
              "visual_fusion.w_query.weight": lambda n, a: (n.FUSION_HIDDEN, a.embed),
              "visual_fusion.w_query.bias": lambda n, a: (n.FUSION_HIDDEN,),
              "visual_fusion.w_key.weight": lambda n, a: (n.FUSION_HIDDEN, a.embed),
              "visual_fusion.w_key.bias": lambda n, a: (n.FUSION_HIDDEN,)},
    "pFedMoAP": {"prompt_learner.ctx": _ctx,
                 **{f"gating.w_{p}.weight": lambda n, a: (n.EMBED_DIM, n.EMBED_DIM) for p in "qkvo"},
                 **{f"gating.w_{p}.bias": lambda n, a: (n.EMBED_DIM,) for p in "qkvo"}},
    "FedTPG": {"prompt_learner.generator.queries": _ctx,
               **_cross_attention("prompt_learner.generator.", lambda a: a.text)},
    "FedMVP": {"prompt_learner.linear.weight": lambda n, a: (a.vision, a.text),
               "prompt_learner.linear.bias": lambda n, a: (a.vision,),
               **_cross_attention("prompt_learner.", lambda a: a.vision)},
    "VPT": {"visual_prompt.ctx": lambda n, a: (n.N_CTX_VISION, a.vision)},
    "IVLP": {"prompt_learner.ctx": _ctx, "visual_prompt.ctx": lambda n, a: (n.N_CTX_VISION, a.vision)},
    "FedMaPLe": {"prompt_learner.ctx": _ctx, "prompt_learner.proj.weight": lambda n, a: (a.vision, a.text),
                 "prompt_learner.proj.bias": lambda n, a: (a.vision,),
                 "prompt_learner.compound_prompts_text.*": _ctx,
                 "prompt_learner.compound_prompt_projections.*.weight": lambda n, a: (a.vision, a.text),
                 "prompt_learner.compound_prompt_projections.*.bias": lambda n, a: (a.vision,)},
    "FedMGP": {"prompt_learner.ctx": lambda n, a: (n.NUM_GROUPS, n.N_CTX, a.text),
               "visual_prompt.ctx": lambda n, a: (n.NUM_GROUPS, n.N_CTX_VISION, a.vision),
               "exchange.text_rank": lambda n, a: (n.TOPK, n.N_CTX, a.text),
               "exchange.visual_rank": lambda n, a: (n.TOPK, n.N_CTX_VISION, a.vision),
               "exchange.text_sampled": lambda n, a: (n.TOPK,), "exchange.visual_sampled": lambda n, a: (n.TOPK,)},
    "pFedMMA": {"adapters.text_adapter.*.down.0.weight": lambda n, a: (n.ADAPTER_DIM, a.text),
                "adapters.text_adapter.*.down.0.bias": lambda n, a: (n.ADAPTER_DIM,),
                "adapters.text_adapter.*.up.weight": lambda n, a: (a.text, n.ADAPTER_DIM),
                "adapters.text_adapter.*.up.bias": lambda n, a: (a.text,),
                "adapters.visual_adapter.*.down.0.weight": lambda n, a: (n.ADAPTER_DIM, a.vision),
                "adapters.visual_adapter.*.down.0.bias": lambda n, a: (n.ADAPTER_DIM,),
                "adapters.visual_adapter.*.up.weight": lambda n, a: (a.vision, n.ADAPTER_DIM),
                "adapters.visual_adapter.*.up.bias": lambda n, a: (a.vision,),
                "adapters.shared_adapter.*.0.weight": lambda n, a: (n.ADAPTER_DIM, n.ADAPTER_DIM),
                "adapters.shared_adapter.*.0.bias": lambda n, a: (n.ADAPTER_DIM,)},
    "FLoRA": {_LORA + "A": lambda n, a: (a.text, n.RANK), _LORA + "B": lambda n, a: (n.RANK, a.text)},
    "CELoRA": {_LORA + "A": lambda n, a: (a.text, n.RANK), _LORA + "B": lambda n, a: (n.RANK, a.text),
               _LORA + "C": lambda n, a: (n.RANK, n.RANK)},
    "FedFFT": _text_block("text_encoder."),
    "FedAA": {"adapters.vision.0.weight": lambda n, a: (a.embed // n.REDUCTION, a.embed),
              "adapters.vision.0.bias": lambda n, a: (a.embed // n.REDUCTION,),
              "adapters.vision.2.weight": lambda n, a: (a.embed, a.embed // n.REDUCTION),
              "adapters.vision.2.bias": lambda n, a: (a.embed,)},
    "FedLC": {"head.weight": lambda n, a: (NUM_CLASSES, a.embed), "head.bias": lambda n, a: (NUM_CLASSES,)},
}
#: trainer -> (pattern, number of tensors it must match): the layered tensors' count on a 12-block tower
COUNTS: dict[str, tuple[str, Callable[[object], int]]] = {
    "FLoRA": (_LORA + "B", lambda n: 12), "CELoRA": (_LORA + "C", lambda n: 12),
    "FedFFT": ("text_encoder.transformer.resblocks.*.attn.in_proj_weight", lambda n: 12),
    "FedMaPLe": ("prompt_learner.compound_prompts_text.*", lambda n: n.PROMPT_DEPTH - 1),
    "pFedMMA": ("adapters.visual_adapter.*.up.weight", lambda n: n.ADAPTER_END - n.ADAPTER_START + 1),
}


def fold(name: str) -> str:
    """Layer numbers folded into ``*`` (as ``tools.method_table.name_patterns``)."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def matches(pattern: str, name: str) -> bool:
    """``name`` is ``pattern`` with each ``*`` a layer number."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", r"\d+"), name) is not None


# ------------------------------------------------------------------------------- the small run
SMALL_FLAGS = ["--num-users", "2", "--rounds", "1", "--local-epochs", "1", "--num-shots", "1",
               "--partition", "iid", "--train-batch-size", "2", "--test-batch-size", "4"]
SMALL_OPTS = ["DATASET.TOYWORLD.NUM_CLASSES", "4", "DATASET.TOYWORLD.TRAIN_PER_CLASS", "2",
              "DATASET.TOYWORLD.VAL_PER_CLASS", "0", "DATASET.TOYWORLD.TEST_PER_CLASS", "1",
              "FED.CACHE_VIEWS", "1", "FED.ZS_REFERENCE", "False",
              "FED.SHOW_PROGRESS", "False"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """``backbone -> path`` of a random CLIP state dict of that architecture, written once per module."""
    from clip.loading import build_clip
    from clip.names import normalize_backbone_name

    folder = tmp_path_factory.mktemp("real-clip")
    files: dict[str, str] = {}

    def get(backbone: str) -> str:
        if backbone not in files:
            model = build_clip(normalize_backbone_name(backbone), seed=0)
            path = str(folder / f"{backbone_slug(backbone)}.pt")
            torch.save(model.state_dict(), path)
            files[backbone] = path
        return files[backbone]

    yield get
    for key in [k for k in _CLIP_CACHE if k[1] in files.values()]:
        del _CLIP_CACHE[key]  # free the big models for the other test files of this worker
    for path in files.values():
        os.remove(path)  # pytest keeps the last runs' temporary folders: 1.6 GB each otherwise


def _fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """One sum per tensor of the frozen CLIP: changes when any of its weights changes."""
    return torch.stack([t.detach().float().sum() for t in model.state_dict().values()])


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in before if k in after and not torch.equal(before[k], after[k])]


def _params(case: Case, clip_file) -> list[str]:
    return ["--trainer", case.trainer, "--config-file", os.path.join(REPO, case.path),
            "--clip-weights", clip_file(case.backbone), *SMALL_FLAGS]


def check_real_backbone_round(case: Case, clip_file, tmp_path) -> None:
    argv = [*_params(case, clip_file), "--output-dir", str(tmp_path), *SMALL_OPTS]
    args = parse_args(argv)
    check_args(args)  # the command line's checks before torch: every name and key against the catalogue
    cfg = build_cfg(args)
    assert cfg.MODEL.BACKBONE.NAME == case.backbone and cfg.TRAINER.NAME == case.trainer
    assert tuple(cfg.INPUT.SIZE) == (224, 224)  # the backbone's own, not the toy world yaml's 32
    data = build_federated_data(cfg)
    trainer = build_trainer(cfg, classnames=data.classnames)
    clip = load_frozen_clip(cfg, trainer.device)
    arch = ARCHS[case.backbone]

    # the architecture the file was loaded into
    assert clip.weights_source == os.path.abspath(clip_file(case.backbone))
    assert (clip.context_length, clip.embed_dim, clip.image_size) == (arch.context, arch.embed, 224)
    assert tuple(clip.model.positional_embedding.shape) == (arch.context, arch.text)
    assert tuple(clip.tokenize(["a photo of a cat."]).shape) == (1, arch.context)
    if arch.vision is not None:
        assert tuple(clip.model.visual.positional_embedding.shape) == (arch.tokens, arch.vision)
    for name, buf in trainer.model.named_buffers():  # token ids of prompts fit the context
        if name.endswith(("tokenized_prompts", "class_tokens")):
            assert buf.shape[-1] <= arch.context and int(buf.argmax(dim=-1).max()) < arch.context, name

    # the trainable tensors' shapes on this architecture
    node = cfg.TRAINER[TRAINER_REGISTRY.get(case.trainer).CFG_NODE]
    anchors = ANCHORS[case.trainer]
    params = trainer.trainable_parameters()
    assert params, f"{case.id}: nothing to train"
    for name, p in params.items():
        anchor = [pattern for pattern in anchors if matches(pattern, name)]
        assert len(anchor) == 1, f"{case.id}: trainable tensor {name} {tuple(p.shape)} matches {anchor} in ANCHORS"
        assert tuple(p.shape) == tuple(int(x) for x in anchors[anchor[0]](node, arch)), f"{case.id}: {name}"
    if case.trainer in COUNTS:
        pattern, count = COUNTS[case.trainer]
        assert sum(matches(pattern, n) for n in params) == count(node), f"{case.id}: {pattern}"

    # shared / personal: the golden table's split (tiny backbone) is kept on the real backbone
    with open(GOLDEN) as f:
        golden = json.load(f)[case.trainer]
    shared, personal = {fold(k) for k in trainer.shared_keys()}, {fold(k) for k in trainer.personal_keys()}
    gold_shared, gold_personal = {fold(k) for k in golden["shared"]}, {fold(k) for k in golden["personal"]}
    assert not shared & gold_personal and not personal & gold_shared, f"{case.id}: a tensor changed sides"
    assert bool(shared) == bool(gold_shared), f"{case.id}: shared {sorted(shared)} vs golden {sorted(gold_shared)}"

    # training mode leaves the frozen CLIP's BatchNorm layers (RN50) in eval mode
    trainer.set_model_mode("train")
    bn = [m for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bool(bn) == (arch.vision is None) and not any(m.training for m in bn), case.id
    trainer.set_model_mode("test")

    # one federated round
    fingerprint = _fingerprint(clip.model)
    initial = {**trainer.get_state(trainer.shared_keys()), **trainer.get_state(trainer.personal_keys())}
    results = FederatedServer(cfg, trainer, data).run()
    loss = results["rounds"][0]["train_loss"]
    assert loss is not None and math.isfinite(loss), f"{case.id}: loss {loss}"
    ckpt = torch.load(os.path.join(cfg.OUTPUT_DIR, "checkpoint.pt"), weights_only=True)
    if trainer.shared_keys():
        downloads = [ckpt["global"], *ckpt["client_global"].values()]
        moved = {k for d in downloads for k in _changed(initial, d)}
        assert moved, f"{case.id}: no shared tensor changed in the round"
    else:
        assert any(_changed(initial, p) for p in ckpt["personal"]), f"{case.id}: no personal tensor changed"
    assert torch.equal(_fingerprint(clip.model), fingerprint), f"{case.id}: the frozen CLIP changed"


@pytest.mark.parametrize("case", [c for c in CASES if c.id in FAST], ids=lambda c: c.id)
def test_real_backbone_config_trains_one_round(case, clip_file, tmp_path):
    check_real_backbone_round(case, clip_file, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.id not in FAST], ids=lambda c: c.id)
def test_real_backbone_config_trains_one_round_slow(case, clip_file, tmp_path):
    check_real_backbone_round(case, clip_file, tmp_path)


# ------------------------------------------------------------------------------- the config files themselves
def test_every_trainable_method_ships_a_vit_b16_and_a_tiny_config():
    for name in TRAINER_REGISTRY.registered_names():
        if not ANCHORS.get(name):
            continue  # ZeroshotCLIP: nothing to train, no hyper-parameters
        for slug in ("tiny", "vit_b16"):
            assert os.path.isfile(os.path.join(CONFIG_ROOT, name, f"{slug}.yaml")), f"{name}: no {slug}.yaml"


def test_anchors_cover_every_trainer_with_tensors_and_fast_names_real_configs():
    assert set(ANCHORS) == set(TRAINER_REGISTRY.registered_names()) - {"ZeroshotCLIP"}
    assert FAST <= {c.id for c in CASES}
    assert {c.backbone for c in CASES if c.id in FAST} == set(ARCHS)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIG_ROOT, "*", "*.yaml"))),
                         ids=lambda p: os.path.relpath(p, CONFIG_ROOT))
def test_config_file_names_agree_with_their_backbone_and_trainer(path):
    """A file named after a backbone (``vit_b16.yaml``, ``flora_tiny.yaml``) is for that backbone; any other
    (``cifar100_table5.yaml``) declares its backbone; every file names its trainer, the folder's (a file run
    with ``--config-file`` alone must not train the default trainer with another method's settings)."""
    data = _yaml(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    named = [b for slug, b in BACKBONE_FILES.items() if slug in stem]
    declared = _backbone(data)
    if named:
        assert [declared or "tiny"] == named, path
    else:
        assert declared in ARCHS, f"{path}: say which backbone (MODEL.BACKBONE.NAME)"
    assert (data.get("TRAINER") or {}).get("NAME") == os.path.basename(os.path.dirname(path)), path
