"""Shadow-model membership inference against a finished run (DP-FPL's privacy evaluation).

    python -m tools.mia_shadow RUN_DIR                  # 4 shadow runs; the client with the most training data
    python -m tools.mia_shadow RUN_DIR --shadows 8 --all-clients --out mia_shadow_all.json
    python -m tools.mia_shadow RUN_DIR --select final   # keep each attack classifier's last epoch (published)
    python -m tools.mia_shadow RUN_DIR --carve train,val --shadow-fraction 0.5   # a real dataset's shadow data

1. **Shadow runs**: the run's own config, trained again by ``federated.run`` (the same trainer, privacy
   settings, rounds, clients) on data disjoint from the target's, with ``SEED`` + 1000 + k (shadow ``k``,
   0-based). On the toy world shadow ``k`` draws a new world (``DATASET.TOYWORLD.SEED`` + 1000 + k: other
   images of the same classes, styles and difficulty) and partitions it as the target did. On a real
   dataset its data is carved out of the images the target never trained on nor tests
   (``tools/shadow_split.py``: the train-split remainder, val and unused test items, ``--carve``; its
   clients mimic the target's, ``--shadow-fraction`` of their training items per class and as many
   non-members; ``--disjoint-shadows``; seeded by ``--carve-seed``) and given to the run as its split file
   (``<shadow>/shadow_split.json``, ``DATASET.SPLIT_FILE``). They go to ``RUN_DIR/shadows/<k>``
   (``--shadow-dir``); a folder that already holds the finished shadow run of this config (and split) is
   reused. Every shadow item is checked to be absent from the target's training items. A dataset mixture
   (class-chunks partition) is refused: its split cannot be given as a file.
2. **Shadow rows**: for every client of every shadow run, its personalised model's softmax vector over
   the run's classes for its training items (members, label 1) and its test items (non-members, 0).
3. **Attack**: one classifier per class trained on the shadow rows of that class (``tools/mia_attack.py``:
   DP-FPL's MLP and training), applied to the target: the target client's (``--client``, default the
   one with the most training items; ``--all-clients``: every client, each with its own model) training
   items are the members (the items its batches were drawn from), its test items (same classes, never
   trained on) the non-members, balanced per class. The published script's "members" were the items cut
   away before training (never trained on); here they are the trained ones.

The report (``RUN_DIR/mia_shadow.json`` unless ``--out``): the mean over classes of the attack accuracy
(DP-FPL's metric, 0.5 = no leakage) with its standard error, the ROC AUC of the attack's score, the
per-class accuracies, the shadow runs (with a carved shadow's members and non-members per dataset split),
``shadow_data`` (how the shadow data was made: the carve settings and the pool's size per split) and the
target run's ``privacy`` record. Exit status 2 with one line on stderr for bad input (not a finished run,
too few images for the shadow data, bad numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from federated.errors import CheckpointError, ConfigError, DataError, OutputError, TrainingDiverged
from tools.mia import OneLineParser, number_arg, read_finished_run
from tools.mia_attack import PUBLISHED, SELECT, AttackSettings, evaluate_class_attacks, train_class_attacks
from tools.shadow_split import SPLITS, CarveSettings, ShadowSplit, carve_pool, plan_shadows, split_of

SHADOW_SEED_OFFSET = 1000


def new_world(config: dict) -> bool:
    """Whether the shadow data is a new toy world (else it is carved out of the target's dataset)."""
    return config["DATASET"]["NAME"] == "ToyWorld"


def check_shadowable(config: dict) -> None:
    """Carved shadow data reaches its run as a split file, which the class-chunks partition does not read."""
    from federated.names import canonical_partition

    dataset = config["DATASET"]
    try:
        chunks = canonical_partition(dataset.get("PARTITION", "")) == "class-chunks"
    except ValueError:
        chunks = False
    if not new_world(config) and (chunks or dataset.get("MIXTURE")):
        raise ConfigError("shadow data carved out of a dataset is given to the shadow runs as a split file, which the "
                          "class-chunks partition (a dataset mixture) cannot read: attack a run of another partition")


def _keys(node: dict, prefix: str = "") -> list[str]:
    return [key for k, v in node.items()
            for key in (_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])]


def check_config_current(config: dict) -> None:
    """The shadow runs retrain the target's config with this code: every key of it must still exist."""
    from federated.config import get_cfg
    from federated.results import cfg_to_dict

    known = set(_keys(cfg_to_dict(get_cfg())))
    unknown = [k for k in _keys(config) if k not in known]
    if unknown:
        raise ConfigError(f"the target run's config has {len(unknown)} key(s) this code does not know (e.g. "
                          f"{unknown[0]}): it was made by another version; train the target again to attack it")


