"""Shadow data carved out of a real dataset (tools/shadow_split.py) and the shadow-model attack on a real
layout end to end (a tiny DP-FPL run on a fake Caltech101 written in CoOp's layout): shadow members and
non-members are disjoint from each other and from everything the target trained on or tests, the shadow
clients copy the target's, the carving is deterministic, the report records it, too few images is one line."""
from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest
from fake_datasets import class_folders

from dassl.data.datasets import Datum
from federated.errors import DataError
from federated.run import main as run_main
from tools import mia, mia_shadow
from tools.shadow_split import CarveSettings, carve_pool, client_demand, plan_shadows

ATTACK = ["--epochs", "5", "--batch-size", "8"]
NAMES = [f"c{i}" for i in range(4)]


def items(split: str, label: int, n: int, start: int = 0) -> list[Datum]:
    return [Datum(f"/{split}/{label}/{k}.jpg", label, 0, NAMES[label]) for k in range(start, start + n)]


# the target: client 0 trained on 3 items of class 0 and 2 of class 1, client 1 on 4 items of class 2
TARGET = [items("train", 0, 3) + items("train", 1, 2), items("train", 2, 4)]
POOL = {"train": items("train", 0, 5, 3) + items("train", 1, 4, 2) + items("train", 2, 6, 4),
        "val": items("val", 0, 3) + items("val", 1, 2) + items("val", 2, 4)}


def paths(group) -> list[str]:
    return [d.impath for d in group]


def test_demand_by_hand():
    assert client_demand(TARGET, 1.0) == [{(0, 0): 3, (1, 0): 2}, {(2, 0): 4}]
    # half up: 1.5 -> 2, 1 -> 1, 2 -> 2; a stratum never drops to 0 members
    assert client_demand(TARGET, 0.5) == [{(0, 0): 2, (1, 0): 1}, {(2, 0): 2}]
    assert client_demand(TARGET, 0.01) == [{(0, 0): 1, (1, 0): 1}, {(2, 0): 1}]


@pytest.mark.parametrize("disjoint", [False, True])
def test_plan_mimics_the_target_and_keeps_every_group_disjoint(disjoint):
    settings = CarveSettings(fraction=0.5 if disjoint else 1.0, disjoint=disjoint, seed=3)
    plans = plan_shadows(TARGET, POOL, 2, settings, NAMES, "Fake")
    pool = set(paths(POOL["train"] + POOL["val"]))
    demand = client_demand(TARGET, settings.fraction)
    for plan in plans:
        groups = [paths(g) for g in plan.train + plan.test]
        flat = [p for g in groups for p in g]
        assert len(flat) == len(set(flat)) and set(flat) <= pool  # members, non-members, clients pairwise disjoint
        for c, need in enumerate(demand):
            for group in (plan.train[c], plan.test[c]):  # as many members as non-members, per class as the target
                assert Counter((d.label, d.domain) for d in group) == need
    used = [set(paths(p.train[0] + p.train[1] + p.test[0] + p.test[1])) for p in plans]
    if disjoint:
        assert not used[0] & used[1]  # no image serves two shadows
    else:
        assert used[0] != used[1]  # independent draws (here both need 18 of the 24 pool items: they overlap)
    again = plan_shadows(TARGET, POOL, 2, settings, NAMES, "Fake")  # deterministic from the seed
    assert [paths(g) for p in again for g in p.train + p.test] == [paths(g) for p in plans for g in p.train + p.test]
    other = plan_shadows(TARGET, POOL, 2, CarveSettings(fraction=settings.fraction, disjoint=disjoint, seed=4),
                         NAMES, "Fake")
    assert [paths(g) for p in other for g in p.train] != [paths(g) for p in plans for g in p.train]


