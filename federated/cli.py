"""FedTV command line (``python federated_main.py``): argparse -> yacs config; ``federated/run.py`` runs
it (a federated run, or ``--eval-only`` re-evaluation).

With no arguments it runs the offline demo: the toy world, the shipped pretrained ``tiny`` CLIP,
the base-to-novel protocol, a handful of clients and rounds, and prints Local / Base / Novel / HM
per round. Every flag maps to a config key and only changes that key; ``opts`` (``KEY VALUE``
pairs at the end of the command) override everything else. The published scripts' underscore
spellings (``--num_users``, ``--local_epoch``...) are accepted too.

Examples:
    python federated_main.py
    python federated_main.py --trainer CoOp
    python federated_main.py --root DATA/ --dataset-config-file configs/datasets/oxford_pets.yaml \\
        --config-file configs/trainers/PromptFL/vit_b16.yaml --num-users 10 OPTIM.LR 0.002
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass

from yacs.config import CfgNode as CN

from dassl.config import ignored_keys_set
from federated.config import (
    REPO_ROOT,
    check_finite,
    default_output_dir,
    default_trainer_config,
    merge_file,
    merge_list,
    native_input_size,
)
from federated.errors import ConfigError
from federated.names import PARTITIONS, SUBSAMPLE_CHOICES, canonical_partition

DEMO_DATASET_CONFIG = os.path.join(REPO_ROOT, "configs", "datasets", "toyworld.yaml")

# flag -> (config key, type). Flags default to None: only a flag that is given changes its key.
FLAG_KEYS = {
    "root": ("DATASET.ROOT", str),
    "trainer": ("TRAINER.NAME", str),
    "backbone": ("MODEL.BACKBONE.NAME", str),
    "clip_weights": ("MODEL.BACKBONE.WEIGHTS", str),
    "num_users": ("DATASET.USERS", int),
    "rounds": ("OPTIM.ROUND", int),
    "local_epochs": ("OPTIM.MAX_EPOCH", int),
    "frac": ("FED.FRAC", float),
    "num_shots": ("DATASET.NUM_SHOTS", int),
    "partition": ("DATASET.PARTITION", str),
    "beta": ("DATASET.BETA", float),
    "subsample": ("DATASET.SUBSAMPLE_CLASSES", str),
    "split_seed": ("DATASET.SPLIT_SEED", int),
    "target_domain": ("DATASET.TARGET_DOMAIN", str),
    "split_file": ("DATASET.SPLIT_FILE", str),
    "seed": ("SEED", int),
    "output_dir": ("OUTPUT_DIR", str),
    "lr": ("OPTIM.LR", float),
    "train_batch_size": ("DATALOADER.TRAIN_X.BATCH_SIZE", int),
    "test_batch_size": ("DATALOADER.TEST.BATCH_SIZE", int),
}


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value: true/false, yes/no, 1/0 (``"False"`` is False, unlike ``bool("False")``)."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got '{value}'")


ENGINES = ("inprocess", "flower-sim")
BOOL_FLAGS = ("--eval-only", "--eval_only", "--resume", "--reference-mode", "--reference_mode")
_BOOL_WORDS = ("1", "true", "t", "yes", "y", "on", "0", "false", "f", "no", "n", "off")


def explicit_booleans(argv: list[str]) -> list[str]:
    """Give every boolean flag an explicit value (``--resume`` -> ``--resume true``), so that a bare flag
    never swallows the next argument and ``--resume False`` still works as the published scripts write it."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in BOOL_FLAGS:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.strip().lower() not in _BOOL_WORDS:
                out.append("true")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    # a boolean flag alone means true; explicit_booleans() has already given it a value
    BOOL = {"nargs": "?", "const": True, "metavar": "true|false"}

    def flag(name: str, **kw) -> None:
        dashed, under = f"--{name.replace('_', '-')}", f"--{name}"
        names = [dashed] if dashed == under else [dashed, under]
        p.add_argument(*names, dest=name, default=None, **kw)

    flag("root", help="data root holding the datasets (default DATA/)")
    flag("dataset_config_file", help="dataset yaml (default: the toy world demo)")
    flag("config_file", help="trainer yaml (default: configs/trainers/<TRAINER>/<backbone>.yaml when it exists)")
    flag("trainer", help="trainer name: FedTV, FedPGP, PromptFL, CoOp, ZeroshotCLIP, ... (default FedTV)")
    flag("backbone", help="RN50, RN101, ViT-B/32, ViT-B/16, ViT-L/14 (or vit_b16 ...) or tiny (default tiny)")
    flag("clip_weights", help="open_clip pretrained tag (e.g. openai), a local checkpoint file, or none (random)")
    flag("num_users", type=int, help="number of clients")
    flag("rounds", type=int, help="communication rounds (OPTIM.ROUND)")
    p.add_argument("--local-epochs", "--local_epochs", "--local_epoch", dest="local_epochs", type=int, default=None,
                   help="local epochs per round (OPTIM.MAX_EPOCH)")
    flag("frac", type=float, help="fraction of clients sampled per round after the first")
    flag("num_shots", type=int, help="training images per class per client (<= 0: all)")
    flag("partition", help="pathological, dirichlet (noniid-labeldir), iid (homo), hierarchical-dirichlet, domain")
    flag("beta", type=float, help="Dirichlet concentration")
    flag("subsample", help="all, base or new (base-to-novel protocol)")
    flag("split_seed", type=int, help="seed of the client partition (published: 2023 for every run)")
    flag("target_domain", help="leave-one-domain-out: hold this domain out of training, test every client on it")
    flag("split_file", help="split.json of an earlier run (OUTPUT_DIR/split.json): reuse its exact client split")
    flag("seed", type=int, help="seed of training (prompt init, sampling, shuffling)")
    flag("output_dir", help="where results, logs and checkpoints go")
    flag("lr", type=float, help="learning rate (OPTIM.LR)")
    flag("train_batch_size", type=int, help="training batch size")
    flag("test_batch_size", type=int, help="evaluation batch size")
    p.add_argument("--eval-only", "--eval_only", dest="eval_only", type=str2bool, default=False, **BOOL,
                   help="evaluate the checkpoint in --model-dir instead of training")
    flag("model_dir", help="output dir of a finished run, for --eval-only")
    p.add_argument("--resume", type=str2bool, default=False, **BOOL,
                   help="continue the run in --output-dir from its last finished round")
    p.add_argument("--reference-mode", "--reference_mode", dest="reference_mode", type=str2bool, default=None, **BOOL,
                   help="run the published way (no feature cache, clients one after another, fp32): "
                        "FED.REFERENCE_MODE, for speed measurements and as the correctness baseline")
    p.add_argument("--engine", choices=ENGINES, default="inprocess",
                   help="inprocess (default) or flower-sim: the same run through Flower's simulation "
                        "(pip install -r requirements-flower.txt; see docs/FLOWER_USAGE.md)")
    p.add_argument("--verbose", action="store_true",
                   help="also print each client's accuracies and the per-client details on the console "
                        "(always in OUTPUT_DIR/log.txt)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides, applied last (after every flag)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(explicit_booleans(list(argv)))


@dataclass
class Known:
    """What a config is checked against: the default config tree (mutable) and the accepted names."""

    cfg: CN
    trainers: list[str]
    datasets: list[str]
    backbones: list[str]
    transforms: list[str]
    interpolations: list[str]


def known(live: bool = True) -> Known:
    """The registries' defaults and names. ``live=False`` reads them from ``federated/catalog.json``
    (no torch) unless this process has torch already (tests, tools): then the live registries, which
    may hold more than the catalogue (a test's own dataset or trainer)."""
    if not live and "torch" not in sys.modules:
        from federated import catalog

        c = catalog.load()
        return Known(catalog.default_cfg(c), c["trainers"], c["datasets"], c["backbones"], c["transforms"],
                     c["interpolations"])
    from clip.names import PAPER_BACKBONES, local_model_names, supported_backbones
    from dassl.data.datasets import DATASET_REGISTRY
    from dassl.data.transforms import AVAI_CHOICES, INTERPOLATION_MODES
    from dassl.engine import TRAINER_REGISTRY
    from federated.config import get_cfg

    return Known(get_cfg(), TRAINER_REGISTRY.registered_names(), DATASET_REGISTRY.registered_names(),
                 [*PAPER_BACKBONES, *local_model_names(), *supported_backbones()], list(AVAI_CHOICES),
                 list(INTERPOLATION_MODES))


def _did_you_mean(name: str, choices: list[str], key=str.lower) -> str:
    """`` Did you mean X?`` for the choices closest to ``name`` compared as ``key(...)``, or ``""``."""
    keyed = {}
    for c in choices:
        keyed.setdefault(key(c), c)
    close = [key(name)] if key(name) in keyed else difflib.get_close_matches(key(name), list(keyed), n=3, cutoff=0.7)
    return f" Did you mean {' or '.join(keyed[c] for c in close)}?" if close else ""


def _backbone_key(name: str) -> str:
    """A backbone name without case or punctuation: ``ViT-B/16``, ``ViT-B-16`` and ``vit_b16`` -> ``vitb16``."""
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("@", "").replace("px", ""))


