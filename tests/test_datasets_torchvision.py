"""CIFAR-10/100 and Fashion-MNIST (torchvision formats), Tiny-ImageNet; hierarchical Dirichlet on CIFAR-100;
Fashion-MNIST from the Debian package end to end through a short federated run."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
from fake_datasets import cifar, colour_image, idx_file, write_image

from datasets.fashion_mnist import CLASSNAMES, DEBIAN_DIR, find_files
from federated.config import get_cfg
from federated.data import build_federated_data, load_dataset
from federated.errors import DataError
from tests.fedtv_testing import FAST_FLAGS

DEBIAN_PRESENT = find_files("/nonexistent-root") is not None


def make_cfg(root, name: str, **dataset):
    cfg = get_cfg()
    cfg.DATASET.NAME = name
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.DATASET.NUM_SHOTS = 0
    cfg.DATASET.DOWNLOAD = False
    for k, v in dataset.items():
        setattr(cfg.DATASET, k, v)
    return cfg


def test_cifar10_reads_torchvision_pickles(tmp_path):
    cifar(str(tmp_path), hundred=False, per_class=2)
    ds = load_dataset(make_cfg(tmp_path, "CIFAR10"))
    assert ds.classnames == [f"class_{i}" for i in range(10)]
    assert len(ds.train_x) == 5 * 20 and len(ds.test) == 20
    d = ds.train_x[21]  # data_batch_2, item 1: label 0, generated with k = 20 + 1
    assert d.label == 0 and d.impath.endswith("data_batch_2#1")
    np.testing.assert_array_equal(d.image, colour_image(0, 21, 32))


def test_cifar_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_1 .*\n(.|\n)*cifar-10-python.tar.gz"):
        load_dataset(make_cfg(tmp_path, "CIFAR10"))


def test_cifar100_coarse_labels_drive_the_hierarchical_partition(tmp_path):
    cifar(str(tmp_path), hundred=True, per_class=20, num_classes=20)  # 4 superclasses of 5 fine classes
    cfg = make_cfg(tmp_path, "CIFAR100", PARTITION="noniid-labeldir100", USERS=4, BETA=0.1, CHECK_NUM_CLASSES=False)
    ds = load_dataset(cfg)
    assert ds.classnames[:3] == ["fine_0", "fine_1", "fine_2"] and ds.coarse_of_fine == [y // 5 for y in range(20)]
    data = build_federated_data(cfg, dataset=ds)
    assert [len(t) for t in data.train] == [100] * 4 and [len(t) for t in data.test] == [100] * 4
    ids = [d.impath for t in data.train for d in t]
    assert len(ids) == len(set(ids))
    # small beta: each client's items concentrate on few superclasses
    top = [np.bincount([d.label // 5 for d in t], minlength=4).max() / len(t) for t in data.train]
    assert np.mean(top) > 0.5
    same = build_federated_data(cfg, dataset=ds)
    assert [[d.impath for d in t] for t in same.train] == [[d.impath for d in t] for t in data.train]
    other = build_federated_data(make_cfg(tmp_path, "CIFAR100", PARTITION="noniid-labeldir100", USERS=4, BETA=0.1,
                                          CHECK_NUM_CLASSES=False, SPLIT_SEED=7), dataset=ds)
    assert [[d.impath for d in t] for t in other.train] != [[d.impath for d in t] for t in data.train]
    cifar(str(tmp_path), hundred=False, per_class=2)
    with pytest.raises(DataError, match="needs coarse labels"):
        build_federated_data(make_cfg(tmp_path, "CIFAR10", PARTITION="hierarchical-dirichlet"))


def test_tiny_imagenet_standard_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02124075", "n01443537", "n01629819"]
    base.mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
                                    "n02124075\tEgyptian cat\nn09999999\tunused\n")
    annos = []
    for y, w in enumerate(sorted(wnids)):
        for k in range(3):
            write_image(str(base / "train" / w / "images" / f"{w}_{k}.JPEG"), y, k)
        write_image(str(base / "val" / "images" / f"val_{y}.JPEG"), y, 9)
        annos.append(f"val_{y}.JPEG\t{w}\t0\t0\t10\t10")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annos) + "\n")
    ds = load_dataset(make_cfg(tmp_path, "TinyImageNet", CHECK_NUM_CLASSES=False))
    assert ds.classnames == ["goldfish", "European fire salamander", "Egyptian cat"]
    assert (len(ds.train_x), len(ds.test)) == (9, 3) and [d.label for d in ds.test] == [0, 1, 2]
    with pytest.raises(DataError, match="lists 3 classes, the dataset has 200"):
        load_dataset(make_cfg(tmp_path, "TinyImageNet"))


def test_fashion_mnist_from_idx_files_in_the_data_root(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 30), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        idx_file(str(tmp_path / "fashion_mnist" / f"{stem}-images-idx3-ubyte.gz"), images)
        idx_file(str(tmp_path / "fashion_mnist" / f"{stem}-labels-idx1-ubyte"), labels)  # not gzipped
    ds = load_dataset(make_cfg(tmp_path, "FashionMNIST"))
    assert ds.classnames == CLASSNAMES and (len(ds.train_x), len(ds.test)) == (30, 10)
    assert ds.train_x[13].label == 3 and ds.train_x[13].image.shape == (28, 28)
    # a truncated file is named
    path = tmp_path / "fashion_mnist" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: header says .* the file is truncated"):
        load_dataset(make_cfg(tmp_path, "FashionMNIST"))


@pytest.mark.skipif(not DEBIAN_PRESENT, reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_DIR}); "
                                               "CI installs it: apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist_debian_package_end_to_end(tmp_path):
    from federated.run import main

    ds = load_dataset(make_cfg(tmp_path, "FashionMNIST"))
    assert (len(ds.train_x), len(ds.test)) == (60000, 10000)
    assert np.bincount([d.label for d in ds.test], minlength=10).tolist() == [1000] * 10
    assert ds.train_x[0].image.shape == (28, 28) and ds.train_x[0].image.dtype == np.uint8
    out = tmp_path / "out"
    results = main(["--root", str(tmp_path), "--dataset-config-file", "configs/datasets/fashion_mnist.yaml",
                    "--clip-weights", "none", "--output-dir", str(out), *FAST_FLAGS, "--partition", "dirichlet",
                    "--beta", "0.5", "--rounds", "1", "INPUT.SIZE", "(32, 32)", "FED.ZS_REFERENCE", "False",
                    "FED.FEATURE_CACHE", "False", "DATASET.MAX_TEST_PER_CLASS", "10",
                    "FED.SHOW_PROGRESS", "False", "DATALOADER.TRAIN_X.BATCH_SIZE", "8"])
    assert len(results["rounds"]) == 1
    last = results["rounds"][-1]
    assert 0.0 <= last["local"] <= 100.0 and np.isfinite(last["train_loss"])
    assert last["base"] is None  # no base-to-novel split on this protocol
    split = __import__("json").loads((out / "split.json").read_text())
    assert len(split["clients"]) == 3 and split["classnames"] == CLASSNAMES
    test_items = [tuple(x) for c in split["clients"] for x in c["test"]]
    assert len(test_items) == len(set(test_items)) == 100  # 10 per class, dealt to the clients
    assert os.path.isfile(out / "results.json")