def shadow_config(config: dict, k: int, output_dir: str, split_file: str = ""):
    """Shadow ``k``'s config: the target's with ``SEED`` moved by ``1000 + k``, its own output folder and
    split: ``split_file`` (carved data) or, without one, a new partition of a new toy world (world seed
    moved by ``1000 + k``)."""
    from yacs.config import CfgNode as CN

    cfg = CN(json.loads(json.dumps(config)))
    cfg.SEED = int(cfg.SEED) + SHADOW_SEED_OFFSET + k
    if not split_file:
        cfg.DATASET.TOYWORLD.SEED = int(cfg.DATASET.TOYWORLD.SEED) + SHADOW_SEED_OFFSET + k
    cfg.DATASET.SPLIT_FILE = split_file
    cfg.OUTPUT_DIR = output_dir
    return cfg


def _same_config(results: dict, cfg) -> bool:
    """Whether a run's saved config is ``cfg`` (as ``results.json`` stores it), its output folder aside."""
    from federated.results import cfg_to_dict

    saved, now = dict(results.get("config", {})), json.loads(json.dumps(cfg_to_dict(cfg)))
    saved.pop("OUTPUT_DIR", None)
    now.pop("OUTPUT_DIR", None)
    return saved == now


def _split_clients(path: str) -> list:
    with open(path) as f:
        return [[c["train"], c["test"]] for c in json.load(f)["clients"]]


def ensure_shadow_run(cfg) -> bool:
    """Train the shadow run of ``cfg`` in ``cfg.OUTPUT_DIR`` with ``federated.run`` unless that folder
    already holds it finished (with the clients of ``cfg.DATASET.SPLIT_FILE`` when it names one); returns
    whether it trained."""
    from federated.run import main as run_main

    folder = cfg.OUTPUT_DIR
    try:
        if _same_config(read_finished_run(folder), cfg) and (
                not cfg.DATASET.SPLIT_FILE
                or _split_clients(os.path.join(folder, "split.json")) == _split_clients(cfg.DATASET.SPLIT_FILE)):
            return False
    except OutputError:
        pass
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "shadow_config.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    run_main(["--config-file", path, "--output-dir", folder])
    return True


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def client_rows(run_dir: str, clients: list[int] | None = None) -> dict:
    """Softmax rows of ``clients`` (default all with training and test items) of a finished run, each
    through its own personalised model: ``probs`` ``(n, C)``, ``member`` ``(n,)``, ``labels`` ``(n,)``,
    ``client`` ``(n,)``, ``impaths`` (n), and the run's ``cfg``, ``results``, ``round`` (of its checkpoint),
    ``data`` (its ``FederatedData``), ``trained`` (every client's training impaths)."""
    from tools.mia import client_logits, load_client_model, load_run

    cfg, results, data, trainer, ckpt = load_run(run_dir)
    if clients is None:
        clients = [c for c in range(data.num_users) if data.train[c] and data.test[c]]
    for cid in clients:
        if not 0 <= cid < data.num_users:
            raise ConfigError(f"--client {cid}: the run has clients 0..{data.num_users - 1}")
        if not data.train[cid] or not data.test[cid]:
            raise DataError(f"client {cid} has {len(data.train[cid])} training and {len(data.test[cid])} test items: "
                            f"both are needed")
    parts = []
    for cid in clients:
        load_client_model(trainer, ckpt, cid)
        for is_member, items in ((1, data.train[cid]), (0, data.test[cid])):
            logits, labels = client_logits(cfg, trainer, list(items))
            parts.append((_softmax(logits), np.full(len(items), is_member), labels, np.full(len(items), cid),
                          [d.impath for d in items]))
    return {"probs": np.concatenate([p[0] for p in parts]), "member": np.concatenate([p[1] for p in parts]),
            "labels": np.concatenate([p[2] for p in parts]), "client": np.concatenate([p[3] for p in parts]),
            "impaths": [path for p in parts for path in p[4]], "cfg": cfg, "results": results,
            "round": int(ckpt["round"]), "data": data, "trained": {d.impath for items in data.train for d in items}}


