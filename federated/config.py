"""The full FedTV config: Dassl's key tree plus the federated keys, every trainer's and dataset's node.

Merge order (``build_cfg``): defaults -> dataset yaml -> trainer yaml -> command-line flags -> ``opts``.
Unknown keys, in a yaml file or in ``opts``, raise ``ConfigError`` naming the key and the valid ones.
"""
from __future__ import annotations

import difflib
import os
import sys

from yacs.config import CfgNode as CN

from dassl.config import get_cfg_default
from federated.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_federated_keys(cfg: CN) -> None:
    """Add the keys of federated runs (defaults follow the published FedPGP/FedTV scripts)."""
    cfg.OUTPUT_DIR = ""  # "" = output/<dataset>/<trainer>/<setting>_seed<seed>
    cfg.SEED = 1
    cfg.MODEL.BACKBONE.NAME = "tiny"
    # "" = the backbone's default weights (open_clip tag ``openai`` for real CLIPs, the shipped
    # toy-world weights for ``tiny``); a tag, a local file, or ``none`` (random, tests only).
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    cfg.DATASET.NAME = "ToyWorld"
    cfg.DATASET.ROOT = "DATA/"
    cfg.DATASET.NUM_SHOTS = 16
    cfg.DATASET.USERS = 10
    cfg.DATASET.PARTITION = "pathological"
    cfg.DATASET.BETA = 0.3
    cfg.DATASET.SPLIT_SEED = 2023
    cfg.DATASET.SUBSAMPLE_CLASSES = "base"
    # Where the pathological split of a base-to-novel run draws each client's K shots from
    # (federated/data.py): "coop" = the published pipeline (CoOp's K-shot subset of the whole train
    # split drawn with the run seed SEED, then the class assignment with SPLIT_SEED); "full" = the whole
    # train split with SPLIT_SEED only (the same images for every run seed; FedPGP's OxfordPets loader).
    cfg.DATASET.FEWSHOT_POOL = "coop"
    # domain protocols (federated/data.py): clients per domain, Dirichlet label skew inside a domain,
    # the held-out domain of leave-one-domain-out (name or index; "" = none) and whether its train
    # split joins its test split; a split.json to load instead of partitioning ("" = partition).
    cfg.DATASET.SPLIT_CLIENT = 1
    cfg.DATASET.IMBALANCE_TRAIN = False
    cfg.DATASET.TARGET_DOMAIN = ""
    cfg.DATASET.TARGET_USE_TRAIN = False
    cfg.DATASET.SPLIT_FILE = ""
    # class-chunks partition (federated/mixture.py, FedTPG's protocol): the datasets whose (base) classes are
    # cut into clients of CLASSES_PER_CLIENT consecutive classes ([] = DATASET.NAME alone; "Name/domain" = one
    # domain of a multi-domain dataset); each client has its own label space
    cfg.DATASET.MIXTURE = []
    cfg.DATASET.CLASSES_PER_CLIENT = 20
    cfg.OPTIM.ROUND = 10
    cfg.OPTIM.MAX_EPOCH = 2
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = 0.001
    # a constant learning rate: the published federated codes pass --gamma 1 to Dassl's single_step
    # schedule (Dassl's own default 0.1 decays it by 10 after MAX_EPOCH epochs, which a shared
    # optimiser, FED.SHARED_OPTIMIZER, would reach after the first client)
    cfg.OPTIM.GAMMA = 1.0
    # False: each client's LR schedule runs over its local epochs of a round (fresh per round); True: one
    # schedule over ROUND x MAX_EPOCH epochs that each round continues (FedTPG's per-client cosine over the
    # rounds; trainers/base.py local_schedule)
    cfg.OPTIM.SCHEDULE_OVER_ROUNDS = False
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.EVAL_FREQ = 1
    cfg.FED = CN()
    cfg.FED.FRAC = 1.0  # fraction of clients sampled per round (round 1 trains every client)
    cfg.FED.ALL_CLIENTS_FIRST_ROUND = True
    # Clients that never train and are not evaluated: [] (default); [5] is the published FedPGP `fedavg` /
    # `local` loops' leftover `idxs_users.pop(5)` (its PromptFL and local CoOp baselines).
    cfg.FED.EXCLUDE_CLIENTS = []
    # "" = the trainer's own aggregator; "fedavg" forces data-size-weighted FedAvg, "fedavg_uniform" the
    # unweighted mean (federated/aggregation.py)
    cfg.FED.AGGREGATION = ""
    cfg.FED.EVAL_BASE_NOVEL = True  # evaluate Base/Novel accuracy in base-to-novel runs
    cfg.FED.ZS_REFERENCE = True  # evaluate hand-crafted-prompt zero-shot CLIP once before training
    cfg.FED.SHOW_PROGRESS = True
    # Frozen image features of training images: V augmented views per image, encoded once and cached
    # on disk (federated/feature_cache.py). Off: every step encodes freshly augmented images.
    cfg.FED.FEATURE_CACHE = True
    cfg.FED.CACHE_VIEWS = 8
    cfg.FED.CACHE_DIR = ""  # "" = $FEDTV_CACHE/features or ~/.cache/fedtv/features
    cfg.FED.CACHE_SEED = 0
    # Train the sampled clients of a round together (federated/batched.py): stacked per-client tensors,
    # one vmapped step (one text-tower pass for all clients), masked elementwise optimiser. Same results
    # as sequential training up to floating-point order; trainers that do not qualify are trained one
    # after another (logged, and recorded in results.json "execution").
    cfg.FED.BATCH_CLIENTS = True
    # At most this many clients per vmapped pass (0: all of the round's clients at once). Lower it when
    # many clients x classes do not fit in memory (e.g. 1000 clients of ViT-B/16); exact either way.
    cfg.FED.BATCH_CLIENTS_CHUNK = 0
    # The published codes' single optimiser (momentum buffers, LR schedule) created once and shared by
    # every client and round (docs/PUBLISHED_CODE.md: momentum leaks between clients). Off: a fresh
    # optimiser per client per round. For comparisons with the published numbers; sequential clients
    # only, per process (each Flower node has its own), not saved in checkpoints.
    cfg.FED.SHARED_OPTIMIZER = False
    # Each client keeps its own optimiser state (momentum buffers) from one round to the next, as FedTPG's
    # clients do (one optimiser per client, T_max over the rounds). In memory only: not in checkpoints
    # (a resumed run starts every client's momentum afresh); sequential clients only.
    cfg.FED.CLIENT_OPTIMIZER_STATE = False
    # The published way of running, for measurement and as the correctness baseline: no feature cache
    # (training or evaluation), clients one after another, fp32.
    cfg.FED.REFERENCE_MODE = False


