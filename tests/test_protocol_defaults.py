"""The defaults reproduce the published protocol (issue 15): which K shots each client trains on,
a constant learning rate in every trainer config.

The few-shot test re-derives the published selection from the published algorithm (written here
independently of ``federated/``, with Python's global ``random`` as the published loaders use it) on a
label list, and compares it with what ``build_federated_data`` gives every client.
"""
from __future__ import annotations

import glob
import math
import os
import random
from collections import defaultdict

import pytest
import torch

from dassl.data.datasets import DatasetBase, Datum
from dassl.optim import build_lr_scheduler, build_optimizer
from federated.config import get_cfg
from federated.data import DataError, build_federated_data
from tests.fedtv_testing import REPO

# a label list in a non-sorted, interleaved order of first appearance, with classes smaller than K
SIZES = {3: 9, 0: 7, 7: 12, 1: 3, 5: 8, 2: 10, 9: 6, 4: 5, 8: 11, 6: 4, 11: 9, 10: 2}
K = 5


def _label_list() -> list[int]:
    rng = random.Random(99)
    labels = [y for y, n in SIZES.items() for _ in range(n)]
    head = list(SIZES)  # first appearance in this order
    rest = labels[:]
    for y in head:
        rest.remove(y)
    rng.shuffle(rest)
    return head + rest


def _published_selection(labels: list[int], shots: int, run_seed: int, users: int, coop_first: bool,
                         split_seed: int = 2023) -> list[list[int]]:
    """Item indices per client, as the published FedPGP / FedTV loaders build them (base classes).

    1. ``set_random_seed(SEED)``; ``generate_fewshot_dataset(total_train, num_shots)`` (when ``coop_first``):
       a dict label -> items in insertion order, ``random.sample(items, K)`` per label when it has >= K.
    2. ``subsample_classes(..., "base")``: the sorted labels, the first ceil(n/2), relabelled by rank.
    3. ``generate_federated_fewshot_dataset``: ``random.seed(2023)``, shuffle ``range(class_num)``,
       ``round(class_num / users)`` classes per client (the last takes the rest); per client, per label of
       the dict (insertion order) that the client owns, ``random.sample(items, K)`` when it has >= K.
    """
    state = random.getstate()
    try:
        random.seed(run_seed)
        items = list(range(len(labels)))
        if coop_first:
            tracker = defaultdict(list)
            for i in items:
                tracker[labels[i]].append(i)
            items = []
            for group in tracker.values():
                items.extend(random.sample(group, shots) if len(group) >= shots else group)
        present = sorted({labels[i] for i in items})
        base = {y: rank for rank, y in enumerate(present[:math.ceil(len(present) / 2)])}
        train = [(i, base[labels[i]]) for i in items if labels[i] in base]
        class_num = max(y for _, y in train) + 1
        per_user = int(round(class_num / users))
        class_list = list(range(class_num))
        random.seed(split_seed)
        random.shuffle(class_list)
        tracker = defaultdict(list)
        for i, y in train:
            tracker[y].append(i)
        out = []
        for idx in range(users):
            mine = class_list[idx * per_user:] if idx == users - 1 else class_list[idx * per_user:(idx + 1) * per_user]
            chosen = []
            for y, group in tracker.items():
                if y in mine:
                    chosen.extend(random.sample(group, shots) if len(group) >= shots else group)
            out.append(chosen)
        return out
    finally:
        random.setstate(state)


def _dataset(labels: list[int]) -> DatasetBase:
    names = [f"class{y}" for y in range(max(labels) + 1)]
    train = [Datum(impath=f"train/{i}", label=y, classname=names[y]) for i, y in enumerate(labels)]
    test = [Datum(impath=f"test/{y}/{k}", label=y, classname=names[y]) for y in range(len(names)) for k in range(2)]
    return DatasetBase(train_x=train, test=test, classnames=names)


def _cfg(**dataset):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = ""
    cfg.DATASET.NAME = "ToyWorld"
    cfg.DATASET.USERS = 3
    cfg.DATASET.NUM_SHOTS = K
    for key, value in dataset.items():
        if key == "SEED":
            cfg.SEED = value
        else:
            setattr(cfg.DATASET, key, value)
    return cfg


def _ids(clients) -> list[list[int]]:
    return [[int(d.impath.split("/")[1]) for d in items] for items in clients]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_default_few_shot_selection_is_the_published_pipeline(seed):
    """Default: CoOp's K-shot subset with the run seed, base classes, classes to clients with seed 2023,
    the same K items reshuffled: the exact items, in the exact order, of the published loaders."""
    labels = _label_list()
    assert get_cfg().DATASET.FEWSHOT_POOL == "coop"
    data = build_federated_data(_cfg(SEED=seed), dataset=_dataset(labels))
    expected = _published_selection(labels, K, seed, users=3, coop_first=True)
    assert _ids(data.train) == expected
    assert all(len(c) > 0 for c in expected)


