"""CoOp-layout loaders on tiny fake copies written in the real layouts (folder names, split files, annotations)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fake_datasets import PET_BREEDS, class_folders, oxford_pets, write_image

from dassl.data.datasets import DATASET_REGISTRY
from federated.config import get_cfg
from federated.data import build_federated_data, load_dataset
from federated.errors import DataError


def make_cfg(root, name: str, **dataset):
    cfg = get_cfg()
    cfg.DATASET.NAME = name
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.CHECK_NUM_CLASSES = False
    for k, v in dataset.items():
        setattr(cfg.DATASET, k, v)
    return cfg


def load(root, name: str, **dataset):
    return load_dataset(make_cfg(root, name, **dataset))


# one-folder-per-class datasets: (registry name, dataset dir, image dir, split file, folder -> class name)
FOLDER_DATASETS = [
    ("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
     {"airplanes": "airplane", "Faces": "face", "accordion": "accordion", "wild_cat": "wild cat"}),
    ("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json",
     {"banded": "banded", "zigzagged": "zigzagged", "bubbly": "bubbly"}),
    ("Food101", "food-101", "images", "split_zhou_Food101.json",
     {"apple_pie": "apple pie", "waffles": "waffles", "baby_back_ribs": "baby back ribs"}),
    ("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
     {"AnnualCrop": "Annual Crop Land", "SeaLake": "Sea or Lake", "Forest": "Forest"}),
]


@pytest.mark.parametrize("name,ddir,idir,split_file,folders", FOLDER_DATASETS)
def test_folder_dataset_generates_saves_and_reuses_split(tmp_path, name, ddir, idir, split_file, folders):
    class_folders(str(tmp_path / ddir / idir), list(folders), per_class=10)
    if name == "Caltech101":  # CoOp leaves these two folders out
        class_folders(str(tmp_path / ddir / idir), ["BACKGROUND_Google", "Faces_easy"], per_class=3)
    ds = load(tmp_path, name)
    # labels follow the sorted folder names; names are renamed as CoOp does
    assert ds.classnames == [folders[f] for f in sorted(folders)]
    # 10 images per class -> 5 train, 2 val, 3 test
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (5 * len(folders), 2 * len(folders), 3 * len(folders))
    for d in ds.train_x + ds.test:
        assert os.path.isfile(d.impath) and ds.classnames[d.label] == d.classname
    path = tmp_path / ddir / split_file
    saved = json.loads(path.read_text())
    assert set(saved) == {"train", "val", "test"} and len(saved["train"]) == len(ds.train_x)
    # reuse: the saved file is read back unchanged, even with another split seed
    again = load(tmp_path, name, SPLIT_SEED=99)
    assert [d.impath for d in again.train_x] == [d.impath for d in ds.train_x]
    # without the file, another seed gives another (but equally sized) split
    path.unlink()
    other = load(tmp_path, name, SPLIT_SEED=99)
    assert len(other.train_x) == len(ds.train_x)
    assert {d.impath for d in other.train_x} != {d.impath for d in ds.train_x}


def test_oxford_pets_reads_split_file_and_generates_from_annotations(tmp_path):
    oxford_pets(str(tmp_path), per_class=3)
    ds = load(tmp_path, "OxfordPets", CHECK_NUM_CLASSES=True)
    assert ds.classnames == [b.lower() for b in PET_BREEDS] and ds.num_classes == 37
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (37, 37, 37)
    assert DATASET_REGISTRY.get("OxfordPets").TEMPLATE == "a photo of a {}, a type of pet."
    os.remove(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json")
    gen = load(tmp_path, "OxfordPets")
    assert gen.classnames == ds.classnames
    # trainval has 2 images per breed: round(2 * 0.2) = 0 go to val, test.txt gives 1 per breed
    assert (len(gen.train_x), len(gen.val), len(gen.test)) == (74, 0, 37)
    assert os.path.isfile(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json")


def test_oxford_flowers_names_from_cat_to_name_and_split_from_imagelabels(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "oxford_flowers"
    labels = np.array([1, 2, 3] * 10)  # image_00001.jpg .. image_00030.jpg
    for i, lab in enumerate(labels, start=1):
        write_image(str(base / "jpg" / f"image_{i:05d}.jpg"), int(lab) - 1, i)
    (base / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid",
                                                       "3": "canterbury bells"}))
    savemat(str(base / "imagelabels.mat"), {"labels": labels[None, :]})
    ds = load(tmp_path, "OxfordFlowers")
    assert ds.classnames == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (15, 6, 9)
    for d in ds.train_x + ds.val + ds.test:  # each image keeps the label imagelabels.mat gives it
        assert d.label == labels[int(os.path.basename(d.impath)[6:11]) - 1] - 1


def test_sun397_ucf101_stanford_cars_generate_from_their_annotations(tmp_path):
    from scipy.io import savemat

    # SUN397
    sun = tmp_path / "sun397"
    classes = ["/a/abbey", "/b/bakery/shop", "/c/canyon"]
    (sun).mkdir()
    (sun / "ClassName.txt").write_text("\n".join(classes) + "\n")
    train_lines, test_lines = [], []
    for y, c in enumerate(classes):
        for k in range(6):
            rel = f"{c}/sun_{k}.jpg"
            write_image(str(sun / "SUN397" / rel.lstrip("/")), y, k)
            (train_lines if k < 5 else test_lines).append(rel)
    (sun / "Training_01.txt").write_text("\n".join(train_lines))
    (sun / "Testing_01.txt").write_text("\n".join(test_lines))
    ds = load(tmp_path, "SUN397")
    assert ds.classnames == ["abbey", "shop bakery", "canyon"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 3, 3)

    # UCF101 (middle frames, CamelCase actions renamed)
    ucf = tmp_path / "ucf101"
    (ucf / "ucfTrainTestlist").mkdir(parents=True)
    actions = ["ApplyEyeMakeup", "Basketball", "YoYo"]
    (ucf / "ucfTrainTestlist" / "classInd.txt").write_text("".join(f"{i + 1} {a}\n" for i, a in enumerate(actions)))
    tr, te = [], []
    for y, a in enumerate(actions):
        for k in range(6):
            write_image(str(ucf / "UCF-101-midframes" / "_".join(__import__("re").findall("[A-Z][^A-Z]*", a))
                            / f"v_{a}_g{k:02d}_c01.jpg"), y, k)
            (tr if k < 5 else te).append(f"{a}/v_{a}_g{k:02d}_c01.avi" + (f" {y + 1}" if k < 5 else ""))
    (ucf / "ucfTrainTestlist" / "trainlist01.txt").write_text("\n".join(tr))
    (ucf / "ucfTrainTestlist" / "testlist01.txt").write_text("\n".join(te))
    ds = load(tmp_path, "UCF101")
    assert ds.classnames == ["Apply_Eye_Makeup", "Basketball", "Yo_Yo"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 3, 3)
    assert ds.TEMPLATE == "a photo of a person doing {}."

    # Stanford Cars (.mat annotations, year moved first)
    cars = tmp_path / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    (cars / "devkit").mkdir(parents=True)
    savemat(str(cars / "devkit" / "cars_meta.mat"), {"class_names": np.array([names], dtype=object)})

    def annos(folder: str, n: int) -> np.ndarray:
        rows = []
        for i in range(n):
            fname = f"{i:05d}.jpg"
            write_image(str(cars / folder / fname), i % 2, i)
            rows.append((np.array([[i % 2 + 1]]), np.array([fname])))
        return np.array([rows], dtype=[("class", object), ("fname", object)])

    savemat(str(cars / "devkit" / "cars_train_annos.mat"), {"annotations": annos("cars_train", 10)})
    savemat(str(cars / "cars_test_annos_withlabels.mat"), {"annotations": annos("cars_test", 4)})
    ds = load(tmp_path, "StanfordCars")
    assert ds.classnames == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 2, 4)
    assert all("/cars_test/" in d.impath for d in ds.test)


def test_fgvc_aircraft_and_imagenet_read_their_own_files(tmp_path):
    air = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (air / "images").mkdir(parents=True)
    (air / "variants.txt").write_text("\n".join(variants) + "\n")
    for s, n in (("train", 3), ("val", 1), ("test", 2)):
        lines = []
        for y, v in enumerate(variants):
            for k in range(n):
                imid = f"{y}{s[:2]}{k}"
                write_image(str(air / "images" / f"{imid}.jpg"), y, k)
                lines.append(f"{imid} {v}")
        (air / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    ds = load(tmp_path, "FGVCAircraft")
    assert ds.classnames == variants and (len(ds.train_x), len(ds.val), len(ds.test)) == (9, 3, 6)

    net = tmp_path / "imagenet"
    wnids = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    (net).mkdir()
    (net / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in reversed(wnids.items())))
    for split, n in (("train", 4), ("val", 2)):
        for y, w in enumerate(sorted(wnids)):
            for k in range(n):
                write_image(str(net / "images" / split / w / f"{w}_{k}.JPEG"), y, k)
    ds = load(tmp_path, "ImageNet")
    assert ds.classnames == ["tench", "goldfish", "great white shark"]  # sorted wnids, not file order
    assert (len(ds.train_x), len(ds.test)) == (12, 6)


def test_fewshot_subset_is_cached_atomically_and_reused(tmp_path):
    class_folders(str(tmp_path / "dtd" / "images"), ["banded", "bubbly"], per_class=20)
    ds = load(tmp_path, "DescribableTextures", COOP_FEWSHOT=True, NUM_SHOTS=3)
    assert len(ds.train_x) == 6 and len(ds.val) == 6  # val: min(shots, 4) per class (only 4 val images)
    # issue 17: the cache is json (data only), no longer a pickle
    cache = tmp_path / "dtd" / "split_fewshot" / "shot_3-seed_1.json"
    assert cache.is_file() and not [p for p in cache.parent.iterdir() if ".tmp" in p.name]
    cached = json.loads(cache.read_text())
    assert [os.path.join(tmp_path / "dtd", e[0]) for e in cached["train"]] == [d.impath for d in ds.train_x]
    # the cache is what a second load returns (tamper with it to prove it is read)
    cached["train"] = cached["train"][:1]
    cache.write_text(json.dumps(cached))
    assert len(load(tmp_path, "DescribableTextures", COOP_FEWSHOT=True, NUM_SHOTS=3).train_x) == 1


def test_missing_folder_missing_split_and_wrong_class_count_errors(tmp_path):
    with pytest.raises(DataError, match=r"oxford_pets/images .*missing|missing:\n.*oxford_pets/images"):
        load(tmp_path, "OxfordPets")
    oxford_pets(str(tmp_path), per_class=3, with_split=False)
    os.remove(tmp_path / "oxford_pets" / "annotations" / "test.txt")
    with pytest.raises(DataError, match=r"split_zhou_OxfordPets.json.*\n.*annotations/test.txt"):
        load(tmp_path, "OxfordPets")
    class_folders(str(tmp_path / "food-101" / "images"), ["apple_pie", "waffles"], per_class=5)
    with pytest.raises(DataError, match="gives 2 classes, the dataset has 101"):
        load(tmp_path, "Food101", CHECK_NUM_CLASSES=True)
    # a split file naming an image that is not there
    split = tmp_path / "food-101" / "split_zhou_Food101.json"
    load(tmp_path, "Food101")
    os.remove(tmp_path / "food-101" / "images" / "waffles" / "waffles_0003.jpg")
    with pytest.raises(DataError, match="names 1 image.*waffles_0003.jpg"):
        load(tmp_path, "Food101")
    # a label named twice
    data = json.loads(split.read_text())
    data["train"][0][2] = "not apple pie"
    split.write_text(json.dumps(data))
    class_folders(str(tmp_path / "food-101" / "images"), ["apple_pie", "waffles"], per_class=5)
    with pytest.raises(DataError, match="label 0 is named both"):
        load(tmp_path, "Food101")


def test_corrupt_image_is_named(tmp_path):
    from dassl.data import build_data_loader, build_transform

    class_folders(str(tmp_path / "dtd" / "images"), ["banded", "bubbly"], per_class=5)
    cfg = make_cfg(tmp_path, "DescribableTextures")
    ds = load_dataset(cfg)
    bad = ds.test[0].impath
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    loader = build_data_loader(cfg, ds.test, 4, False, build_transform(cfg, is_train=False))
    with pytest.raises(OSError, match=os.path.basename(bad)):
        next(iter(loader))


def test_seed_readme_command_on_fake_oxford_pets(tmp_path):
    """The FedTV README command (oxfordpets.yaml, --num-users 10) on a fake OxfordPets in the real layout."""
    from federated.run import main

    oxford_pets(str(tmp_path / "DATA"), per_class=3)
    out = tmp_path / "out"
    results = main(["--root", str(tmp_path / "DATA") + "/", "--dataset-config-file", "configs/datasets/oxfordpets.yaml",
                    "--num-users", "10", "--clip-weights", "none", "--backbone", "tiny", "--rounds", "1",
                    "--local-epochs", "1", "--output-dir", str(out),
                    "FED.SHOW_PROGRESS", "False", "FED.ZS_REFERENCE", "False", "FED.FEATURE_CACHE", "False"])
    assert tuple(results["config"]["INPUT"]["SIZE"]) == (32, 32)  # the yaml's 224 follows the tiny backbone
    last = results["rounds"][-1]
    assert last["local"] is not None and last["base"] is not None and last["novel"] is not None
    split = json.loads((out / "split.json").read_text())
    assert split["dataset"] == "OxfordPets" and len(split["clients"]) == 10
    assert len(split["classnames"]) == 19  # base half of 37
    owned = [set(c["classes"]) for c in split["clients"]]
    assert sum(len(c) for c in owned) == 19 and len(set().union(*owned)) == 19  # disjoint classes


def test_coop_loader_feeds_the_pathological_partition(tmp_path):
    class_folders(str(tmp_path / "caltech-101" / "101_ObjectCategories"), [f"c{i}" for i in range(8)], per_class=12)
    cfg = make_cfg(tmp_path, "Caltech101", USERS=4, NUM_SHOTS=2, SUBSAMPLE_CLASSES="base")
    data = build_federated_data(cfg)
    assert data.classnames == ["c0", "c1", "c2", "c3"] and data.num_users == 4
    assert all(len(t) == 2 for t in data.train)  # one class each, 2 shots
    assert len(data.novel_test) == 4 * 4 and data.template == "a photo of a {}."


def test_split_file_may_name_validation_items(tmp_path):
    """A split file's clients may hold val items (tools/mia_shadow.py carves shadow data from them), in the
    run's label space (here the novel half, relabelled from 0)."""
    from federated.split_file import write_split_file

    class_folders(str(tmp_path / "caltech-101" / "101_ObjectCategories"), [f"c{i}" for i in range(4)], per_class=10)
    cfg = make_cfg(tmp_path, "Caltech101", USERS=2, NUM_SHOTS=0, SUBSAMPLE_CLASSES="new")
    data = build_federated_data(cfg)
    ds = load_dataset(cfg)
    val = [d.copy(d.label - 2) for d in ds.val if d.label >= 2]  # classes c2, c3 -> labels 0, 1
    assert len(val) == 4 and not {d.impath for d in val} & {d.impath for c in data.train + data.test for d in c}
    data.train[0] = data.train[0] + val[:2]
    data.test[1] = val[2:]
    write_split_file(str(tmp_path / "split.json"), data, cfg)
    again = build_federated_data(make_cfg(tmp_path, "Caltech101", NUM_SHOTS=0, SUBSAMPLE_CLASSES="new",
                                          SPLIT_FILE=str(tmp_path / "split.json")))
    for a, b in zip(again.train + again.test, data.train + data.test, strict=True):
        assert [(d.impath, d.label) for d in a] == [(d.impath, d.label) for d in b]
