"""Estimated wall time of the table scripts' runs on one GPU, from per-operation costs (not a measurement).

    python -m tools.gpu_time                       # every script's paper grid, as a Markdown table
    python -m tools.gpu_time --costs my_gpu.json   # with your own measured per-operation costs
    python scripts/table1_base2novel.py --estimate # per-run and total hours of one script's selection

A run's time is counted from its resolved config (``federated_main.build_cfg``: trainer, rounds, local
epochs, clients, fraction sampled, shots, batch size, base / all classes, evaluation frequency) and the
dataset's size (``datasets/sizes.py``), with the per-operation costs of ``bench/gpu_costs.json`` (issue 8's
H100 timings; the file's ``source`` says which numbers are measured and which are assumptions). Two modes:

* **fast** (FedTV's way): image features cached once -- ``FED.CACHE_VIEWS`` augmented views of every
  training image and every test image through the frozen image tower in bf16 -- then every training
  step is the text tower only (bf16); FedPGP / FedTV encode their ``2C`` trainable prompts in one pass
  (the hand-crafted ``z_C`` once). With ``FED.BATCH_CLIENTS`` (and a method that allows it) the clients
  of a round share one text pass per step; otherwise they train one after another. A cache is paid once
  per image set: runs over the same images (seeds, methods) share it, so a table's total counts it once.
* **reference** (the published way, ``--reference-mode``): every step pushes its batch through the image
  tower in fp32 and runs the text passes of the published code (PromptFL / CoOp: one pass of ``C``
  prompts; FedPGP and FedTV: four passes of ``C`` -- z_C, z_G, the unused z_UV, z_i; REFERENCE.md
  section 10); clients one after another; evaluation re-encodes the test images.

Per step: ``text(P) + image + overhead`` where ``text(P)`` interpolates the measured forward+backward
time of ``P`` prompts (:meth:`Costs.text`). Evaluations: each client (each model: once when every client
holds the same model) on its local test split and, in base-to-novel runs, on every base and novel test
image: one text forward over the set's class prompts (+ the images in reference mode). ``FED.ZS_REFERENCE``
adds one zero-shot evaluation. Not modelled: data loading, Python overhead beyond ``step_overhead_ms``,
the server's aggregation, uneven client sizes (clients are equal shares of the data).
"""
from __future__ import annotations

import argparse
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


class CostsError(ValueError):
    """The per-operation cost file is missing, malformed or lacks what a run needs (the message says what)."""