def test_full_pool_is_the_published_path_without_the_coop_subset():
    """``FEWSHOT_POOL full``: the published path that samples the whole train split (FedPGP's OxfordPets
    loader; every loader with SUBSAMPLE all), independent of the run seed."""
    labels = _label_list()
    expected = _published_selection(labels, K, 0, users=3, coop_first=False)
    for seed in (1, 2):
        data = build_federated_data(_cfg(SEED=seed, FEWSHOT_POOL="full"), dataset=_dataset(labels))
        assert _ids(data.train) == expected


def test_run_seed_changes_the_images_not_the_classes_nor_the_test_sets():
    labels = _label_list()
    runs = [build_federated_data(_cfg(SEED=s), dataset=_dataset(labels)) for s in (1, 2)]
    assert runs[0].client_classes == runs[1].client_classes
    assert [[d.impath for d in c] for c in runs[0].test] == [[d.impath for d in c] for c in runs[1].test]
    assert _ids(runs[0].train) != _ids(runs[1].train)


def test_all_classes_protocol_samples_the_full_split_as_published():
    """SUBSAMPLE all: every published loader calls the federated few-shot split on the whole train split."""
    labels = _label_list()
    data = build_federated_data(_cfg(SEED=4, SUBSAMPLE_CLASSES="all"), dataset=_dataset(labels))
    state = random.getstate()
    try:  # the same derivation with every class (no base split): ids must come from the whole split
        random.seed(2023)
        class_list = list(range(12))
        random.shuffle(class_list)
    finally:
        random.setstate(state)
    assert data.client_classes == [sorted(class_list[0:4]), sorted(class_list[4:8]), sorted(class_list[8:])]
    counts = {y: sum(1 for c in _ids(data.train) for i in c if labels[i] == y) for y in SIZES}
    assert counts == {y: min(n, K) for y, n in SIZES.items()}


def test_bad_few_shot_pool_is_a_clear_error():
    with pytest.raises(DataError, match="FEWSHOT_POOL must be one of coop, full"):
        build_federated_data(_cfg(FEWSHOT_POOL="split"), dataset=_dataset(_label_list()))


# ------------------------------------------------------------------------------------- learning rate
TRAINER_YAMLS = sorted(glob.glob(os.path.join(REPO, "configs", "trainers", "*", "*.yaml")))


def test_default_learning_rate_is_constant():
    assert get_cfg().OPTIM.GAMMA == 1.0


@pytest.mark.parametrize("path", TRAINER_YAMLS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_step_schedule_keeps_the_learning_rate_constant(path):
    """The published runs pass --gamma 1: a step schedule never decays, even over many local epochs
    (what one optimiser shared by every client and round, FED.SHARED_OPTIMIZER, goes through)."""
    cfg = get_cfg()
    cfg.merge_from_file(path)
    if cfg.OPTIM.LR_SCHEDULER == "cosine":
        pytest.skip("cosine schedule")
    optim = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg.OPTIM)
    sched = build_lr_scheduler(optim, cfg.OPTIM)
    lrs = []
    for _ in range(10 * max(1, int(cfg.OPTIM.MAX_EPOCH))):
        optim.step()
        sched.step()
        lrs.append(optim.param_groups[0]["lr"])
    assert cfg.OPTIM.GAMMA == 1.0 and lrs == [pytest.approx(float(cfg.OPTIM.LR))] * len(lrs)


# ------------------------------------------------------------------------------------- client order
def test_clients_train_in_the_order_they_were_sampled(tmp_path, monkeypatch):
    """As the published loops: round 1 trains 0..K-1, later rounds the drawn clients in the order drawn
    (with one optimiser shared by every client the order matters); aggregation and the record's
    ``clients`` stay in client-id order, the record's ``train_order`` is the order trained."""
    from federated.run import main
    from federated.runtime import ClientRuntime
    from tests.fedtv_testing import fast_args

    seen: list[tuple[int, int]] = []
    original = ClientRuntime.train_client

    def spying(self, download, personal, round_idx, *args, **kwargs):
        seen.append((round_idx, download.client))
        return original(self, download, personal, round_idx, *args, **kwargs)

    monkeypatch.setattr(ClientRuntime, "train_client", spying)
    res = main(fast_args(tmp_path, ["--trainer", "PromptFL", "--num-users", "6", "--rounds", "4", "--frac", "0.67",
                                    "--num-shots", "2"],
                         ["FED.SHARED_OPTIMIZER", "True", "FED.BATCH_CLIENTS", "False", "FED.EVAL_BASE_NOVEL", "False",
                          "TEST.EVAL_FREQ", "4"]))
    orders = [[cid for r, cid in seen if r == k] for k in range(4)]
    assert orders[0] == list(range(6))
    assert all(len(o) == 4 for o in orders[1:])  # int(0.67 * 6)
    assert any(o != sorted(o) for o in orders[1:])  # the drawn order, not sorted
    for record, order in zip(res["rounds"], orders, strict=True):
        assert record["train_order"] == order and record["clients"] == sorted(order)