def resolve_backbone(name: str, backbones: list[str]) -> str:
    """``name`` when it is a known backbone, else the known spelling it abbreviates (``vit_b16`` ->
    ``ViT-B/16``, as the config file names spell it); ``ConfigError`` with close names otherwise."""
    if name in backbones:
        return name
    for b in backbones:
        if _backbone_key(b) == _backbone_key(name):
            return b
    close = _did_you_mean(name, backbones, _backbone_key)
    raise ConfigError(f"unknown backbone '{name}'.{close} The papers' backbones: RN50, RN101, ViT-B/32, ViT-B/16, "
                      f"ViT-L/14; the toy world's: tiny; any open_clip CLIP name")


def _check_opts(opts: list[str]) -> None:
    """Overrides come last: a flag among them was meant as a flag."""
    for i in range(0, len(opts), 2):
        if opts[i].startswith("--"):
            raise ConfigError(f"'{opts[i]}' comes after the KEY VALUE overrides ({' '.join(opts[:i]) or opts[0]}): "
                              f"flags go before the overrides")


def _merge_dataset_file(cfg: CN, path: str) -> None:
    if not os.path.isfile(path):
        folder = os.path.join(REPO_ROOT, "configs", "datasets")
        names = sorted(os.path.relpath(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".yaml"))
        raise ConfigError(f"dataset config file not found: {path}. Available: {', '.join(names)}")
    merge_file(cfg, path)


