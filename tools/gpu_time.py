"""Estimated wall time of the table scripts' runs on one GPU, from per-operation costs (not a measurement).

    python -m tools.gpu_time                       # every script's paper grid, as a Markdown table
    python -m tools.gpu_time --bench-paper         # seconds per round at bench/run.py's paper size
    python -m tools.gpu_time --costs my_gpu.json   # with your own measured per-operation costs
    python scripts/table1_base2novel.py --estimate # per-run and total hours of one script's selection

A run's time is counted from its resolved config (``federated.cli.build_cfg``: trainer, rounds, local
epochs, clients, fraction sampled, shots, batch size, base / all classes, evaluation frequency) and the
dataset's size (``datasets/sizes.py``), with the per-operation costs of ``bench/gpu_costs.json`` (the
H100 timings; the file's ``source`` says which numbers are measured and which are assumptions). Two modes:

* **fast** (FedTV's way, the default): image features cached once -- ``FED.CACHE_VIEWS`` augmented views
  of every training image and every test image through the frozen image tower -- then every training
  step is the text tower only, prompts trimmed after their last EOS and, for a prompt learner with one
  context for all classes and the class token at the end, the SOS + context prefix encoded once per
  context set (each class adds its suffix: name, '.', EOS). FedPGP / FedTV encode
  their two trainable context sets (z_G, z_i) in one pass (the hand-crafted ``z_C`` once). With
  ``FED.BATCH_CLIENTS`` (True by default) and a method that allows it (``federated/batched.py``), the
  clients of a round are one vmapped step: one text pass over all clients' prompts and one step
  overhead; otherwise (``FED.BATCH_CLIENTS False``, or a method batching does not support) they train
  one after another. Precision: the run's ``TRAINER.<node>.PREC`` (most configs say fp32: fp32 costs;
  bf16; fp16 / amp counted at bf16's speed, and their gradient scaling keeps clients sequential);
  ``precision="bf16"`` estimates what adding ``TRAINER.<node>.PREC bf16`` gives. A cache is paid once
  per image set: runs over the same images (seeds, methods) share it, so a table's total counts it once
  (a short run over many images can pay more for its cache than the reference mode for the whole run).
* **reference** (the published way, ``--reference-mode``): every step pushes its batch through the image
  tower in fp32 and runs the text passes of the published code at the full 77-token context (PromptFL /
  CoOp: one pass of ``C`` prompts; FedPGP and FedTV: four passes of ``C`` -- z_C, z_G, the unused z_UV,
  z_i; docs/PUBLISHED_CODE.md); clients one after another; evaluation re-encodes the test images.

Per step: ``text(rows) + image + overhead`` where ``rows`` is the number of **token rows** the text pass
processes (:func:`text_rows`: ``G (1 + n_ctx) + G C S`` with a shared prefix, ``prompts x (1 + n_ctx + S)``
trimmed, ``prompts x 77`` dense; ``G`` context sets, ``C`` classes, ``S`` the dataset's suffix length from
``datasets/sizes.py``) and ``text(rows)`` interpolates the measured forward+backward time of that many
token rows (:meth:`Costs.text`; the measured prompt counts x 77). Evaluations: each client (each model: once
when every client holds the same model) on its local test split and, in base-to-novel runs, on every
base and novel test image: one text forward over the set's class prompts (+ the images in reference
mode). ``FED.ZS_REFERENCE`` adds one zero-shot evaluation. Not modelled: data loading, Python overhead
beyond ``step_overhead_ms``, the server's aggregation, uneven client sizes (clients are equal shares of
the data).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_COSTS = os.path.join(REPO, "bench", "gpu_costs.json")
MODES = ("fast", "reference")
TEXT_KEY = "text_fwd_bwd_ms_by_token_rows"
CONTEXT_LENGTH = 77  # CLIP's text context: every prompt's length in the reference mode


class CostsError(ValueError):
    """The per-operation cost file is missing, malformed or lacks what a run needs (the message says what)."""


# --------------------------------------------------------------------- per-operation costs
@dataclass(frozen=True)
class Costs:
    """Per-operation GPU costs (milliseconds) read from a JSON file (``bench/gpu_costs.json`` documents each)."""

    text_points: dict[str, list[tuple[float, float]]]  # precision -> [(token rows, ms forward+backward)], sorted
    image_ms_per_32: dict[str, float]  # precision -> ms of an image-tower forward on 32 images
    forward_only_fraction: float
    image_fwd_bwd_factor: float
    text_weight_grad_factor: float
    step_overhead_ms: float
    backbone_scale: dict[str, dict[str, float]]
    device: str = ""
    path: str = ""

    def scale(self, backbone: str, tower: str) -> float:
        if backbone not in self.backbone_scale:
            raise CostsError(f"{self.path}: no costs for backbone '{backbone}' (backbone_scale has "
                             f"{', '.join(self.backbone_scale)}); measure it and pass the file with --costs")
        return self.backbone_scale[backbone][tower]

    def text(self, rows: float, precision: str, backbone: str, forward_only: bool = False) -> float:
        """ms of one text-tower pass over ``rows`` token rows (forward+backward, or forward only): the first
        point's time at or below it (the launch-bound floor), linear between points, last slope above."""
        if rows <= 0:
            return 0.0
        pts = self.text_points[precision]
        if rows <= pts[0][0] or len(pts) == 1:
            ms = pts[0][1] if rows <= pts[0][0] else pts[0][1] * rows / pts[0][0]
        else:
            i = next((j for j in range(1, len(pts)) if rows <= pts[j][0]), len(pts) - 1)
            (x0, y0), (x1, y1) = pts[i - 1], pts[i]
            ms = y0 + (y1 - y0) * (rows - x0) / (x1 - x0)
        return ms * (self.forward_only_fraction if forward_only else 1.0) * self.scale(backbone, "text")

    def image(self, images: float, precision: str, backbone: str, backward: bool = False) -> float:
        """ms of the image tower's forward (and backward) over ``images`` images."""
        ms = self.image_ms_per_32[precision] * images / 32.0 * self.scale(backbone, "image")
        return ms * (self.image_fwd_bwd_factor if backward else 1.0)