def carve(target: dict, shadows: int, carving: CarveSettings) -> tuple[list[ShadowSplit], dict[str, str], dict]:
    """The carved shadow splits of the target (``client_rows``'s dict; ``tools/shadow_split.py``), the dataset
    split of every pool item by path, and the report's ``shadow_data``."""
    from federated.data import load_dataset

    cfg, data = target["cfg"], target["data"]
    tested = {d.impath for items in data.test for d in items}
    pool = carve_pool(load_dataset(cfg), cfg.DATASET.SUBSAMPLE_CLASSES, target["trained"], tested, carving.splits)
    plans = plan_shadows(data.train, pool, shadows, carving, data.classnames, cfg.DATASET.NAME)
    info = {"source": "carved out of the dataset's images that the target neither trained on nor tests",
            "splits": list(carving.splits), "fraction": carving.fraction, "disjoint_shadows": carving.disjoint,
            "seed": carving.seed, "pool": {s: len(items) for s, items in pool.items()},
            "excluded": {"trained": len(target["trained"]), "tested": len(tested)}}
    return plans, split_of(pool), info


def write_shadow_split(path: str, plan: ShadowSplit, target: dict) -> None:
    """``plan`` as the split file of a shadow run (``federated/split_file.py``), the target's label space."""
    from federated.data import FederatedData
    from federated.split_file import write_split_file

    data = target["data"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_split_file(path, FederatedData(data.dataset_name, data.classnames, plan.train, plan.test,
                                         [sorted({d.label for d in c}) for c in plan.train],
                                         client_domains=data.client_domains, target_domain=data.target_domain),
                     target["cfg"])


def _by_split(rows: dict, is_member: int, split: dict[str, str], splits: list[str]) -> dict[str, int]:
    """How many of a shadow run's members (``is_member`` 1) or non-members come from each carved split."""
    picked = [split[p] for p, m in zip(rows["impaths"], rows["member"], strict=True) if m == is_member]
    return {s: picked.count(s) for s in splits}


def evaluate(run_dir: str, shadows: int = 4, shadow_dir: str | None = None, client: int | None = None,
             all_clients: bool = False, settings: AttackSettings = PUBLISHED,
             carving: CarveSettings | None = None) -> dict:
    """The shadow-model attack report of ``run_dir`` (module docstring); ``carving`` applies to real datasets."""
    results = read_finished_run(run_dir)
    check_shadowable(results["config"])
    check_config_current(results["config"])
    shadow_dir = shadow_dir or os.path.join(run_dir, "shadows")
    sizes = read_client_sizes(run_dir)
    targets = None if all_clients else [int(np.argmax(sizes)) if client is None else int(client)]
    target = client_rows(run_dir, targets)  # the target's bad --client fails here, before any shadow trains
    if new_world(results["config"]):
        plans, split, shadow_data = None, {}, {"source": "a new toy world per shadow (world seed + 1000 + k)"}
    else:  # too few images fails here, before any shadow trains
        plans, split, shadow_data = carve(target, shadows, carving or CarveSettings())
    records, shadow_parts = [], []
    for k in range(shadows):
        folder = os.path.join(shadow_dir, str(k))
        split_file = os.path.join(folder, "shadow_split.json") if plans else ""
        if plans:
            write_shadow_split(split_file, plans[k], target)
        cfg = shadow_config(results["config"], k, folder, split_file)
        trained = ensure_shadow_run(cfg)
        rows = client_rows(cfg.OUTPUT_DIR)
        overlap = target["trained"] & set(rows["impaths"])
        if overlap:
            raise DataError(f"shadow run {cfg.OUTPUT_DIR} uses {len(overlap)} of the target's training items "
                            f"(e.g. {sorted(overlap)[0]}): shadow data must be disjoint")
        shadow_parts.append(rows)
        record = {"dir": os.path.abspath(cfg.OUTPUT_DIR), "seed": int(cfg.SEED), "trained_now": trained,
                  "members": int(rows["member"].sum()), "non_members": int((rows["member"] == 0).sum())}
        if plans:
            record.update(split_file=os.path.abspath(split_file),
                          members_by_split=_by_split(rows, 1, split, shadow_data["splits"]),
                          non_members_by_split=_by_split(rows, 0, split, shadow_data["splits"]))
        else:
            record["world_seed"] = int(cfg.DATASET.TOYWORLD.SEED)
        records.append(record)
    models = train_class_attacks(np.concatenate([p["probs"] for p in shadow_parts]),
                                 np.concatenate([p["member"] for p in shadow_parts]),
                                 np.concatenate([p["labels"] for p in shadow_parts]), settings)
    attack = evaluate_class_attacks(models, target["probs"], target["member"], target["labels"], seed=settings.seed)
    return {
        "run": os.path.abspath(run_dir), "trainer": target["cfg"].TRAINER.NAME, "round": target["round"],
        "attack": "shadow models (Shokri et al.), one classifier per class, DP-FPL's",
        "settings": {"epochs": settings.epochs, "lr": settings.lr, "batch_size": settings.batch_size,
                     "select": settings.select, "seed": settings.seed},
        "target_clients": sorted({int(c) for c in target["client"]}),
        "member_source": "the target client's training items",
        "non_member_source": "the target client's test items (same classes)",
        "shadow_data": shadow_data, "shadows": records, **attack, "privacy": results.get("privacy"),
    }


def read_client_sizes(run_dir: str) -> list[int]:
    """Training items per client from the run's ``split.json``."""
    with open(os.path.join(run_dir, "split.json")) as f:
        return [len(c["train"]) for c in json.load(f)["clients"]]


def _splits(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in SPLITS for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(SPLITS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="output folder of a finished run (the target)")
    p.add_argument("--shadows", type=number_arg(int), default=4, help="number of shadow runs (default 4)")
    p.add_argument("--shadow-dir", default=None, help="where the shadow runs go (default RUN_DIR/shadows)")
    p.add_argument("--client", type=int, default=None, help="target client (default: the most training items)")
    p.add_argument("--all-clients", action="store_true", help="attack every client of the run, each with its model")
    p.add_argument("--epochs", type=number_arg(int), default=200, help="attack classifier epochs (published 200)")
    p.add_argument("--lr", type=number_arg(float), default=0.01, help="attack classifier Adam LR (published 0.01)")
    p.add_argument("--batch-size", type=number_arg(int), default=1, help="attack classifier batch (published 1)")
    p.add_argument("--select", choices=SELECT, default="best",
                   help="keep the lowest-training-loss epoch (best) or the last (final: the published effect)")
    p.add_argument("--seed", type=number_arg(int, zero=True), default=0,
                   help="seed of the attack classifiers and the balancing")
    p.add_argument("--out", default=None, help="report path (default RUN_DIR/mia_shadow.json)")
    carved = p.add_argument_group("shadow data of a real dataset (tools/shadow_split.py)")
    carved.add_argument("--carve", type=_splits, default=None,
                        help=f"dataset splits to carve it from (default {','.join(SPLITS)}; never an image the "
                             f"target trained on or tests)")
    carved.add_argument("--shadow-fraction", type=number_arg(float), default=None,
                        help="members per shadow client and class, as a fraction of the target client's (default 1)")
    carved.add_argument("--disjoint-shadows", action="store_true", help="no image serves two shadows")
    carved.add_argument("--carve-seed", type=number_arg(int, zero=True), default=None,
                        help="seed of the carving (default 0)")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.run_dir, "mia_shadow.json")
    settings = AttackSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, select=args.select,
                              seed=args.seed)
    carve_args = {"splits": args.carve, "fraction": args.shadow_fraction, "seed": args.carve_seed,
                  "disjoint": args.disjoint_shadows or None}
    carving = CarveSettings(**{k: v for k, v in carve_args.items() if v is not None})
    try:
        if args.client is not None and args.all_clients:
            raise ConfigError("--client and --all-clients exclude each other")
        config = read_finished_run(args.run_dir)["config"]
        check_shadowable(config)
        given = [k for k, v in carve_args.items() if v is not None]
        if given and new_world(config):
            raise ConfigError("--carve, --shadow-fraction, --disjoint-shadows and --carve-seed apply to real datasets: "
                              "a toy-world target's shadows are new worlds")
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise OutputError(f"--out {out}: its folder does not exist")
        from dassl.utils import configure_logging

        # the shadow runs' console lines as federated_main.py prints them (before a library such as opacus,
        # imported while the target loads, installs a root handler that would print every log line again)
        configure_logging()
        report = evaluate(args.run_dir, args.shadows, args.shadow_dir, args.client, args.all_clients, settings,
                          carving)
    except (ConfigError, DataError, CheckpointError, OutputError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"shadow-model attack ({len(report['shadows'])} shadow runs) on client(s) "
          f"{','.join(map(str, report['target_clients']))}: mean class accuracy {report['mean_class_accuracy']:.3f} "
          f"+- {report['accuracy_se']:.3f} over {len(report['classes'])} classes, AUC {report['auc']:.3f} "
          f"({report['members']} members / {report['non_members']} non-members); report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