def get_cfg() -> CN:
    """The default config with every registered trainer's and dataset's node."""
    import datasets  # noqa: F401  (registers the datasets)
    import trainers  # noqa: F401  (registers the trainers)
    from dassl.data.datasets import DATASET_REGISTRY
    from dassl.engine import TRAINER_REGISTRY

    cfg = get_cfg_default()
    add_federated_keys(cfg)
    cfg.TRAINER.NAME = "FedTV"
    # Each trainer class, and each dataset class or its module, may define ``extend_cfg(cfg)``.
    hooks = []
    for registry in (TRAINER_REGISTRY, DATASET_REGISTRY):
        for name in registry.registered_names():
            obj = registry.get(name)
            hook = getattr(obj, "extend_cfg", None) or getattr(sys.modules[obj.__module__], "extend_cfg", None)
            if hook is not None and hook not in hooks:
                hooks.append(hook)
    for hook in hooks:
        hook(cfg)
    return cfg


def _explain_unknown_key(cfg: CN, message: str, source: str) -> ConfigError:
    """Turn yacs' 'Non-existent config key: A.B' into a message listing the valid keys at that level."""
    key = message.split(":", 1)[-1].strip().strip("'\"")
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        if isinstance(node, CN) and part in node:
            node = node[part]
        else:
            break
    valid = sorted(node.keys()) if isinstance(node, CN) else []
    close = difflib.get_close_matches(parts[-1], valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}.{hint} Valid keys there: {', '.join(valid)}")


YAML_SUFFIXES = (".yaml", ".yml")


def _read_yaml(path: str) -> CN:
    """The yaml file ``path`` as a config node: ``yaml.safe_load`` only (data, never code: a ``.py``
    config, which yacs would import and run, is refused), with file, line and column on a syntax error."""
    import yaml

    if not path.lower().endswith(YAML_SUFFIXES):
        raise ConfigError(f"config file {path}: only YAML files (.yaml, .yml) are accepted (a Python config "
                          f"file would be executed)")
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"YAML syntax error in {where} (file:line:column): {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the config file {path}: {err}") from None
    if loaded is None:
        return CN()
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold KEY: value mappings, not a {type(loaded).__name__}")
    try:
        return CN(loaded)
    except AssertionError as err:  # yacs refuses a value type (e.g. a set)
        raise ConfigError(f"bad value in {path}: {err}") from None


