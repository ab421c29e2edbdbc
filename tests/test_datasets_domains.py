"""FedBN-pickle domain datasets and the domain protocols (one client per domain, split clients,
leave-one-domain-out, per-domain accuracy, split files)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from fake_datasets import fedbn_domains

import datasets  # noqa: F401  (registers the datasets)
from dassl.data.datasets import DATASET_REGISTRY
from federated.config import get_cfg
from federated.data import build_federated_data, load_dataset
from federated.errors import DataError
from federated.split_file import write_split_file
from tests.fedtv_testing import REPO

DOMAIN_DATASETS = ["DomainNet", "Office", "OfficeHome", "PACS"]


def make_cfg(root, name: str, **dataset):
    cfg = get_cfg()
    cfg.DATASET.NAME = name
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.DATASET.PARTITION = "domain"
    cfg.DATASET.NUM_SHOTS = 0
    for k, v in dataset.items():
        setattr(cfg.DATASET, k, v)
    return cfg


def write(root, name: str, per_class: int = 2, text_labels: bool = True, classes: int | None = None):
    cls = DATASET_REGISTRY.get(name)
    names = list(cls.CLASSNAMES)
    fedbn_domains(str(root), cls.dataset_dir, list(cls.SITES), names[:classes] if classes else names, per_class,
                  text_labels)
    return cls


@pytest.mark.parametrize("name", DOMAIN_DATASETS)
def test_domain_dataset_loads_in_label_order(tmp_path, name):
    cls = write(tmp_path, name, per_class=2, classes=3 if name == "OfficeHome" else None)
    ds = load_dataset(make_cfg(tmp_path, name))
    assert ds.classnames == list(cls.CLASSNAMES) and ds.domains == list(cls.SITES)
    n_cls = 3 if name == "OfficeHome" else len(cls.CLASSNAMES)
    assert len(ds.train_x) == len(cls.SITES) * n_cls * 2 and len(ds.test) == len(cls.SITES) * n_cls
    for d in ds.train_x + ds.test:
        # the folder in the path is the class the label names: labels never come from a set
        assert f"/{ds.classnames[d.label]}/" in d.impath and f"/{cls.SITES[d.domain]}/" in d.impath
        assert os.path.isfile(d.impath)


def test_class_order_does_not_depend_on_hash_seed(tmp_path):
    write(tmp_path, "PACS", per_class=1)
    code = ("import sys; sys.path.insert(0, '.'); from federated.config import get_cfg; "
            "from federated.data import load_dataset; c = get_cfg(); c.DATASET.NAME = 'PACS'; "
            f"c.DATASET.ROOT = {str(tmp_path)!r}; d = load_dataset(c); "
            "print(d.classnames, [x.label for x in d.train_x])")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def test_integer_labels_and_errors(tmp_path):
    write(tmp_path, "Office", per_class=1, text_labels=False)
    ds = load_dataset(make_cfg(tmp_path, "Office"))
    assert [d.label for d in ds.test[:10]] == list(range(10))
    # missing pickle
    os.remove(tmp_path / "office_caltech_10" / "dslr_test.pkl")
    with pytest.raises(DataError, match=r"office_caltech_10/dslr_test.pkl \(dslr test split\)"):
        load_dataset(make_cfg(tmp_path, "Office"))
    # unknown class name
    write(tmp_path, "Office", per_class=1)
    path = tmp_path / "office_caltech_10" / "amazon_train.pkl"
    with open(path, "rb") as f:
        paths, labels = pickle.load(f)
    labels = labels.copy()
    labels[0] = "spaceship"
    with open(path, "wb") as f:
        pickle.dump((paths, labels), f)
    with pytest.raises(DataError, match="class 'spaceship' is not one of the 10 classes"):
        load_dataset(make_cfg(tmp_path, "Office"))
    # a pickle naming a missing image
    with open(path, "wb") as f:
        pickle.dump((np.array(["office_caltech_10/amazon/gone.jpg"]), np.array(["mug"])), f)
    with pytest.raises(DataError, match="amazon_train.pkl names 1 image.*gone.jpg"):
        load_dataset(make_cfg(tmp_path, "Office"))


def test_one_client_per_domain_and_split_clients(tmp_path):
    write(tmp_path, "PACS", per_class=12)
    data = build_federated_data(make_cfg(tmp_path, "PACS"))
    assert data.num_users == 4 and data.client_domains == ["art_painting", "cartoon", "photo", "sketch"]
    for cid, (train, test) in enumerate(zip(data.train, data.test, strict=True)):
        assert {d.domain for d in train} == {cid} == {d.domain for d in test}
        assert len(train) == 7 * 12 and len(test) == 7 * 6
    # 3 IID clients per domain: disjoint, together the whole domain
    split = build_federated_data(make_cfg(tmp_path, "PACS", SPLIT_CLIENT=3))
    assert split.num_users == 12 and split.client_domains[3:6] == ["cartoon"] * 3
    photo = [d.impath for c in split.train[6:9] for d in c]
    assert len(photo) == len(set(photo)) == 7 * 12
    assert all(len({d.label for d in c}) == 7 for c in split.train)  # IID: every class everywhere
    # Dirichlet label skew inside each domain: concentration moves with beta
    def skew(beta: float) -> float:
        fd = build_federated_data(make_cfg(tmp_path, "PACS", SPLIT_CLIENT=3, IMBALANCE_TRAIN=True, BETA=beta))
        shares = []
        for c in fd.train:
            counts = np.bincount([d.label for d in c], minlength=7)
            shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))
    assert skew(0.05) > skew(100.0) + 0.15


def test_leave_one_domain_out(tmp_path):
    write(tmp_path, "DomainNet", per_class=2)
    cfg = make_cfg(tmp_path, "DomainNet", TARGET_DOMAIN="clipart")
    data = build_federated_data(cfg)
    assert data.target_domain == "clipart" and data.num_users == 5
    assert data.client_domains == ["infograph", "painting", "quickdraw", "real", "sketch"]
    target_test = [d.impath for d in load_dataset(cfg).test if d.domain == 0]
    for train, test in zip(data.train, data.test, strict=True):
        assert all(d.domain != 0 for d in train)  # the held-out domain is never trained on
        assert [d.impath for d in test] == target_test
    # by index, with its train split added to the test set (FedPGP's variant), and with split clients
    both = build_federated_data(make_cfg(tmp_path, "DomainNet", TARGET_DOMAIN="0", TARGET_USE_TRAIN=True,
                                         SPLIT_CLIENT=2))
    assert both.num_users == 10 and len(both.test[0]) == 3 * len(target_test)
    with pytest.raises(DataError, match="not a domain of DomainNet; choose one of clipart, infograph"):
        build_federated_data(make_cfg(tmp_path, "DomainNet", TARGET_DOMAIN="cartoon"))


def test_split_file_round_trip_and_errors(tmp_path):
    write(tmp_path, "PACS", per_class=4)
    cfg = make_cfg(tmp_path, "PACS", SPLIT_CLIENT=2, TARGET_DOMAIN="sketch")
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    data = build_federated_data(cfg)
    path = tmp_path / "run" / "split.json"
    assert not path.exists()  # issue 17: the coordinator writes it, once the run is known to be valid
    write_split_file(str(path), data, cfg)
    saved = json.loads(path.read_text())
    assert saved["target_domain"] == "sketch" and len(saved["clients"]) == 6
    again = build_federated_data(make_cfg(tmp_path, "PACS", SPLIT_FILE=str(path)))
    assert again.num_users == 6 and again.client_domains == data.client_domains
    assert again.target_domain == "sketch"
    for a, b in zip(again.train + again.test, data.train + data.test, strict=True):
        assert [d.impath for d in a] == [d.impath for d in b]
    saved["clients"][0]["train"][0][0] = "/nowhere.jpg"
    path.write_text(json.dumps(saved))
    with pytest.raises(DataError, match="client 0 train: /nowhere.jpg is not in the dataset"):
        build_federated_data(make_cfg(tmp_path, "PACS", SPLIT_FILE=str(path)))
    write(tmp_path, "Office", per_class=1)
    with pytest.raises(DataError, match="is for dataset 'PACS'"):
        build_federated_data(make_cfg(tmp_path, "Office", SPLIT_FILE=str(path)))


def test_leave_one_domain_out_run_reports_per_domain_accuracy(tmp_path):
    from federated.run import main
    from tests.fedtv_testing import FAST_FLAGS

    write(tmp_path / "DATA", "PACS", per_class=3)
    results = main(["--root", str(tmp_path / "DATA"), "--dataset-config-file", "configs/datasets/pacs.yaml",
                    "--clip-weights", "none", "--output-dir", str(tmp_path / "out"), *FAST_FLAGS,
                    "--target-domain", "photo", "--num-shots", "0", "--rounds", "1", "INPUT.SIZE", "(32, 32)",
                    "FED.SHOW_PROGRESS", "False", "DATASET.SPLIT_CLIENT", "2", "FED.FEATURE_CACHE", "False",
                    "FED.ZS_REFERENCE", "False"])
    last = results["rounds"][-1]
    assert set(last["local_per_domain"]) == {"art_painting", "cartoon", "sketch"}
    per_client = [last["local_per_client"][str(c)] for c in range(6)]
    assert last["local_per_domain"]["cartoon"] == pytest.approx((per_client[2] + per_client[3]) / 2)