def test_too_few_images_is_one_line_with_a_fix_that_fits():
    # 2 disjoint shadows need 2 x 2 x (3, 2, 4) images of classes 0, 1, 2; the pool has 8, 6, 10: class 2 lacks
    # the most (6). A fraction f fits while every class's m = floor(f n + 1/2) keeps 4 m <= pool: m <= 2, 1, 2,
    # i.e. f < 5/6, 3/4 and 5/8: 0.62 is the largest; one shadow (6, 4, 8) fits, as do overlapping shadows
    with pytest.raises(DataError) as err:
        plan_shadows(TARGET, POOL, 2, CarveSettings(disjoint=True), NAMES, "Fake")
    text = str(err.value)
    assert "\n" not in text and text.startswith("Fake: class 'c2' has 10 images the target neither trained on nor "
                                                "tests (train 6, val 4) but the shadow data needs 16 (4 members + 4 "
                                                "non-members per shadow x 2 disjoint shadows)")
    assert text.endswith("pass --shadow-fraction 0.62 or --shadows 1 or no --disjoint-shadows")
    plan_shadows(TARGET, POOL, 2, CarveSettings(fraction=0.62, disjoint=True), NAMES, "Fake")
    with pytest.raises(DataError):
        plan_shadows(TARGET, POOL, 2, CarveSettings(fraction=0.63, disjoint=True), NAMES, "Fake")
    # only the val split carved (3, 2, 4 images): one shadow needs 2 m <= pool: m <= 1, 1, 2: f < 1/2
    val_only = {"val": POOL["val"]}
    with pytest.raises(DataError, match=r"\(val 4\).*: pass --shadow-fraction 0.49 or --carve train,val,test \(more"):
        plan_shadows(TARGET, val_only, 1, CarveSettings(splits=("val",)), NAMES, "Fake")
    with pytest.raises(DataError, match="not even one member and one non-member per client fit"):
        plan_shadows(TARGET, {"val": POOL["val"][:1]}, 1, CarveSettings(), NAMES, "Fake")