def merge_file(cfg: CN, path: str) -> None:
    """Merge a yaml file into ``cfg`` with clear errors for a missing file, a non-YAML file, a YAML
    syntax error (file, line, column) or unknown keys."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    loaded = _read_yaml(path)
    try:
        cfg.merge_from_other_cfg(loaded)
    except KeyError as err:
        raise _explain_unknown_key(cfg, str(err.args[0] if err.args else err), path) from None
    except ValueError as err:
        raise ConfigError(f"bad value in {path}: {err}") from None


def check_finite(cfg: CN, prefix: str = "") -> None:
    """Every float in ``cfg`` is finite: a NaN or infinite value (``OPTIM.LR .nan``) is a ``ConfigError``
    naming the key (it would make the run meaningless and ``results.json`` invalid JSON)."""
    import math

    for key, value in cfg.items():
        name = f"{prefix}{key}"
        values = value if isinstance(value, tuple | list) else [value]
        if isinstance(value, CN):
            check_finite(value, f"{name}.")
        elif any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{name} is {value}: config values must be finite numbers")


def _lookup(cfg: CN, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            return None
        node = node[part]
    return node


def _widen_numbers(cfg: CN, opts: list[str]) -> list[str]:
    """Let an integer literal set a float key (``MU 0`` means ``MU 0.0``; yacs alone refuses it)."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        if isinstance(_lookup(cfg, out[i]), float) and isinstance(out[i + 1], str):
            try:
                out[i + 1] = repr(float(int(out[i + 1])))
            except ValueError:
                pass
    return out


def _keep_strings(cfg: CN, opts: list[str]) -> list[str]:
    """A string key takes its value as written: ``--target-domain 2`` / ``OUTPUT_DIR 2024`` are the strings
    "2" / "2024" (yacs' literal evaluation alone would make them numbers and refuse them)."""
    from ast import literal_eval

    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        if isinstance(_lookup(cfg, out[i]), str) and isinstance(out[i + 1], str):
            try:
                literal = literal_eval(out[i + 1])
            except (ValueError, SyntaxError):
                continue  # yacs keeps a value it cannot evaluate as the string itself
            if not isinstance(literal, str):
                out[i + 1] = repr(out[i + 1])
    return out


def merge_list(cfg: CN, opts: list[str], source: str = "opts") -> None:
    """Merge ``[KEY, VALUE, ...]`` overrides with clear errors."""
    if len(opts) % 2:
        raise ConfigError(f"{source} must be KEY VALUE pairs, got an odd number of items: {opts}")
    opts = _keep_strings(cfg, _widen_numbers(cfg, opts))
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as err:
        raise _explain_unknown_key(cfg, str(err.args[0] if err.args else err), source) from None
    except ValueError as err:
        raise ConfigError(f"bad value in {source}: {err}") from None


def default_output_dir(cfg: CN) -> str:
    """``output/<dataset>/<trainer>/<backbone>_<subsample>_<partition>_<clients>_<shots>shots_seed<S>``;
    ``<clients>`` is ``<USERS>users``, or for the domain partition (where ``DATASET.USERS`` is ignored)
    ``<SPLIT_CLIENT>perdomain``, plus ``_lodo-<domain>`` when a domain is held out."""
    d = cfg.DATASET
    domain = str(d.PARTITION).strip().lower() == "domain"
    clients = f"{int(d.SPLIT_CLIENT)}perdomain" if domain else f"{d.USERS}users"
    held_out = f"_lodo-{d.TARGET_DOMAIN}" if d.TARGET_DOMAIN else ""
    return os.path.join("output", d.NAME, cfg.TRAINER.NAME,
                        f"{backbone_slug(cfg.MODEL.BACKBONE.NAME)}_{d.SUBSAMPLE_CLASSES}_{d.PARTITION}_{clients}"
                        f"{held_out}_{d.NUM_SHOTS}shots_seed{cfg.SEED}")


def backbone_slug(name: str) -> str:
    """``ViT-B/16`` -> ``vit_b16``, ``RN50`` -> ``rn50``, ``tiny`` -> ``tiny`` (trainer config file names)."""
    return name.lower().replace("vit-", "vit_").replace("/", "").replace("-", "")


def native_input_size(backbone: str) -> int | None:
    """Input side in pixels of CLIP ``backbone``, read from its model config without importing torch: a
    bundled one (``clip/model_configs/<slug>.json``, e.g. 32 for ``tiny``) or open_clip's (224 for ViT-B/16
    and RN50, 336 for ``ViT-L/14@336px``); None when neither is found (the config's INPUT.SIZE stays)."""
    import importlib.util
    import json
    import re

    paths = [os.path.join(REPO_ROOT, "clip", "model_configs", f"{backbone_slug(backbone)}.json")]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        name = re.sub(r"@(\d+)px$", r"-\1", backbone, flags=re.IGNORECASE).replace("/", "-")
        paths.append(os.path.join(list(spec.submodule_search_locations)[0], "model_configs", f"{name}.json"))
    for path in paths:
        if os.path.isfile(path):
            with open(path) as f:
                size = json.load(f).get("vision_cfg", {}).get("image_size")
            return int(size) if isinstance(size, int) else None
    return None


def default_trainer_config(trainer: str, backbone: str) -> str | None:
    """``configs/trainers/<trainer>/<backbone slug>.yaml`` when it exists."""
    path = os.path.join(REPO_ROOT, "configs", "trainers", trainer, f"{backbone_slug(backbone)}.yaml")
    return path if os.path.isfile(path) else None