def load_costs(path: str | None = None) -> Costs:
    """Read and check a cost file; :class:`CostsError` names the file and the bad or missing key."""
    path = path or DEFAULT_COSTS
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as err:
        raise CostsError(f"cannot read the costs file {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise CostsError(f"costs file {path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise CostsError(f"costs file {path}: expected a JSON object")

    def need(key: str):
        if key not in raw:
            raise CostsError(f"costs file {path}: missing key '{key}' (see bench/gpu_costs.json for the format)")
        return raw[key]

    def positive(value, where: str, zero: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 or zero and value == 0):
            kind = "a non-negative" if zero else "a positive"
            raise CostsError(f"costs file {path}: {where} must be {kind} number, got {value!r}")
        return float(value)

    text_points = {}
    key = TEXT_KEY
    if "text_fwd_bwd_ms" in raw and key not in raw:
        raise CostsError(f"costs file {path}: 'text_fwd_bwd_ms' (per prompt count) is the old format; give "
                         f"'{key}': [token rows, ms] pairs (prompts x 77 tokens for full-length prompts)")
    for prec in ("bf16", "fp32"):
        pts = need(key).get(prec) if isinstance(need(key), dict) else None
        if not isinstance(pts, list) or not pts or not all(isinstance(p, list) and len(p) == 2 for p in pts):
            raise CostsError(f"costs file {path}: {key}.{prec} must be a list of [token rows, ms] pairs")
        pts = sorted((positive(n, f"{key}.{prec} token rows"), positive(ms, f"{key}.{prec} ms")) for n, ms in pts)
        if len({n for n, _ in pts}) != len(pts):
            raise CostsError(f"costs file {path}: {key}.{prec} lists a token-row count twice")
        text_points[prec] = pts
    image = need("image_fwd_ms_per_32")
    if not isinstance(image, dict):
        raise CostsError(f"costs file {path}: image_fwd_ms_per_32 must be an object {{\"bf16\": ms, \"fp32\": ms}}")
    image_ms = {prec: positive(image.get(prec), f"image_fwd_ms_per_32.{prec}") for prec in ("bf16", "fp32")}
    scales = need("backbone_scale")
    if not isinstance(scales, dict) or not scales:
        raise CostsError(f"costs file {path}: backbone_scale must map backbones to {{\"text\": x, \"image\": y}}")
    backbone_scale = {}
    for name, s in scales.items():
        if not isinstance(s, dict):
            raise CostsError(f"costs file {path}: backbone_scale.{name} must be {{\"text\": x, \"image\": y}}")
        backbone_scale[name] = {t: positive(s.get(t), f"backbone_scale.{name}.{t}") for t in ("text", "image")}
    fraction = positive(need("forward_only_fraction"), "forward_only_fraction")
    if fraction > 1:
        raise CostsError(f"costs file {path}: forward_only_fraction must be at most 1, got {fraction}")
    return Costs(text_points, image_ms, fraction, positive(need("image_fwd_bwd_factor"), "image_fwd_bwd_factor"),
                 positive(need("text_weight_grad_factor"), "text_weight_grad_factor"),
                 positive(need("step_overhead_ms"), "step_overhead_ms", zero=True),
                 backbone_scale, str(raw.get("device", "")), path)


# --------------------------------------------------------------------- what a method costs per step
@dataclass(frozen=True)
class MethodCost:
    """The per-step work of a trainer (``C`` = classes of the run, ``B`` = batch size).

    ``prompt`` says how the fast path lays out the text pass: ``"shared"`` (one context for all classes,
    class token at the end: the SOS + context prefix once per context set, then each class's suffix),
    ``"trimmed"`` (every prompt up to its EOS, ``1 + n_ctx + S`` tokens) or ``"full"`` (hand-crafted
    prompts tokenised at the full 77 tokens); ``context_sets``: trainable context sets per client in the
    fast pass (FedPGP / FedTV: 2 = z_G and z_i); ``per_class``: prompts per class (FedOTP: its N prompts);
    ``ref_passes``: separate text passes of ``per_class x C`` full-length prompts per step in the
    published code; ``per_image``: the prompts depend on the image (CoCoOp: ``B x C`` prompts per step,
    published as ``B`` passes of ``C``); ``text_per_step``:
    False when the class text features are fixed (linear head, feature adapters); ``text_weights``: the
    text tower's weights are trained; ``image_trainable``: the image path is prompted / adapted (not
    cacheable: forward+backward every step); ``image_passes``: prompted sequences per image (FedMGP: its G
    visual groups, one pass over G x B sequences); ``personal``: clients hold different models (evaluated one
    by one); ``trains``: False for zero-shot (one evaluation round); ``per_example``: the fast path's backward
    is one vector-Jacobian product per example (DP-SGD's per-example gradients, batched: ``B x`` the rows;
    the forward once). Whether its clients can be batched
    is the trainer's own declaration (``SEQUENTIAL``, :attr:`batchable`).
    """

    prompt: str = "trimmed"
    context_sets: int = 1
    ref_passes: int = 1
    per_class: int = 1
    per_image: bool = False
    text_per_step: bool = True
    text_weights: bool = False
    image_trainable: bool = False
    image_passes: int = 1
    personal: bool = False
    trains: bool = True
    per_example: bool = False
    method: str = ""

    @property
    def batchable(self) -> bool:
        """What a ``FED.BATCH_CLIENTS True`` run does: the trainer does not declare ``SEQUENTIAL``."""
        import trainers  # noqa: F401  (registers the trainers)
        from dassl.engine import TRAINER_REGISTRY

        return not TRAINER_REGISTRY.get(self.method).SEQUENTIAL


#: Trainers declaring ``SEQUENTIAL`` (FedMaPLe, the LoRA and full fine-tuning trainers) train clients one
#: after another in a ``FED.BATCH_CLIENTS True`` run; so does any run with ``PREC fp16`` (gradient scaling;
#: e.g. the published FedOTP and FedCoCoOp configs: add ``PREC bf16`` to batch them). FedMaPLe is counted
#: as trimmed, not shared-prefix (its deep text prompts act inside the blocks).
METHOD_COSTS: dict[str, MethodCost] = {name: dataclasses.replace(cost, method=name) for name, cost in {
    "ZeroshotCLIP": MethodCost(prompt="full", trains=False),
    "CoOp": MethodCost(prompt="shared", personal=True),
    "PromptFL": MethodCost(prompt="shared"),
    "PromptProx": MethodCost(prompt="shared"),
    "KgCoOp": MethodCost(prompt="shared"),
    # one generated context for all classes (the generator itself costs one small pass over the C names)
    "FedTPG": MethodCost(prompt="shared"),
    "FedCoCoOp": MethodCost(prompt="shared", per_image=True),
    "FedOTP": MethodCost(per_class=2, personal=True),
    "FedMaPLe": MethodCost(image_trainable=True),
    "FedPGP": MethodCost(prompt="shared", context_sets=2, ref_passes=4, personal=True),
    "FedTV": MethodCost(prompt="shared", context_sets=2, ref_passes=4, personal=True),
    "FLoRA": MethodCost(prompt="full"),
    "CELoRA": MethodCost(prompt="full", personal=True),
    "FedFFT": MethodCost(prompt="full", text_weights=True),
    "FedLC": MethodCost(prompt="full", text_per_step=False),
    "FedAA": MethodCost(prompt="full", text_per_step=False),
    # global + local prompt sets in one pass (published: one dense pass of 2C prompts)
    "PromptFolio": MethodCost(prompt="shared", context_sets=2, ref_passes=2, personal=True),
    # local, projected-local and global prompt sets (equal lengths: one pass; published: three)
    "FedPHA": MethodCost(prompt="shared", context_sets=3, ref_passes=3, personal=True),
    # adapters inside both towers: hand-crafted prompts through the adapted text tower, a ViT pass per step
    "pFedMMA": MethodCost(prompt="full", image_trainable=True, personal=True),
    # shallow visual prompt tokens: a ViT pass with backward per step; IVLP's text context shares its prefix
    "IVLP": MethodCost(prompt="shared", image_trainable=True),
    "VPT": MethodCost(prompt="full", text_per_step=False, image_trainable=True),
    # one context (global + U V + R); private runs backpropagate every example separately (per-example
    # clipping; the published code clips the batch mean: one backward); clients one after another (FedSGD)
    "DPFPL": MethodCost(prompt="shared", personal=True, per_example=True),
    # 5 text context sets in one shared-prefix pass, 5 visual groups in one ViT pass over 5 x B sequences
    "FedMGP": MethodCost(prompt="shared", context_sets=5, ref_passes=5, image_trainable=True, image_passes=5,
                         personal=True),
    # one prompt set per step; the K-1 experts' class features (one no-grad text pass per client per round
    # and per evaluation) and the small gating network are not counted
    "pFedMoAP": MethodCost(prompt="shared", personal=True),
    # fixed description features (encoded once per class set), a prompted ViT pass with backward per step
    # (the extra frozen pass on the flipped batch, without backward, is not counted)
    "FedMVP": MethodCost(prompt="full", text_per_step=False, image_trainable=True),
}.items()}


# --------------------------------------------------------------------- the shape of a run
@dataclass(frozen=True)
class EvalSet:
    """One evaluation: ``models`` models (clients) each on ``images`` images of ``classes`` classes."""

    models: int
    images: float
    classes: int


@dataclass(frozen=True)
class RunShape:
    """What a run does, in counts (from its config and its dataset's size)."""

    method: str
    backbone: str
    rounds: int
    epochs: int
    batch: int
    classes: int  # classes of the clients' prompts (C)
    client_images: list[float]  # training images per client
    sampled: list[int]  # clients trained in each round
    eval_rounds: int  # rounds that evaluate
    eval_sets: list[EvalSet]  # the evaluation of one evaluating round
    zero_shot: list[EvalSet]  # the zero-shot evaluation ([] when off)
    cache_views: int
    batched: bool  # FED.BATCH_CLIENTS (used when the method allows it)
    n_ctx: int = 16  # context tokens of the prompt learner (TRAINER.<node>.N_CTX)
    precision: str = "bf16"  # TRAINER.<node>.PREC of the fast path on a GPU: fp32, bf16, fp16 / amp
    suffix: int = 4  # prompt tokens after the context: longest class name + '.' + EOS (datasets/sizes.py)
    cache_key: tuple = ()  # runs with the same key share their feature cache
    notes: list[str] = field(default_factory=list)

    @property
    def cost(self) -> MethodCost:
        return METHOD_COSTS[self.method]

    def steps(self, images: float) -> int:
        """Training steps of one client in one round (``epochs x ceil(images / batch)``)."""
        return self.epochs * math.ceil(images / self.batch) if images > 0 else 0


def _evaluated(rounds: int, freq: int) -> int:
    freq = max(freq, 1)
    return sum(1 for r in range(1, rounds + 1) if r % freq == 0 or r == rounds)


def shape_from_cfg(cfg) -> RunShape:
    """The :class:`RunShape` of a resolved config (``federated.cli.build_cfg``)."""
    from datasets.sizes import dataset_size

    method = str(cfg.TRAINER.NAME)
    if method not in METHOD_COSTS:
        raise CostsError(f"no cost profile for trainer '{method}' (tools/gpu_time.py METHOD_COSTS: "
                         f"{', '.join(METHOD_COSTS)})")
    prof = METHOD_COSTS[method]
    ds_cfg = cfg.DATASET
    try:
        size = dataset_size(str(ds_cfg.NAME))
    except KeyError as err:
        raise CostsError(str(err.args[0])) from None
    c_all = size.classes
    n_base = math.ceil(c_all / 2)
    subsample = str(ds_cfg.SUBSAMPLE_CLASSES)
    c_train = {"base": n_base, "new": c_all - n_base}.get(subsample, c_all)
    shots = int(ds_cfg.NUM_SHOTS)
    notes = [] if size.exact else [f"{size.name}: image counts are assumptions (datasets/sizes.py)"]
    if not size.suffix_exact and prof.text_per_step and prof.prompt != "full":
        notes.append(f"{size.name}: prompt suffix of {size.suffix} tokens assumed (datasets/sizes.py NAME_TOKENS)")
    from dassl.engine import TRAINER_REGISTRY

    node = cfg.TRAINER.get(getattr(TRAINER_REGISTRY.get(method), "CFG_NODE", ""), None)
    n_ctx = int(node.N_CTX) if node is not None and "N_CTX" in node else 0
    precision = str(node.PREC) if node is not None and "PREC" in node else "fp32"
    partition = str(ds_cfg.PARTITION)
    if partition == "domain":
        sites = list(size.domains)
        target = str(ds_cfg.TARGET_DOMAIN)
        if target and target not in sites:
            target = sites[int(target)] if target.isdigit() and int(target) < len(sites) else target
        train_sites = [s for s in sites if s != target]
        per = max(int(ds_cfg.SPLIT_CLIENT), 1)
        client_images, local_tests = [], []
        for s in train_sites:
            tr, te = size.domains[s]
            per_class = tr / c_all
            take = min(shots, per_class) if shots > 0 else per_class
            client_images += [take * c_train / per] * per
            local_tests += [(size.domains[target][1] if target else te / per) * c_train / c_all] * per
    else:
        per_class = size.train / c_all
        take = min(shots, per_class) if shots > 0 else per_class
        users = int(ds_cfg.USERS)
        client_images = [take * c_train / users] * users
        local_tests = [size.test * c_train / c_all / users] * users
    users = len(client_images)
    rounds = int(cfg.OPTIM.ROUND) if prof.trains else 1
    first = users if bool(cfg.FED.ALL_CLIENTS_FIRST_ROUND) else max(int(float(cfg.FED.FRAC) * users), 1)
    later = min(max(int(float(cfg.FED.FRAC) * users), 1), users)
    sampled = [first] + [later] * (rounds - 1)
    models = users if prof.personal else 1
    local = [EvalSet(1, t, c_train) for t in local_tests]
    evals = list(local)
    zero_shot = list(local)
    if subsample != "all" and bool(cfg.FED.EVAL_BASE_NOVEL):
        base_novel = [(size.test * n_base / c_all, n_base), (size.test * (c_all - n_base) / c_all, c_all - n_base)]
        evals += [EvalSet(models, imgs, c) for imgs, c in base_novel]
        zero_shot += [EvalSet(1, imgs, c) for imgs, c in base_novel]
    key = (str(ds_cfg.NAME), str(cfg.MODEL.BACKBONE.NAME), subsample, partition, shots, users, float(ds_cfg.BETA),
           str(ds_cfg.TARGET_DOMAIN), int(ds_cfg.SPLIT_SEED), int(cfg.FED.CACHE_VIEWS))
    return RunShape(method=method, backbone=str(cfg.MODEL.BACKBONE.NAME), rounds=rounds,
                    epochs=int(cfg.OPTIM.MAX_EPOCH), batch=int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE), classes=c_train,
                    client_images=client_images, sampled=sampled,
                    eval_rounds=_evaluated(rounds, int(cfg.TEST.EVAL_FREQ)), eval_sets=evals,
                    zero_shot=zero_shot if bool(cfg.FED.ZS_REFERENCE) else [],
                    cache_views=int(cfg.FED.CACHE_VIEWS), batched=bool(cfg.FED.BATCH_CLIENTS), n_ctx=n_ctx,
                    precision=precision, suffix=size.suffix, cache_key=key,
                    notes=notes)


def shape_from_argv(argv: list[str]) -> RunShape:
    """The :class:`RunShape` of ``federated_main`` arguments (config files relative to the repository)."""
    from federated.cli import build_cfg, parse_args
    from federated.errors import ConfigError

    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in ("--dataset-config-file", "--config-file") and not os.path.isabs(argv[i + 1]):
            argv[i + 1] = os.path.join(REPO, argv[i + 1])
    try:
        return shape_from_cfg(build_cfg(parse_args(argv)))
    except ConfigError as err:
        raise CostsError(f"cannot resolve the run's config: {err}") from None


# --------------------------------------------------------------------- the estimate
@dataclass(frozen=True)
class Estimate:
    """Seconds of one run in one mode: ``cache`` (one-time feature caching), ``train``, ``evaluate``."""

    cache: float
    train: float
    evaluate: float

    @property
    def total(self) -> float:
        return self.cache + self.train + self.evaluate


def text_rows(shape: RunShape, mode: str, classes: int, context_sets: int = 1, images: float = 1) -> float:
    """Token rows of one text pass over ``classes`` classes' prompts of ``context_sets`` context sets.

    ``images``: images the prompts are conditioned on (``per_image`` methods: one prompt set each).
    fast: ``G' (1 + n_ctx) + G' C S`` (shared prefix; ``G' = G x images`` for per-image contexts),
    ``G C' (1 + n_ctx + S)`` (trimmed; ``C' = per_class x C x images``) or ``G C' 77`` (hand-crafted
    prompts); reference: ``G C' 77`` (dense, full length).
    """
    p = shape.cost
    prompts = context_sets * p.per_class * classes * (images if p.per_image else 1)
    if mode == "reference" or p.prompt == "full":
        return prompts * CONTEXT_LENGTH
    if p.prompt == "shared":  # one prefix per context set (per image for CoCoOp) + every class suffix
        return context_sets * (images if p.per_image else 1) * (1 + shape.n_ctx) + prompts * shape.suffix
    return prompts * min(1 + shape.n_ctx + shape.suffix, CONTEXT_LENGTH)


def _cost_precision(shape: RunShape, mode: str) -> str:
    """The precision whose costs a pass pays: fp32 in reference mode and for ``PREC fp32``; bf16 (fp16 /
    amp counted at bf16's speed) otherwise."""
    return "fp32" if mode == "reference" or shape.precision == "fp32" else "bf16"


def _text_step_ms(shape: RunShape, costs: Costs, rows: float, precision: str) -> float:
    """ms of a training step's text pass over ``rows`` token rows: forward + backward, or with ``per_example``
    (both modes: the method computes per-example gradients however it is run) the forward once and the
    backward of ``B`` cotangents (``B x rows``)."""
    bb = shape.backbone
    if not shape.cost.per_example:
        return costs.text(rows, precision, bb)
    wide = rows * shape.batch
    return (costs.text(rows, precision, bb, forward_only=True) + costs.text(wide, precision, bb)
            - costs.text(wide, precision, bb, forward_only=True))


def _step_ms(shape: RunShape, costs: Costs, mode: str, clients: int) -> float:
    """ms of one training step of ``clients`` clients trained together (1: one client alone)."""
    p, bb, c = shape.cost, shape.backbone, shape.classes
    prec = _cost_precision(shape, mode)
    if mode == "reference":
        passes = p.ref_passes * (shape.batch if p.per_image else 1)
        text = passes * _text_step_ms(shape, costs, text_rows(shape, mode, c), "fp32") if p.text_per_step else 0.0
        image = costs.image(shape.batch * p.image_passes, "fp32", bb, backward=p.image_trainable)
    else:
        rows = text_rows(shape, mode, c, p.context_sets * clients, shape.batch)
        text = _text_step_ms(shape, costs, rows, prec) if p.text_per_step else 0.0
        image = (costs.image(shape.batch * clients * p.image_passes, prec, bb, backward=True) if p.image_trainable
                 else 0.0)
    if p.text_weights:
        text *= costs.text_weight_grad_factor
    return text + image + costs.step_overhead_ms


def _eval_ms(shape: RunShape, costs: Costs, mode: str, sets: list[EvalSet], zero_shot: bool = False) -> float:
    p, bb = shape.cost, shape.backbone
    prec = _cost_precision(shape, mode)
    passes = 1 if zero_shot else p.image_passes
    ms = 0.0
    for s in sets:
        per_model = costs.text(text_rows(shape, mode, s.classes, images=s.images), prec, bb, forward_only=True)
        if mode == "reference" or p.image_trainable:
            per_model += costs.image(s.images * passes, prec, bb)
        ms += s.models * per_model
    return ms


def estimate(shape: RunShape, costs: Costs, mode: str, batch_clients: bool | None = None,
             precision: str | None = None) -> Estimate:
    """Seconds of the run in ``mode`` (fast / reference); ``batch_clients`` overrides ``FED.BATCH_CLIENTS``,
    ``precision`` the run's ``PREC`` (fp16 / amp: gradient scaling, so clients are not batched)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode}")
    if precision is not None:
        shape = dataclasses.replace(shape, precision=precision)
    p = shape.cost
    batched = ((shape.batched if batch_clients is None else batch_clients) and p.batchable and mode == "fast"
               and shape.precision not in ("fp16", "amp"))
    train_ms = 0.0
    if p.trains:
        users = len(shape.client_images)
        for k in shape.sampled:
            # all clients, or k average ones (a sample of the clients)
            sizes = shape.client_images if k == users else [sum(shape.client_images) / users] * k
            steps = [shape.steps(n) for n in sizes]
            train_ms += (max(steps) * _step_ms(shape, costs, mode, k) if batched
                         else sum(steps) * _step_ms(shape, costs, mode, 1))
    eval_ms = (shape.eval_rounds * _eval_ms(shape, costs, mode, shape.eval_sets)
               + _eval_ms(shape, costs, mode, shape.zero_shot, zero_shot=True))
    cache_ms = 0.0
    if mode == "fast" and not p.image_trainable:
        train_images = sum(shape.client_images) * shape.cache_views if p.trains else 0.0
        test_images = sum(s.images for s in shape.eval_sets)
        cache_ms = costs.image(train_images + test_images, _cost_precision(shape, mode), shape.backbone)
    return Estimate(cache_ms / 1000, train_ms / 1000, eval_ms / 1000)


# --------------------------------------------------------------------- grids of runs
@dataclass
class GridEstimate:
    """Per-run estimates of a grid and its totals (hours); the fast total counts each feature cache once."""

    rows: list[tuple[dict, dict[str, Estimate]]]
    hours: dict[str, float]
    notes: list[str]


def estimate_runs(runs, costs: Costs, batch_clients: bool | None = None,
                  shapes: list[RunShape] | None = None, precision: str | None = None) -> GridEstimate:
    """Estimates of ``tools.experiments.Run`` s: ``rows`` = (run key, {mode: Estimate}), ``hours`` per mode.
    ``shapes``: the runs' shapes when already resolved (``shape_from_argv`` of each run); ``batch_clients``
    and ``precision`` as in :func:`estimate`."""
    rows, seen, notes = [], set(), []
    total = dict.fromkeys(MODES, 0.0)
    for run, shape in zip(runs, shapes or [shape_from_argv(r.argv) for r in runs], strict=True):
        est = {m: estimate(shape, costs, m, batch_clients, precision) for m in MODES}
        rows.append((run.key, est))
        total["reference"] += est["reference"].total
        fast = est["fast"]
        total["fast"] += fast.train + fast.evaluate + (0.0 if shape.cache_key in seen else fast.cache)
        seen.add(shape.cache_key)
        notes += [n for n in shape.notes if n not in notes]
    return GridEstimate(rows, {m: s / 3600 for m, s in total.items()}, notes)


def format_runs(grid: GridEstimate, costs: Costs) -> str:
    """The per-run table and the totals, as printed by ``--estimate``."""
    lines = [f"Estimated GPU time ({costs.device or costs.path}; an estimate from per-operation costs, "
             f"not a measurement)", "", "| run | fast h | reference h | reference / fast |", "|---|---|---|---|"]
    for key, est in grid.rows:
        label = " ".join(v for k, v in key.items() if k != "backbone")
        f, r = est["fast"].total, est["reference"].total
        lines.append(f"| {label} | {f / 3600:.3f} | {r / 3600:.3f} | {r / f:.1f}x |" if f else
                     f"| {label} | 0 | {r / 3600:.3f} | - |")
    h = grid.hours
    lines += ["", f"total over {len(grid.rows)} runs: fast {h['fast']:.2f} h (feature caches counted once), "
                  f"reference {h['reference']:.2f} h"]
    lines += [f"note: {n}" for n in grid.notes]
    return "\n".join(lines)


def load_script(path: str):
    """The ``EXPERIMENT`` of a table script."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXPERIMENT


def script_paths() -> list[str]:
    return sorted(glob.glob(os.path.join(REPO, "scripts", "*.py")))


def scripts_table(costs: Costs) -> str:
    """Markdown: every script's paper grid with its estimated hours: fast (the default, clients batched where
    the method allows, each config's ``PREC``), fast with clients one after another (``FED.BATCH_CLIENTS
    False``), fast with ``PREC bf16`` for every method, reference."""
    lines = ["| script | runs | fast h | fast, clients one after another (`FED.BATCH_CLIENTS False`) h | "
             "fast, `PREC bf16` h | reference h | reference / fast |", "|---|---|---|---|---|---|---|"]
    totals = [0.0, 0.0, 0.0, 0.0]
    notes: list[str] = []
    for path in script_paths():
        exp = load_script(path)
        runs = exp.runs(exp.parser().parse_args([]))
        shapes = [shape_from_argv(r.argv) for r in runs]
        default = estimate_runs(runs, costs, shapes=shapes)
        sequential = estimate_runs(runs, costs, batch_clients=False, shapes=shapes)
        bf16 = estimate_runs(runs, costs, shapes=shapes, precision="bf16")
        hours = [default.hours["fast"], sequential.hours["fast"], bf16.hours["fast"], default.hours["reference"]]
        totals = [a + b for a, b in zip(totals, hours, strict=True)]
        notes += [n for n in default.notes if n not in notes]
        lines.append(f"| `scripts/{os.path.basename(path)}` | {len(runs)} | "
                     + " | ".join(f"{h:.1f}" for h in hours) + f" | {hours[3] / hours[0]:.1f}x |")
    lines.append("| **all tables** | | " + " | ".join(f"**{h:.1f}**" for h in totals)
                 + f" | {totals[3] / totals[0]:.1f}x |")
    lines += ["", f"_Estimated from per-operation costs ({costs.device}; `{os.path.relpath(costs.path, REPO)}`), "
                  f"not measured: `python -m tools.gpu_time`._"]
    lines += [f"_{n}._" for n in notes]
    return "\n".join(lines)


#: ``bench/run.py --size paper``: ViT-B/16, 10 clients, 50 base classes (a toy world of 100), 16 shots,
#: 2 local epochs, batch 32, the pathological split (each client 16 x 50 / 10 = 80 training images).
BENCH_PAPER = {"backbone": "ViT-B/16", "clients": 10, "classes": 50, "shots": 16, "epochs": 2, "batch": 32}
BENCH_METHODS = ("PromptFL", "FedPGP", "FedTV")


def bench_paper_shape(method: str, batched: bool = True) -> RunShape:
    """One training round of ``bench/run.py``'s paper size (no evaluation, no cache: the bench's per-round
    seconds exclude both); ``n_ctx`` from the trainer's default config, the suffix from the toy world's names;
    bf16, as ``bench/run.py`` runs the fast path on a GPU."""
    from dassl.engine import TRAINER_REGISTRY
    from datasets.sizes import suffix_length
    from datasets.toyworld import all_classnames
    from federated.cli import build_cfg, parse_args

    if method not in METHOD_COSTS:
        raise CostsError(f"no cost profile for trainer '{method}' (tools/gpu_time.py METHOD_COSTS)")
    spec = BENCH_PAPER
    cfg = build_cfg(parse_args(["--trainer", method, "--clip-weights", "none"]))
    node = cfg.TRAINER.get(TRAINER_REGISTRY.get(method).CFG_NODE)
    images = spec["shots"] * spec["classes"] / spec["clients"]
    return RunShape(method=method, backbone=spec["backbone"], rounds=1, epochs=spec["epochs"], batch=spec["batch"],
                    classes=spec["classes"], client_images=[images] * spec["clients"], sampled=[spec["clients"]],
                    eval_rounds=0, eval_sets=[], zero_shot=[], cache_views=0, batched=batched, precision="bf16",
                    n_ctx=int(node.N_CTX) if "N_CTX" in node else 0, suffix=suffix_length(all_classnames()))


def bench_paper_table(costs: Costs, methods=BENCH_METHODS) -> str:
    """Markdown: estimated training seconds per round at the bench's paper size, fast vs reference."""
    spec = BENCH_PAPER
    lines = [f"Estimated seconds per training round at bench/run.py's paper size ({spec['backbone']}, "
             f"{spec['clients']} clients, {spec['classes']} base classes, {spec['shots']} shots, {spec['epochs']} "
             f"local epochs, batch {spec['batch']}, pathological split); {costs.device}; an estimate, not a "
             f"measurement", "",
             "| method | text token rows per step: fast (all clients) / reference (per pass x passes) | "
             "fast s | fast, clients one after another s | reference s | reference / fast |",
             "|---|---|---|---|---|---|"]
    for method in methods:
        shape = bench_paper_shape(method)
        p = shape.cost
        fast = estimate(shape, costs, "fast").train
        sequential = estimate(shape, costs, "fast", batch_clients=False).train
        reference = estimate(shape, costs, "reference").train
        clients = spec["clients"] if p.batchable else 1
        rows_fast = text_rows(shape, "fast", shape.classes, p.context_sets * clients, shape.batch)
        rows_ref = f"{text_rows(shape, 'reference', shape.classes):.0f} x {p.ref_passes}"
        lines.append(f"| {method} | {rows_fast:.0f} / {rows_ref} | {fast:.3f} | {sequential:.3f} | "
                     f"{reference:.3f} | {reference / fast:.1f}x |")
    lines += ["", f"prompt suffix {shape.suffix} tokens (the toy world's '<colour> <shape>.' + EOS); "
                  f"bench/run.py measures the same on a GPU"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--costs", default=None, help=f"per-operation cost file (default {os.path.relpath(DEFAULT_COSTS)})")
    p.add_argument("--bench-paper", action="store_true",
                   help="print the estimated seconds per round of bench/run.py's paper size (PromptFL, FedPGP, "
                        "FedTV; fast vs reference) instead of the tables' hours")
    args = p.parse_args(argv)
    try:
        costs = load_costs(args.costs)
        print(bench_paper_table(costs) if args.bench_paper else scripts_table(costs))
    except CostsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