def _check_values(cfg: CN, k: Known) -> None:
    """Names inside the config: dataset, partition, subsample, image transforms and interpolation."""
    if cfg.DATASET.NAME not in k.datasets:
        raise ConfigError(f"unknown dataset '{cfg.DATASET.NAME}'.{_did_you_mean(cfg.DATASET.NAME, k.datasets)} "
                          f"Registered: {', '.join(k.datasets)}")
    try:
        canonical_partition(cfg.DATASET.PARTITION)
    except ValueError as err:
        raise ConfigError(f"{err}.{_did_you_mean(str(cfg.DATASET.PARTITION), list(PARTITIONS))}") from None
    if cfg.DATASET.SUBSAMPLE_CLASSES not in SUBSAMPLE_CHOICES:
        value = cfg.DATASET.SUBSAMPLE_CLASSES
        raise ConfigError(f"--subsample '{value}' is not one of {', '.join(SUBSAMPLE_CHOICES)} (base-to-novel: train "
                          f"on base, evaluate on the novel classes with new)")
    for name in cfg.INPUT.TRANSFORMS:
        if name not in k.transforms:
            close = _did_you_mean(str(name), k.transforms)
            raise ConfigError(f"unknown transform '{name}' in INPUT.TRANSFORMS.{close} "
                              f"Valid: {', '.join(k.transforms)} (without a random crop the training images are "
                              f"resized and centre-cropped)")
    if cfg.INPUT.INTERPOLATION not in k.interpolations:
        value = cfg.INPUT.INTERPOLATION
        raise ConfigError(f"unknown INPUT.INTERPOLATION '{value}'.{_did_you_mean(str(value), k.interpolations)} "
                          f"Valid: {', '.join(k.interpolations)}")