# --------------------------------------------------------------------- per-operation costs
@dataclass(frozen=True)
class Costs:
    """Per-operation GPU costs (milliseconds) read from a JSON file (``bench/gpu_costs.json`` documents each)."""

    text_points: dict[str, list[tuple[float, float]]]  # precision -> [(prompts, ms forward+backward)], sorted
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

    def text(self, prompts: float, precision: str, backbone: str, forward_only: bool = False) -> float:
        """ms of one text-tower pass over ``prompts`` prompts (forward+backward, or forward only)."""
        if prompts <= 0:
            return 0.0
        pts = self.text_points[precision]
        if prompts <= pts[0][0] or len(pts) == 1:
            ms = pts[0][1] if prompts <= pts[0][0] else pts[0][1] * prompts / pts[0][0]
        else:
            i = next((j for j in range(1, len(pts)) if prompts <= pts[j][0]), len(pts) - 1)
            (x0, y0), (x1, y1) = pts[i - 1], pts[i]
            ms = y0 + (y1 - y0) * (prompts - x0) / (x1 - x0)
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
    for prec in ("bf16", "fp32"):
        pts = need("text_fwd_bwd_ms").get(prec) if isinstance(need("text_fwd_bwd_ms"), dict) else None
        if not isinstance(pts, list) or not pts or not all(isinstance(p, list) and len(p) == 2 for p in pts):
            raise CostsError(f"costs file {path}: text_fwd_bwd_ms.{prec} must be a list of [prompts, ms] pairs")
        pts = sorted((positive(n, f"text_fwd_bwd_ms.{prec} prompts"), positive(ms, f"text_fwd_bwd_ms.{prec} ms"))
                     for n, ms in pts)
        if len({n for n, _ in pts}) != len(pts):
            raise CostsError(f"costs file {path}: text_fwd_bwd_ms.{prec} lists a prompt count twice")
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

    ``prompts``: trainable prompts per class encoded per step on the fast path, in one pass (FedPGP /
    FedTV: 2 = z_G and z_i; FedOTP: its N prompts per class); ``ref_passes``: separate text passes of
    ``per_class x C`` prompts per step in the published code; ``per_image``: the prompts depend on the
    image (CoCoOp: ``B x C`` prompts per step, published as ``B`` passes of ``C``); ``text_per_step``:
    False when the class text features are fixed (linear head, feature adapters); ``text_weights``: the
    text tower's weights are trained; ``image_trainable``: the image path is prompted / adapted (not
    cacheable: forward+backward every step); ``personal``: clients hold different models (evaluated one
    by one); ``batchable``: ``federated/batched.batching_support`` accepts it; ``trains``: False for
    zero-shot (one evaluation round).
    """

    prompts: float = 1.0
    ref_passes: int = 1
    per_class: int = 1
    per_image: bool = False
    text_per_step: bool = True
    text_weights: bool = False
    image_trainable: bool = False
    personal: bool = False
    batchable: bool = True
    trains: bool = True


METHOD_COSTS: dict[str, MethodCost] = {
    "ZeroshotCLIP": MethodCost(trains=False, batchable=False),
    "CoOp": MethodCost(personal=True),
    "PromptFL": MethodCost(),
    "PromptProx": MethodCost(),
    "KgCoOp": MethodCost(),
    "FedCoCoOp": MethodCost(per_image=True),
    "FedOTP": MethodCost(prompts=2.0, per_class=2, personal=True),
    "FedMaPLe": MethodCost(image_trainable=True, batchable=False),
    "FedPGP": MethodCost(prompts=2.0, ref_passes=4, personal=True),
    "FedTV": MethodCost(prompts=2.0, ref_passes=4, personal=True),
    "FLoRA": MethodCost(batchable=False),
    "CELoRA": MethodCost(personal=True, batchable=False),
    "FedFFT": MethodCost(text_weights=True, batchable=False),
    "FedLC": MethodCost(text_per_step=False, batchable=False),
    "FedAA": MethodCost(text_per_step=False, batchable=False),
}


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
    """The :class:`RunShape` of a resolved config (``federated_main.build_cfg``)."""
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
                    cache_views=int(cfg.FED.CACHE_VIEWS), batched=bool(cfg.FED.BATCH_CLIENTS), cache_key=key,
                    notes=notes)


def shape_from_argv(argv: list[str]) -> RunShape:
    """The :class:`RunShape` of ``federated_main`` arguments (config files relative to the repository)."""
    from federated.config import ConfigError
    from federated_main import build_cfg, parse_args

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


def _step_ms(shape: RunShape, costs: Costs, mode: str, clients: int) -> float:
    """ms of one training step of ``clients`` clients trained together (1: one client alone)."""
    p, bb, c = shape.cost, shape.backbone, shape.classes
    if mode == "reference":
        prompts = p.per_class * c
        passes = p.ref_passes * (shape.batch if p.per_image else 1)
        text = passes * costs.text(prompts, "fp32", bb) if p.text_per_step else 0.0
        image = costs.image(shape.batch, "fp32", bb, backward=p.image_trainable)
    else:
        prompts = p.prompts * c * (shape.batch if p.per_image else 1) * clients
        text = costs.text(prompts, "bf16", bb) if p.text_per_step else 0.0
        image = costs.image(shape.batch * clients, "bf16", bb, backward=True) if p.image_trainable else 0.0
    if p.text_weights:
        text *= costs.text_weight_grad_factor
    return text + image + costs.step_overhead_ms


def _eval_ms(shape: RunShape, costs: Costs, mode: str, sets: list[EvalSet]) -> float:
    p, bb = shape.cost, shape.backbone
    prec = "fp32" if mode == "reference" else "bf16"
    ms = 0.0
    for s in sets:
        prompts = p.per_class * s.classes * (s.images if p.per_image else 1)
        per_model = costs.text(prompts, prec, bb, forward_only=True)
        if mode == "reference" or p.image_trainable:
            per_model += costs.image(s.images, prec, bb)
        ms += s.models * per_model
    return ms


def estimate(shape: RunShape, costs: Costs, mode: str, batch_clients: bool | None = None) -> Estimate:
    """Seconds of the run in ``mode`` (fast / reference); ``batch_clients`` overrides ``FED.BATCH_CLIENTS``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode}")
    p = shape.cost
    batched = (shape.batched if batch_clients is None else batch_clients) and p.batchable and mode == "fast"
    train_ms = 0.0
    if p.trains:
        users = len(shape.client_images)
        for k in shape.sampled:
            # all clients, or k average ones (a sample of the clients)
            sizes = shape.client_images if k == users else [sum(shape.client_images) / users] * k
            steps = [shape.steps(n) for n in sizes]
            train_ms += (max(steps) * _step_ms(shape, costs, mode, k) if batched
                         else sum(steps) * _step_ms(shape, costs, mode, 1))
    eval_ms = shape.eval_rounds * _eval_ms(shape, costs, mode, shape.eval_sets) + _eval_ms(shape, costs, mode,
                                                                                         shape.zero_shot)
    cache_ms = 0.0
    if mode == "fast" and not p.image_trainable:
        train_images = sum(shape.client_images) * shape.cache_views if p.trains else 0.0
        test_images = sum(s.images for s in shape.eval_sets)
        cache_ms = costs.image(train_images + test_images, "bf16", shape.backbone)
    return Estimate(cache_ms / 1000, train_ms / 1000, eval_ms / 1000)