# ------------------------------------------------------------------------ protocol keys vs method keys
DATASET_YAMLS = sorted(glob.glob(os.path.join(REPO, "configs", "datasets", "*.yaml")))
PROTOCOL_PREFIXES = ("DATASET.", "FED.FRAC", "FED.ALL_CLIENTS_FIRST_ROUND", "TEST.EVAL_FREQ")
METHOD_PREFIXES = ("TRAINER.", "OPTIM.", "MODEL.", "DATALOADER.")


def _yaml_keys(path: str) -> dict:
    import yaml

    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    with open(path) as f:
        return dict(flat(yaml.safe_load(f) or {}))


def _value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


_TRAINER_ONLY: dict = {}
_LOADED: dict = {}


def _loaded(path: str):
    if path not in _LOADED:
        from yacs.config import CfgNode

        with open(path) as f:
            _LOADED[path] = CfgNode.load_cfg(f)
    return _LOADED[path]


def get_cfg_from(path: str):
    """The default config with only the trainer yaml merged (cached)."""
    if path not in _TRAINER_ONLY:
        cfg = get_cfg()
        cfg.merge_from_file(path)
        _TRAINER_ONLY[path] = cfg
    return _TRAINER_ONLY[path]


def test_protocol_keys_live_in_dataset_yamls_and_method_keys_in_trainer_yamls():
    for path in TRAINER_YAMLS:
        bad = [k for k in _yaml_keys(path) if k.startswith(PROTOCOL_PREFIXES)]
        assert not bad, f"{os.path.relpath(path, REPO)} sets protocol keys {bad}"
    for path in DATASET_YAMLS:
        bad = [k for k in _yaml_keys(path) if k.startswith(METHOD_PREFIXES)]
        assert not bad, f"{os.path.relpath(path, REPO)} sets method keys {bad}"


def test_every_dataset_yaml_with_every_trainer_yaml_keeps_both_sides():
    """Merged in the CLI's order (dataset, then trainer), every protocol key is the dataset yaml's (or the
    default) and every method key the trainer yaml's: e.g. cifar100.yaml + FedPGP/vit_b16.yaml runs the
    protocol's 100 clients with 10 % sampled, not 10."""
    base = get_cfg()
    protocol_defaults = {k: _value(base, k) for k in ("DATASET.USERS", "DATASET.NUM_SHOTS", "FED.FRAC")}
    pairs = 0
    for dpath in DATASET_YAMLS:
        dkeys = _yaml_keys(dpath)
        dataset_only = base.clone()
        dataset_only.merge_from_file(dpath)
        for tpath in TRAINER_YAMLS:
            cfg = dataset_only.clone()
            cfg.merge_from_other_cfg(_loaded(tpath))  # = merge_from_file, the yaml parsed once
            for key in [*dkeys, *protocol_defaults]:
                if key.startswith(PROTOCOL_PREFIXES):
                    assert _value(cfg, key) == _value(dataset_only, key), (dpath, tpath, key)
            for key in _yaml_keys(tpath):
                if key.startswith(METHOD_PREFIXES):
                    assert _value(cfg, key) == _value(get_cfg_from(tpath), key), (dpath, tpath, key)
            pairs += 1
    assert pairs == len(DATASET_YAMLS) * len(TRAINER_YAMLS) > 400


def test_cifar100_with_fedpgp_runs_the_protocols_clients():
    from federated.cli import build_cfg, parse_args

    cfg = build_cfg(parse_args(["--dataset-config-file", os.path.join(REPO, "configs", "datasets", "cifar100.yaml"),
                                "--trainer", "FedPGP", "--backbone", "ViT-B/16"]))
    assert (cfg.DATASET.USERS, cfg.FED.FRAC, cfg.TEST.EVAL_FREQ, cfg.DATASET.PARTITION) == (
        100, 0.1, 10, "hierarchical-dirichlet")
    assert (cfg.TRAINER.FEDPGP.BOTTLENECK, cfg.OPTIM.LR) == (8, 0.001)


