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
import logging
import os

from federated.config import (
    REPO_ROOT,
    backbone_slug,
    bundled_input_size,
    default_trainer_config,
    merge_file,
    merge_list,
)
from federated.errors import ConfigError

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

    def flag(name: str, **kw) -> None:
        dashed, under = f"--{name.replace('_', '-')}", f"--{name}"
        names = [dashed] if dashed == under else [dashed, under]
        p.add_argument(*names, dest=name, default=None, **kw)

    flag("root", help="data root holding the datasets (default DATA/)")
    flag("dataset_config_file", help="dataset yaml (default: the toy world demo)")
    flag("config_file", help="trainer yaml (default: configs/trainers/<TRAINER>/<backbone>.yaml when it exists)")
    flag("trainer", help="trainer name: ZeroshotCLIP, CoOp, PromptFL, ... (default PromptFL)")
    flag("backbone", help="RN50, RN101, ViT-B/32, ViT-B/16, ViT-L/14 or tiny (default tiny)")
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
    p.add_argument("--eval-only", "--eval_only", dest="eval_only", type=str2bool, default=False,
                   help="evaluate the checkpoint in --model-dir instead of training")
    flag("model_dir", help="output dir of a finished run, for --eval-only")
    p.add_argument("--resume", type=str2bool, default=False,
                   help="continue the run in --output-dir from its last finished round")
    p.add_argument("--reference-mode", "--reference_mode", dest="reference_mode", type=str2bool, default=None,
                   help="run the published way (no feature cache, clients one after another, fp32): "
                        "FED.REFERENCE_MODE, for speed measurements and as the correctness baseline")
    p.add_argument("--engine", choices=ENGINES, default="inprocess",
                   help="inprocess (default) or flower-sim: the same run through Flower's simulation "
                        "(pip install -r requirements-flower.txt; see docs/FLOWER_USAGE.md)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides, applied last")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(explicit_booleans(list(argv)))


def build_cfg(args: argparse.Namespace):
    """Resolve the config: defaults -> dataset yaml -> trainer yaml -> flags -> opts."""
    from dassl.engine import TRAINER_REGISTRY
    from federated.config import get_cfg

    cfg = get_cfg()
    merge_file(cfg, args.dataset_config_file or DEMO_DATASET_CONFIG)
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
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
    native = bundled_input_size(cfg.MODEL.BACKBONE.NAME)
    if native is not None and tuple(cfg.INPUT.SIZE) != (native, native):
        # a bundled ViT (tiny) only takes its own input size; the real datasets' yamls say 224
        logging.getLogger("fedtv").info("INPUT.SIZE %s -> (%d, %d) for backbone %s", tuple(cfg.INPUT.SIZE), native,
                                        native, cfg.MODEL.BACKBONE.NAME)
        cfg.INPUT.SIZE = (native, native)
    if cfg.TRAINER.NAME not in TRAINER_REGISTRY:
        raise ConfigError(f"unknown trainer '{cfg.TRAINER.NAME}'; registered trainers: "
                          f"{', '.join(TRAINER_REGISTRY.registered_names())}")
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = os.path.join(
            "output", cfg.DATASET.NAME, cfg.TRAINER.NAME,
            f"{backbone_slug(cfg.MODEL.BACKBONE.NAME)}_{cfg.DATASET.SUBSAMPLE_CLASSES}_{cfg.DATASET.PARTITION}_"
            f"{cfg.DATASET.USERS}users_{cfg.DATASET.NUM_SHOTS}shots_seed{cfg.SEED}",
        )
    if args.eval_only and args.output_dir is None and args.model_dir:
        cfg.OUTPUT_DIR = args.model_dir
    cfg.freeze()
    return cfg