def test_pool_leaves_out_what_the_target_trained_on_or_tests_and_other_classes():
    dataset = SimpleNamespace(classnames=NAMES, train_x=items("train", 0, 3) + items("train", 3, 2),
                              val=items("val", 1, 2) + items("val", 2, 2),
                              test=items("test", 0, 2) + items("test", 1, 2))
    pool = carve_pool(dataset, "base", trained={"/train/0/0.jpg"}, evaluated={"/test/0/0.jpg"})
    # base = classes 0, 1 (labels kept); class 3's train items and class 2's val items are novel
    assert {s: paths(v) for s, v in pool.items()} == {
        "train": ["/train/0/1.jpg", "/train/0/2.jpg"], "val": ["/val/1/0.jpg", "/val/1/1.jpg"],
        "test": ["/test/0/1.jpg", "/test/1/0.jpg", "/test/1/1.jpg"]}
    novel = carve_pool(dataset, "new", set(), set(), ("val",))
    assert [(d.impath, d.label) for d in novel["val"]] == [("/val/2/0.jpg", 0), ("/val/2/1.jpg", 0)]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """A 2-client DP-FPL run on a fake Caltech101 (8 classes of 10 images: 5 train, 2 val, 3 test; base half,
    2 shots) attacked with 2 carved shadows; the items each model scored, in call order."""
    root = tmp_path_factory.mktemp("carve")
    class_folders(str(root / "DATA" / "caltech-101" / "101_ObjectCategories"), [f"c{i}" for i in range(8)],
                  per_class=10)
    run_dir = root / "run"
    run_main(["--root", str(root / "DATA"), "--dataset-config-file", "configs/datasets/caltech101.yaml",
              "--trainer", "DPFPL", "--num-users", "2", "--num-shots", "2", "--rounds", "1", "--clip-weights", "none",
              "--backbone", "tiny", "--output-dir", str(run_dir), "FED.SHOW_PROGRESS", "False",
              "FED.ZS_REFERENCE", "False", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATASET.CHECK_NUM_CLASSES", "False"])
    seen, real = [], mia.client_logits

    def spy(cfg, trainer, batch):
        seen.append(paths(batch))
        return real(cfg, trainer, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mia, "client_logits", spy)
        assert mia_shadow.main([str(run_dir), "--shadows", "2", "--all-clients", *ATTACK]) == 0
    return run_dir, seen, json.loads((run_dir / "mia_shadow.json").read_text())


def split_items(path) -> list[dict]:
    clients = json.loads(path.read_text())["clients"]
    return [{"train": [p for p, _ in c["train"]], "test": [p for p, _ in c["test"]],
             "labels": Counter(y for _, y in c["train"])} for c in clients]


def test_carved_shadows_are_disjoint_and_copy_the_target(attacked):
    run_dir, seen, report = attacked
    target = split_items(run_dir / "split.json")
    trained = {p for c in target for p in c["train"]}
    tested = {p for c in target for p in c["test"]}
    assert len(trained) == 8 and len(tested) == 12  # 2 clients x 2 classes x 2 shots; 3 test images per class
    expected = [group for c in target for group in (c["train"], c["test"])]
    for k in range(2):
        shadow = split_items(run_dir / "shadows" / str(k) / "split.json")
        # the shadow run trained on exactly the carved split file, scored its members and non-members
        assert [(c["train"], c["test"]) for c in shadow] == [
            (c["train"], c["test"]) for c in split_items(run_dir / "shadows" / str(k) / "shadow_split.json")]
        expected += [group for c in shadow for group in (c["train"], c["test"])]
        members = [p for c in shadow for p in c["train"]]
        non_members = [p for c in shadow for p in c["test"]]
        assert len(set(members + non_members)) == len(members) + len(non_members) == 16
        assert not set(members + non_members) & (trained | tested)
        assert [c["labels"] for c in shadow] == [c["labels"] for c in target]
        assert all("/101_ObjectCategories/c" in p for p in members + non_members)
        record = report["shadows"][k]
        assert record["trained_now"] and record["members"] == record["non_members"] == 8
        # no test image is left (every base test image is a client's), so train remainder and val only
        assert record["members_by_split"].keys() == {"train", "val", "test"}
        assert sum(record["members_by_split"].values()) == 8 and record["members_by_split"]["test"] == 0
        assert sum(record["non_members_by_split"].values()) == 8
    assert seen == expected
    assert report["shadow_data"] == {
        "source": "carved out of the dataset's images that the target neither trained on nor tests",
        "splits": ["train", "val", "test"], "fraction": 1.0, "disjoint_shadows": False, "seed": 0,
        "pool": {"train": 4 * 5 - 8, "val": 4 * 2, "test": 0}, "excluded": {"trained": 8, "tested": 12}}
    assert report["target_clients"] == [0, 1] and 0 <= report["auc"] <= 1


def test_shadow_config_is_the_target_with_a_split_file(attacked):
    run_dir, _, _ = attacked
    target = json.loads((run_dir / "results.json").read_text())["config"]
    shadow = json.loads((run_dir / "shadows" / "1" / "results.json").read_text())["config"]
    assert shadow["SEED"] == target["SEED"] + 1001
    assert shadow["DATASET"].pop("SPLIT_FILE") == str(run_dir / "shadows" / "1" / "shadow_split.json")
    for cfg in (target, shadow):
        cfg.pop("SEED"), cfg.pop("OUTPUT_DIR"), cfg["DATASET"].pop("SPLIT_FILE", None)
    assert shadow == target


def test_rerun_reuses_and_another_carve_seed_retrains(attacked, tmp_path):
    run_dir, _, report = attacked
    out = tmp_path / "again.json"
    assert mia_shadow.main([str(run_dir), "--shadows", "2", "--all-clients", "--out", str(out), *ATTACK]) == 0
    again = json.loads(out.read_text())
    assert not any(s["trained_now"] for s in again["shadows"])  # same carving: the finished shadows are reused
    assert again["mean_class_accuracy"] == report["mean_class_accuracy"]
    before = (run_dir / "shadows" / "0" / "split.json").read_text()
    assert mia_shadow.main([str(run_dir), "--shadows", "1", "--carve-seed", "1", "--out", str(out), *ATTACK]) == 0
    record = json.loads(out.read_text())["shadows"][0]
    assert record["trained_now"] and (run_dir / "shadows" / "0" / "split.json").read_text() != before


def test_too_few_images_fails_before_any_shadow_trains(attacked, tmp_path, capsys):
    run_dir, _, _ = attacked
    # each class: 3 train images left + 2 val; 2 disjoint shadows of 2 + 2 need 8
    assert mia_shadow.main([str(run_dir), "--shadows", "2", "--disjoint-shadows", "--shadow-dir", str(tmp_path / "s"),
                            *ATTACK]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Caltech101: class 'c0' has 5 images the target neither trained on nor tests "
                          "(train 3, val 2, test 0) but the shadow data needs 8") and "\n" not in err
    assert err.endswith("pass --shadow-fraction 0.74 or --shadows 1 or no --disjoint-shadows")
    assert not (tmp_path / "s").exists()


def test_domains_are_strata_of_their_own():
    """A client's items of one class in two domains (e.g. PACS) get shadow items of the same domains."""
    def dom(split, domain, n):
        return [Datum(f"/{split}/d{domain}/{k}.jpg", 0, domain, "c0") for k in range(n)]

    target = [dom("train", 0, 2) + dom("train", 1, 1)]
    pool = {"train": dom("train", 0, 8)[2:] + dom("train", 1, 6)[1:]}
    (plan,) = plan_shadows(target, pool, 1, CarveSettings(), NAMES, "Fake")
    for group in (plan.train[0], plan.test[0]):
        assert Counter(d.domain for d in group) == {0: 2, 1: 1}
    with pytest.raises(DataError, match=r"class 'c0' \(domain 0\) has 6 images .* needs 12 "):  # 3 x 2 x 2
        plan_shadows(target, pool, 3, CarveSettings(disjoint=True), NAMES, "Fake")


def test_oxford_pets_layout_carves_train_and_val_and_the_shadow_split_reads_back(tmp_path):
    """OxfordPets in its published layout (images/, annotations/, CoOp's split file: 2 train, 1 val, 1 test
    image per breed), every breed on one of 3 clients with 1 shot: every test image is a client's, so the
    shadow data is the other train image and the val image of each breed; the written shadow split is read
    back by a run's data loading (val items included) exactly."""
    from fake_datasets import oxford_pets

    from federated.config import get_cfg
    from federated.data import build_federated_data

    oxford_pets(str(tmp_path), per_class=4)
    cfg = get_cfg()
    cfg.DATASET.NAME, cfg.DATASET.ROOT, cfg.DATASET.USERS = "OxfordPets", str(tmp_path), 3
    cfg.DATASET.SUBSAMPLE_CLASSES, cfg.DATASET.PARTITION, cfg.DATASET.NUM_SHOTS = "all", "pathological", 1
    data = build_federated_data(cfg)
    target = {"cfg": cfg, "data": data, "trained": {d.impath for c in data.train for d in c}}
    # 2 disjoint shadows of 1 member + 1 non-member per breed need 4 images of it: no fraction helps
    with pytest.raises(DataError, match=r"class 'abyssinian' has 2 images the target neither trained on nor tests "
                                        r"\(train 1, val 1, test 0\) but the shadow data needs 4 .*: pass --shadows 1 "
                                        r"or no --disjoint-shadows$"):
        mia_shadow.carve(target, 2, CarveSettings(disjoint=True))
    plans, split, info = mia_shadow.carve(target, 2, CarveSettings())
    assert info["pool"] == {"train": 37, "val": 37, "test": 0} and info["excluded"] == {"trained": 37, "tested": 37}
    for plan in plans:
        members, non_members = paths(sum(plan.train, [])), paths(sum(plan.test, []))
        assert sorted(members + non_members) == sorted(split)  # each breed's 2 pool images: 1 member, 1 non-member
        assert [sorted(d.label for d in c) for c in plan.train] == [sorted(d.label for d in c) for c in data.train]
    path = tmp_path / "shadow_split.json"
    mia_shadow.write_shadow_split(str(path), plans[1], target)
    cfg.DATASET.SPLIT_FILE = str(path)
    again = build_federated_data(cfg)
    for a, b in zip(again.train + again.test, plans[1].train + plans[1].test, strict=True):
        assert [(d.impath, d.label) for d in a] == [(d.impath, d.label) for d in b]