def build_cfg(args: argparse.Namespace, k: Known | None = None, warn: bool = True):
    """Resolve the config: defaults -> dataset yaml -> trainer yaml -> flags -> opts, checking every name
    and key on the way (``k``: what to check against; default the live registries). With ``warn``, one
    warning line names the Dassl keys set that FedTV accepts but ignores (``dassl.config.IGNORED_KEYS``)."""
    k = k or known(live=True)
    cfg = k.cfg
    _check_opts(list(args.opts or []))
    _merge_dataset_file(cfg, args.dataset_config_file or DEMO_DATASET_CONFIG)
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if cfg.TRAINER.NAME not in k.trainers:
        raise ConfigError(f"unknown trainer '{cfg.TRAINER.NAME}'.{_did_you_mean(cfg.TRAINER.NAME, k.trainers)} "
                          f"Registered trainers: {', '.join(k.trainers)}")
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = resolve_backbone(args.backbone, k.backbones)
    trainer_cfg = args.config_file or default_trainer_config(cfg.TRAINER.NAME, cfg.MODEL.BACKBONE.NAME)
    if trainer_cfg:
        merge_file(cfg, trainer_cfg)
    for name, (key, _) in FLAG_KEYS.items():
        value = getattr(args, name, None)
        if value is not None:
            merge_list(cfg, [key, str(value)], source=f"--{name.replace('_', '-')}")
    if args.reference_mode is not None:
        merge_list(cfg, ["FED.REFERENCE_MODE", str(bool(args.reference_mode))], source="--reference-mode")
    merge_list(cfg, list(args.opts or []))
    cfg.MODEL.BACKBONE.NAME = resolve_backbone(cfg.MODEL.BACKBONE.NAME, k.backbones)
    _check_values(cfg, k)
    check_finite(cfg)
    ignored = ignored_keys_set(cfg)
    if warn and ignored:
        logging.getLogger("fedtv").warning("config keys accepted for Dassl / CoOp files but ignored by FedTV: %s",
                                           ", ".join(ignored))
    native = native_input_size(cfg.MODEL.BACKBONE.NAME)
    if native is not None and tuple(cfg.INPUT.SIZE) != (native, native):
        # a CLIP image tower only takes its own input size: tiny 32 where the real datasets' yamls say 224,
        # ViT-B/16 or RN50 224 on the toy world's 32 px images (resized), ViT-L/14@336px 336
        logging.getLogger("fedtv").info("INPUT.SIZE %s -> (%d, %d) for backbone %s", tuple(cfg.INPUT.SIZE), native,
                                        native, cfg.MODEL.BACKBONE.NAME)
        cfg.INPUT.SIZE = (native, native)
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = default_output_dir(cfg)
    if args.eval_only and args.output_dir is None and args.model_dir:
        cfg.OUTPUT_DIR = args.model_dir
    cfg.freeze()
    return cfg


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no torch, before anything is imported or built: the flags' combinations,
    every name and config key (against ``federated/catalog.json``), the eval-only folder."""
    if args.eval_only and not args.model_dir:
        raise ConfigError("--eval-only needs --model-dir DIR (the OUTPUT_DIR of a finished run)")
    if args.eval_only and not os.path.exists(args.model_dir):
        raise ConfigError(f"--model-dir {args.model_dir} does not exist: pass the OUTPUT_DIR of a finished run")
    if args.eval_only and args.engine == "flower-sim":
        raise ConfigError("--engine flower-sim trains: --eval-only uses --engine inprocess")
    if args.engine == "flower-sim" and importlib.util.find_spec("flwr") is None:
        raise ConfigError("--engine flower-sim needs Flower: pip install -r requirements-flower.txt")
    build_cfg(args, known(live=False), warn=False)