# ------------------------------------------------------------------------------- string flags, folder
def test_string_flags_and_overrides_keep_what_was_written(tmp_path):
    from federated.cli import build_cfg, parse_args

    office = os.path.join(REPO, "configs", "datasets", "office.yaml")
    cfg = build_cfg(parse_args(["--dataset-config-file", office, "--target-domain", "2", "--output-dir", "2024"]))
    assert cfg.DATASET.TARGET_DOMAIN == "2" and cfg.OUTPUT_DIR == "2024"
    cfg = build_cfg(parse_args(["--dataset-config-file", office, "DATASET.TARGET_DOMAIN", "1", "OUTPUT_DIR", "7"]))
    assert cfg.DATASET.TARGET_DOMAIN == "1" and cfg.OUTPUT_DIR == "7"
    cfg = build_cfg(parse_args(["--output-dir", str(tmp_path), "DATASET.TOYWORLD.STYLES", "['neon', 'photo']"]))
    assert list(cfg.DATASET.TOYWORLD.STYLES) == ["neon", "photo"]  # non-string keys still evaluate literals


def test_default_output_folder_names_the_clients_the_partition_really_has():
    from federated.cli import build_cfg, parse_args

    office = os.path.join(REPO, "configs", "datasets", "office.yaml")
    lodo = build_cfg(parse_args(["--dataset-config-file", office, "--target-domain", "dslr", "--num-users", "7"]))
    assert os.path.basename(lodo.OUTPUT_DIR) == "tiny_all_domain_1perdomain_lodo-dslr_0shots_seed1"
    split = build_cfg(parse_args(["--dataset-config-file", office, "DATASET.SPLIT_CLIENT", "3"]))
    assert "_3perdomain_" in split.OUTPUT_DIR and "users" not in split.OUTPUT_DIR
    demo = build_cfg(parse_args([]))
    assert os.path.basename(demo.OUTPUT_DIR) == "tiny_base_pathological_5users_16shots_seed1"


# ------------------------------------------------------------------------------- PromptFL's configuration
def test_promptfl_default_is_the_table_1_baseline_scripts_configuration():
    """The FedPGP repository's Table 1 baseline scripts run PLOT/vit_b16.yaml with --lr 0.001 --gamma 1
    --round 25 --local_epoch 2: SGD 0.001, constant rate, no warm-up; the published PromptFL yaml's
    cosine schedule (lr 0.002, 1 warm-up epoch) is the alternative config."""
    for backbone in ("vit_b16", "rn50"):
        cfg = get_cfg_from(os.path.join(REPO, "configs", "trainers", "PromptFL", f"{backbone}.yaml"))
        o = cfg.OPTIM
        assert (o.NAME, o.LR, o.LR_SCHEDULER, o.GAMMA, o.WARMUP_EPOCH) == ("sgd", 0.001, "single_step", 1.0, -1)
        assert (o.MOMENTUM, o.WEIGHT_DECAY, o.ROUND, o.MAX_EPOCH) == (0.9, 0.0005, 25, 2)
        assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.TEST.BATCH_SIZE) == (32, 100)
    cosine = get_cfg_from(os.path.join(REPO, "configs", "trainers", "PromptFL", "vit_b16_cosine.yaml")).OPTIM
    assert (cosine.LR, cosine.LR_SCHEDULER, cosine.WARMUP_EPOCH, cosine.WARMUP_TYPE, cosine.WARMUP_CONS_LR) == (
        0.002, "cosine", 1, "constant", 1e-5)


def test_excluded_clients_never_train_and_are_not_evaluated(tmp_path, monkeypatch):
    """FED.EXCLUDE_CLIENTS [1] (the published PromptFL / local loops' pop(5), here on 3 clients): client 1
    is never trained (any round) nor part of Local; the others are as without the flag."""
    from federated.run import main
    from federated.runtime import ClientRuntime
    from tests.fedtv_testing import fast_args

    trained = []
    original = ClientRuntime.train_client

    def spying(self, download, *args, **kwargs):
        trained.append(download.client)
        return original(self, download, *args, **kwargs)

    monkeypatch.setattr(ClientRuntime, "train_client", spying)
    opts = ["FED.BATCH_CLIENTS", "False", "FED.EVAL_BASE_NOVEL", "False"]
    res = main(fast_args(tmp_path / "x", ["--trainer", "PromptFL", "--rounds", "2"],
                         [*opts, "FED.EXCLUDE_CLIENTS", "[1]"]))
    assert sorted(set(trained)) == [0, 2] and [r["clients"] for r in res["rounds"]] == [[0, 2], [0, 2]]
    last = res["rounds"][-1]
    assert set(last["local_per_client"]) == {"0", "2"}
    assert last["local"] == pytest.approx((last["local_per_client"]["0"] + last["local_per_client"]["2"]) / 2)
    with pytest.raises(Exception, match="EXCLUDE_CLIENTS"):
        main(fast_args(tmp_path / "y", ["--trainer", "PromptFL", "--rounds", "1"], [*opts, "FED.EXCLUDE_CLIENTS",
                                                                                      "[0, 1, 2]"]))