# --------------------------------------------------------------------- grids of runs
@dataclass
class GridEstimate:
    """Per-run estimates of a grid and its totals (hours); the fast total counts each feature cache once."""

    rows: list[tuple[dict, dict[str, Estimate]]]
    hours: dict[str, float]
    notes: list[str]


def estimate_runs(runs, costs: Costs, batch_clients: bool | None = None,
                  shapes: list[RunShape] | None = None) -> GridEstimate:
    """Estimates of ``tools.experiments.Run`` s: ``rows`` = (run key, {mode: Estimate}), ``hours`` per mode.
    ``shapes``: the runs' shapes when already resolved (``shape_from_argv`` of each run)."""
    rows, seen, notes = [], set(), []
    total = dict.fromkeys(MODES, 0.0)
    for run, shape in zip(runs, shapes or [shape_from_argv(r.argv) for r in runs], strict=True):
        est = {m: estimate(shape, costs, m, batch_clients) for m in MODES}
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
    """Markdown: every script's paper grid with its estimated hours in both modes (and batched clients)."""
    lines = ["| script | runs | fast h | fast, `FED.BATCH_CLIENTS True` h | reference h | reference / fast |",
             "|---|---|---|---|---|---|"]
    totals = [0.0, 0.0, 0.0]
    notes: list[str] = []
    for path in script_paths():
        exp = load_script(path)
        runs = exp.runs(exp.parser().parse_args([]))
        shapes = [shape_from_argv(r.argv) for r in runs]
        plain = estimate_runs(runs, costs, shapes=shapes)
        batched = estimate_runs(runs, costs, batch_clients=True, shapes=shapes)
        hours = [plain.hours["fast"], batched.hours["fast"], plain.hours["reference"]]
        totals = [a + b for a, b in zip(totals, hours, strict=True)]
        notes += [n for n in plain.notes if n not in notes]
        lines.append(f"| `scripts/{os.path.basename(path)}` | {len(runs)} | {hours[0]:.1f} | {hours[1]:.1f} | "
                     f"{hours[2]:.1f} | {hours[2] / hours[0]:.1f}x |")
    lines.append(f"| **all tables** | | **{totals[0]:.1f}** | **{totals[1]:.1f}** | **{totals[2]:.1f}** | "
                 f"{totals[2] / totals[0]:.1f}x |")
    lines += ["", f"_Estimated from per-operation costs ({costs.device}; `{os.path.relpath(costs.path, REPO)}`), "
                  f"not measured: `python -m tools.gpu_time`._"]
    lines += [f"_{n}._" for n in notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--costs", default=None, help=f"per-operation cost file (default {os.path.relpath(DEFAULT_COSTS)})")
    args = p.parse_args(argv)
    try:
        print(scripts_table(load_costs(args.costs)))
    except CostsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
